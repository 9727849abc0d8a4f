"""torch.nn modules."""

from .linear import SharqLinear
from .lm_head import SharqLMHead

__all__ = ["SharqLinear", "SharqLMHead"]
