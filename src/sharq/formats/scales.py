"""Block-scale formats: E4M3 (NVFP4), E8M0 (MXFP4), E6M2 (HiF4) — rounding, bit encode/decode.

All functions take and return FP32 tensors (scale *values*) or uint8 tensors (scale *bits*).
Rounding is done explicitly in FP32 (exact: only power-of-two scaling and `torch.round`, which
rounds half to even), so the rule is readable and identical on every device.
"""

from __future__ import annotations

import torch

__all__ = [
    "round_minifloat",
    "round_e4m3",
    "encode_e4m3",
    "decode_e4m3",
    "E4M3_MAX",
    "e8m0_exponent",
    "encode_e8m0",
    "decode_e8m0",
    "round_e6m2",
    "encode_e6m2",
    "decode_e6m2",
    "E6M2_MIN",
    "E6M2_MAX",
]

E4M3_MAX = 448.0
E6M2_BIAS = 48
E6M2_MIN = 2.0**-48  # no zero and no subnormals: the smallest code is 2^-48 * 1.0
E6M2_MAX = 2.0**15 * 1.5  # 49152; code 0b111111_11 (2^15 * 1.75) is NaN
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127
E8M0_NAN = 255


def round_minifloat(x: torch.Tensor, *, mantissa_bits: int, min_exponent: int, max_value: float) -> torch.Tensor:
    """Round non-negative FP32 `x` to a small float, round-to-nearest-even, saturating.

    The target has `mantissa_bits` explicit mantissa bits, normal numbers down to
    `2**min_exponent` and subnormals below it (spacing `2**(min_exponent - mantissa_bits)`).
    Values above `max_value` saturate to it. NaN and ±Inf give NaN (these formats have no Inf).
    """
    x = x.float()
    _, exp = torch.frexp(x)  # x = m * 2**exp, m in [0.5, 1): floor(log2 x) = exp - 1
    exp = torch.clamp(exp - 1, min=min_exponent)  # subnormal range shares the lowest exponent
    ulp = torch.ldexp(torch.ones_like(x), (exp - mantissa_bits).to(torch.int32))
    rounded = torch.round(x / ulp) * ulp  # torch.round: half to even; x / ulp is exact
    rounded = torch.clamp(rounded, max=max_value)
    return torch.where(torch.isfinite(x), rounded, torch.full_like(x, float("nan")))


# --- E4M3 (float8_e4m3fn): bias 7, normals down to 2^-6, subnormals to 2^-9, max 448 -----------
def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """FP32 `x >= 0` rounded RTNE to E4M3 (subnormals kept, saturating at 448, NaN for non-finite)."""
    return round_minifloat(x, mantissa_bits=3, min_exponent=-6, max_value=E4M3_MAX)


def encode_e4m3(values: torch.Tensor) -> torch.Tensor:
    """E4M3-representable FP32 values (NaN allowed) -> uint8 bit patterns of float8_e4m3fn."""
    return values.to(torch.float8_e4m3fn).view(torch.uint8)


def decode_e4m3(bits: torch.Tensor) -> torch.Tensor:
    """uint8 float8_e4m3fn bit patterns -> FP32 values."""
    return bits.view(torch.float8_e4m3fn).float()


# --- E8M0 (MX shared exponent): value 2^(code - 127), code 255 = NaN -----------------------------
def e8m0_exponent(amax: torch.Tensor) -> torch.Tensor:
    """MXFP4 scale exponent `floor(log2 amax) - 2`, clamped to [-127, 127] (int32).

    amax = 0 gives -127 (the codes of an all-zero block are 0 whatever the scale).
    """
    _, exp = torch.frexp(amax.float())  # floor(log2 amax) = exp - 1 for amax > 0
    exp = (exp - 1 - 2).to(torch.int32)
    exp = torch.where(amax > 0, exp, torch.full_like(exp, E8M0_MIN_EXP))
    return torch.clamp(exp, E8M0_MIN_EXP, E8M0_MAX_EXP)


def encode_e8m0(exponent: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """int32 exponents -> uint8 codes (exponent + 127); non-finite `amax` -> 255 (NaN)."""
    code = (exponent + 127).to(torch.uint8)
    return torch.where(torch.isfinite(amax), code, torch.full_like(code, E8M0_NAN))


def decode_e8m0(bits: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 codes -> FP32 scale values 2^(code - 127); 255 -> NaN."""
    exp = bits.to(torch.int32) - 127
    value = torch.ldexp(torch.ones(bits.shape, dtype=torch.float32, device=bits.device), exp)
    return torch.where(bits == E8M0_NAN, torch.full_like(value, float("nan")), value)


# --- E6M2 (HiF4 level-1 scale): unsigned, bias 48, exponents [-48, 15], no zero/Inf/subnormals ---
def round_e6m2(x: torch.Tensor) -> torch.Tensor:
    """FP32 `x >= 0` rounded RTNE to E6M2: below 2^-48 -> 2^-48 (no zero), above 49152 -> 49152."""
    x = x.float()
    clamped = torch.clamp(x, min=E6M2_MIN)  # NaN stays NaN
    return round_minifloat(clamped, mantissa_bits=2, min_exponent=-48, max_value=E6M2_MAX)


def encode_e6m2(values: torch.Tensor) -> torch.Tensor:
    """E6M2-representable FP32 values (NaN allowed) -> uint8 codes `eeeeee_mm`; NaN -> 0xFF."""
    finite = torch.isfinite(values)
    safe = torch.where(finite, values, torch.full_like(values, E6M2_MIN))
    mant, exp = torch.frexp(safe)  # safe = mant * 2**exp, mant in [0.5, 1)
    e_field = (exp - 1 + E6M2_BIAS).to(torch.int32)
    m_field = torch.round((mant * 2 - 1) * 4).to(torch.int32)  # 1.mm -> mm
    code = (e_field * 4 + m_field).to(torch.uint8)
    return torch.where(finite, code, torch.full_like(code, 0xFF))


def decode_e6m2(bits: torch.Tensor) -> torch.Tensor:
    """uint8 E6M2 codes -> FP32 values 2^(e - 48) * (1 + m/4); 0xFF -> NaN."""
    b = bits.to(torch.int32)
    mant = 1.0 + (b & 3).float() / 4.0
    value = torch.ldexp(mant, (b >> 2) - E6M2_BIAS)
    return torch.where(bits == 0xFF, torch.full_like(value, float("nan")), value)
