"""4-bit element formats: E2M1 (NVFP4/MXFP4) and S1P2 (HiF4) — rounding to codes and decoding.

A code is a uint8 in 0..15: bits 0-2 the magnitude index, bit 3 the sign. Zero is always code 0
(a value that rounds to magnitude 0 never carries the sign bit), so codes are canonical.
"""

from __future__ import annotations

import torch

__all__ = [
    "E2M1_MAGNITUDES",
    "E2M1_MAX",
    "S1P2_MAX",
    "round_to_e2m1_codes",
    "round_e2m1_magnitudes",
    "decode_e2m1",
    "round_to_s1p2_codes",
    "decode_s1p2",
]

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # by 3-bit code
E2M1_MAX = 6.0
S1P2_MAX = 1.75
# Midpoint between code i and i+1. A tie goes to the even code: for even i the lower one stays
# (strict `>` to step up), for odd i the upper one wins (`>=`). Above 6 nothing steps further:
# saturation.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def _with_sign(magnitude: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    negative = (v < 0) & (magnitude > 0)
    return (magnitude | (negative.to(torch.uint8) << 3)).to(torch.uint8)


def round_to_e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """FP32 values (already divided by their block scale) -> E2M1 codes (uint8, same shape).

    Round to nearest, ties to the even code, |v| > 6 saturates to 6. NaN gives code 0: NaN is
    carried by the block scale, never by an element.
    """
    a = v.abs()
    magnitude = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for i, mid in enumerate(_E2M1_MIDPOINTS):
        step = (a > mid) if i % 2 == 0 else (a >= mid)
        magnitude += step.to(torch.uint8)
    return _with_sign(magnitude, v)


def round_e2m1_magnitudes(a: torch.Tensor) -> torch.Tensor:
    """FP32 magnitudes `a >= 0` -> their E2M1 rounding as FP32 values in {0, 0.5, …, 6}.

    The same rule as `round_to_e2m1_codes` (nearest, ties to the even code, saturating at 6) in a
    few arithmetic ops instead of the codes' ~30 (the block-scale search evaluates it once per
    candidate): E2M1's spacing is 0.5 below 2, 1 in [2, 4), 2 from 4, and rounding `a / spacing`
    half to even (exact: the spacing is a power of two) picks the even code at every tie. Equal
    to `decode_e2m1(round_to_e2m1_codes(a))` for every FP32 `a >= 0` (tested at and around every
    midpoint); NaN stays NaN.
    """
    spacing = (a >= 2.0).float().add_((a >= 4.0).float()).exp2_().mul_(0.5)  # 0.5, 1 or 2
    return torch.round(a / spacing).mul_(spacing).clamp_(max=E2M1_MAX)


def _lookup(codes: torch.Tensor, magnitudes: tuple[float, ...]) -> torch.Tensor:
    table = torch.tensor(magnitudes + tuple(-m for m in magnitudes), dtype=torch.float32, device=codes.device)
    return table[codes.to(torch.int64)]


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8) -> FP32 values in {0, ±0.5, …, ±6}."""
    return _lookup(codes, E2M1_MAGNITUDES)


_S1P2_MAGNITUDES = tuple(i * 0.25 for i in range(8))


def round_to_s1p2_codes(v: torch.Tensor) -> torch.Tensor:
    """FP32 values -> S1P2 codes (uint8): magnitudes {0, 0.25, …, 1.75}, ties to even, saturating."""
    steps = torch.round(v.abs() * 4.0)  # exact scaling; half to even
    steps = torch.nan_to_num(torch.clamp(steps, max=7.0), nan=0.0)
    return _with_sign(steps.to(torch.uint8), v)


def decode_s1p2(codes: torch.Tensor) -> torch.Tensor:
    """S1P2 codes (uint8) -> FP32 values in {0, ±0.25, …, ±1.75}."""
    return _lookup(codes, _S1P2_MAGNITUDES)
