"""Decode GEMV for NVFP4 weights in Triton (M ≤ 8 rows): integer dot products of E2M1 codes.

y (M, N) = s_x · s_w · Σ_t Σ_blocks16 (Σ_{k in block} 2w_k · 2t_k) · sw_blk · st_blk / 4 + bias

on the CUDA cores, streaming the packed weight once for all M rows.

Every NVFP4 value is an E2M1 code times a block scale, and the activation terms (SharQ backbone and
residual) have block scales per 16 or 32 positions along K, aligned with the weight's blocks. So
inside 16 positions both operands are small integers times one scale each: 2·E2M1 is an integer in
{0, ±1, ±2, ±3, ±4, ±6, ±8, ±12}. The kernel sums 16 integer products exactly (|sum| ≤ 2304) with
Hopper's `dp4a` (four int8 products and an int32 add in one instruction), converts the sum to FP32
and multiplies it by the product of the two block scales (exact: 4 significant bits each, the
product then 20 bits) before the FP32 accumulation. Every product is exact and every sum FP32
(SPEC §7), with fewer roundings than a float GEMV.

  weights  the packed payload is read as int64 (16 codes, one 16-position sub-block). Per 8 codes a
           `prmt` pair looks the magnitudes up in an 8-byte table of 2·E2M1 (the sign nibble bit
           makes `prmt` write 0, so one lookup yields the positive codes and one, with the sign
           bits flipped, the negative ones); a biased byte-wise subtraction gives four signed
           bytes. 13 instructions per 8 weights, shared by every row.
  operand  the preparation writes each term t as int8 2·E2M1 codes (M, Kg) and FP32 block scales
           per 16 positions (M, Kg/16), Kg = K padded to GEMV_PAD with zero codes
           (`gemv_operand`). A row's codes are two halves: positions 0-7 of every 16-position
           sub-block, then positions 8-15, so that both int64 words of consecutive sub-blocks lie
           next to each other, in the weight tile's register layout.
  per row  four `dp4a` per term and sub-block, one convert, one FMA into the FP32 accumulator.

Its speed and instruction counts (benchmarks/linear.py, benchmarks/sass_count.py): docs/performance.md,
"Decode GEMV".

One launch may serve up to GEMV_GROUP_MAX weights of one K that read the same activation (q/k/v,
gate/up: `fp4_weight_gemv_group`): each program picks its weight by its first output row and
writes its columns of one (M, Σ N) output, so every value is what the weight's own launch computes.
In a decoder layer that is 4 GEMV launches instead of 7 (what it saves: docs/performance.md,
"Grouped launch").

Under TRITON_INTERPRET=1 (the CPU tests) the two asm helpers are replaced by integer Triton code
with the same results (`ASM=False`); the GPU tests run the asm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.pack import unpack_nibbles
from ..formats.quantized import QuantizedTensor
from ..formats.scales import decode_e4m3
from . import cdiv, interpreting, next_pow2
from .direct import direct_call_ok
from .pdl import pdl_enabled, wait_then_release
from .plan import GEMV_AUTO_MAX_M  # rows the plan sends to the GEMV

__all__ = [
    "GEMV_AUTO_MAX_M",
    "GEMV_GROUP_MAX",
    "GEMV_MAX_M",
    "GEMV_PAD",
    "fp4_weight_gemv",
    "fp4_weight_gemv_group",
    "gemv_group_supports",
    "gemv_operand",
    "gemv_operand_of",
    "gemv_padded",
    "gemv_supports",
]

GEMV_PAD = 2048  # the operand covers whole multiples of this many K positions (the largest BLOCK_K)
GEMV_MAX_M = 2  # rows one GEMV launch serves: the rows the plan sends it (GEMV_AUTO_MAX_M)
GEMV_GROUP_MAX = 3  # weights of one input one launch serves (q/k/v; gate/up)
# launches of up to this many programs use PDL (kernels/pdl.py) unless SHARQ_PDL says otherwise:
# measured faster for Llama's qkv, o and down (4,096-6,144 programs), slower for gate_up's 28,672
GEMV_PDL_MAX_PROGRAMS = 8192

# 2·E2M1 magnitude by 3-bit code, as bytes: the prmt table (codes 0-3 low word, 4-7 high word), in _DECODE_PTX
_LUT_LO = 0x03020100
_LUT_HI = 0x0C080604


def gemv_supports(weight: QuantizedTensor) -> bool:
    """True when the GEMV reads this weight: 2-D NVFP4 with 16- or 32-wide blocks."""
    return len(weight.shape) == 2 and weight.format is Format.NVFP4 and weight.block in (16, 32)


def gemv_padded(k: int) -> int:
    """Kg: the K length of the GEMV operand (a multiple of GEMV_PAD)."""
    return max(1, -(-k // GEMV_PAD)) * GEMV_PAD


def gemv_operand(codes: torch.Tensor, scales16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMV operand of one term, built with torch (the tests' reference for the preparation):
    codes (M, K) E2M1 codes 0..15 (any integer dtype), scales16 (M, ceil(K/16)) FP32 block scale of
    each 16 positions -> (int8 (M, Kg): 2·E2M1 values, zero beyond K, position k at
    ((k div 8) mod 2) · Kg/2 + (k div 16) · 8 + k mod 8; FP32 (M, Kg/16), zero beyond)."""
    m, k = codes.shape
    kg = gemv_padded(k)
    mag = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12], dtype=torch.int8, device=codes.device)[(codes & 7).long()]
    val = torch.zeros(m, kg, dtype=torch.int8, device=codes.device)
    val[:, :k] = torch.where((codes & 8) != 0, -mag, mag)
    out = val.view(m, kg // 16, 2, 8).transpose(1, 2).reshape(m, kg)
    sc = torch.zeros(m, kg // 16, dtype=torch.float32, device=codes.device)
    sc[:, : scales16.shape[1]] = scales16.float()
    return out, sc


def gemv_operand_of(term: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`gemv_operand` of a prepared NVFP4 term (M, K) (codes and E4M3 scales of 16 or 32 blocks)."""
    if term.format is not Format.NVFP4 or len(term.shape) != 2 or term.block % 16:
        raise ValueError(
            f"the GEMV operand is built from 2-D NVFP4 terms, got {term.format.value}-{term.block} "
            f"of shape {term.shape}"
        )
    m, k = term.shape
    codes = unpack_nibbles(term.codes)[:, :k]
    return gemv_operand(codes, decode_e4m3(term.scales).repeat_interleave(term.block // 16, dim=1))


def _decode_ptx() -> str:
    """PTX of `_signed_bytes`: per int32 word (8 codes), the sign bits flipped (n) and both words
    shifted to their upper 4 codes (h, nh); per 4 codes a `prmt` of the magnitude table with the
    codes as selectors (negative codes read 0) and one with the flipped codes (positive codes read
    0), then the byte-wise difference, biased by 0x80 per byte so that no borrow crosses a byte."""

    def four(sel: str, flipped: str, out: str) -> str:
        return (
            f"prmt.b32 p, t0, t1, {sel}; prmt.b32 q, t0, t1, {flipped}; or.b32 p, p, 0x80808080; "
            f"sub.u32 p, p, q; xor.b32 {out}, p, 0x80808080;"
        )

    body = [
        f"xor.b32 n, {word}, 0x88888888; shr.u32 h, {word}, 16; shr.u32 nh, n, 16; "
        + four(word, "n", lo)
        + " "
        + four("h", "nh", hi)
        for word, lo, hi in (("w0", "$0", "$1"), ("w1", "$2", "$3"))
    ]
    return (
        "{ .reg .b32 w0, w1, n, h, nh, p, q, t0, t1; mov.b64 {w0, w1}, $4; "
        f"mov.b32 t0, {_LUT_LO:#010x}; mov.b32 t1, {_LUT_HI:#010x}; " + " ".join(body) + " }"
    )


_DECODE_PTX = tl.constexpr(_decode_ptx())


@triton.jit
def _signed_bytes(w, ASM: tl.constexpr):
    """int64 (16 E2M1 codes, code i in nibble i) -> four int32, each 4 signed bytes 2·E2M1 of codes
    0-3, 4-7, 8-11, 12-15."""
    if ASM:
        return tl.inline_asm_elementwise(
            asm=_DECODE_PTX,
            constraints="=r,=r,=r,=r,l",
            args=[w],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )
    else:
        return _bytes4(w, 0), _bytes4(w, 16), _bytes4(w, 32), _bytes4(w, 48)


@triton.jit
def e2m1_doubled(code):
    """E2M1 codes (int32 0..15) -> 2·E2M1 value as int32 in {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12}."""
    m = code & 7
    mag = tl.where(m == 7, 12, tl.where(m == 6, 8, tl.where(m == 5, 6, m)))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _bytes4(w, shift: tl.constexpr):
    """Interpreter twin of the asm: 4 codes from bit `shift` of int64 w, as 4 signed bytes in an int32."""
    out = tl.zeros(w.shape, dtype=tl.int32)
    for i in tl.static_range(4):
        val = e2m1_doubled(((w >> (shift + 4 * i)) & 15).to(tl.int32))
        out = out | ((val & 255) << (8 * i))
    return out


@triton.jit
def _dot16(w0, w1, w2, w3, xa, xb, ASM: tl.constexpr):
    """Σ of 16 int8 products: the signed bytes w0..w3 (int32) against the activation's two int64
    words xa (positions 0-7), xb (8-15). int32."""
    if ASM:
        return tl.inline_asm_elementwise(
            asm="""
            {
            .reg .b32 a0, a1, a2, a3;
            mov.b64 {a0, a1}, $5;
            mov.b64 {a2, a3}, $6;
            dp4a.s32.s32 $0, $1, a0, 0;
            dp4a.s32.s32 $0, $2, a1, $0;
            dp4a.s32.s32 $0, $3, a2, $0;
            dp4a.s32.s32 $0, $4, a3, $0;
            }
            """,
            constraints="=r,r,r,r,r,l,l",
            args=[w0, w1, w2, w3, xa, xb],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    else:
        return (
            _dot4(w0, xa.to(tl.int32))
            + _dot4(w1, (xa >> 32).to(tl.int32))
            + _dot4(w2, xb.to(tl.int32))
            + _dot4(w3, (xb >> 32).to(tl.int32))
        )


@triton.jit
def _dot4(a, b):
    """Interpreter twin of dp4a.s32.s32 without the addend: Σ of the 4 signed byte products."""
    s = tl.zeros(a.shape, dtype=tl.int32)
    for i in tl.static_range(4):
        s += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)
    return s


@triton.jit
def _load(ptrs, mask):
    """tl.load, masked (zero fill) unless `mask` is None."""
    if mask is None:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=0)


@triton.jit
def _gemv_step(
    acc,
    k0,
    bc_ptr,
    bs_ptr,
    rc_ptr,
    rs_ptr,
    w_ptr,
    ws_ptr,
    offs_n,
    n_ok,
    m3,
    ok3,
    KS,
    KSW,
    stride_x,
    stride_xs,
    stride_w,
    stride_ws,
    TWO: tl.constexpr,
    SPB: tl.constexpr,
    ASM: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_K: tl.constexpr,
    MASK_M: tl.constexpr,
    NS: tl.constexpr,
):
    """acc (BLOCK_M, BLOCK_N, NS) FP32 += the products of the NS 16-position sub-blocks from k0."""
    ks = k0 // 16 + tl.arange(0, NS)  # (NS,) sub-block index
    w_ok = None
    if MASK_N:
        w_ok = n_ok[:, None] & (ks[None, :] >= 0)
    if MASK_K:
        w_ok = (ks[None, :] < KS) if w_ok is None else w_ok & (ks[None, :] < KS)
    w = _load(w_ptr + offs_n[:, None] * stride_w + ks[None, :], w_ok)  # (BLOCK_N, NS) int64
    kb = ks // SPB
    s_ok = None
    if MASK_N:
        s_ok = n_ok[:, None] & (kb[None, :] >= 0)
    if MASK_K:
        s_ok = (kb[None, :] < KSW) if s_ok is None else s_ok & (kb[None, :] < KSW)
    sbits = _load(ws_ptr + offs_n[:, None] * stride_ws + kb[None, :], s_ok).to(tl.int32)
    # E4M3 bits in a float16 (magnitude bits shifted by 7) are the scale · 2^-8, exactly
    sw = ((sbits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)[None, :, :]
    w0, w1, w2, w3 = _signed_bytes(w, ASM)
    w0, w1, w2, w3 = w0[None], w1[None], w2[None], w3[None]
    so = m3 * stride_xs + ks[None, None, :]  # (BLOCK_M, BLOCK_N, NS)
    xo = m3 * stride_x + ks[None, None, :]  # positions 0-7 of the sub-block; 8-15 half a row later
    x_ok = ok3 if MASK_M else None
    xa = _load(bc_ptr + xo, x_ok)
    xb = _load(bc_ptr + xo + stride_xs, x_ok)
    st = _load(bs_ptr + so, x_ok)
    acc += _dot16(w0, w1, w2, w3, xa, xb, ASM).to(tl.float32) * (st * sw)
    if TWO:
        xa = _load(rc_ptr + xo, x_ok)
        xb = _load(rc_ptr + xo + stride_xs, x_ok)
        st = _load(rs_ptr + so, x_ok)
        acc += _dot16(w0, w1, w2, w3, xa, xb, ASM).to(tl.float32) * (st * sw)
    return acc


@triton.jit
def _member(
    row0,
    N0,
    N1,
    w_ptr,
    ws_ptr,
    sw_ptr,
    bias_ptr,
    w1_ptr,
    ws1_ptr,
    sw1_ptr,
    bias1_ptr,
    w2_ptr,
    ws2_ptr,
    sw2_ptr,
    bias2_ptr,
    GROUP: tl.constexpr,
):
    """The weight a grouped launch's program reads: the member whose rows hold global row `row0`
    (members 0, 1, 2 own rows [0, N0), [N0, N0 + N1), [N0 + N1, ...)). Returns its weight codes,
    scales, global scale and bias pointers and its first global row."""
    base = row0 * 0
    if GROUP >= 2:
        if row0 >= N0:
            w_ptr, ws_ptr, sw_ptr, bias_ptr, base = w1_ptr, ws1_ptr, sw1_ptr, bias1_ptr, N0
    if GROUP >= 3:
        if row0 >= N0 + N1:
            w_ptr, ws_ptr, sw_ptr, bias_ptr, base = w2_ptr, ws2_ptr, sw2_ptr, bias2_ptr, N0 + N1
    return w_ptr, ws_ptr, sw_ptr, bias_ptr, base


@triton.jit
def _gemv_kernel(
    bc_ptr,
    bs_ptr,
    rc_ptr,
    rs_ptr,
    w_ptr,
    ws_ptr,
    sw_ptr,
    bias_ptr,
    w1_ptr,
    ws1_ptr,
    sw1_ptr,
    bias1_ptr,
    w2_ptr,
    ws2_ptr,
    sw2_ptr,
    bias2_ptr,
    sx_ptr,
    y_ptr,
    M,
    N,
    N0,
    N1,
    KS,
    KSW,
    stride_x,
    stride_xs,
    stride_w,
    stride_ws,
    stride_sx,
    stride_y,
    TWO: tl.constexpr,
    WB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ASM: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
    PDL: tl.constexpr,
):
    """bc/rc: int8 (M, Kg) codes viewed as int64 (M, Kg/8) (two halves: positions 0-7, then 8-15, of
    every sub-block; `gemv_operand`); bs/rs FP32 (M, Kg/16); per member g of the GROUP (1 to 3) weights
    that share K: w int64 (N_g, KS) (KS sub-blocks of 16 codes), ws uint8 (N_g, KSW) E4M3 scales per
    WB, sw FP32 () global scale, bias (N_g,); y (M, N), N = Σ N_g, member g's outputs in its columns.
    N0, N1: the first two members' rows (a grouped launch needs every N_g a multiple of BLOCK_N, so no
    program straddles two members). EVEN_N: N is a multiple of BLOCK_N; EVEN_M: M = BLOCK_M. The K
    steps that lie inside the weight run unmasked, the last one masked.
    PDL (`pdl.py`): the program waits for the preparation, then lets the next kernel launch."""
    SPB: tl.constexpr = WB // 16  # sub-blocks per weight block
    NS: tl.constexpr = BLOCK_K // 16  # sub-blocks per K step
    pid_n = tl.program_id(0)
    row0 = pid_n * BLOCK_N
    w_ptr, ws_ptr, sw_ptr, bias_ptr, base = _member(
        row0,
        N0,
        N1,
        w_ptr,
        ws_ptr,
        sw_ptr,
        bias_ptr,
        w1_ptr,
        ws1_ptr,
        sw1_ptr,
        bias1_ptr,
        w2_ptr,
        ws2_ptr,
        sw2_ptr,
        bias2_ptr,
        GROUP,
    )
    rows = tl.arange(0, BLOCK_M)
    m_ok = rows < M
    cols = row0 + tl.arange(0, BLOCK_N)  # global output columns
    n_ok = cols < N
    offs_n = cols - base  # the member's weight rows
    if PDL:
        wait_then_release()
    # the activation is read in the full (rows, BLOCK_N, NS) shape (the same address for every n),
    # which gives it the tile's register layout: no layout conversion in the loop
    m3 = rows[:, None, None] + 0 * offs_n[None, :, None] + 0 * tl.arange(0, NS)[None, None, :]
    total = _gemv_rows(
        bc_ptr,
        bs_ptr,
        rc_ptr,
        rs_ptr,
        w_ptr,
        ws_ptr,
        offs_n,
        n_ok,
        m3,
        m3 < M,
        KS,
        KSW,
        stride_x,
        stride_xs,
        stride_w,
        stride_ws,
        TWO,
        SPB,
        ASM,
        EVEN_N,
        EVEN_M,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        NS,
    )
    s_x = tl.load(sx_ptr + rows * stride_sx, mask=m_ok, other=0.0)
    y = _gemv_epilogue(total, s_x, tl.load(sw_ptr), bias_ptr, offs_n, n_ok, HAS_BIAS)
    tl.store(
        y_ptr + rows[:, None] * stride_y + cols[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


@triton.jit
def _gemv_rows(
    bc_ptr,
    bs_ptr,
    rc_ptr,
    rs_ptr,
    w_ptr,
    ws_ptr,
    offs_n,
    n_ok,
    m3,
    ok3,
    KS,
    KSW,
    stride_x,
    stride_xs,
    stride_w,
    stride_ws,
    TWO: tl.constexpr,
    SPB: tl.constexpr,
    ASM: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NS: tl.constexpr,
):
    """Σ over K of the integer block products: FP32 (BLOCK_M, BLOCK_N), the rows of the activation
    operand that `m3` (BLOCK_M, BLOCK_N, NS) names against weight rows `offs_n`. The one accumulation
    of every GEMV launch (`_gemv_kernel`, and the experts' routed GEMV in gemv_experts.py): FP32
    lanes per sub-block position, BLOCK_K-long steps, the last one masked, then one sum over lanes."""
    acc = tl.zeros((BLOCK_M, BLOCK_N, NS), dtype=tl.float32)
    full = (KS * 16) // BLOCK_K * BLOCK_K
    for k0 in range(0, full, BLOCK_K):
        acc = _gemv_step(
            acc,
            k0,
            bc_ptr,
            bs_ptr,
            rc_ptr,
            rs_ptr,
            w_ptr,
            ws_ptr,
            offs_n,
            n_ok,
            m3,
            ok3,
            KS,
            KSW,
            stride_x,
            stride_xs,
            stride_w,
            stride_ws,
            TWO,
            SPB,
            ASM,
            not EVEN_N,
            False,
            not EVEN_M,
            NS,
        )
    if full < KS * 16:
        acc = _gemv_step(
            acc,
            full,
            bc_ptr,
            bs_ptr,
            rc_ptr,
            rs_ptr,
            w_ptr,
            ws_ptr,
            offs_n,
            n_ok,
            m3,
            ok3,
            KS,
            KSW,
            stride_x,
            stride_xs,
            stride_w,
            stride_ws,
            TWO,
            SPB,
            ASM,
            not EVEN_N,
            True,
            not EVEN_M,
            NS,
        )
    return tl.sum(acc, axis=2)


@triton.jit
def _gemv_epilogue(total, s_x, s_w, bias_ptr, offs_n, n_ok, HAS_BIAS: tl.constexpr):
    """y (BLOCK_M, BLOCK_N) FP32 = s_x · s_w · total / 4 · 2^8 + bias: the codes are 2·E2M1 on both
    sides (/4) and the weight scales were read as scale · 2^-8."""
    y = (s_x[:, None] * (s_w * 64.0)) * total
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    return y


def _tiles(m: int, n: int, k: int) -> dict:
    """Launch tiling by shape, the best of benchmarks/tune_gemv.py's sweeps summed over the four
    Llama-3.1-8B layers (timings: docs/performance.md): one weight row per 1-warp program and
    1024-long K steps at M = 1; 8 rows on 2 warps at M = 2."""
    if m == 1:
        return dict(BLOCK_N=1, BLOCK_K=1024, num_warps=1)
    return dict(BLOCK_N=8, BLOCK_K=1024, num_warps=2)


def gemv_group_supports(weights, m: int, *, biases=None, tiles: dict | None = None) -> bool:
    """True when one GEMV launch serves all of `weights` for `m` rows: 1 to GEMV_GROUP_MAX NVFP4
    weights that the GEMV reads, of one K, weight block and device, and (two or more of them) each N
    a multiple of the launch's BLOCK_N, so that no program straddles two weights; `biases` (one per
    weight, when given) all None or all of one dtype."""
    if not 1 <= len(weights) <= GEMV_GROUP_MAX or not 1 <= m <= GEMV_MAX_M:
        return False
    if biases is not None and (
        len(biases) != len(weights)
        or (any(b is not None for b in biases) and len({None if b is None else b.dtype for b in biases}) > 1)
    ):
        return False
    first = weights[0]
    if not all(
        gemv_supports(w)
        and w.shape[1] == first.shape[1]
        and w.block == first.block
        and w.device == first.device
        and w.codes.shape[1] == first.codes.shape[1]
        for w in weights
    ):
        return False
    block_n = (tiles or {}).get("BLOCK_N") or _tiles(m, 0, 0)["BLOCK_N"]
    return len(weights) == 1 or all(w.shape[0] % block_n == 0 for w in weights)


def fp4_weight_gemv(
    terms,
    s_x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """y (M, N) = s_x · s_w · Σ_t t · deq(weight)ᵀ + bias, in `out_dtype`, for M ≤ GEMV_MAX_M.

    terms: the GEMV operand of 1 or 2 terms, flat: (codes int8 (M, Kg), scales FP32 (M, Kg/16)) per
    term (`gemv_operand`, as the Triton preparation writes them); s_x FP32 () or (M, 1); weight
    NVFP4-16/32 (N, K).
    """
    return fp4_weight_gemv_group(terms, s_x, [weight], [bias], out_dtype, tiles=tiles)


def fp4_weight_gemv_group(
    terms,
    s_x: torch.Tensor,
    weights,
    biases,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """`fp4_weight_gemv` of one activation against 1 to GEMV_GROUP_MAX weights in one launch (q/k/v,
    gate/up): y (M, N_0 + N_1 + ...) in `out_dtype`, weight g's outputs in columns
    [N_0 + ... + N_{g-1}, ... + N_g), each as `fp4_weight_gemv` computes it alone.

    weights: NVFP4-16/32 (N_g, K) of one K and block (`gemv_group_supports`); biases: one per weight,
    all None or all (N_g,) tensors of one dtype.
    """
    weights, biases = list(weights), list(biases)
    if not weights or len(weights) > GEMV_GROUP_MAX or len(biases) != len(weights):
        raise ValueError(
            f"the GEMV serves 1 to {GEMV_GROUP_MAX} weights with one bias (or None) each, got "
            f"{len(weights)} weights and {len(biases)} biases"
        )
    for weight in weights:
        if not isinstance(weight, QuantizedTensor) or not gemv_supports(weight):
            what = (
                f"{weight.format.value}-{weight.block} of shape {weight.shape}"
                if isinstance(weight, QuantizedTensor)
                else type(weight).__name__
            )
            raise ValueError(f"the Triton GEMV reads 2-D NVFP4-16/32 weights, got {what}")
    k = weights[0].shape[1]
    if len(terms) not in (2, 4):
        raise ValueError(f"GEMV terms must be (codes, scales) of 1 or 2 terms, got {len(terms)} tensors")
    m = terms[0].shape[0] if terms[0].dim() == 2 else -1
    kg = gemv_padded(k)
    for i, t in enumerate(terms):
        want = (torch.int8, (m, kg)) if i % 2 == 0 else (torch.float32, (m, kg // 16))
        if (t.dtype, tuple(t.shape)) != want or not t.is_contiguous():
            raise ValueError(
                f"GEMV operand {i} must be a contiguous {want[0]} {want[1]} tensor for K={k}, got "
                f"{t.dtype} {tuple(t.shape)}"
            )
        if t.device != weights[0].device:
            raise ValueError(f"GEMV operand on {t.device}, weight on {weights[0].device}")
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"the GEMV serves 1 to {GEMV_MAX_M} rows, got {m}")
    if not gemv_group_supports(weights, m, tiles=tiles):
        raise ValueError(
            f"one GEMV launch cannot serve weights of shapes {[tuple(w.shape) for w in weights]} "
            f"(blocks {[w.block for w in weights]}) at M={m}: they need one K, block and device, and "
            "each N a multiple of BLOCK_N"
        )
    if s_x.numel() not in (1, m):
        raise ValueError(f"s_x must hold one scale or one per row ({m}), got shape {tuple(s_x.shape)}")
    if any(b is None for b in biases) and any(b is not None for b in biases):
        raise ValueError("a grouped GEMV takes a bias for every weight or for none")
    for weight, bias in zip(weights, biases):
        if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != biases[0].dtype):
            raise ValueError(
                f"bias must have shape ({weight.shape[0]},) and one dtype for the group, got "
                f"{bias.dtype} {tuple(bias.shape)}"
            )
    t = tiles or {}
    two = len(terms) == 4
    op = _gemv_impl if direct_call_ok(*terms, s_x) else torch.ops.sharq.fp4_weight_gemv
    return op(
        terms[0],
        terms[1],
        terms[2] if two else None,
        terms[3] if two else None,
        [w.codes for w in weights],
        [w.scales for w in weights],
        s_x.reshape(-1).to(torch.float32),
        [w.global_scale for w in weights],
        [b for b in biases if b is not None],
        weights[0].block,
        out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS],
    )


_TILE_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps")


def _gemv_impl(
    b_codes: torch.Tensor,
    b_scales: torch.Tensor,
    r_codes: torch.Tensor | None,
    r_scales: torch.Tensor | None,
    w_codes: list[torch.Tensor],
    w_scales: list[torch.Tensor],
    s_x: torch.Tensor,
    s_w: list[torch.Tensor],
    biases: list[torch.Tensor],
    wb: int,
    out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The GEMV as a torch op (torch.compile, CUDA graphs). b/r codes int8 (M, Kg), scales FP32
    (M, Kg/16); per weight g (1 to 3): w_codes (N_g, Kp/2), w_scales (N_g, Kp/wb) uint8, s_w FP32 ();
    s_x FP32 (1,) or (M,); biases: empty or (N_g,) per weight. Returns (M, Σ N_g). `tiles`: BLOCK_N,
    BLOCK_K, num_warps; 0 = chosen by shape."""
    m = b_codes.shape[0]
    sizes = [c.shape[0] for c in w_codes]
    n = sum(sizes)
    y = torch.empty(m, n, dtype=out_dtype, device=b_codes.device)
    if n == 0 or m == 0:
        return y
    cfg = _tiles(m, n, b_codes.shape[1])
    cfg.update({key: v for key, v in zip(_TILE_KEYS, tiles) if v})
    if GEMV_PAD % cfg["BLOCK_K"] or cfg["BLOCK_K"] % wb:
        raise ValueError(f"BLOCK_K {cfg['BLOCK_K']} must divide {GEMV_PAD} and be a multiple of the weight block {wb}")
    group = len(w_codes)
    if group > 1 and any(size % cfg["BLOCK_N"] for size in sizes):
        raise ValueError(f"a grouped GEMV needs every N a multiple of BLOCK_N {cfg['BLOCK_N']}, got {sizes}")
    # (N_g, Kp/16): Kp is a multiple of 16, the rows 8-byte aligned
    words = [c.view(torch.int64) for c in w_codes] + [w_codes[0].view(torch.int64)] * (GEMV_GROUP_MAX - group)
    scales = list(w_scales) + [w_scales[0]] * (GEMV_GROUP_MAX - group)
    globals_ = [g.reshape(1) for g in s_w] + [s_w[0].reshape(1)] * (GEMV_GROUP_MAX - group)
    bias = list(biases) + [biases[0]] * (GEMV_GROUP_MAX - group) if biases else [s_x] * GEMV_GROUP_MAX
    two = r_codes is not None
    programs = cdiv(n, cfg["BLOCK_N"])
    pdl = pdl_enabled(b_codes.device, default=programs <= GEMV_PDL_MAX_PROGRAMS)
    members = [a for g in range(GEMV_GROUP_MAX) for a in (words[g], scales[g], globals_[g], bias[g])]
    _gemv_kernel[(programs,)](
        b_codes.view(torch.int64),
        b_scales,
        r_codes.view(torch.int64) if two else b_codes.view(torch.int64),
        r_scales if two else b_scales,
        *members,
        s_x,
        y,
        m,
        n,
        sizes[0],
        sizes[1] if group > 1 else 0,
        words[0].shape[1],
        w_scales[0].shape[1],
        b_codes.shape[1] // 8,
        b_scales.shape[1],
        words[0].stride(0),
        w_scales[0].stride(0),
        1 if s_x.numel() > 1 else 0,
        y.stride(0),
        TWO=two,
        WB=wb,
        HAS_BIAS=bool(biases),
        ASM=not interpreting(),
        EVEN_N=n % cfg["BLOCK_N"] == 0,
        EVEN_M=m == next_pow2(m),
        BLOCK_M=next_pow2(m),
        GROUP=group,
        PDL=pdl,
        num_stages=1,
        **cfg,
        **({"launch_pdl": True} if pdl else {}),
    )
    return y


_gemv_op = torch.library.custom_op("sharq::fp4_weight_gemv", mutates_args=())(_gemv_impl)


@_gemv_op.register_fake
def _(b_codes, b_scales, r_codes, r_scales, w_codes, w_scales, s_x, s_w, biases, wb, out_dtype, tiles):
    return b_codes.new_empty(b_codes.shape[0], sum(c.shape[0] for c in w_codes), dtype=out_dtype)
