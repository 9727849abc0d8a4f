"""Block-scale formats: E4M3 (incl. subnormals, 448 saturation), E8M0, E6M2 (SPEC §2)."""

import math

import pytest
import torch

from sharq.formats.scales import (
    E6M2_MAX,
    E6M2_MIN,
    decode_e4m3,
    decode_e6m2,
    decode_e8m0,
    e8m0_exponent,
    encode_e4m3,
    encode_e6m2,
    encode_e8m0,
    round_e4m3,
    round_e6m2,
)

SUB = 2.0**-9  # E4M3 subnormal step

E4M3_CASES = [
    (0.0, 0.0),
    (1.0, 1.0),
    (17.0, 16.0),  # tie between 16 (m=000) and 18 (m=001): even wins
    (19.0, 20.0),  # tie between 18 (001) and 20 (010)
    (1.0625, 1.0),  # tie 1.0 / 1.125
    (1.1875, 1.25),  # tie 1.125 / 1.25
    (448.0, 448.0),
    (460.0, 448.0),  # saturation (torch's cast would give NaN above 464 on some versions)
    (1000.0, 448.0),
    (2.0**-6, 2.0**-6),  # smallest normal
    (0.5 * SUB, 0.0),  # tie between 0 and the smallest subnormal: even (0)
    (0.51 * SUB, SUB),
    (1.5 * SUB, 2 * SUB),  # subnormal tie: 1 (odd) vs 2 (even)
    (2.5 * SUB, 2 * SUB),
    (7 * SUB, 7 * SUB),  # largest subnormal
    (7.5 * SUB, 8 * SUB),  # rounds up into the normals
]


@pytest.mark.parametrize("value,expected", E4M3_CASES)
def test_e4m3_rounding_per_value(value, expected):
    assert round_e4m3(torch.tensor([value])).item() == expected


def test_e4m3_non_finite_gives_nan():
    out = round_e4m3(torch.tensor([float("nan"), float("inf")]))
    assert torch.isnan(out).all()


def test_e4m3_matches_torch_cast_in_range():
    g = torch.Generator().manual_seed(1)
    # log-uniform over the whole E4M3 range, subnormals included
    x = torch.exp2(torch.rand(200_000, generator=g) * 20 - 12).clamp(max=448.0)
    ours = round_e4m3(x)
    theirs = x.to(torch.float8_e4m3fn).float()
    assert torch.equal(ours, theirs)


def test_e4m3_encode_decode_all_codes():
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    values = decode_e4m3(bits)
    finite = ~torch.isnan(values)
    assert int(finite.sum()) == 254  # 0x7F and 0xFF are NaN
    positive = values[finite & (values >= 0) & ~torch.signbit(values)]
    assert torch.equal(round_e4m3(positive), positive)  # every code is a fixed point
    assert torch.equal(encode_e4m3(positive), bits[finite & ~torch.signbit(values)])


def test_e8m0_exponent_rule():
    amax = torch.tensor([6.0, 7.99, 8.0, 1.0, 0.3, 0.0, 2.0**-130, 3e38])
    exp = e8m0_exponent(amax).tolist()
    # floor(log2 amax) - 2, clamped to [-127, 127]; zero -> -127
    assert exp == [0, 0, 1, -2, -4, -127, -127, 125]


def test_e8m0_encode_decode():
    exp = torch.tensor([-127, -2, 0, 127], dtype=torch.int32)
    amax = torch.tensor([1.0, 1.0, float("nan"), float("inf")])
    bits = encode_e8m0(exp, amax)
    assert bits.tolist() == [0, 125, 255, 255]
    values = decode_e8m0(bits)
    assert values[0].item() == 2.0**-127 and values[1].item() == 0.25
    assert torch.isnan(values[2:]).all()


E6M2_CASES = [
    (1.0, 1.0),
    (1.125, 1.0),  # tie 1.0 (00) / 1.25 (01)
    (1.375, 1.5),  # tie 1.25 (01) / 1.5 (10)
    (1.875, 2.0),  # tie 1.75 (11) / 2.0: even mantissa 00 of the next binade
    (6.0 / 7.0, 0.875),
    (0.0, E6M2_MIN),  # no zero: smallest code
    (1e-20, E6M2_MIN),
    (2.0**-48, 2.0**-48),
    (2.0**15, 2.0**15),
    (49152.0, 49152.0),
    (57344.0, 49152.0),  # 2^15 * 1.75 is the NaN code: saturate to 2^15 * 1.5
    (1e9, 49152.0),
]


@pytest.mark.parametrize("value,expected", E6M2_CASES)
def test_e6m2_rounding_per_value(value, expected):
    assert round_e6m2(torch.tensor([value])).item() == expected


def test_e6m2_codes_cover_the_range():
    bits = torch.arange(255, dtype=torch.int32).to(torch.uint8)  # 0xFF excluded (NaN)
    values = decode_e6m2(bits)
    assert values[0].item() == 2.0**-48
    assert values[-1].item() == E6M2_MAX
    assert torch.all(values[1:] > values[:-1])  # strictly increasing, no zero
    assert torch.equal(round_e6m2(values), values)
    assert torch.equal(encode_e6m2(values), bits)
    assert math.isnan(decode_e6m2(torch.tensor([0xFF], dtype=torch.uint8)).item())
    assert encode_e6m2(torch.tensor([float("nan")])).item() == 0xFF


def test_div_rn_is_the_correctly_rounded_quotient():
    from sharq.formats.ieee import div_rn

    g = torch.Generator().manual_seed(3)
    x = torch.rand(100_000, generator=g, dtype=torch.float64) * 1000
    x32 = x.float()
    for d in (2688.0, 6.0, 7.0):
        exact = (x32.double() / d).float()  # FP64 quotient rounded once to FP32 (exact for these sizes)
        assert torch.equal(div_rn(x32, d), exact)
