"""The FP4 weight decode the GEMMs share: a packed E2M1 payload + block scales -> exact bf16 tiles.

  _weight_tile     FP32 decode (NVFP4 and MXFP4): a code's 3 magnitude bits placed in a float16's
                   exponent/mantissa give value · 2^-14, an E4M3 scale's 7 bits likewise scale · 2^-8;
                   their FP32 product times 2^22 is exact, and so is the cast to bf16.
  _weight_halves   packed decode (NVFP4): inline asm turns 4 payload bytes into 8 bf16 weights in
                   packed registers, value · scale · 2^-7 exactly, the even and the odd K positions as
                   two tiles (`_BF16_HALVES_PTX`); under the interpreter its per-element twin.

Used by gemm_fp4.py and dequant_fp4.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor

__all__ = ["gemm_supports"]


def gemm_supports(weight: QuantizedTensor) -> bool:
    """True when the kernel reads this weight: NVFP4 (16/32 blocks) or MXFP4 (32 blocks), 2-D."""
    return len(weight.shape) == 2 and (
        (weight.format is Format.NVFP4 and weight.block in (16, 32))
        or (weight.format is Format.MXFP4 and weight.block == 32)
    )


@triton.jit
def _weight_tile(
    wc_ptr,
    ws_ptr,
    offs_n,
    n_ok,
    k0,
    stride_wc,
    stride_ws,
    KW,
    KS,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WB: tl.constexpr,
    MX: tl.constexpr,
):
    """bf16 (BLOCK_N, BLOCK_K) dequantized weight tile (scaled domain, s_w not applied)."""
    kc = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(
        wc_ptr + offs_n[:, None] * stride_wc + kc[None, :], mask=n_ok[:, None] & (kc[None, :] < KW), other=0
    ).to(tl.int16)
    codes = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_N, BLOCK_K))  # low nibble first
    mag16 = (((codes & 8) << 12) | ((codes & 7) << 9)).to(tl.float16, bitcast=True)  # e2m1 · 2^-14
    ks = k0 // WB + tl.arange(0, BLOCK_K // WB)
    bits = tl.load(
        ws_ptr + offs_n[:, None] * stride_ws + ks[None, :], mask=n_ok[:, None] & (ks[None, :] < KS), other=0
    ).to(tl.int32)
    if MX:  # E8M0: 2^(bits - 127); bits 0 is 2^-127 (an FP32 subnormal)
        scale = tl.where(bits == 0, 2.0**-127, ((tl.maximum(bits, 1)) << 23).to(tl.float32, bitcast=True))
        scale = scale * 16384.0
    else:  # E4M3 (finite: weights are checked before quantization): scale · 2^-8 as a float16
        scale = ((bits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 4194304.0
    scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK_N, BLOCK_K // WB, WB)), (BLOCK_N, BLOCK_K))
    return (mag16.to(tl.float32) * scale).to(tl.bfloat16)


# PTX of `_bf16_weight_halves` (pack 4: one b32 of 4 payload bytes -> their 4 even-position and
# 4 odd-position weights, bf16, in 2 b32 each). The low nibbles of the word (even positions) and
# the high nibbles (odd positions) are first isolated one per byte; prmt spreads two bytes into the
# two 16-bit halves; times 0x1040 puts a nibble at bits 6-9 and 12-15 of its half, and the mask
# keeps the magnitude bits at 6-8 and the sign at 15: the E2M1 value times 2^-126 as a bf16 (normal
# and subnormal codes alike). One bf16x2 multiply by the block scale times 2^119 (exact: at most 6
# significant bits, |value| in [2^-17, 21], normal) gives value · scale · 2^-7.
_BF16_HALVES_PTX = tl.constexpr(
    "{ .reg .b32 s01, s23, lo, hi, x; cvt.rn.bf16x2.f32 s01, $6, $5; cvt.rn.bf16x2.f32 s23, $8, $7; "
    "and.b32 lo, $4, 0x0F0F0F0F; "
    "shr.b32 hi, $4, 4; and.b32 hi, hi, 0x0F0F0F0F; "
    + " ".join(
        f"prmt.b32 x, {src}, 0, {sel}; mul.lo.u32 x, x, 0x1040; and.b32 x, x, 0x81C081C0; mul.rn.bf16x2 {out}, x, {sc};"
        for src, sel, out, sc in (
            ("lo", "0x4140", "$0", "s01"),
            ("lo", "0x4342", "$1", "s23"),
            ("hi", "0x4140", "$2", "s01"),
            ("hi", "0x4342", "$3", "s23"),
        )
    )
    + " }"
)


@triton.jit
def _bf16_weight_halves(packed, scale):
    """uint8 payload (..., B) and FP32 (..., B) block scale · 2^119 of each byte -> (weights of the
    low nibbles, of the high nibbles), bf16 (..., B) each: E2M1 · scale · 2^-7 exactly."""
    return tl.inline_asm_elementwise(
        asm=_BF16_HALVES_PTX,
        constraints="=r,=r,=r,=r,r,r,r,r,r",
        args=[packed, scale],
        dtype=(tl.bfloat16, tl.bfloat16),
        is_pure=True,
        pack=4,
    )


@triton.jit
def _e2m1_bits_times(code, scale):
    """Interpreter twin of one nibble of the asm: E2M1 code (int32 0..15) -> bf16 E2M1 · scale · 2^-126,
    through the same bits (magnitude at 6-8, sign at 15 of a bf16: the top half of an FP32)."""
    bits = ((code * 0x1040) & 0x81C0) << 16
    return (bits.to(tl.float32, bitcast=True) * scale).to(tl.bfloat16)


@triton.jit
def _bf16_weight_halves_twin(packed, scale):
    """`_bf16_weight_halves` element by element, for the interpreter (the CPU tests)."""
    b = packed.to(tl.int32)
    return _e2m1_bits_times(b & 15, scale), _e2m1_bits_times(b >> 4, scale)


@triton.jit
def _weight_halves(
    wc_ptr,
    ws_ptr,
    offs_n,
    n_ok,
    k0,
    stride_wc,
    stride_ws,
    KW,
    KS,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WB: tl.constexpr,
    ASM: tl.constexpr,
):
    """The NVFP4 weight tile at K positions k0 … k0 + BLOCK_K times 2^-7 (scaled domain, s_w not
    applied), exact, as its even and its odd K positions: two bf16 (BLOCK_N, BLOCK_K / 2). ASM: the
    packed-register decode (GPU); else its per-element twin (the interpreter)."""
    kc = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(
        wc_ptr + offs_n[:, None] * stride_wc + kc[None, :], mask=n_ok[:, None] & (kc[None, :] < KW), other=0
    )
    ks = k0 // WB + tl.arange(0, BLOCK_K // WB)
    bits = tl.load(
        ws_ptr + offs_n[:, None] * stride_ws + ks[None, :], mask=n_ok[:, None] & (ks[None, :] < KS), other=0
    ).to(tl.int32)
    # E4M3 magnitude bits in a float16 are scale · 2^-8; times 2^127 in FP32 (exact)
    sc = ((bits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 1.7014118346046923e38
    sc = tl.reshape(tl.broadcast_to(sc[:, :, None], (BLOCK_N, BLOCK_K // WB, WB // 2)), (BLOCK_N, BLOCK_K // 2))
    if ASM:
        return _bf16_weight_halves(packed, sc)
    else:
        return _bf16_weight_halves_twin(packed, sc)


@triton.jit
def _group_member(row0, wc_ptr, ws_ptr, wc1_ptr, ws1_ptr, wc2_ptr, ws2_ptr, N0, N1, GROUPS: tl.constexpr):
    """(codes pointer, scales pointer, first row) of the weight that holds row `row0` of GROUPS weights
    side by side (rows [0, N0) the first, [N0, N0 + N1) the second, the rest the third)."""
    wc = wc_ptr
    ws = ws_ptr
    base = 0
    if GROUPS > 1:
        if row0 >= N0:
            wc = wc1_ptr
            ws = ws1_ptr
            base = N0
            if GROUPS > 2:
                if row0 >= N0 + N1:
                    wc = wc2_ptr
                    ws = ws2_ptr
                    base = N0 + N1
    return wc, ws, base
