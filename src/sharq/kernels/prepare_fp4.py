"""Fused SharQ activation preparation in Triton — twin of `sparse.decompose.prepare_activation`.

Bit-exact with the reference for NVFP4 (16/32 blocks) and MXFP4, every mask (none, pair4of8, N:M
with M in {4, 8, 16}) and residual mode (none, quantized, naive, with an optional residual mask).
HiF4 stays on the reference.

A 2-D grid of programs, BLOCK_M rows × one BLOCK_K chunk each (BLOCK_K a multiple of 32, so every
block, group and pair lies inside one chunk; chunks are independent once s is known, so a single
decode row is spread over K/BLOCK_K programs). Per chunk, in registers:

  xs = div_rn(x, s)          s = max(div_rn(amax, 2688), 1e-9): the NVFP4 second-level scale of
                             the row (per token) or tensor, from an amax kernel run first (one
                             pass per row, or a grid-wide atomic max: a max is exact in any order)
  b  = xs ⊙ mask(xs)         ranks by comparison: ties to the lower index, NaN/±Inf the largest
  B  = Q(b), blocks of BB    E4M3 (NVFP4) or E8M0 (MXFP4) scale, E2M1 codes
  r  = xs − deq(B)  or  xs − b,  then r ⊙ mask(r) when asked
  R  = Q(r), blocks of RB

and it stores the packed codes (two per byte, low nibble first) and scale bits of B and R, plus,
optionally, the FP32 sum deq(B) + deq(R) (the scaled-domain operand of the one-GEMM linear).

Every rounding is spelled out with exact FP32 operations: divisions through `div_rn` (Triton's
`/` on fp32 is the approximate `div.full.f32`), round-half-even by floor and parity (the values
rounded are below 16), E4M3 / E8M0 bit patterns from the FP32 exponent field. Kernels are compiled
without FMA contraction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format, Granularity, Operand, Residual, SharqConfig
from ..formats.blocks import padded_length
from ..formats.nvfp4 import GLOBAL_SCALE_DIVISOR, GLOBAL_SCALE_FLOOR
from ..formats.quantized import QuantizedTensor
from ..sparse.decompose import PreparedActivation
from . import cdiv, next_pow2, supports
from .direct import direct_call_ok
from .gemv_nvfp4 import GEMV_AUTO_MAX_M, GEMV_MAX_M, e2m1_doubled, gemv_padded
from .pdl import pdl_enabled, wait_then_release
from .sources import (
    SourceSpec,
    kernel_x,
    launch_stats,
    rows_inv_rms,
    source_chunk,
    source_kernel_args,
    source_outputs,
    source_rows_amax,
)
from .sources import round_bf16 as _round_bf16  # the name the kernel, prepare_split and the tests use

__all__ = ["prepare_activation_triton", "prepare_source_triton", "supports"]

_MASK_NONE, _MASK_PAIRS, _MASK_NM = 0, 1, 2
_S_DIVISOR = tl.constexpr(float(GLOBAL_SCALE_DIVISOR))  # SPEC §3 constants, seen by the kernels
_S_FLOOR = tl.constexpr(GLOBAL_SCALE_FLOOR)
_RES_NONE, _RES_QUANTIZED, _RES_NAIVE = 0, 1, 2


# --- exact scalar helpers ----------------------------------------------------------------------
@triton.jit
def _div_rn(a, b):
    return tl.math.div_rn(a, b)


@triton.jit
def _rint_small(y):
    """Round half to even of 0 <= y < 2^22 (exact: floor and the parity of the floor)."""
    f = tl.floor(y)
    d = y - f
    odd = (f.to(tl.int32) & 1) == 1
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _pow2(e):
    """2^e as FP32 for integer tensors -126 <= e <= 127."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _exponent(v):
    """floor(log2 v) for normal positive FP32 v; -127 for zero and subnormals (int32)."""
    return ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _isfinite(v):
    return (v == v) & (tl.abs(v) < float("inf"))


@triton.jit
def _round_e4m3(v):
    """v >= 0 (or NaN/Inf) rounded RTNE to E4M3: subnormals kept, saturating at 448, NaN if non-finite."""
    e = tl.maximum(_exponent(v), -6)
    e = tl.minimum(e, 100)  # only non-finite v exceed it; they become NaN below
    r = _rint_small(v * _pow2(3 - e)) * _pow2(e - 3)  # v / ulp is exact: a power-of-two scaling
    r = tl.minimum(r, 448.0)
    return tl.where(_isfinite(v), r, float("nan"))


@triton.jit
def _e4m3_bits(r):
    """Bit pattern (int32 0..255) of an E4M3-representable FP32 r >= 0; NaN -> 0x7F."""
    e = _exponent(r)
    normal = ((e + 7) << 3) | ((r.to(tl.int32, bitcast=True) >> 20) & 7)
    sub = (r * 512.0).to(tl.int32)  # r = k * 2^-9, k in 0..7
    bits = tl.where(e >= -6, normal, sub)
    return tl.where(r == r, bits, 0x7F)


@triton.jit
def _e2m1_codes(q):
    """FP32 q (already divided by its scale) -> E2M1 codes (int32 0..15): RTNE, saturating, NaN -> 0."""
    a = tl.abs(q)
    m = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
    m += (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32) + (a > 5.0).to(tl.int32)
    neg = (q < 0) & (m > 0)
    return m | (neg.to(tl.int32) << 3)


