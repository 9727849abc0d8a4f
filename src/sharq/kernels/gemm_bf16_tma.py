"""Persistent bf16 GEMM over TMA descriptors with the SharQ epilogue: the large-M (prefill) loop.

    y (M, N) = (s_x · s_w) · Σ_t T_t · Wᵀ + bias,   FP32 accumulation, one rounding to y's dtype

T_t: 1 or 2 bf16 (M, K) activation terms (the bf16-sum operand, or deq(B) and deq(R) for the exact
operand); W: the layer's weight already dequantized into a bf16 (N, K) scratch matrix
(`dequant_fp4.py`, exact, s_w not applied); s_x FP32 () or (M,); s_w FP32 (1,), one per column
(N,) (a grouped GEMM's weights side by side) or absent; bias (N,).
The same function as `gemm_fp4`'s scratch loop (SCRATCH 2), up to the FP32 summation order inside
the MMAs; the grouped tile order and the epilogue are the shared ones (`gemm_shared.py`).

How it differs from that loop: the operand and weight tiles arrive by TMA (host-built tensor
descriptors, out-of-bounds rows and columns read as zero, so no masks in the loop), and a grid of at
most one program per SM walks the output tiles in grouped order (the grid size apart), so a program's
next tile's loads overlap its epilogue. WARP_SPEC asks Triton to warp-specialize that loop
(producer warps for the TMA loads, consumer warps for the MMAs); FLATTEN flattens the tile and K
loops into one pipelined loop. Which of them pays on Hopper is for `benchmarks/tune_prefill.py`.
y is stored through a descriptor when its dtype is 2 bytes wide (the epilogue tile staged in shared
memory), through pointers otherwise.

TMA needs 16-byte aligned base addresses and row strides: K and N multiples of 8 for bf16 and
contiguous rows (`tma_supported`); the plan sends other shapes to gemm_fp4's pointer loop.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import cdiv, interpreting
from .gemm_shared import _epilogue, _epilogue_values, _grouped_tile

__all__ = ["tma_supported", "bf16_gemm_tma"]


@triton.jit
def _bf16_gemm_tma_kernel(
    a_desc,
    r_desc,
    w_desc,
    y_desc,
    y_ptr,
    sx_ptr,
    sw_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_sx,
    stride_y,
    TWO: tl.constexpr,
    HAS_SW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    Y_TMA: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    WARP_SPEC: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(
        tl.program_id(0), grid_m * grid_n, tl.num_programs(0), flatten=FLATTEN, warp_specialize=WARP_SPEC
    ):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        row0 = pid_m * BLOCK_M
        col0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(k_steps):
            k0 = step * BLOCK_K
            wt = w_desc.load([col0, k0]).T  # (BLOCK_K, BLOCK_N)
            a = a_desc.load([row0, k0])
            if DOT_F32:  # the interpreter multiplies bf16 tiles as raw bits; FP32 holds the same values
                wt = wt.to(tl.float32)
                a = a.to(tl.float32)
            acc = tl.dot(a, wt, acc)
            if TWO:
                r = r_desc.load([row0, k0])
                if DOT_F32:
                    r = r.to(tl.float32)
                acc = tl.dot(r, wt, acc)
        offs_m = row0 + tl.arange(0, BLOCK_M)
        offs_n = col0 + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        n_ok = offs_n < N
        if Y_TMA:
            y = _epilogue_values(acc, sx_ptr, sw_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, HAS_SW, HAS_BIAS)
            y_desc.store([row0, col0], y.to(y_desc.dtype))
        else:
            _epilogue(
                acc, sx_ptr, sw_ptr, bias_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, stride_y, HAS_SW, HAS_BIAS
            )


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _aligned(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0


def tma_supported(*tensors: torch.Tensor | None) -> bool:
    """True when every given 2-D tensor can back a TMA descriptor: contiguous rows, 16-byte
    aligned base address and row stride (for bf16: K, N multiples of 8)."""
    return all(t is None or _aligned(t) for t in tensors)


def bf16_gemm_tma(
    a: torch.Tensor,
    r: torch.Tensor | None,
    w: torch.Tensor,
    s_x: torch.Tensor,
    s_w: torch.Tensor | None,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    *,
    has_sw: int | None = None,
    block_m: int,
    block_n: int,
    block_k: int,
    group_m: int,
    num_warps: int,
    num_stages: int,
    warp_spec: bool = False,
    flatten: bool = False,
) -> torch.Tensor:
    """Fill y (M, N) with the GEMM above. a, r: bf16 (M, K); w: bf16 (N, K); s_x FP32 (1,) or (M,)
    (contiguous); s_w FP32 (1,), (N,) (one per column: has_sw 2) or None; bias (N,) or None; y (M, N)
    contiguous, any float dtype. has_sw: None = 1 when s_w is given, else 0.
    The caller (gemm_fp4._gemm_impl) has validated shapes and dtypes; this checks TMA's alignment."""
    if not tma_supported(a, r, w):
        raise ValueError(
            "the TMA GEMM needs contiguous, 16-byte aligned bf16 rows (K a multiple of 8), got "
            f"{[(tuple(t.shape), tuple(t.stride())) for t in (a, r, w) if t is not None]}"
        )
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = a.shape
    n = w.shape[0]
    a_desc = TensorDescriptor.from_tensor(a, [block_m, block_k])
    r_desc = TensorDescriptor.from_tensor(r, [block_m, block_k]) if r is not None else a_desc
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    y_tma = y.element_size() == 2 and _aligned(y)
    y_desc = TensorDescriptor.from_tensor(y, [block_m, block_n]) if y_tma else a_desc
    interpret = interpreting()
    tiles = cdiv(m, block_m) * cdiv(n, block_n)
    progs = min(tiles, 4 if interpret else _sm_count(y.device.index or 0))
    _bf16_gemm_tma_kernel[(progs,)](
        a_desc,
        r_desc,
        w_desc,
        y_desc,
        y,
        s_x,
        s_w if s_w is not None else s_x,
        bias if bias is not None else s_x,
        m,
        n,
        k,
        0 if s_x.numel() == 1 else 1,
        y.stride(0),
        TWO=r is not None,
        HAS_SW=int(s_w is not None) if has_sw is None else has_sw,
        HAS_BIAS=bias is not None,
        Y_TMA=y_tma,
        DOT_F32=interpret,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        WARP_SPEC=warp_spec,
        FLATTEN=flatten,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return y
