"""`python -m sharq.cli ...`: the `sharq` command line."""

import sys

from .main import main

sys.exit(main())