@triton.jit
def _e2m1_values(code):
    """E2M1 codes (int32) -> FP32 values in {0, ±0.5, …, ±6}."""
    m = code & 7
    big = _pow2((m >> 1) - 1) * (1.0 + (m & 1).to(tl.float32) * 0.5)  # m >= 2: 2^(e-1) (1 + mant/2)
    mag = tl.where(m < 2, m.to(tl.float32) * 0.5, big)
    return tl.where((code & 8) != 0, -mag, mag)


# --- masks ---------------------------------------------------------------------------------------
@triton.jit
def _keep_top(scores, N: tl.constexpr, G: tl.constexpr):
    """scores (R, G): True for the N largest of each row; equal scores: the lower index first."""
    s_j = scores[:, :, None]
    s_i = scores[:, None, :]
    idx = tl.arange(0, G)
    before = idx[None, None, :] < idx[None, :, None]
    beats = (s_i > s_j) | ((s_i == s_j) & before)
    rank = tl.sum(beats.to(tl.int32), axis=2)
    return rank < N


@triton.jit
def _apply_mask(v, BM: tl.constexpr, BK: tl.constexpr, MASK: tl.constexpr, N: tl.constexpr, M: tl.constexpr):
    """v ⊙ mask(v) for (BM, BK) FP32 v."""
    score = tl.abs(v)
    score = tl.where(score == score, score, float("inf"))  # NaN and ±Inf: the largest, equal
    if MASK == 1:  # pair4of8: per 8, the 2 of 4 pairs with the largest max(|a|, |b|)
        pairs = tl.max(tl.reshape(score, (BM * BK // 8, 4, 2)), axis=2)
        keep_pair = _keep_top(pairs, 2, 4)
        keep = tl.reshape(tl.broadcast_to(keep_pair[:, :, None], (BM * BK // 8, 4, 2)), (BM, BK))
    else:  # N:M
        keep = tl.reshape(_keep_top(tl.reshape(score, (BM * BK // M, M)), N, M), (BM, BK))
    return tl.where(keep, v, 0.0)


# --- block quantization --------------------------------------------------------------------------
@triton.jit
def _quantize(v, BM: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr, MX: tl.constexpr):
    """(codes int32 (BM, BK), scale bits int32 (BM, BK // BLOCK), dequantized FP32 (BM, BK), scales
    FP32 (BM, BK // BLOCK))."""
    blk = tl.reshape(v, (BM, BK // BLOCK, BLOCK))
    amax = tl.max(tl.abs(blk), axis=2)
    has_nan = tl.max((blk != blk).to(tl.int32), axis=2) > 0
    amax = tl.where(has_nan, float("nan"), amax)  # tl.max drops NaN; the reference keeps it
    if MX:  # E8M0: 2^(floor(log2 amax) - 2), exponent clamped to [-127, 127]
        e = tl.where(amax > 0, _exponent(amax) - 2, -127)
        e = tl.minimum(tl.maximum(e, -127), 127)
        bits = tl.where(_isfinite(amax), e + 127, 255)
        scale = tl.where(bits == 0, 2.0**-127, _pow2(tl.maximum(bits, 1) - 127))
        scale = tl.where(bits == 255, float("nan"), scale)
        codes = _e2m1_codes(_div_rn(blk, scale[:, :, None]))
    else:  # NVFP4: E4M3(amax / 6)
        scale = _round_e4m3(_div_rn(amax, 6.0))
        bits = _e4m3_bits(scale)
        divisor = tl.where(scale == 0.0, 1.0, scale)
        codes = _e2m1_codes(_div_rn(blk, divisor[:, :, None]))
        codes = tl.where((scale == 0.0)[:, :, None], 0, codes)
    deq = _e2m1_values(codes) * scale[:, :, None]
    return tl.reshape(codes, (BM, BK)), bits, tl.reshape(deq, (BM, BK)), scale


@triton.jit
def _store_codes(ptr, codes, rows, row_ok, k0, stride, width, BM: tl.constexpr, BK: tl.constexpr):
    lo, hi = tl.split(tl.reshape(codes, (BM, BK // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    cols = k0 // 2 + tl.arange(0, BK // 2)
    tl.store(ptr + rows[:, None] * stride + cols[None, :], packed, mask=row_ok[:, None] & (cols[None, :] < width))


@triton.jit
def _store_scales(ptr, bits, rows, row_ok, k0, stride, width, BM: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr):
    cols = k0 // BLOCK + tl.arange(0, BK // BLOCK)
    tl.store(
        ptr + rows[:, None] * stride + cols[None, :], bits.to(tl.uint8), mask=row_ok[:, None] & (cols[None, :] < width)
    )


# --- second-level scale (NVFP4): amax per row ("token") or over the tensor ("tensor") -------------
@triton.jit
def _amax_kernel(x_ptr, out_ptr, M, K, stride_x, PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """|x| maxima as int32 FP32 bit patterns (non-negative floats order as their bits; NaN, kept by
    the reference's amax, orders above +Inf). PER_ROW: one program per BLOCK_M rows walks K and
    stores; else every (rows, chunk) tile folds into out[0] (zeroed) with an atomic max."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    best = tl.zeros((BLOCK_M,), dtype=tl.int32)
    if PER_ROW:
        start, step = 0, BLOCK_K
    else:
        start, step = tl.program_id(1) * BLOCK_K, tl.num_programs(1) * BLOCK_K
    for k0 in range(start, K, step):
        cols = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols[None, :] < K)
        a = tl.abs(tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32))
        best = tl.maximum(best, tl.max(a.to(tl.int32, bitcast=True), axis=1))
    if PER_ROW:
        tl.store(out_ptr + rows, best, mask=row_ok)
    else:
        tl.atomic_max(out_ptr, tl.max(best, axis=0))


@triton.jit
def _rows_amax(x_ptr, rows, row_ok, K, stride_x, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """max |x| of each row (BLOCK_M,) as int32 FP32 bit patterns, the amax kernel's order."""
    best = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(0, K, CHUNK):
        cols = k0 + tl.arange(0, CHUNK)
        a = tl.abs(
            tl.load(
                x_ptr + rows[:, None] * stride_x + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < K), other=0.0
            ).to(tl.float32)
        )
        best = tl.maximum(best, tl.max(a.to(tl.int32, bitcast=True), axis=1))
    return best


@triton.jit
def _global_scale(amax):
    """s = max(amax / 2688, 1e-9), correctly rounded, NaN kept (nvfp4_global_scale's numerics)."""
    s = tl.maximum(_div_rn(amax, _S_DIVISOR), _S_FLOOR)
    return tl.where(amax == amax, s, amax)


@triton.jit
def _prepare_kernel(
    x_ptr,
    amax_ptr,
    s_ptr,
    b_codes,
    b_scales,
    r_codes,
    r_scales,
    tb_ptr,
    tr_ptr,
    tbs_ptr,
    trs_ptr,
    M,
    K,
    stride_x,
    stride_s,
    stride_bc,
    stride_bs,
    stride_rc,
    stride_rs,
    stride_t,
    wb_codes,
    wb_scales,
    wr_codes,
    wr_scales,
    MX: tl.constexpr,
    HAS_S: tl.constexpr,
    MASK: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_M: tl.constexpr,
    RESIDUAL: tl.constexpr,
    RMASK: tl.constexpr,
    RMASK_N: tl.constexpr,
    RMASK_M: tl.constexpr,
    BB: tl.constexpr,
    RB: tl.constexpr,
    WRITE_TERMS: tl.constexpr,
    KP: tl.constexpr,
    KG,
    AMAX_INLINE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
    x2_ptr,
    w_ptr,
    inv_ptr,
    y_ptr,
    h_ptr,
    stride_x2,
    stride_y,
    stride_h,
    eps,
    SOURCE: tl.constexpr,
    ADD: tl.constexpr,
    VARIANT: tl.constexpr,
    DT: tl.constexpr,
    DTY: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_H: tl.constexpr,
    INV_INLINE: tl.constexpr,
    NORM_W: tl.constexpr,
    NORM_LOG2W: tl.constexpr,
):
    if PDL:  # launched as a dependent (pdl.py): wait for x, then let the GEMV's programs start
        wait_then_release()
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    # SOURCE (sources.py): 0 quantizes x, 1 the RMSNorm of x [+ x2], 2 act(x) · x2; the norm's 1/rms
    # per row is computed here (INV_INLINE: this program reads its rows whole) or by the stats kernel
    if SOURCE == 1:
        if INV_INLINE:
            inv = rows_inv_rms(
                x_ptr, x2_ptr, rows, row_ok, K, stride_x, stride_x2, eps, ADD, DT, BLOCK_M, NORM_W, NORM_LOG2W
            )
        else:
            inv = tl.load(inv_ptr + rows, mask=row_ok, other=1.0)
    else:
        inv = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if HAS_S:  # s from the amax bits (stride_s 0: one for the tensor); the first chunk's programs store it
        if AMAX_INLINE != 0:  # a short batch: every program reads its rows whole (1: per row, 2: all M
            # rows, which are this program's rows) instead of waiting for the amax kernel
            if SOURCE == 0:
                amax = _rows_amax(x_ptr, rows, row_ok, K, stride_x, BLOCK_M, 1024)
            else:
                amax = source_rows_amax(
                    x_ptr,
                    x2_ptr,
                    w_ptr,
                    inv,
                    rows,
                    row_ok,
                    K,
                    stride_x,
                    stride_x2,
                    SOURCE,
                    ADD,
                    VARIANT,
                    DT,
                    DTY,
                    BLOCK_M,
                    NORM_W,
                )
            if AMAX_INLINE == 2:
                amax = tl.zeros_like(amax) + tl.max(amax, axis=0)
        else:
            amax = tl.load(amax_ptr + rows * stride_s, mask=row_ok, other=0)
        s = _global_scale(amax.to(tl.float32, bitcast=True))
        if tl.program_id(1) == 0:
            tl.store(s_ptr + rows * stride_s, s, mask=row_ok & ((rows == 0) | (rows * stride_s != 0)))
    else:
        s = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    # the scale s is known beforehand, so chunks along K are independent: one program per chunk
    for k0 in range(tl.program_id(1) * BLOCK_K, KP, tl.num_programs(1) * BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols[None, :] < K)
        x = source_chunk(
            x_ptr,
            x2_ptr,
            w_ptr,
            y_ptr,
            h_ptr,
            inv,
            rows,
            row_ok,
            cols,
            K,
            stride_x,
            stride_x2,
            stride_y,
            stride_h,
            SOURCE,
            ADD,
            VARIANT,
            DT,
            DTY,
            WRITE_Y,
            WRITE_H,
        )
        if HAS_S:
            xs = _div_rn(x, s[:, None])
        else:
            xs = x
        if MASK != 0:
            b = _apply_mask(xs, BLOCK_M, BLOCK_K, MASK, MASK_N, MASK_M)
        else:
            b = xs
        codes, bits, deq_b, scale_b = _quantize(b, BLOCK_M, BLOCK_K, BB, MX)
        _store_codes(b_codes, codes, rows, row_ok, k0, stride_bc, wb_codes, BLOCK_M, BLOCK_K)
        _store_scales(b_scales, bits, rows, row_ok, k0, stride_bs, wb_scales, BLOCK_M, BLOCK_K, BB)
        total = deq_b
        if WRITE_TERMS == 1:  # exact in bf16: an E2M1 value times its block scale
            tl.store(tb_ptr + rows[:, None] * stride_t + cols[None, :], deq_b.to(tl.bfloat16), mask=ok)
        if WRITE_TERMS == 3:  # the decode GEMV's operand (gemv_nvfp4): int8 2·E2M1, FP32 scale per 16
            _store_gemv_operand(tb_ptr, tbs_ptr, codes, scale_b, rows, row_ok, k0, stride_t, KG, BLOCK_M, BLOCK_K, BB)
        if RESIDUAL != 0:
            if RESIDUAL == 1:
                r = xs - deq_b
            else:
                r = xs - b
            if RMASK != 0:
                r = _apply_mask(r, BLOCK_M, BLOCK_K, RMASK, RMASK_N, RMASK_M)
            r_c, r_bits, deq_r, scale_r = _quantize(r, BLOCK_M, BLOCK_K, RB, MX)
            _store_codes(r_codes, r_c, rows, row_ok, k0, stride_rc, wr_codes, BLOCK_M, BLOCK_K)
            _store_scales(r_scales, r_bits, rows, row_ok, k0, stride_rs, wr_scales, BLOCK_M, BLOCK_K, RB)
            total = deq_b + deq_r
            if WRITE_TERMS == 1:
                tl.store(tr_ptr + rows[:, None] * stride_t + cols[None, :], deq_r.to(tl.bfloat16), mask=ok)
            if WRITE_TERMS == 3:
                _store_gemv_operand(tr_ptr, trs_ptr, r_c, scale_r, rows, row_ok, k0, stride_t, KG, BLOCK_M, BLOCK_K, RB)
        if WRITE_TERMS == 2:  # one term: the FP32 sum rounded to bf16 (operand="bf16-sum")
            tl.store(tb_ptr + rows[:, None] * stride_t + cols[None, :], _round_bf16(total).to(tl.bfloat16), mask=ok)


@triton.jit
def _store_gemv_operand(
    c_ptr, s_ptr, codes, scale, rows, row_ok, k0, stride, KG, BM: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr
):
    """codes as int8 2·E2M1 values (M, KG) and the block scales repeated per 16 positions, FP32
    (M, KG / 16): the decode GEMV's operand (`gemv_nvfp4.gemv_operand`)."""
    val = e2m1_doubled(codes)
    cols = k0 + tl.arange(0, BK)
    at = ((cols // 8) % 2) * (KG // 2) + (cols // 16) * 8 + cols % 8  # two halves (gemv_operand)
    tl.store(c_ptr + rows[:, None] * stride + at[None, :], val.to(tl.int8), mask=row_ok[:, None] & (cols[None, :] < KG))
    s16 = tl.reshape(tl.broadcast_to(scale[:, :, None], (BM, BK // BLOCK, BLOCK // 16)), (BM, BK // 16))
    c16 = k0 // 16 + tl.arange(0, BK // 16)
    tl.store(
        s_ptr + rows[:, None] * (stride // 16) + c16[None, :], s16, mask=row_ok[:, None] & (c16[None, :] < KG // 16)
    )


# --- host side -------------------------------------------------------------------------------------
def _mask_args(spec) -> tuple[int, int, int]:
    if spec is None:
        return _MASK_NONE, 1, 1
    if spec.pairs:
        return _MASK_PAIRS, 2, 8
    if spec.m not in (4, 8, 16):
        raise ValueError(f"the Triton preparation supports N:M masks with M in 4, 8, 16; got {spec.name}")
    return _MASK_NM, spec.n, spec.m


# s: none (MXFP4), one for the tensor, one per row from the row's amax, one per row from a given amax
_SCALE_NONE, _SCALE_TENSOR, _SCALE_TOKEN, _SCALE_GIVEN = 0, 1, 2, 3
AMAX_INLINE_MAX_M = 8  # up to this many rows (and K), the preparation computes the amax itself (one
AMAX_INLINE_MAX_K = 8192  # launch); longer rows: every program rereading the row costs more (measured)


# the GEMM operands: none; bf16 (M, K) rows deq(B) [, deq(R)] or their bf16 sum; or the decode GEMV's
# operand of each term: int8 2·E2M1 codes (M, Kg) and FP32 scales per 16 (M, Kg/16) (kernels/gemv_nvfp4.py)
_TERMS_NONE, _TERMS_SEPARATE, _TERMS_SUMMED, _TERMS_GEMV = 0, 1, 2, 3


def _prepare_outputs(x: torch.Tensor, scale: int, bb: int, rb: int, has_r: bool, terms: int):
    m, k = x.shape
    kp_b, kp_r = padded_length(k, bb), padded_length(k, rb)
    u8 = dict(dtype=torch.uint8, device=x.device)
    none = torch.empty(0, **u8)
    return (
        torch.empty(m if scale in (_SCALE_TOKEN, _SCALE_GIVEN) else 1, dtype=torch.float32, device=x.device),
        torch.empty(m, kp_b // 2, **u8),
        torch.empty(m, kp_b // bb, **u8),
        torch.empty(m, kp_r // 2, **u8) if has_r else none.clone(),
        torch.empty(m, kp_r // rb, **u8) if has_r else none.clone(),
        _term(x, terms) if terms else none.clone(),
        _term(x, terms) if terms in (_TERMS_SEPARATE, _TERMS_GEMV) and has_r else none.clone(),
        _term_scales(x) if terms == _TERMS_GEMV else none.float(),
        _term_scales(x) if terms == _TERMS_GEMV and has_r else none.float(),
    )


def _term(x: torch.Tensor, terms: int) -> torch.Tensor:
    m, k = x.shape
    if terms == _TERMS_GEMV:
        return torch.empty(m, gemv_padded(k), dtype=torch.int8, device=x.device)
    return torch.empty(m, k, dtype=torch.bfloat16, device=x.device)


def _term_scales(x: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    return torch.empty(m, gemv_padded(k) // 16, dtype=torch.float32, device=x.device)


def _prepare_impl(
    x: torch.Tensor,
    scale: int,
    mx: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    terms: int,
    block_m: int,
    block_k: int,
    num_warps: int,
    row_amax: torch.Tensor | None = None,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """The fused preparation as a torch op (torch.compile, CUDA graphs): x (M, K) contiguous;
    scale: 0 none (MXFP4), 1 one NVFP4 scale for the tensor, 2 one per row, 3 one per row from
    `row_amax` (int32 (M,): FP32 bit patterns of each row's amax, as the amax kernel writes them; a
    MoE layer gives every row its expert's amax). Returns s (FP32 (1,) or (M,); 1 without a scale),
    B codes/scales, R codes/scales, and the GEMM operands:
    terms 1: bf16 deq(B), bf16 deq(R); terms 2: bf16(deq(B) + deq(R)) alone; terms 3: the decode
    GEMV's int8 codes of B and R, then their FP32 scales per 16 (`gemv_nvfp4`). The outputs not
    asked for (no residual, no terms) are empty. Kernels: the amax (per
    row: one pass; per tensor: a grid-wide atomic max over a zeroed word), then the preparation;
    for a short batch (M <= block_m, e.g. decode) the preparation's programs compute the amax
    themselves: one launch. block_m, block_k, num_warps: 0 = chosen by shape (`_prep_tiles`)."""
    return _launch(
        x,
        None,
        scale,
        mx,
        mask,
        mask_n,
        mask_m,
        residual,
        rmask,
        rmask_n,
        rmask_m,
        bb,
        rb,
        terms,
        block_m,
        block_k,
        num_warps,
        row_amax,
    )[:9]


def _prepare_source_impl(
    x: torch.Tensor,
    x2: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    kind: int,
    add: bool,
    variant: int,
    dty: int,
    write_y: bool,
    write_h: bool,
    stats: int,
    scale: int,
    mx: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    terms: int,
    block_m: int,
    block_k: int,
    num_warps: int,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """`_prepare_impl` of the activation a source computes (`sources.SourceSpec`: x2 … stats): x (M, K)
    is the norm's input or the gate. Returns `_prepare_impl`'s outputs, then y and h (M, K) where
    stored (`write_y`, `write_h`), else empty. The row statistics (1/rms, amax) come from the
    preparation's own programs for a short batch (the rule of the amax: M <= block_m, K <= 8192) or
    from `sources.source_stats_kernel` first (`stats` 1 / 0 force either; 1 needs all M rows in one
    program at tensor granularity)."""
    spec = SourceSpec(x2, w, eps, kind, add, variant, dty, write_y, write_h, stats)
    return _launch(
        x,
        spec,
        scale,
        mx,
        mask,
        mask_n,
        mask_m,
        residual,
        rmask,
        rmask_n,
        rmask_m,
        bb,
        rb,
        terms,
        block_m,
        block_k,
        num_warps,
    )


def _launch(
    x: torch.Tensor,
    spec: SourceSpec | None,
    scale: int,
    mx: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    terms: int,
    block_m: int,
    block_k: int,
    num_warps: int,
    row_amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Allocate and launch: `_prepare_impl`'s nine outputs, then the source's y and h."""
    has_r = residual != _RES_NONE
    outs = _prepare_outputs(x, scale, bb, rb, has_r, terms)
    y, h = source_outputs(x, spec) if spec is not None else (x.new_empty(0), x.new_empty(0))
    s_out, b_codes, b_scales, r_codes, r_scales, t_b, t_r, t_bs, t_rs = outs
    m, k = x.shape
    if scale == _SCALE_NONE:
        s_out.fill_(1.0)
    if m == 0:
        if scale == _SCALE_TENSOR:
            s_out.fill_(GLOBAL_SCALE_FLOOR)  # amax of nothing is 0: the floor
        return (*outs, y, h)
    auto_m, auto_k, auto_w = _prep_tiles(m, k)
    block_m, block_k, num_warps = block_m or auto_m, block_k or auto_k, num_warps or auto_w
    inline_ok = _short_batch(m, k, block_m)
    if spec is not None:
        inline_ok = _source_stats_inline(spec.stats, inline_ok, m <= block_m or scale != _SCALE_TENSOR)
    inline, amax, inv = 0, s_out, None  # amax, inv: pointers the kernel reads (unused ones: any tensor)
    if scale == _SCALE_GIVEN:
        if spec is not None:
            raise ValueError("a given amax (row_amax) does not combine with a source")
        if row_amax is None or row_amax.dtype != torch.int32 or tuple(row_amax.shape) != (m,):
            raise ValueError(f"a given amax must be int32 of shape ({m},)")
        amax = row_amax
    elif inline_ok:
        inline = 0 if scale == _SCALE_NONE else (1 if scale == _SCALE_TOKEN else 2)
    elif spec is not None:
        inv, amax_bits = launch_stats(x, spec, 0 if scale == _SCALE_NONE else (1 if scale == _SCALE_TOKEN else 2))
        amax = amax_bits if amax_bits is not None else s_out
    elif scale != _SCALE_NONE:
        per_row = scale == _SCALE_TOKEN
        amax = (
            torch.empty(m, dtype=torch.int32, device=x.device)
            if per_row
            else torch.zeros(1, dtype=torch.int32, device=x.device)
        )
        bm = min(8, next_pow2(m))
        bk = 1024 if per_row else 512
        amax_grid = (cdiv(m, bm),) if per_row else (cdiv(m, bm), min(cdiv(k, bk), 65535))
        _amax_kernel[amax_grid](x, amax, m, k, x.stride(0), PER_ROW=per_row, BLOCK_M=bm, BLOCK_K=bk)
    kp_b, kp_r = padded_length(k, bb), padded_length(k, rb)
    gemv = terms == _TERMS_GEMV
    if gemv and (mx or bb % 16 or rb % 16):
        raise ValueError(
            f"the GEMV operand is for NVFP4 with 16-multiple blocks, got {'MXFP4' if mx else 'NVFP4'}, blocks {bb}/{rb}"
        )
    kg = gemv_padded(k) if gemv else 0
    kp = padded_length(max(kp_b, kp_r, kg), block_k)  # GEMV operand: the zero padding is written too
    grid = (cdiv(m, block_m), min(kp // block_k, 65535))
    spare = b_codes  # a valid pointer for the outputs the kernel does not write
    pdl = pdl_enabled(x.device, default=gemv and m <= GEMV_MAX_M)  # measured: faster for 1-2 rows, slower at 8
    _prepare_kernel[grid](
        kernel_x(x, spec),
        amax,
        s_out,
        b_codes,
        b_scales,
        r_codes if has_r else spare,
        r_scales if has_r else spare,
        t_b if terms else spare,
        t_r if terms in (_TERMS_SEPARATE, _TERMS_GEMV) and has_r else spare,
        t_bs if gemv else spare,
        t_rs if gemv and has_r else spare,
        m,
        k,
        x.stride(0),
        1 if scale in (_SCALE_TOKEN, _SCALE_GIVEN) else 0,
        b_codes.stride(0),
        b_scales.stride(0),
        r_codes.stride(0) if has_r else 0,
        r_scales.stride(0) if has_r else 0,
        t_b.stride(0) if terms else 0,
        kp_b // 2,
        kp_b // bb,
        kp_r // 2,
        kp_r // rb,
        MX=mx,
        HAS_S=scale != _SCALE_NONE,
        MASK=mask,
        MASK_N=mask_n,
        MASK_M=mask_m,
        RESIDUAL=residual,
        RMASK=rmask,
        RMASK_N=rmask_n,
        RMASK_M=rmask_m,
        BB=bb,
        RB=rb,
        WRITE_TERMS=terms,
        KP=kp,
        KG=kg,
        AMAX_INLINE=inline,
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        PDL=pdl,
        num_warps=num_warps,
        enable_fp_fusion=False,
        **({"launch_pdl": True} if pdl else {}),
        **source_kernel_args(x, spec, y, h, inv, inline_ok),
    )
    return (*outs, y, h)


def _short_batch(m: int, k: int, block_m: int) -> bool:
    """A batch whose programs compute the row statistics (amax; a source's 1/rms) themselves: all its
    rows in one program, K up to AMAX_INLINE_MAX_K."""
    return m <= min(block_m, AMAX_INLINE_MAX_M) and k <= AMAX_INLINE_MAX_K


def source_launches(m: int, k: int, config: SharqConfig, *, norm: bool) -> tuple[bool, int]:
    """(inline, launches) of this preparation with a source (`_prepare_source_impl`, default tiles)
    for m rows of K: inline when a short batch's programs compute the statistics (or none are
    needed), else the stats kernel first (and a zeroed amax word for one scale over the tensor)."""
    if _short_batch(m, k, _prep_tiles(m, k)[0]):
        return True, 1
    if not config.has_global_scale:
        return (False, 2) if norm else (True, 1)
    return False, 3 if config.granularity is Granularity.TENSOR and m > 1 else 2


def _source_stats_inline(stats: int, rule: bool, possible: bool) -> bool:
    """Whether the preparation's programs compute a source's row statistics themselves: `rule` (the
    launcher's choice) for stats -1, never for 0, for 1 where `possible` (else an error)."""
    if stats == 1 and not possible:
        raise ValueError("stats=1 (in the preparation) needs every row of a 'tensor' call in one program")
    return rule if stats == -1 else bool(stats)


_prepare_op = torch.library.custom_op("sharq::prepare_fp4", mutates_args=())(_prepare_impl)


def _prep_tiles(m: int, k: int) -> tuple[int, int, int]:
    """(block_m, block_k, num_warps) of the preparation. A long batch: 8 x 128 tiles (tune_prefill.py,
    prefill-tuning-h100.json: at M = 4096 0.89-2.0x the speed of 8 x 64 in a noisy sweep, faster in
    12 of 16 cases). A short batch (decode), from tune_prep_small_m.py (prep-small-m-tuning*-h100.json,
    Llama-3.1-8B K): its programs compute the amax themselves where K allows, on all its rows in
    64-wide chunks (M = 8, K = 4096: 5.5 us a call against 8.5 for the amax kernel + 8-row
    preparation before); else 2-row tiles (M = 8, K = 14336: 7.4 against 8.8 us; M = 16, K = 4096:
    6.9 against 9.1 us)."""
    if m <= AMAX_INLINE_MAX_M and k <= AMAX_INLINE_MAX_K:
        return next_pow2(m), 64, 2 if m <= 2 else 4
    if m <= 16:
        return min(2, next_pow2(m)), 64 if m <= 8 else 128, 2 if m <= 8 else 4
    return 8, 128, 4


@_prepare_op.register_fake
def _(
    x,
    scale,
    mx,
    mask,
    mask_n,
    mask_m,
    residual,
    rmask,
    rmask_n,
    rmask_m,
    bb,
    rb,
    terms,
    block_m,
    block_k,
    num_warps,
    row_amax=None,
):
    return _prepare_outputs(x, scale, bb, rb, residual != _RES_NONE, terms)


_prepare_source_op = torch.library.custom_op("sharq::prepare_fp4_source", mutates_args=())(_prepare_source_impl)


@_prepare_source_op.register_fake
def _(
    x,
    x2,
    w,
    eps,
    kind,
    add,
    variant,
    dty,
    write_y,
    write_h,
    stats,
    scale,
    mx,
    mask,
    mask_n,
    mask_m,
    residual,
    rmask,
    rmask_n,
    rmask_m,
    bb,
    rb,
    terms,
    block_m,
    block_k,
    num_warps,
):
    spec = SourceSpec(x2, w, eps, kind, add, variant, dty, write_y, write_h, stats)
    return (*_prepare_outputs(x, scale, bb, rb, residual != _RES_NONE, terms), *source_outputs(x, spec))


def prepare_activation_triton(
    x: torch.Tensor,
    config: SharqConfig,
    *,
    with_terms: bool = False,
    terms_layout: str = "rows",
    block_m: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    gemv_rows: int = GEMV_MAX_M,
    row_amax: torch.Tensor | None = None,
) -> PreparedActivation:
    """Prepare x (M, K) like `prepare_activation`, in one Triton kernel.

    with_terms: also fill `PreparedActivation.terms` with the operands of the Triton GEMM: bf16
                (M, K) deq(B) [and deq(R)] (each exact in bf16), or, for operand="bf16-sum", the
                one term bf16(deq(B) + deq(R)).
    terms_layout: "rows" (the terms as above), "gemv" (the decode GEMV's operand: per term int8
                2·E2M1 codes (M, Kg) and FP32 block scales per 16 (M, Kg/16), flat
                (codes_B, scales_B[, codes_R, scales_R]), `gemv_nvfp4.gemv_operand`; NVFP4, exact
                operand, up to `gemv_rows` rows), or "auto" (gemv where it applies and is the faster:
                up to GEMV_AUTO_MAX_M rows).
    gemv_rows:  the most rows a "gemv" layout is written for (default GEMV_MAX_M, the rows one GEMV
                launch serves; a MoE layer's experts GEMV reads more, `kernels.plan.plan_experts`).
    row_amax:   None, or int32 (M,) FP32 bit patterns of the amax each row's s is computed from
                (NVFP4): s = max(amax / 2688, 1e-9) per row, returned as (M, 1). A MoE layer gives
                each expert's rows the amax of all of them, so they get the expert's "tensor" scale.
    """
    if x.dim() != 2:
        raise ValueError(f"prepare_activation_triton expects a 2-D (M, K) activation, got shape {tuple(x.shape)}")
    return _prepare(
        x.contiguous(), config, None, with_terms, terms_layout, block_m, block_k, num_warps, gemv_rows, row_amax
    )[0]


def prepare_source_triton(
    x: torch.Tensor,
    config: SharqConfig,
    source: SourceSpec,
    *,
    terms_layout: str = "rows",
    block_m: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    gemv_rows: int = GEMV_MAX_M,
) -> tuple[PreparedActivation, torch.Tensor | None, torch.Tensor | None]:
    """`prepare_activation_triton(a, config, with_terms=True, ...)` of the activation `a` that
    `source` computes from x (M, K) (the norm's input, or the gate; see `sources.SourceSpec`), in
    the same kernel: returns (prepared, y, h) — y (M, K) the normalized activation and h (M, K) the
    updated residual where the source stores them, else None. Equal bit for bit to the torch
    computation of `a` (`nn.fused_norm.add_rms_norm_reference`, `nn.fused_mlp.act_mul_reference`)
    followed by `prepare_activation_triton`."""
    if x.dim() != 2:
        raise ValueError(f"prepare_source_triton expects a 2-D (M, K) input, got shape {tuple(x.shape)}")
    return _prepare(x, config, source, True, terms_layout, block_m, block_k, num_warps, gemv_rows, None)


def _prepare(
    x: torch.Tensor,
    config: SharqConfig,
    source: SourceSpec | None,
    with_terms: bool,
    terms_layout: str,
    block_m: int | None,
    block_k: int | None,
    num_warps: int | None,
    gemv_rows: int,
    row_amax: torch.Tensor | None,
) -> tuple[PreparedActivation, torch.Tensor | None, torch.Tensor | None]:
    if not supports(config):
        raise ValueError(f"the Triton preparation does not implement {config.format.value} with mask {config.mask}")
    if block_k is not None and block_k % 32:
        raise ValueError(f"block_k must be a multiple of 32, got {block_k}")
    m, k = x.shape
    mx = config.format is Format.MXFP4
    if row_amax is not None:
        if not config.has_global_scale:
            raise ValueError(f"row_amax sets the NVFP4 second-level scale; {config.format.value} has none")
        scale = _SCALE_GIVEN
    elif not config.has_global_scale:
        scale = _SCALE_NONE
    else:
        scale = _SCALE_TOKEN if config.granularity is Granularity.TOKEN else _SCALE_TENSOR
    bb = config.backbone_block
    has_r = config.residual is not Residual.NONE
    summed = config.operand.for_rows(m) is Operand.BF16_SUM
    rb = config.residual_block if has_r else bb
    mask, mask_n, mask_m = _mask_args(config.mask_spec)
    rmask, rmask_n, rmask_m = _mask_args(config.residual_mask_spec)
    residual = {Residual.NONE: _RES_NONE, Residual.QUANTIZED: _RES_QUANTIZED, Residual.NAIVE: _RES_NAIVE}[
        config.residual
    ]
    if terms_layout not in ("rows", "gemv", "auto"):
        raise ValueError(f"terms_layout must be 'rows', 'gemv' or 'auto', got {terms_layout!r}")
    gemv_ok = 1 <= m <= gemv_rows and config.format is Format.NVFP4 and not summed and bb % 16 == 0 and rb % 16 == 0
    if terms_layout == "gemv" and not gemv_ok:
        raise ValueError(
            f"the GEMV operand is for 1 to {gemv_rows} rows of NVFP4 with the exact operand, got {m} "
            f"rows of {config.format.value}, operand {config.operand.value}"
        )
    gemv = terms_layout == "gemv" or (terms_layout == "auto" and gemv_ok and m <= GEMV_AUTO_MAX_M)
    terms = _TERMS_NONE
    if with_terms:
        terms = _TERMS_GEMV if gemv else (_TERMS_SUMMED if summed else _TERMS_SEPARATE)
    args = (
        scale,
        mx,
        mask,
        mask_n,
        mask_m,
        residual,
        rmask,
        rmask_n,
        rmask_m,
        bb,
        rb,
        terms,
        block_m or 0,
        block_k or 0,
        num_warps or 0,
    )
    y = h = None
    if source is None:
        op = _prepare_impl if direct_call_ok(x) else torch.ops.sharq.prepare_fp4
        s, b_codes, b_scales, r_codes, r_scales, t_b, t_r, t_bs, t_rs = op(x, *args, row_amax)
    else:
        op = _prepare_source_impl if direct_call_ok(x, *source[:2]) else torch.ops.sharq.prepare_fp4_source
        s, b_codes, b_scales, r_codes, r_scales, t_b, t_r, t_bs, t_rs, y, h = op(x, *source, *args)
        y, h = (y if source.write_y else None), (h if source.write_h else None)
    s = s.reshape(m, 1) if scale in (_SCALE_TOKEN, _SCALE_GIVEN) else s.reshape(())
    gs = s if config.has_global_scale else None

    def qt(codes, scales, block):
        return QuantizedTensor(
            format=config.format, codes=codes, scales=scales, shape=(m, k), block=block, global_scale=gs
        )

    backbone = qt(b_codes, b_scales, bb)
    residual_qt = qt(r_codes, r_scales, rb) if has_r else None
    layout = None
    if not with_terms:
        terms = None
    elif gemv:
        terms, layout = ((t_b, t_bs, t_r, t_rs) if has_r else (t_b, t_bs)), "gemv"
    else:
        terms, layout = ((t_b, t_r) if has_r and not summed else (t_b,)), "rows"
    return PreparedActivation(backbone, residual_qt, s, terms=terms, layout=layout), y, h
