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

The weight tile is dequantized in registers with exact bit operations, one of two ways:
- FP32 decode (DECODE 1; MXFP4 below 512 rows): a code's 3 magnitude bits placed in a
  float16's exponent/mantissa give value · 2^-14 (normal and subnormal codes alike), an E4M3
  scale's 7 bits likewise give scale · 2^-8; their FP32 product times 2^22 is exact, and so is
  the cast to bf16.
- Packed decode (DECODE 2; NVFP4 below 512 rows): inline asm turns 4 payload bytes into 8 bf16
  weights in packed registers (`_BF16_HALVES_PTX`), value · scale · 2^-7 exactly, the even and
  odd K positions as two tiles that multiply the matching halves of the activation tile; the
  epilogue multiplies the FP32 sum by 2^7 (exact). Up to 8 rows with two terms (STACK), B's and
  R's rows form one 16-row MMA operand and the two FP32 halves are added at the end: half the
  tensor-core work of two 16-row MMAs on 8 rows. About 6 SASS instructions per weight against 12.
Nothing is rounded before the MMA.

One kernel, tiled by M (`_tiles`, from measured sweeps). The plan (kernels/plan.py) sends it NVFP4
calls of 3-511 rows (the packed decode: narrow N tiles up to 16 rows so every SM streams weights,
benchmarks/tune_small_m.py; 17-511 rows `_medium_packed_tiles`, benchmarks/tune_medium_m.py), MXFP4
calls below 512 rows (the FP32 decode), and every call from 512 rows: a bf16 GEMM over the weight
dequantized once into a scratch matrix by `dequant_fp4.py` (128×256 tiles, grouped launch order for
L2 reuse). NVFP4 calls of up to 2 exact rows run `gemv_nvfp4.py`. Up to 64 rows the narrower layers
split K (SPLIT_K): each chunk's program writes FP32 partials, a second small kernel adds them in
chunk order and runs the epilogue, so the bits do not depend on timing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor
from . import cdiv, interpreting, next_pow2
from .dequant_fp4 import _dequant_impl, dequant_group_into
from .direct import direct_call_ok
from .gemm_bf16_tma import bf16_gemm_tma, tma_supported
from .gemm_shared import _epilogue, _grouped_tile
from .pdl import pdl_enabled, wait_then_release
from .plan import SCRATCH_MIN_M
from .weight_decode import _group_member, _weight_halves, _weight_tile, gemm_supports

__all__ = ["fp4_weight_gemm", "fp4_weight_gemm_group", "gemm_group_supports", "gemm_supports", "GEMM_GROUP_MAX"]


@triton.jit
def _dot_tile(acc, t_ptr, offs_m, offs_k, t_ok, stride_t, wt, DOT_F32: tl.constexpr):
    """acc += term tile (BLOCK_M, BLOCK_K) · wt (BLOCK_K, BLOCK_N)."""
    t = tl.load(t_ptr + offs_m[:, None] * stride_t + offs_k[None, :], mask=t_ok, other=0.0)
    if DOT_F32:
        t = t.to(tl.float32)
    return tl.dot(t, wt, acc)


