"""Input-adaptive N:M activation masks (SPEC §4), recomputed on every call.

All masks select along the last dimension K and return a bool tensor of the input's shape. K not
a multiple of the group is zero padded (padding is never preferred over a real value of equal
magnitude: ties go to the lower index). NaN and ±Inf count as the largest magnitude (equal to each
other), so a non-finite value is kept and reaches the output.
"""

from __future__ import annotations

import torch

from ..config import MaskSpec, parse_mask
from ..formats.blocks import from_blocks, to_blocks

__all__ = ["topn_mask", "pair4of8_mask", "nm_mask", "apply_mask"]


def _scores(x: torch.Tensor) -> torch.Tensor:
    """|x| as the mask ranks it: FP32 (exact for FP32/BF16/FP16), FP64 for FP64 input (so two
    float64 values that round to one float32 are still told apart); NaN and ±Inf as +Inf."""
    a = x.abs() if x.dtype == torch.float64 else x.float().abs()
    return torch.nan_to_num(a, nan=float("inf"), posinf=float("inf"))


def _keep_top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """bool mask of the `n` largest entries of the last dim; equal scores: lower index first."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # stable: ties by index
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter(-1, order[..., :n], True)


def topn_mask(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` largest |x| of each group of `m` along K (`2:4`, `8:16`, …)."""
    if not 0 < n < m:
        raise ValueError(f"N:M mask needs 0 < N < M, got {n}:{m}")
    groups = to_blocks(_scores(x), m)  # (..., K/m, m)
    return from_blocks(_keep_top_n(groups, n), x.shape[-1])


def pair4of8_mask(x: torch.Tensor) -> torch.Tensor:
    """Blackwell's sparse-NVFP4 layout: per group of 8, keep the 2 of 4 pairs with the largest
    max(|a|, |b|)."""
    scores = to_blocks(_scores(x), 8)  # (..., K/8, 8)
    pair_scores = scores.reshape(*scores.shape[:-1], 4, 2).amax(dim=-1)  # (..., K/8, 4)
    keep_pairs = _keep_top_n(pair_scores, 2)  # (..., K/8, 4)
    keep = keep_pairs.repeat_interleave(2, dim=-1)  # (..., K/8, 8)
    return from_blocks(keep, x.shape[-1])


def nm_mask(x: torch.Tensor, mask: MaskSpec | str) -> torch.Tensor:
    """The mask `mask` ("pair4of8", "2:4", "N:M" or a `MaskSpec`) of `x` (..., K) as bool (..., K).

    `x` is any floating-point tensor (integer, bool and complex ones raise a `TypeError`)."""
    spec = parse_mask(mask) if isinstance(mask, str) else mask
    if not isinstance(spec, MaskSpec):
        raise TypeError(f"mask must be 'pair4of8', 'N:M' or a MaskSpec, got {mask!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"an N:M mask needs a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0:
        raise ValueError("an N:M mask needs a tensor with a last dimension K")
    return pair4of8_mask(x) if spec.pairs else topn_mask(x, spec.n, spec.m)


def apply_mask(x: torch.Tensor, mask: MaskSpec | str) -> torch.Tensor:
    """`x ⊙ mask(x)`: dropped positions set to zero (same dtype and shape as x)."""
    return torch.where(nm_mask(x, mask), x, torch.zeros_like(x))
