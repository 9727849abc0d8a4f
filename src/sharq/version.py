"""`__version__`: the installed distribution's version (importlib.metadata), "0+unknown" for a source
tree on sys.path that was never installed. Modules read it here, not from the package root."""

from __future__ import annotations

import importlib.metadata

__all__ = ["__version__"]

try:
    __version__ = importlib.metadata.version("sharq")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0+unknown"
