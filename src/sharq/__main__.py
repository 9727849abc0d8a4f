"""`python -m sharq ...` runs the `sharq` command line."""

import sys

from .cli import main

sys.exit(main())
