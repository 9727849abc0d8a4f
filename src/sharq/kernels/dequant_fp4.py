"""Dequantize a packed FP4 weight into a bf16 scratch matrix, for the large-M (prefill) GEMM.

At large M the FP4-weight GEMM is compute-bound, and dequantizing every weight tile inside the
GEMM loop (once per row tile of the activation) costs more than the MMAs it feeds. Dequantizing
the layer's weight once into a bf16 (N, K) scratch matrix — 2 bytes a weight written and read
again, small against the GEMM's work when M is large — lets the GEMM loop be a plain bf16 one.

The values are exact: deq(W) = e(c) · scale (the scaled domain, s_w not applied) has at most six
significant bits and lies within bf16's range (`weight_decode._weight_tile`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor
from . import cdiv
from .direct import direct_call_ok
from .weight_decode import _group_member, _weight_tile, gemm_supports

__all__ = ["dequantize_fp4_bf16"]


@triton.jit
def _dequant_kernel(
    wc_ptr,
    ws_ptr,
    out_ptr,
    N,
    K,
    KW,
    KS,
    stride_wc,
    stride_ws,
    stride_out,
    wc1_ptr,
    ws1_ptr,
    wc2_ptr,
    ws2_ptr,
    N0,
    N1,
    MX: tl.constexpr,
    WB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUPS: tl.constexpr,
):
    """out rows [pid·BLOCK_N, +BLOCK_N), columns [pid_k·BLOCK_K, +BLOCK_K). GROUPS > 1: out holds
    GROUPS weights side by side (rows [0, N0) from wc/ws, [N0, N0 + N1) from wc1/ws1, the rest from
    wc2/ws2; every boundary a multiple of BLOCK_N, so a program reads one weight)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    wc, ws, base = _group_member(
        tl.program_id(0) * BLOCK_N, wc_ptr, ws_ptr, wc1_ptr, ws1_ptr, wc2_ptr, ws2_ptr, N0, N1, GROUPS
    )
    k0 = tl.program_id(1) * BLOCK_K
    w = _weight_tile(wc, ws, offs_n - base, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, MX)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + offs_n[:, None] * stride_out + cols[None, :], w, mask=n_ok[:, None] & (cols[None, :] < K))


_BLOCK_N, _BLOCK_K = 32, 128


def _dequant_impl(w_codes: torch.Tensor, w_scales: torch.Tensor, k: int, mx: bool, wb: int) -> torch.Tensor:
    """w_codes (N, Kp/2) uint8 (element 2i in the low nibble), w_scales (N, Kp/wb) uint8 (E4M3, or
    E8M0 when `mx`) -> bf16 (N, k): e(c) · scale, s_w not applied."""
    out = torch.empty(w_codes.shape[0], k, dtype=torch.bfloat16, device=w_codes.device)
    return dequant_into(w_codes, w_scales, out, mx, wb)


def dequant_into(w_codes: torch.Tensor, w_scales: torch.Tensor, out: torch.Tensor, mx: bool, wb: int) -> torch.Tensor:
    """`_dequant_impl` written into `out`, bf16 (N, K) with unit column stride (e.g. a row block of a
    larger scratch matrix); returns out."""
    return dequant_group_into([w_codes], [w_scales], out, mx, wb)


def dequant_group_into(
    w_codes: list[torch.Tensor], w_scales: list[torch.Tensor], out: torch.Tensor, mx: bool, wb: int
) -> torch.Tensor:
    """Weights g = 0, 1, … dequantized side by side into `out`, bf16 (Σ N_g, K): weight g's rows
    follow weight g-1's (the grouped GEMM's scratch matrix). One launch for up to 3 weights of one
    layout whose row counts (all but the last) are multiples of the launch's row block; otherwise
    one launch each. Returns out."""
    n, k = out.shape
    sizes = [c.shape[0] for c in w_codes]
    if sum(sizes) != n:
        raise ValueError(f"the weights' rows {sizes} do not fill the output's {n}")
    one = (
        len(w_codes) <= 3
        and all(size % _BLOCK_N == 0 for size in sizes[:-1])
        and len({(c.shape[1], c.stride(0), s.shape[1], s.stride(0)) for c, s in zip(w_codes, w_scales)}) == 1
    )
    if not one:
        row = 0
        for codes, scales in zip(w_codes, w_scales):
            dequant_group_into([codes], [scales], out[row : row + codes.shape[0]], mx, wb)
            row += codes.shape[0]
        return out
    if n == 0 or k == 0:
        return out
    c0, s0 = w_codes[0], w_scales[0]
    c1, s1 = (w_codes[1], w_scales[1]) if len(w_codes) > 1 else (c0, s0)
    c2, s2 = (w_codes[2], w_scales[2]) if len(w_codes) > 2 else (c0, s0)
    _dequant_kernel[(cdiv(n, _BLOCK_N), cdiv(k, _BLOCK_K))](
        c0,
        s0,
        out,
        n,
        k,
        c0.shape[1],
        s0.shape[1],
        c0.stride(0),
        s0.stride(0),
        out.stride(0),
        c1,
        s1,
        c2,
        s2,
        sizes[0],
        sizes[1] if len(sizes) > 1 else 0,
        MX=mx,
        WB=wb,
        BLOCK_N=_BLOCK_N,
        BLOCK_K=_BLOCK_K,
        GROUPS=len(w_codes),
        num_warps=4,
    )
    return out


_dequant_op = torch.library.custom_op("sharq::dequantize_fp4_bf16", mutates_args=())(_dequant_impl)


@_dequant_op.register_fake
def _(w_codes, w_scales, k, mx, wb):
    return w_codes.new_empty(w_codes.shape[0], k, dtype=torch.bfloat16)


def dequantize_fp4_bf16(weight: QuantizedTensor) -> torch.Tensor:
    """bf16 (N, K) deq(W) in the scaled domain (s_w not applied) of a 2-D NVFP4-16/32 or MXFP4-32
    weight; equal to `weight.dequantize(apply_global_scale=False)` cast to bf16, exactly."""
    if not gemm_supports(weight):
        raise ValueError(
            f"dequantize_fp4_bf16 reads 2-D NVFP4-16/32 or MXFP4-32 weights, got "
            f"{weight.format.value}-{weight.block} of shape {weight.shape}"
        )
    op = _dequant_impl if direct_call_ok(weight.codes) else torch.ops.sharq.dequantize_fp4_bf16
    return op(weight.codes, weight.scales, weight.shape[1], weight.format is Format.MXFP4, weight.block)
