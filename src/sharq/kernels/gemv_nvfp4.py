"""Decode GEMV for NVFP4 weights in Triton (M = 1): y = s_x · s_w · Σ_t (t · deq(Wq)ᵀ) + bias on the
CUDA cores, streaming the packed weight once.

At M = 1 a tensor-core tile is 15/16 padding and the cost is the work per weight between its load
and its multiply. Here every weight costs two shifts, two logic operations and one FMA per term,
with no conversion and no shared-memory round trip:

  decode  the payload is read as int32 words (8 codes; code 2i of a byte in its low nibble). A
          code's 3 magnitude bits moved to FP32 bits 22–24 and its sign to bit 31 are the FP32
          number e(c) · 2^-126, exactly (code 1, 0.5, is the FP32 subnormal 2^-127: the kernel
          runs without flush-to-zero, and every random weight in the tests has such codes).
  terms   the preparation writes each activation term t (deq(B), deq(R)) for this kernel as FP32
          t · 2^64 in a "position-major" layout (`gemv_terms_layout`): the 8 values that meet
          the 8 codes of a word sit in 8 rows, so the loads of a word's terms are contiguous
          vectors in the weight tile's own register layout. e(c) · 2^-126 · t · 2^64 =
          e(c) · t · 2^-62 is exact (products of 2 and 6 significant bits) and a normal FP32
          number for NVFP4 terms (|t| in [2^-10, 2688] or 0).
  blocks  the products of one 16- or 32-wide weight block are summed in FP32, multiplied by the
          block's E4M3 scale times 2^62 (exact) and accumulated in FP32.

Every product is exact and every sum FP32, as SPEC §7 asks; the summation order (block sums
first) differs from the tensor-core GEMM's, within FP32 rounding.

Measured on the H100 (benchmarks/tune_gemv.py, gemv-tuning-h100.json, 2026-11-23): 0.76–1.19 TB/s
of weight stream at Llama-3.1-8B shapes, 1.5–1.9× faster than the tensor-core GEMM at M = 1; at
M = 4 a row loop is 2–3× slower than the tensor-core GEMM, so the GEMV serves M = 1 only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor

__all__ = ["GEMV_PAD", "fp4_weight_gemv", "gemv_supports", "gemv_terms_layout", "gemv_words"]

GEMV_PAD = 2048  # the terms cover whole multiples of this many K positions (the largest BLOCK_K)
TERM_SCALE = 2.0**64


def gemv_supports(weight: QuantizedTensor) -> bool:
    """True when the GEMV reads this weight: 2-D NVFP4 with 16- or 32-wide blocks."""
    return len(weight.shape) == 2 and weight.format is Format.NVFP4 and weight.block in (16, 32)


def gemv_words(k: int) -> int:
    """KWt: the words (8 positions each) per position row of the GEMV terms of a K-long row."""
    return -(-k // GEMV_PAD) * GEMV_PAD // 8


def gemv_terms_layout(t: torch.Tensor) -> torch.Tensor:
    """The GEMV operand of a (1, K) term, built with torch (the tests' reference for the kernel):
    FP32 (1, 8·KWt), out[0, i·KWt + j] = t[0, 8j + i] · 2^64, zero beyond K."""
    m, k = t.shape
    kp = gemv_words(k) * 8
    tp = torch.nn.functional.pad(t.float(), (0, kp - k)) * TERM_SCALE
    return tp.view(m, kp // 8, 8).transpose(1, 2).contiguous().view(m, kp)


@triton.jit
def _codes_fp32(words, i: tl.constexpr):
    """Code i (0..7) of each int32 word as FP32 e(c) · 2^-126, exactly: magnitude bits to 22–24,
    sign bit to 31."""
    if i <= 5:
        mag = (words << (22 - 4 * i)) & 0x01C00000
    else:
        mag = (words >> (4 * i - 22)) & 0x01C00000
    sign = (words << (28 - 4 * i)) & -2147483648
    return (mag | sign).to(tl.float32, bitcast=True)


@triton.jit
def _gemv_nvfp4_kernel(
    a_ptr, r_ptr, wc_ptr, ws_ptr, sx_ptr, sw_ptr, bias_ptr, y_ptr,
    N, KW, KS, KWT, stride_wc, stride_ws,
    TWO: tl.constexpr, WB: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    WPB: tl.constexpr = WB // 8  # words per weight block
    BKS: tl.constexpr = BLOCK_K // WB  # weight blocks per K step
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    jw = tl.arange(0, BKS)[:, None] * WPB + tl.arange(0, WPB)[None, :]  # (BKS, WPB) word offsets
    blk = tl.arange(0, BKS)
    acc = tl.zeros((BLOCK_N, BKS), dtype=tl.float32)
    for k0 in range(0, KWT * 8, BLOCK_K):
        kw = k0 // 8 + jw
        words = tl.load(wc_ptr + offs_n[:, None, None] * stride_wc + kw[None, :, :],
                        mask=n_ok[:, None, None] & (kw[None, :, :] < KW), other=0)  # (BLOCK_N, BKS, WPB)
        kb = k0 // WB + blk
        bits = tl.load(ws_ptr + offs_n[:, None] * stride_ws + kb[None, :],
                       mask=n_ok[:, None] & (kb[None, :] < KS), other=0).to(tl.int32)
        # E4M3 magnitude bits in a float16 are scale · 2^-8; times 2^70: scale · 2^62
        sc = ((bits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 1.1805916207174113e21
        # the terms are read in the weight tile's shape (the same address for every row), which
        # gives them the tile's register layout; the terms are zero-padded to whole K steps
        kw3 = kw[None, :, :] + 0 * offs_n[:, None, None]
        word_sums = tl.zeros((BLOCK_N, BKS, WPB), dtype=tl.float32)
        for i in tl.static_range(8):
            e = _codes_fp32(words, i)
            word_sums += e * tl.load(a_ptr + i * KWT + kw3)
            if TWO:
                word_sums += e * tl.load(r_ptr + i * KWT + kw3)
        acc += tl.sum(word_sums, axis=2) * sc

    y = (tl.load(sx_ptr) * tl.load(sw_ptr)) * tl.sum(acc, axis=1)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def _tiles(n: int, k: int) -> dict:
    """From benchmarks/tune_gemv.py's sweep on the H100 (gemv-tuning-h100.json, Llama-3.1-8B
    shapes): 2048-long K steps; 2 rows a program for wide layers, 4 for narrow ones."""
    if n >= 16384:
        return dict(BLOCK_N=2, BLOCK_K=2048, num_warps=2)
    if n >= 6144:
        return dict(BLOCK_N=2, BLOCK_K=2048, num_warps=4)
    return dict(BLOCK_N=4, BLOCK_K=2048, num_warps=2)


def fp4_weight_gemv(
    terms, s_x: torch.Tensor, weight: QuantizedTensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
    *, tiles: dict | None = None,
) -> torch.Tensor:
    """y (1, N) = s_x · s_w · Σ_t t · deq(weight)ᵀ + bias, in `out_dtype`.

    terms: 1 or 2 FP32 (1, 8·gemv_words(K)) tensors in the GEMV layout (`gemv_terms_layout`, as the
    Triton preparation writes them at M = 1); s_x FP32 () or (1, 1); weight NVFP4-16/32 (N, K).
    """
    if not gemv_supports(weight):
        raise ValueError(f"the Triton GEMV reads 2-D NVFP4-16/32 weights, got {weight.format.value}-{weight.block} "
                         f"of shape {weight.shape}")
    n, k = weight.shape
    width = 8 * gemv_words(k)
    if not 1 <= len(terms) <= 2 or any(t.dtype != torch.float32 or t.shape != (1, width) or not t.is_contiguous()
                                       for t in terms):
        raise ValueError(f"GEMV terms must be 1 or 2 contiguous FP32 (1, {width}) tensors for K={k}, got "
                         f"{[(tuple(t.shape), t.dtype) for t in terms]}")
    if any(t.device != weight.device for t in terms):
        raise ValueError(f"GEMV terms on {terms[0].device}, weight on {weight.device}")
    if s_x.numel() != 1:
        raise ValueError(f"s_x must hold one scale for the one row, got shape {tuple(s_x.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    t = tiles or {}
    return torch.ops.sharq.fp4_weight_gemv(
        terms[0], terms[1] if len(terms) == 2 else None, weight.codes, weight.scales,
        s_x.reshape(1).to(torch.float32), weight.global_scale, bias, weight.block, out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS])


_TILE_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps")


@torch.library.custom_op("sharq::fp4_weight_gemv", mutates_args=())
def _gemv_op(
    a: torch.Tensor, r: torch.Tensor | None, w_codes: torch.Tensor, w_scales: torch.Tensor, s_x: torch.Tensor,
    s_w: torch.Tensor, bias: torch.Tensor | None, wb: int, out_dtype: torch.dtype, tiles: list[int],
) -> torch.Tensor:
    """The GEMV as a torch op (torch.compile, CUDA graphs). a, r: FP32 (1, 8·KWt) GEMV terms;
    w_codes (N, Kp/2), w_scales (N, Kp/wb) uint8; s_x, s_w FP32 (1,); bias (N,) or None.
    `tiles`: BLOCK_N, BLOCK_K, num_warps; 0 = chosen by shape."""
    n = w_codes.shape[0]
    y = torch.empty(1, n, dtype=out_dtype, device=a.device)
    if n == 0:
        return y
    kwt = a.shape[1] // 8
    cfg = _tiles(n, kwt * 8)
    cfg.update({key: v for key, v in zip(_TILE_KEYS, tiles) if v})
    if GEMV_PAD % cfg["BLOCK_K"] or cfg["BLOCK_K"] % wb:
        raise ValueError(f"BLOCK_K {cfg['BLOCK_K']} must divide {GEMV_PAD} and be a multiple of the weight block {wb}")
    words = w_codes.view(torch.int32)  # (N, Kp/8): Kp is a multiple of 16, the rows 8-byte aligned
    _gemv_nvfp4_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        a, r if r is not None else a, words, w_scales, s_x, s_w.reshape(1), bias if bias is not None else s_x, y,
        n, words.shape[1], w_scales.shape[1], kwt, words.stride(0), w_scales.stride(0),
        TWO=r is not None, WB=wb, HAS_BIAS=bias is not None, num_stages=1, **cfg,
    )
    return y


@_gemv_op.register_fake
def _(a, r, w_codes, w_scales, s_x, s_w, bias, wb, out_dtype, tiles):
    return a.new_empty(1, w_codes.shape[0], dtype=out_dtype)
