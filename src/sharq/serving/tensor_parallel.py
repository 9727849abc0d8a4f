"""Tensor-parallel shapes of sharq layers (no vLLM import): which K slices keep SharQ's numerics.

A column-parallel layer (q/k/v, gate/up) splits its weight by output rows: every rank holds whole
rows, the activation is whole, nothing changes numerically.

A row-parallel layer (o, down) splits K: rank r holds columns [r·K/tp, (r+1)·K/tp) of the weight
and of the activation. That slice computes the single-device function (SPEC §3) only when

  * K divides by tp,
  * the slice width K/tp is a whole number of every block along K — the weight's block, the
    backbone's block (32 logical positions) and the residual's block — and of the mask's group
    (8 for pair4of8, M for N:M), so that no block or group straddles two ranks,
  * every rank quantizes with the scale of the whole row: the max all-reduce of the slices' amax
    (`row_parallel_global_scale`) before quantizing.

Then each rank's codes and block scales are exactly its slice of the single-device ones.
"""

from __future__ import annotations

import math

import torch

from ..config import SharqConfig
from ..formats.nvfp4 import nvfp4_global_scale
from ..options import DEFAULT_OPTIONS, RuntimeOptions
from ..sparse.decompose import PreparedActivation

__all__ = ["k_alignment", "row_parallel_k_slice", "row_parallel_global_scale", "row_parallel_prepare"]


def k_alignment(config: SharqConfig) -> int:
    """The smallest K-slice width that keeps whole blocks and mask groups of `config`: the lcm of
    its weight, backbone and residual blocks and its masks' group sizes (32 for sharq-nvfp4)."""
    sizes = [config.weight_block, config.backbone_block, config.residual_block]
    for spec in (config.mask_spec if config.mask is not None else None, config.residual_mask_spec):
        if spec is not None:
            sizes.append(spec.m)
    return math.lcm(*sizes)


def row_parallel_k_slice(k: int, tp_size: int, config: SharqConfig, name: str = "layer") -> int:
    """The K slice width K / tp of a row-parallel layer `name` with input size `k`.

    Raises ValueError, naming the layer, the sizes and the TP sizes that would work (up to 16),
    when the slice is not a whole number of `k_alignment(config)` columns.
    """
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tensor-parallel size must be a positive integer, got {tp_size!r}")
    if tp_size == 1:
        return k
    align = k_alignment(config)
    if k % tp_size == 0 and (k // tp_size) % align == 0:
        return k // tp_size
    works = [1] + [t for t in range(2, 17) if k % t == 0 and (k // t) % align == 0]  # 1: no split
    raise ValueError(
        f"sharq: tensor-parallel size {tp_size} splits the input K={k} of row-parallel layer {name} into "
        f"slices of {k / tp_size:g} columns, not a multiple of {align} (the blocks and mask groups of "
        f"SharQ's activation and weight must not straddle ranks); sizes that work here: {works}"
    )


def row_parallel_global_scale(x: torch.Tensor, all_reduce_max) -> torch.Tensor:
    """s_x (M, 1) FP32 of the whole rows of which `x` (M, K/tp) is one rank's K slice ("token"):
    `nvfp4_global_scale` of `row_parallel_amax`. Equals `nvfp4_global_scale(full_x, "token")` bit for
    bit: the max of the slices' amax is the row's amax, and the scale is computed from it by the same
    function."""
    return nvfp4_global_scale(row_parallel_amax(x, all_reduce_max).unsqueeze(-1), "token")


def row_parallel_amax(x: torch.Tensor, all_reduce_max) -> torch.Tensor:
    """FP32 (M,): the amax of the whole rows of which `x` (M, K/tp) is one rank's K slice — the local
    row amax, then `all_reduce_max` (one FP32 per row crosses the group; a max is exact in any order)."""
    amax = x.detach().float().abs().amax(dim=-1)  # (M,) local
    all_reduce_max(amax)
    return amax


def row_parallel_prepare(
    x: torch.Tensor, config: SharqConfig, all_reduce_max, options: RuntimeOptions = DEFAULT_OPTIONS
) -> PreparedActivation:
    """The preparation of a row-parallel rank's K slice x (M, K/tp) with the whole rows' scales
    (`row_parallel_amax`), by the backend `options` pick (`ops.prepare(row_amax=...)`: the Triton
    preparation kernel on CUDA, the reference on the CPU). Its codes and block scales are the slice of
    the single-device preparation's, bit for bit."""
    from ..ops import prepare

    rows = x.reshape(-1, x.shape[-1])
    return prepare(rows, config, options, row_amax=row_parallel_amax(rows, all_reduce_max))
