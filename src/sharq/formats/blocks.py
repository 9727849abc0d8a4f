"""Blocking along K: zero padding to a multiple of the block, and back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["padded_length", "pad_last", "to_blocks", "from_blocks"]


def padded_length(k: int, block: int) -> int:
    """Smallest multiple of `block` that is >= k."""
    return -(-k // block) * block


def pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dimension of `x` to a multiple of `multiple` (no copy when aligned)."""
    pad = padded_length(x.shape[-1], multiple) - x.shape[-1]
    return F.pad(x, (0, pad)) if pad else x


def to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(..., K) -> (..., ceil(K / block), block), zero padded."""
    x = pad_last(x, block)
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def from_blocks(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """(..., nb, block) -> (..., k): flatten and drop the padding."""
    return blocks.reshape(*blocks.shape[:-2], blocks.shape[-2] * blocks.shape[-1])[..., :k]
