"""torch.nn modules."""

from .linear import SharqLinear

__all__ = ["SharqLinear"]
