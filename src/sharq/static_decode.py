"""Deprecated location of `StaticDecoder`: import it from `sharq.runtime` (removed in the next release)."""

import warnings

from .runtime.static_decode import StaticDecoder

warnings.warn(
    "sharq.static_decode is deprecated; import StaticDecoder from sharq.runtime", DeprecationWarning, stacklevel=2
)

__all__ = ["StaticDecoder"]
