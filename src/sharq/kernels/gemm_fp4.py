"""FP4-weight GEMM in Triton: y = s_x · s_w · Σ_t (T_t · deq(Wq)ᵀ) + bias, on bf16 tensor cores.

Operands
  terms   1 or 2 bf16 (M, K) activation terms in the scaled domain, as the Triton preparation
          writes them: deq(B) and deq(R). Each is exact in bf16 (an E2M1 value times an E4M3 or
          E8M0 scale has at most 6 significant bits); their sum is not, so the two terms are two
          MMAs on one weight tile that is loaded and dequantized once (SPEC §7, FP32 accumulate).
  weight  the packed E2M1 payload (N, Kp/2) uint8, element 2i in the low nibble, and its block
          scales (N, Kp/WB) uint8: E4M3 (NVFP4, WB 16 or 32, one FP32 s_w) or E8M0 (MXFP4, WB 32).
  s_x     FP32, one per tensor or one per row (M, 1); s_w FP32 () (NVFP4) — applied in the
          epilogue as (s_x · s_w) · acc, then + bias, then cast: the reference's order.

The weight tile is dequantized in registers with exact bit operations: a code's 3 magnitude bits
placed in a float16's exponent/mantissa give value · 2^-14 (normal and subnormal codes alike),
an E4M3 scale's 7 bits likewise give scale · 2^-8; their FP32 product times 2^22 is exact, and so
is the cast to bf16. Nothing is rounded before the MMA.

One kernel, tiled by M (`_tiles`, from measured sweeps): small M (M ≤ 16: BLOCK_M 16, narrow N
tiles so every SM streams weights), mid M, and large M (prefill, M ≥ 512: the weight is first
dequantized once into a bf16 scratch matrix by `dequant_fp4.py`, then the loop is a bf16 GEMM;
128×256 tiles, grouped launch order for L2 reuse). M ≤ 8 NVFP4 rows go to `gemv_nvfp4.py` instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor
from .direct import direct_call_ok

__all__ = ["fp4_weight_gemm", "gemm_supports", "operand_dtype"]


def operand_dtype(fmt: Format) -> torch.dtype:
    """The MMA operand type of the activation terms: bf16, which holds every E2M1 × E4M3 and
    E2M1 × E8M0 product exactly. (float16 also holds NVFP4's products, in [2^-10, 2688]; a float16
    NVFP4 variant measured 1.2–2.2× slower on the H100, 2026-11-23, and was dropped.)"""
    return torch.bfloat16


def gemm_supports(weight: QuantizedTensor) -> bool:
    """True when the kernel reads this weight: NVFP4 (16/32 blocks) or MXFP4 (32 blocks), 2-D."""
    return len(weight.shape) == 2 and (
        (weight.format is Format.NVFP4 and weight.block in (16, 32))
        or (weight.format is Format.MXFP4 and weight.block == 32)
    )


@triton.jit
def _weight_tile(wc_ptr, ws_ptr, offs_n, n_ok, k0, stride_wc, stride_ws, KW, KS,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WB: tl.constexpr, MX: tl.constexpr):
    """bf16 (BLOCK_N, BLOCK_K) dequantized weight tile (scaled domain, s_w not applied)."""
    kc = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(wc_ptr + offs_n[:, None] * stride_wc + kc[None, :],
                     mask=n_ok[:, None] & (kc[None, :] < KW), other=0).to(tl.int16)
    codes = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_N, BLOCK_K))  # low nibble first
    mag16 = (((codes & 8) << 12) | ((codes & 7) << 9)).to(tl.float16, bitcast=True)  # e2m1 · 2^-14
    ks = k0 // WB + tl.arange(0, BLOCK_K // WB)
    bits = tl.load(ws_ptr + offs_n[:, None] * stride_ws + ks[None, :],
                   mask=n_ok[:, None] & (ks[None, :] < KS), other=0).to(tl.int32)
    if MX:  # E8M0: 2^(bits - 127); bits 0 is 2^-127 (an FP32 subnormal)
        scale = tl.where(bits == 0, 2.0**-127, ((tl.maximum(bits, 1)) << 23).to(tl.float32, bitcast=True))
        scale = scale * 16384.0
    else:  # E4M3 (finite: weights are checked before quantization): scale · 2^-8 as a float16
        scale = ((bits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 4194304.0
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK_N, BLOCK_K // WB, WB)), (BLOCK_N, BLOCK_K))
    return (mag16.to(tl.float32) * scale).to(tl.bfloat16)


@triton.jit
def _fp4_weight_gemm_kernel(
    a_ptr, r_ptr, wc_ptr, ws_ptr, sx_ptr, sw_ptr, bias_ptr, y_ptr,
    M, N, K, KW, KS, stride_a, stride_r, stride_wc, stride_ws, stride_sx, stride_y,
    TWO: tl.constexpr, MX: tl.constexpr, WB: tl.constexpr, HAS_SW: tl.constexpr, HAS_BIAS: tl.constexpr,
    W_BF16: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * grid_n  # grouped order: GROUP_M row tiles share each weight tile in L2
    first_m = (pid // group) * GROUP_M
    rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % rows_in_group
    pid_n = (pid % group) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a_ok = m_ok[:, None] & (offs_k[None, :] < K)
        if W_BF16:  # wc_ptr: the weight already dequantized, bf16 (N, K) (dequant_fp4.py)
            wt = tl.load(wc_ptr + offs_n[None, :] * stride_wc + offs_k[:, None],
                         mask=n_ok[None, :] & (offs_k[:, None] < K), other=0.0)  # (BLOCK_K, BLOCK_N)
        else:
            w = _weight_tile(wc_ptr, ws_ptr, offs_n, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, MX)
            wt = tl.trans(w)  # (BLOCK_K, BLOCK_N)
        a = tl.load(a_ptr + offs_m[:, None] * stride_a + offs_k[None, :], mask=a_ok, other=0.0)
        if DOT_F32:  # the interpreter multiplies bf16 tiles as raw bits; FP32 holds the same values
            wt = wt.to(tl.float32)
            a = a.to(tl.float32)
        acc = tl.dot(a, wt, acc)
        if TWO:
            r = tl.load(r_ptr + offs_m[:, None] * stride_r + offs_k[None, :], mask=a_ok, other=0.0)
            if DOT_F32:
                r = r.to(tl.float32)
            acc = tl.dot(r, wt, acc)

    sx = tl.load(sx_ptr + offs_m * stride_sx, mask=m_ok, other=1.0)
    if HAS_SW:
        s = sx * tl.load(sw_ptr)
    else:
        s = sx
    y = s[:, None] * acc
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_y + offs_n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


SCRATCH_MIN_M = 512  # from here on, dequantize the weight once into bf16 scratch (prefill-tuning-h100.json:
# at M = 1024 it is 1.15-1.73x faster than dequantizing in the loop on every Llama/Qwen layer; at 256 mixed)


def _tiles(m: int, n: int, k: int) -> dict:
    """Launch tiling by M and layer shape: the best of `benchmarks/tune_gemm.py`'s and
    `benchmarks/tune_prefill.py`'s sweeps on the H100 at Llama-3.1-8B shapes
    (benchmarks/results/gemm-tuning-h100.json, prefill-tuning-h100.json). SCRATCH 1: the weight
    tile is dequantized in the GEMM loop; 2: the weight is dequantized once into a bf16 scratch
    matrix and the loop is a bf16 GEMM (large M)."""
    if m <= 16:  # weight streaming: wide N tiles for wide layers, long K tiles otherwise
        if n >= 16384:
            return dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=1, num_warps=8, num_stages=3, SCRATCH=1)
        if n >= 6144:
            return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=512, GROUP_M=1, num_warps=8, num_stages=4, SCRATCH=1)
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=512 if k <= 4096 else 256, GROUP_M=1, num_warps=4, num_stages=3,
                    SCRATCH=1)
    if m <= 256:
        return dict(BLOCK_M=64 if n >= 6144 else 32, BLOCK_N=128 if n >= 16384 else 64, BLOCK_K=128, GROUP_M=1,
                    num_warps=4, num_stages=4, SCRATCH=1)
    if m < SCRATCH_MIN_M:
        return dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, SCRATCH=1)
    if m < 1024:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4, SCRATCH=2)
    return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, SCRATCH=2)


def fp4_weight_gemm(
    terms: Sequence[torch.Tensor],
    s_x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """y (M, N) = (s_x · s_w) · Σ_t terms[t] · deq(weight)ᵀ + bias, FP32 accumulation, in `out_dtype`.

    terms: 1 or 2 bf16 (M, K) tensors (scaled domain); s_x: FP32 () or (M, 1); weight: NVFP4 or
    MXFP4 (N, K). `tiles` overrides the launch tiling (tests, benchmarks).
    """
    if not gemm_supports(weight):
        raise ValueError(f"the Triton GEMM reads 2-D NVFP4-16/32 or MXFP4-32 weights, got {weight.format.value}-"
                         f"{weight.block} of shape {weight.shape}")
    if not 1 <= len(terms) <= 2:
        raise ValueError(f"fp4_weight_gemm takes 1 or 2 activation terms, got {len(terms)}")
    n, k = weight.shape
    a = terms[0]
    for t in terms:
        if t.dtype != torch.bfloat16 or t.dim() != 2 or t.shape != a.shape or t.shape[1] != k:
            raise ValueError(f"activation terms must be bf16 (M, {k}) tensors of one shape, got "
                             f"{[(tuple(x.shape), x.dtype) for x in terms]}")
        if t.device != weight.device:
            raise ValueError(f"activation on {t.device}, weight on {weight.device}")
    if any(not t.is_contiguous() for t in terms):
        raise ValueError("activation terms must be contiguous")
    m = a.shape[0]
    sx = s_x.reshape(-1).to(torch.float32).contiguous()
    if sx.numel() not in (1, m):
        raise ValueError(f"s_x must hold one scale or one per row ({m}), got shape {tuple(s_x.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    t = tiles or {}
    if t.get("BLOCK_K", weight.block) % weight.block:
        raise ValueError(f"BLOCK_K {t['BLOCK_K']} must be a multiple of the weight block {weight.block}")
    op = _gemm_impl if direct_call_ok(*terms, s_x) else torch.ops.sharq.fp4_weight_gemm
    return op(
        a, terms[1] if len(terms) == 2 else None, weight.codes, weight.scales, sx, weight.global_scale, bias,
        weight.format is Format.MXFP4, weight.block, out_dtype, [t.get(key, 0) for key in _TILE_KEYS])


_TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "SCRATCH")


def _gemm_impl(
    a: torch.Tensor, r: torch.Tensor | None, w_codes: torch.Tensor, w_scales: torch.Tensor, s_x: torch.Tensor,
    s_w: torch.Tensor | None, bias: torch.Tensor | None, mx: bool, wb: int, out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The GEMM as a torch op (torch.compile, CUDA graphs). a, r: bf16 (M, K); w_codes (N, Kp/2),
    w_scales (N, Kp/wb) uint8; s_x FP32 (1,) or (M,); s_w FP32 (1,)-like or None; bias (N,) or
    None. `tiles`: BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, SCRATCH (1: dequantize
    in the loop, 2: into a bf16 scratch matrix first); 0 = chosen by shape."""
    m, k = a.shape
    n = w_codes.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return y
    cfg = _tiles(m, n, k)
    cfg.update({key: v for key, v in zip(_TILE_KEYS, tiles) if v})
    rr = r if r is not None else a
    scratch = cfg.pop("SCRATCH") == 2
    w = w_codes
    if scratch:  # the layer's weight dequantized once, bf16 (N, K); the loop is a bf16 GEMM
        from .dequant_fp4 import _dequant_impl

        w = _dequant_impl(w_codes, w_scales, k, mx, wb)  # inside this op: no second dispatch
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _fp4_weight_gemm_kernel[grid](
        a, rr, w, w_scales, s_x, s_w.reshape(1) if s_w is not None else s_x, bias if bias is not None else s_x, y,
        m, n, k, w_codes.shape[1], w_scales.shape[1], a.stride(0), rr.stride(0),
        w.stride(0), w_scales.stride(0), 0 if s_x.numel() == 1 else 1, y.stride(0),
        TWO=r is not None, MX=mx, WB=wb, HAS_SW=s_w is not None, HAS_BIAS=bias is not None, W_BF16=scratch,
        DOT_F32=os.environ.get("TRITON_INTERPRET") == "1", **cfg,
    )
    return y


_gemm_op = torch.library.custom_op("sharq::fp4_weight_gemm", mutates_args=())(_gemm_impl)


@_gemm_op.register_fake
def _(a, r, w_codes, w_scales, s_x, s_w, bias, mx, wb, out_dtype, tiles):
    return a.new_empty(a.shape[0], w_codes.shape[0], dtype=out_dtype)