@triton.jit
def _dot_even_odd(acc, t, w_even, w_odd, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    """acc (ROWS, BLOCK_N) += t (ROWS, BLOCK_K) · weight tileᵀ, the weight given as its even and odd
    K positions (BLOCK_N, BLOCK_K / 2) each."""
    t_even, t_odd = tl.split(tl.reshape(t, (ROWS, BLOCK_K // 2, 2)))
    if DOT_F32:
        t_even, t_odd, w_even, w_odd = (
            t_even.to(tl.float32),
            t_odd.to(tl.float32),
            w_even.to(tl.float32),
            w_odd.to(tl.float32),
        )
    acc = tl.dot(t_even, tl.trans(w_even), acc)
    return tl.dot(t_odd, tl.trans(w_odd), acc)


@triton.jit
def _dot_halves(
    acc,
    t_ptr,
    offs_m,
    offs_k,
    t_ok,
    stride_t,
    w_even,
    w_odd,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """acc += term tile (BLOCK_M, BLOCK_K) · weight tileᵀ (given as even and odd K positions)."""
    t = tl.load(t_ptr + offs_m[:, None] * stride_t + offs_k[None, :], mask=t_ok, other=0.0)
    return _dot_even_odd(acc, t, w_even, w_odd, BLOCK_M, BLOCK_K, DOT_F32)


@triton.jit
def _dot_halves_stacked(
    acc,
    a_ptr,
    r_ptr,
    m0,
    M,
    offs_k,
    K,
    stride_a,
    stride_r,
    w_even,
    w_odd,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """acc (2 · BLOCK_M, BLOCK_N) += [B rows m0 … m0 + BLOCK_M; R rows m0 …] (2 · BLOCK_M, BLOCK_K) ·
    weight tileᵀ (given as even and odd K positions): both terms in one MMA operand."""
    rows = tl.arange(0, 2 * BLOCK_M)
    om = m0 + rows % BLOCK_M
    ptrs = tl.where((rows >= BLOCK_M)[:, None], r_ptr + om[:, None] * stride_r, a_ptr + om[:, None] * stride_a)
    t = tl.load(ptrs + offs_k[None, :], mask=(om < M)[:, None] & (offs_k[None, :] < K), other=0.0)
    return _dot_even_odd(acc, t, w_even, w_odd, 2 * BLOCK_M, BLOCK_K, DOT_F32)


@triton.jit
def _fp4_weight_gemm_kernel(
    a_ptr,
    r_ptr,
    wc_ptr,
    ws_ptr,
    sx_ptr,
    sw_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    M,
    N,
    K,
    K_CHUNK,
    KW,
    KS,
    stride_a,
    stride_r,
    stride_wc,
    stride_ws,
    stride_sx,
    stride_y,
    wc1_ptr,
    ws1_ptr,
    wc2_ptr,
    ws2_ptr,
    N0,
    N1,
    TWO: tl.constexpr,
    MX: tl.constexpr,
    WB: tl.constexpr,
    HAS_SW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    W_BF16: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    FAST: tl.constexpr,
    STACK: tl.constexpr,
    PDL: tl.constexpr,
    SPLIT_K: tl.constexpr,
    GROUPS: tl.constexpr,
):
    """PDL (packed decode only, `pdl.py`): the program waits for the preparation, then lets the
    next kernel launch. SPLIT_K > 1: program (tile, pid_k) sums K positions [pid_k · K_CHUNK,
    (pid_k + 1) · K_CHUNK) and writes its FP32 partial to part (SPLIT_K, M, N) instead of y;
    `_split_k_reduce_kernel` adds the partials in pid_k order and runs the epilogue. GROUPS > 1
    (the weight decoded in the loop): y's columns are GROUPS weights side by side, [0, N0) from
    wc/ws, [N0, N0 + N1) from wc1/ws1, the rest from wc2/ws2, every boundary a multiple of BLOCK_N,
    so a program reads one weight, at the rows its own call would."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(pid, grid_m, grid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    wc, ws, base = _group_member(pid_n * BLOCK_N, wc_ptr, ws_ptr, wc1_ptr, ws1_ptr, wc2_ptr, ws2_ptr, N0, N1, GROUPS)
    offs_wn = offs_n - base  # the weight's own rows for this tile
    if PDL:
        wait_then_release()
    if STACK:  # FAST, two terms: B's rows then R's rows, one MMA operand of 2 · BLOCK_M rows
        acc = tl.zeros((2 * BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SPLIT_K > 1:
        k_lo = pid_k * K_CHUNK
        k_hi = tl.minimum(K, k_lo + K_CHUNK)
    else:  # the loop bounds the unsplit kernel always had (0, K): nothing computed for them
        k_lo = 0
        k_hi = K
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a_ok = m_ok[:, None] & (offs_k[None, :] < K)
        if FAST:  # NVFP4, decoded in packed registers, times 2^-7 (undone in the epilogue), even/odd K apart
            w_even, w_odd = _weight_halves(
                wc, ws, offs_wn, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, FAST == 1
            )
            if STACK:
                acc = _dot_halves_stacked(
                    acc,
                    a_ptr,
                    r_ptr,
                    pid_m * BLOCK_M,
                    M,
                    offs_k,
                    K,
                    stride_a,
                    stride_r,
                    w_even,
                    w_odd,
                    BLOCK_M,
                    BLOCK_K,
                    DOT_F32,
                )
            else:
                acc = _dot_halves(acc, a_ptr, offs_m, offs_k, a_ok, stride_a, w_even, w_odd, BLOCK_M, BLOCK_K, DOT_F32)
                if TWO:
                    acc = _dot_halves(
                        acc, r_ptr, offs_m, offs_k, a_ok, stride_r, w_even, w_odd, BLOCK_M, BLOCK_K, DOT_F32
                    )
        else:
            if W_BF16:  # wc_ptr: the weight already dequantized, bf16 (N, K) (dequant_fp4.py)
                wt = tl.load(
                    wc_ptr + offs_n[None, :] * stride_wc + offs_k[:, None],
                    mask=n_ok[None, :] & (offs_k[:, None] < K),
                    other=0.0,
                )  # (BLOCK_K, BLOCK_N)
            else:
                w = _weight_tile(wc, ws, offs_wn, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, MX)
                wt = tl.trans(w)  # (BLOCK_K, BLOCK_N)
            if DOT_F32:  # the interpreter multiplies bf16 tiles as raw bits; FP32 holds the same values
                wt = wt.to(tl.float32)
            acc = _dot_tile(acc, a_ptr, offs_m, offs_k, a_ok, stride_a, wt, DOT_F32)
            if TWO:
                acc = _dot_tile(acc, r_ptr, offs_m, offs_k, a_ok, stride_r, wt, DOT_F32)
    if STACK:  # y = B's rows + R's rows
        acc = tl.sum(tl.reshape(acc, (2, BLOCK_M, BLOCK_N)), axis=0)
    if FAST:
        acc = acc * 128.0  # exact: the weight tile was value · 2^-7
    if SPLIT_K > 1:  # the FP32 partial of this K chunk; the reduce kernel runs the epilogue
        tl.store(
            part_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :]
        )
    else:
        _epilogue(
            acc, sx_ptr, sw_ptr, bias_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, stride_y, HAS_SW, HAS_BIAS
        )


@triton.jit
def _split_k_reduce_kernel(
    part_ptr,
    sx_ptr,
    sw_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    stride_sx,
    stride_y,
    HAS_SW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,
):
    """y[tile] = epilogue(Σ_{j = 0 … SPLIT_K-1} part[j, tile]), the partials added in that order
    (deterministic, the same bits at every call)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    ok = m_ok[:, None] & n_ok[None, :]
    if PDL:
        wait_then_release()
    acc = tl.load(part_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0.0)
    for j in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + (j * M + offs_m[:, None]) * N + offs_n[None, :], mask=ok, other=0.0)
    _epilogue(acc, sx_ptr, sw_ptr, bias_ptr, y_ptr, offs_m, offs_n, m_ok, n_ok, stride_sx, stride_y, HAS_SW, HAS_BIAS)


# from SCRATCH_MIN_M rows on, the weight is dequantized once into bf16 scratch (prefill-tuning-h100.json;
# the measurement: docs/performance.md, "Prefill")


SPLIT_MIN_STEPS = 4  # a split-K chunk keeps at least this many BLOCK_K steps (the sweeps' rule)


def _tiles(m: int, n: int, k: int, packed: bool = False, two: bool = True) -> dict:
    """Launch tiling by M and layer shape, from sweeps on the H100 at Llama-3.1-8B shapes.

    packed (NVFP4 weights) and M <= 16: the packed-register decode (DECODE 2), with both terms'
    rows stacked into one MMA operand up to 8 rows (STACK 2): benchmarks/tune_small_m.py
    (small-m-tuning-h100.json); narrow layers (N < 6,144) split K in 4 from 9 rows, and up to 8
    rows where K >= 8,192 (small-m-split-tuning-h100.json; down at 16 rows follows o's choice,
    unmeasured: docs/performance.md, "Small-M GEMM"); packed and 17 <= M < SCRATCH_MIN_M: the packed decode, one MMA per
    term (`_medium_packed_tiles`). Otherwise the FP32 decode (DECODE 1), from tune_gemm.py's and
    tune_prefill.py's sweeps (gemm-tuning-h100.json, prefill-tuning-h100.json). SCRATCH 1: the
    weight tile is dequantized in the GEMM loop; 2: the weight is dequantized once into a bf16
    scratch matrix and the loop is a bf16 GEMM (large M)."""
    if m <= 16 and packed:
        stack = m <= 8 and two
        split = 1
        if n >= 16384:
            bn, bk, warps = 64, 256, 2
        elif n >= 6144 and not stack:
            bn, bk, warps = 32, 256, 2
        elif n < 6144 and (k >= 8192 or not stack) and cdiv(k, 256) >= 2 * SPLIT_MIN_STEPS:
            bn, bk, warps = 64, 256, 2 if stack else 4  # narrow layers with a long K: split in up to 4
            split = min(4, cdiv(k, bk) // SPLIT_MIN_STEPS)
        else:
            bn, bk, warps = 32, 512, 4
        return dict(
            BLOCK_M=8 if stack else 16,
            BLOCK_N=bn,
            BLOCK_K=bk,
            GROUP_M=1,
            num_warps=warps,
            num_stages=3,
            SCRATCH=1,
            DECODE=2,
            STACK=2 if stack else 1,
            SPLIT_K=split,
        )
    if packed and m < SCRATCH_MIN_M:
        return dict(_medium_packed_tiles(m, n, k), DECODE=2, STACK=1)
    cfg = dict(_fp32_decode_tiles(m, n, k), DECODE=1, STACK=1)
    if cfg["SCRATCH"] == 2 and m >= TMA_MIN_M and not two and k % 8 == 0:
        cfg["TMA"] = 4  # the persistent TMA loop, flattened, on the same 128×256×64 tiles (gemm_bf16_tma.py)
    return cfg


# From this many rows a one-term scratch GEMM runs the persistent TMA loop (flattened, TMA 4), the
# fastest variant on every Llama-3.1-8B layer in benchmarks/tune_prefill.py --tma
# (prefill-tma-tuning-h100.json; docs/performance.md, "Prefill"); below it, the descriptors' host
# time outweighs the gain on small layers. Two terms (the exact operand) keep the pointer loop.
TMA_MIN_M = 1024


def _medium_packed_tiles(m: int, n: int, k: int) -> dict:
    """The packed decode at 17-511 rows (one MMA per term), from benchmarks/tune_medium_m.py
    (medium-m-tuning-h100.json, Llama-3.1-8B layers at M = 32, 64, 128, 256; each rule below is the
    measured best there or within 3% of it; 257-511 rows take the 256-row choice, not measured).
    Wide layers (gate_up): 128-wide N tiles, BLOCK_M up to 128, K whole. Narrower layers up to 64
    rows: K split in 4 (SPLIT_K; medium-m-split-tuning-h100.json: 64-wide N tiles alone leave most
    SMs idle, 64-96 programs on 132 SMs; fewer chunks where a chunk would get fewer than 4 BLOCK_K
    steps of K, as swept), BLOCK_M 32 up to 32 rows then 64, BLOCK_K 128 for q/k/v-sized N and 256 below.
    From 65 rows, K whole: q/k/v-sized N 64-wide, BLOCK_M 64 and 128 from 129; narrow N (o, down)
    64-wide, BLOCK_M 64 (65-128 rows: no split-K measurement there)."""
    if n >= 16384:
        bm, bn, bk, split = min(128, max(32, next_pow2(m))), 128, 128, 1
    elif m <= 64:
        bm, bn, bk = (32 if m <= 32 else 64), 64, (128 if n >= 6144 else 256)
        split = max(1, min(4, cdiv(k, bk) // SPLIT_MIN_STEPS))  # short K stays whole
    elif n >= 6144:
        bm = 64 if m <= 128 else 128
        bn, bk, split = 64, 128 if bm == 128 else 256, 1
    else:
        bm, bn, bk, split = 64, 64, 256, 1
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=4, num_stages=3, SCRATCH=1, SPLIT_K=split)


def _fp32_decode_tiles(m: int, n: int, k: int) -> dict:
    if m <= 16:  # weight streaming: wide N tiles for wide layers, long K tiles otherwise
        if n >= 16384:
            return dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=1, num_warps=8, num_stages=3, SCRATCH=1)
        if n >= 6144:
            return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=512, GROUP_M=1, num_warps=8, num_stages=4, SCRATCH=1)
        return dict(
            BLOCK_M=16, BLOCK_N=32, BLOCK_K=512 if k <= 4096 else 256, GROUP_M=1, num_warps=4, num_stages=3, SCRATCH=1
        )
    if m <= 256:
        return dict(
            BLOCK_M=64 if n >= 6144 else 32,
            BLOCK_N=128 if n >= 16384 else 64,
            BLOCK_K=128,
            GROUP_M=1,
            num_warps=4,
            num_stages=4,
            SCRATCH=1,
        )
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
        raise ValueError(
            f"the Triton GEMM reads 2-D NVFP4-16/32 or MXFP4-32 weights, got {weight.format.value}-"
            f"{weight.block} of shape {weight.shape}"
        )
    n, k = weight.shape
    sx = _checked_operands("fp4_weight_gemm", terms, s_x, weight, "weight", tiles)
    a = terms[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    t = tiles or {}
    op = _gemm_impl if direct_call_ok(*terms, s_x) else torch.ops.sharq.fp4_weight_gemm
    return op(
        a,
        terms[1] if len(terms) == 2 else None,
        weight.codes,
        weight.scales,
        sx,
        weight.global_scale,
        bias,
        weight.format is Format.MXFP4,
        weight.block,
        out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS],
    )


def _checked_operands(op: str, terms, s_x: torch.Tensor, weight: QuantizedTensor, what: str, tiles) -> torch.Tensor:
    """Clear errors for activation terms, s_x and tiles `op` does not take (against `weight`'s K,
    device and block; `what` names the weight in the device message); returns s_x as FP32 (1,) or (M,)."""
    if not 1 <= len(terms) <= 2:
        raise ValueError(f"{op} takes 1 or 2 activation terms, got {len(terms)}")
    k = weight.shape[1]
    a = terms[0]
    for t in terms:
        if t.dtype != torch.bfloat16 or t.dim() != 2 or t.shape != a.shape or t.shape[1] != k:
            raise ValueError(
                f"activation terms must be bf16 (M, {k}) tensors of one shape, got "
                f"{[(tuple(x.shape), x.dtype) for x in terms]}"
            )
        if t.device != weight.device:
            raise ValueError(f"activation on {t.device}, {what} on {weight.device}")
    if any(not t.is_contiguous() for t in terms):
        raise ValueError("activation terms must be contiguous")
    m = a.shape[0]
    sx = s_x.reshape(-1).to(torch.float32).contiguous()
    if sx.numel() not in (1, m):
        raise ValueError(f"s_x must hold one scale or one per row ({m}), got shape {tuple(s_x.shape)}")
    block_k = (tiles or {}).get("BLOCK_K", weight.block)
    if block_k % weight.block:
        raise ValueError(f"BLOCK_K {block_k} must be a multiple of the weight block {weight.block}")
    return sx


_TILE_KEYS = (
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_K",
    "GROUP_M",
    "num_warps",
    "num_stages",
    "SCRATCH",
    "DECODE",
    "STACK",
    "SPLIT_K",
    "TMA",
)


def _gemm_impl(
    a: torch.Tensor,
    r: torch.Tensor | None,
    w_codes: torch.Tensor,
    w_scales: torch.Tensor,
    s_x: torch.Tensor,
    s_w: torch.Tensor | None,
    bias: torch.Tensor | None,
    mx: bool,
    wb: int,
    out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The GEMM as a torch op (torch.compile, CUDA graphs). a, r: bf16 (M, K); w_codes (N, Kp/2),
    w_scales (N, Kp/wb) uint8; s_x FP32 (1,) or (M,); s_w FP32 (1,)-like or None; bias (N,) or
    None. `tiles`: BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, SCRATCH (1: dequantize
    in the loop, 2: into a bf16 scratch matrix first), DECODE (1: the FP32 decode, 2: the packed
    bf16 decode, NVFP4), STACK (1: one MMA per term, 2: both terms' rows in one operand), SPLIT_K
    (K cut into that many chunks of whole BLOCK_K steps, one program each, FP32 partials in an
    (SPLIT_K, M, N) workspace added in chunk order by `_split_k_reduce_kernel`; 1 = none), TMA (the
    scratch loop only: 1 = gemm_fp4's pointer loop, 2 = the persistent TMA GEMM of gemm_bf16_tma.py,
    3 = it warp-specialized, 4 = flattened, 5 = both; where TMA's alignment does not hold, the
    pointer loop); 0 = chosen by shape."""
    m, k = a.shape
    n = w_codes.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return y
    cfg = _launch_config(m, n, k, mx, r is not None, tiles)
    w = w_codes
    if cfg["SCRATCH"]:  # the layer's weight dequantized once, bf16 (N, K); the loop is a bf16 GEMM
        w = _dequant_impl(w_codes, w_scales, k, mx, wb)  # inside this op: no second dispatch
    sw = s_w.reshape(1) if s_w is not None else None
    return _launch(a, r, w, w_codes.shape[1], w_scales, s_x, sw, int(s_w is not None), bias, y, mx, wb, cfg)


def _launch_config(m: int, n: int, k: int, mx: bool, two: bool, tiles: list[int]) -> dict:
    """`_tiles`' choice for an (M, N, K) call, overridden by the nonzero entries of `tiles` (in
    _TILE_KEYS order), checked; SCRATCH, DECODE, STACK as booleans (scratch weight, packed decode,
    stacked terms), SPLIT_K the number of K chunks, TMA the scratch loop's variant."""
    over = {key: v for key, v in zip(_TILE_KEYS, tiles) if v}
    cfg = _tiles(m, n, k, packed=not mx and over.get("DECODE", 2) == 2, two=two)
    cfg.update(over)
    if "STACK" not in over and any(key in over for key in ("BLOCK_M", "SCRATCH", "DECODE")):
        cfg["STACK"] = 1  # an overridden row tiling or decode: stacked only when asked for
    if "TMA" not in over and any(key in over for key in _TILE_KEYS[:7]):
        cfg["TMA"] = 1  # an overridden tiling: the TMA loop only when asked for
    scratch = cfg["SCRATCH"] == 2
    cfg["SCRATCH"] = scratch
    cfg["DECODE"] = cfg["DECODE"] == 2 and not mx and not scratch
    cfg["STACK"] = cfg["STACK"] == 2
    split = max(1, cfg.get("SPLIT_K", 1))
    tma = cfg.get("TMA", 1)
    if cfg["STACK"] and not (cfg["DECODE"] and two):
        raise ValueError("STACK (both terms in one MMA operand) needs two terms and the packed NVFP4 decode")
    steps = cdiv(k, cfg["BLOCK_K"])
    if scratch and "SPLIT_K" not in over:  # an overridden scratch weight keeps K whole unless a split is asked for
        split = 1
    if split > 1 and (scratch or split > steps):
        raise ValueError(
            f"SPLIT_K {split} needs the weight decoded in the loop and at most one split per BLOCK_K step "
            f"({steps} for K={k}, BLOCK_K={cfg['BLOCK_K']})"
        )
    if tma >= 2 and not scratch:
        raise ValueError("TMA (the persistent bf16 GEMM) multiplies the scratch weight: it needs SCRATCH 2")
    cfg["SPLIT_K"], cfg["TMA"] = split, tma
    return cfg


def _launch(
    a: torch.Tensor,
    r: torch.Tensor | None,
    w: torch.Tensor,
    kw: int,
    w_scales: torch.Tensor,
    s_x: torch.Tensor,
    sw: torch.Tensor | None,
    has_sw: int,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    mx: bool,
    wb: int,
    cfg: dict,
    group: tuple = (),
) -> torch.Tensor:
    """Fill y (M, N) by the kernel `cfg` (`_launch_config`) names. w: the packed codes (N, kw) with
    w_scales, or (cfg SCRATCH) the bf16 (N, K) scratch weight; sw: None (has_sw 0), FP32 (1,)
    (has_sw 1) or FP32 (N,), one s_w per column (has_sw 2). group: () or, for 2-3 weights decoded in
    the loop side by side, (count, codes and scales of the 2nd weight, of the 3rd (or the 2nd's
    again), N0, N1): w, w_scales are the 1st weight's."""
    cfg = dict(cfg)
    m, k = a.shape
    n = y.shape[1]  # every column: a group's weights side by side (w: the first)
    rr = r if r is not None else a
    scratch, packed, stack = cfg.pop("SCRATCH"), cfg.pop("DECODE"), cfg.pop("STACK")
    split, tma = cfg.pop("SPLIT_K"), cfg.pop("TMA")
    if tma >= 2 and split == 1 and tma_supported(a, r, w):
        return bf16_gemm_tma(
            a,
            r,
            w,
            s_x,
            sw,
            bias,
            y,
            has_sw=has_sw,
            block_m=cfg["BLOCK_M"],
            block_n=cfg["BLOCK_N"],
            block_k=cfg["BLOCK_K"],
            group_m=cfg["GROUP_M"],
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
            warp_spec=tma in (3, 5),
            flatten=tma in (4, 5),
        )
    steps = cdiv(k, cfg["BLOCK_K"])
    k_chunk = cdiv(steps, split) * cfg["BLOCK_K"]
    split = cdiv(k, k_chunk)  # no empty chunk
    part = torch.empty(split, m, n, dtype=torch.float32, device=a.device) if split > 1 else y
    grid = (cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"]), split)
    interpret = interpreting()
    pdl = packed and pdl_enabled(a.device)  # decode-sized launches: the weight stream is the time
    sw = sw if sw is not None else s_x  # HAS_SW 0: any pointer
    b = bias if bias is not None else s_x
    _fp4_weight_gemm_kernel[grid](
        a,
        rr,
        w,
        w_scales,
        s_x,
        sw,
        b,
        y,
        part,
        m,
        n,
        k,
        k_chunk,
        kw,
        w_scales.shape[1],
        a.stride(0),
        rr.stride(0),
        w.stride(0),
        w_scales.stride(0),
        0 if s_x.numel() == 1 else 1,
        y.stride(0),
        *(group[1:] if group else (w, w_scales, w, w_scales, 0, 0)),
        TWO=r is not None,
        MX=mx,
        WB=wb,
        HAS_SW=has_sw,
        HAS_BIAS=bias is not None,
        W_BF16=scratch,
        FAST=(2 if interpret else 1) if packed else 0,
        STACK=stack,
        DOT_F32=interpret,
        PDL=pdl,
        SPLIT_K=split,
        GROUPS=group[0] if group else 1,
        **cfg,
        **({"launch_pdl": True} if pdl else {}),
    )
    if split > 1:
        rm, rn = 32, 128
        _split_k_reduce_kernel[(cdiv(m, rm), cdiv(n, rn))](
            part,
            s_x,
            sw,
            b,
            y,
            m,
            n,
            0 if s_x.numel() == 1 else 1,
            y.stride(0),
            HAS_SW=has_sw,
            HAS_BIAS=bias is not None,
            SPLIT_K=split,
            BLOCK_M=rm,
            BLOCK_N=rn,
            PDL=pdl,
            num_warps=4,
            **({"launch_pdl": True} if pdl else {}),
        )
    return y


_gemm_op = torch.library.custom_op("sharq::fp4_weight_gemm", mutates_args=())(_gemm_impl)


@_gemm_op.register_fake
def _(a, r, w_codes, w_scales, s_x, s_w, bias, mx, wb, out_dtype, tiles):
    return a.new_empty(a.shape[0], w_codes.shape[0], dtype=out_dtype)


GEMM_GROUP_MAX = 3  # q, k, v: the most linears that read one input in a decoder layer


def gemm_group_supports(weights, m: int, biases=None, *, tiles: dict | None = None, terms: int = 1) -> bool:
    """True when `fp4_weight_gemm_group` multiplies one M-row activation of `terms` terms by every
    weight in one launch, each column bit for bit what its own `fp4_weight_gemm` call gives: 1 to
    GEMM_GROUP_MAX weights the Triton GEMM reads (`gemm_supports`) of one format, block, K, device and
    layout, and either
    - the scratch regime (M >= SCRATCH_MIN_M, or `tiles` asking for SCRATCH 2): the tiles do not
      depend on N, the weights are dequantized side by side into one scratch matrix; or
    - the weight decoded in the loop (3 to SCRATCH_MIN_M - 1 rows), where every weight's own call
      takes the same tiles (they depend on N: Llama's q, k, v agree, and gate, up) and every weight
      but the last fills whole BLOCK_N column tiles, so each program reads one weight.
    biases: None, or all None, or all (N_g,) tensors of one dtype."""
    weights = list(weights)
    if not 1 <= len(weights) <= GEMM_GROUP_MAX or m <= 0:
        return False
    first = weights[0]
    for w in weights:
        if not isinstance(w, QuantizedTensor) or not gemm_supports(w):
            return False
        if (w.format, w.block, w.shape[1], w.device) != (first.format, first.block, first.shape[1], first.device):
            return False
    if biases is not None:
        biases = list(biases)
        if len(biases) != len(weights):
            return False
        if not all(b is None for b in biases) and not all(
            b is not None and b.shape == (w.shape[0],) and b.dtype == biases[0].dtype and b.device == first.device
            for w, b in zip(weights, biases)
        ):
            return False
    return _group_config(weights, m, terms, tiles) is not None


def _group_config(weights, m: int, terms: int, tiles: dict | None) -> dict | None:
    """The launch config one grouped launch of `weights` at M rows takes (`_launch_config`), or None
    where no launch gives every column its own call's bits."""
    t = tiles or {}
    over = [t.get(key, 0) for key in _TILE_KEYS]
    first = weights[0]
    mx, k = first.format is Format.MXFP4, first.shape[1]
    n = sum(w.shape[0] for w in weights)
    try:
        cfg = _launch_config(m, n, k, mx, terms == 2, over)
    except ValueError:
        return None
    if cfg["SCRATCH"]:  # tiles independent of N: the concatenated weight's are every member's
        return cfg
    if m < 3 or len({(c.stride(0), s.stride(0)) for c, s in ((w.codes, w.scales) for w in weights)}) != 1:
        return None
    try:
        own = [_launch_config(m, w.shape[0], k, mx, terms == 2, over) for w in weights]
    except ValueError:
        return None
    if any(c != own[0] for c in own) or own[0]["SCRATCH"]:
        return None
    if any(w.shape[0] % own[0]["BLOCK_N"] for w in weights[:-1]):
        return None
    return own[0]


def fp4_weight_gemm_group(
    terms: Sequence[torch.Tensor],
    s_x: torch.Tensor,
    weights,
    biases,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """`fp4_weight_gemm` of one activation against 1 to GEMM_GROUP_MAX weights in one GEMM (q/k/v,
    gate/up at prefill): y (M, N_0 + N_1 + ...) in `out_dtype`, weight g's outputs in columns
    [N_0 + ... + N_{g-1}, ... + N_g), each bit for bit what `fp4_weight_gemm` computes alone.

    From SCRATCH_MIN_M rows the weights are dequantized side by side into one bf16 (Σ N_g, K) scratch
    matrix (one launch where their row counts allow, `dequant_fp4.dequant_group_into`) and one GEMM
    multiplies it; below, one launch decodes each column tile from its own weight with the tiles
    every weight's own call takes. The epilogue takes each column's own s_w. terms, s_x as in
    `fp4_weight_gemm`; weights and biases as `gemm_group_supports` accepts them, with M rows.
    """
    weights, biases = list(weights), list(biases)
    a = terms[0] if len(terms) else None
    m = a.shape[0] if a is not None and a.dim() == 2 else -1
    if not gemm_group_supports(weights, m, biases, tiles=tiles, terms=len(terms)):
        raise ValueError(
            f"one grouped GEMM cannot serve weights {[_describe(w) for w in weights]} with biases "
            f"{[None if b is None else (tuple(b.shape), b.dtype) for b in biases]} at M={m}: it needs 1 to "
            f"{GEMM_GROUP_MAX} NVFP4-16/32 or MXFP4-32 weights of one format, block, K and device, and a bias "
            f"of shape (N_g,) and one dtype for every weight or for none; from {SCRATCH_MIN_M} rows any N, "
            "below it the tiles each weight's own call takes must agree, every N but the last a multiple "
            "of BLOCK_N"
        )
    first = weights[0]
    sx = _checked_operands("fp4_weight_gemm_group", terms, s_x, first, "weights", tiles)
    t = tiles or {}
    mx = first.format is Format.MXFP4
    sw = None if mx else torch.cat([w.global_scale.reshape(1).expand(w.shape[0]) for w in weights])
    bias = None if biases[0] is None else torch.cat(biases)
    op = _gemm_group_impl if direct_call_ok(*terms, s_x) else torch.ops.sharq.fp4_weight_gemm_group
    return op(
        a,
        terms[1] if len(terms) == 2 else None,
        [w.codes for w in weights],
        [w.scales for w in weights],
        sx,
        sw,
        bias,
        mx,
        first.block,
        out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS],
    )


def _describe(w) -> str:
    if isinstance(w, QuantizedTensor):
        return f"{w.format.value}-{w.block} {tuple(w.shape)}"
    return type(w).__name__


def _gemm_group_impl(
    a: torch.Tensor,
    r: torch.Tensor | None,
    w_codes: list[torch.Tensor],
    w_scales: list[torch.Tensor],
    s_x: torch.Tensor,
    s_w: torch.Tensor | None,
    bias: torch.Tensor | None,
    mx: bool,
    wb: int,
    out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The grouped GEMM as a torch op. a, r: bf16 (M, K); w_codes[g] (N_g, Kp/2), w_scales[g]
    (N_g, Kp/wb) uint8; s_x FP32 (1,) or (M,); s_w FP32 (Σ N_g,) (each column its weight's s_w) or
    None (MXFP4); bias (Σ N_g,) or None; tiles as `_gemm_impl`'s. The scratch regime dequantizes the
    weights side by side and multiplies the scratch; below it the kernel decodes each tile from its
    own weight (`gemm_group_supports` says when)."""
    m, k = a.shape
    n = sum(c.shape[0] for c in w_codes)
    y = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return y
    cfg = _launch_config(m, n, k, mx, r is not None, tiles)
    if cfg["SCRATCH"]:
        w = dequant_group_into(w_codes, w_scales, torch.empty(n, k, dtype=torch.bfloat16, device=a.device), mx, wb)
        return _launch(a, r, w, k, w_scales[0], s_x, s_w, 0 if s_w is None else 2, bias, y, mx, wb, cfg)
    own = [_launch_config(m, c.shape[0], k, mx, r is not None, tiles) for c in w_codes]
    if len(w_codes) > 3 or any(c != own[0] for c in own) or any(c.shape[0] % own[0]["BLOCK_N"] for c in w_codes[:-1]):
        raise ValueError(
            f"one launch decoding the weights in the loop needs up to 3 weights whose own calls take the same "
            f"tiles and whose N (all but the last) are multiples of BLOCK_N; got N {[c.shape[0] for c in w_codes]} "
            f"at M={m}"
        )
    group = ()
    if len(w_codes) > 1:
        last = 2 if len(w_codes) > 2 else 1
        n1 = w_codes[1].shape[0] if len(w_codes) > 2 else 0
        group = (len(w_codes), w_codes[1], w_scales[1], w_codes[last], w_scales[last], w_codes[0].shape[0], n1)
    return _launch(
        a,
        r,
        w_codes[0],
        w_codes[0].shape[1],
        w_scales[0],
        s_x,
        s_w,
        0 if s_w is None else 2,
        bias,
        y,
        mx,
        wb,
        own[0],
        group,
    )


_gemm_group_op = torch.library.custom_op("sharq::fp4_weight_gemm_group", mutates_args=())(_gemm_group_impl)


@_gemm_group_op.register_fake
def _(a, r, w_codes, w_scales, s_x, s_w, bias, mx, wb, out_dtype, tiles):
    return a.new_empty(a.shape[0], sum(c.shape[0] for c in w_codes), dtype=out_dtype)
