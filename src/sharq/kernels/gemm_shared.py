"""What the tensor-core GEMMs (gemm_fp4, gemm_bf16_tma) share: the grouped tile order and the
SharQ epilogue y = (s_x · s_w) · acc + bias.

`_grouped_tile`: output tile number -> (row tile, column tile), GROUP_M row tiles taken together
for each column tile, so that they read each weight tile while it is in L2.

Epilogue: acc is the FP32 (BLOCK_M, BLOCK_N) sum Σ_t T_t · deq(W)ᵀ in the scaled domain; s_x is FP32, one per
tensor (stride 0) or one per row; s_w (HAS_SW) absent (0, MXFP4), one FP32 word (1, NVFP4) or one
FP32 word per output column (2: the weights of a grouped GEMM side by side, each column carrying its
own weight's s_w); bias (N,) in any float dtype, added in FP32. The reference's order: the scales
multiplied first, then the product, then the bias, then one rounding to y's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _grouped_tile(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of output tile number `tile` on a grid_m × grid_n grid, in grouped order."""
    group = GROUP_M * grid_n
    first_m = (tile // group) * GROUP_M
    rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (tile % group) % rows_in_group, (tile % group) // rows_in_group


@triton.jit
def _epilogue_values(
    acc, sx_ptr, sw_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, HAS_SW: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """FP32 (BLOCK_M, BLOCK_N): (s_x · s_w) · acc + bias, before the cast."""
    sx = tl.load(sx_ptr + offs_m * stride_sx, mask=m_ok, other=1.0)
    if HAS_SW == 2:  # per column: the same FP32 product s_x · s_w per element as the one-word case
        y = (sx[:, None] * tl.load(sw_ptr + offs_n, mask=n_ok, other=1.0)[None, :]) * acc
    else:
        if HAS_SW == 1:
            s = sx * tl.load(sw_ptr)
        else:
            s = sx
        y = s[:, None] * acc
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def _epilogue(
    acc,
    sx_ptr,
    sw_ptr,
    bias_ptr,
    y_ptr,
    offs_m,
    offs_n,
    m_ok,
    n_ok,
    stride_sx,
    stride_y,
    HAS_SW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """y = (s_x · s_w) · acc + bias, cast to y's dtype and stored through pointers."""
    y = _epilogue_values(acc, sx_ptr, sw_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, HAS_SW, HAS_BIAS)
    tl.store(
        y_ptr + offs_m[:, None] * stride_y + offs_n[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )
