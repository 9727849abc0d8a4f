"""Block-scale search ("-mse" rule, SPEC §6): pick each block's scale among a few candidates by the
smallest squared error of the block's dequantized values.

The stored format is unchanged (same E2M1 codes, same E4M3 / E8M0 scale bits): only *which*
representable scale a block gets differs from the fixed amax rule. Everything is vectorized over
all blocks at once; the only Python loop runs over the few candidates (a running best, so memory
stays at a few copies of the blocks, whatever the number of candidates).

Determinism across devices: a block's squared error is summed in FP32 as a fixed pairwise tree
(halves added elementwise, log2(block) times), never by a reduction kernel whose order a device
chooses. Every step is then a correctly rounded IEEE operation, so CPU and CUDA pick the same
scale even for candidates whose errors differ in the last bit.

Ties (equal FP32 errors, e.g. two candidates that round to one E4M3 value, or an all-zero block):
the larger scale wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .elements import round_e2m1_magnitudes

__all__ = ["tree_sum_last", "block_sse_e2m1", "choose_block_scales"]


def tree_sum_last(t: torch.Tensor) -> torch.Tensor:
    """Sum FP32 `t` (..., n) over its last dim, n a power of two, as a fixed pairwise tree: (...,)."""
    n = t.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"tree_sum_last needs a power-of-two last dimension, got {n}")
    while t.shape[-1] > 1:
        h = t.shape[-1] // 2
        t = t[..., :h] + t[..., h:]
    return t[..., 0]


def block_sse_e2m1(magnitudes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Squared error of E2M1-quantizing blocks with FP32 `scale` (..., nb), given their FP32
    magnitudes |x| (..., nb, B).

    The dequantized block is `scale * E2M1(x / scale)` (SPEC §2: divide by the rounded scale, round
    to nearest even, saturate at 6), and 0 where `scale == 0`. The rule is symmetric, so the error
    of each value is exactly |x| - scale * E2M1(|x| / scale) up to sign. Returns FP32 (..., nb).
    """
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale).unsqueeze(-1)
    deq = round_e2m1_magnitudes(magnitudes / divisor) * scale.unsqueeze(-1)  # scale 0: all 0
    err = magnitudes - deq
    return tree_sum_last(err * err)


def choose_block_scales(blocks: torch.Tensor, candidates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per block, the candidate scale with the smallest `block_sse_e2m1`; ties to the larger scale.

    blocks: FP32 (..., nb, B). candidates: FP32 (..., nb) each, representable scale values (already
    rounded to the scale format). A block whose errors are NaN (non-finite input) keeps the first
    candidate. Returns FP32 (..., nb).
    """
    if not candidates:
        raise ValueError("choose_block_scales needs at least one candidate scale")
    magnitudes = blocks.abs()
    best = candidates[0]
    best_sse = block_sse_e2m1(magnitudes, best)
    for cand in candidates[1:]:
        sse = block_sse_e2m1(magnitudes, cand)
        better = (sse < best_sse) | ((sse == best_sse) & (cand > best))
        best = torch.where(better, cand, best)
        best_sse = torch.where(better, sse, best_sse)
    return best
