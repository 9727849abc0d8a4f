"""Per-value rounding of the 4-bit element formats (SPEC §1, §2 HiF4 elements) and nibble packing."""

import pytest
import torch

from sharq.formats import (
    decode_e2m1,
    decode_s1p2,
    pack_nibbles,
    round_to_e2m1_codes,
    round_to_s1p2_codes,
    unpack_nibbles,
)

# (input, expected value) — every E2M1 tie goes to the even code, |x| > 6 saturates.
E2M1_CASES = [
    (0.0, 0.0),
    (0.25, 0.0),
    (0.75, 1.0),
    (1.25, 1.0),
    (1.75, 2.0),
    (2.5, 2.0),
    (3.5, 4.0),
    (5.0, 4.0),
    (0.26, 0.5),
    (0.74, 0.5),
    (1.26, 1.5),
    (2.51, 3.0),
    (3.49, 3.0),
    (5.01, 6.0),
    (4.99, 4.0),
    (6.0, 6.0),
    (7.0, 6.0),
    (100.0, 6.0),
    (1e30, 6.0),
]


@pytest.mark.parametrize("value,expected", E2M1_CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_e2m1_rounding_per_value(value, expected, sign):
    code = round_to_e2m1_codes(torch.tensor([sign * value]))
    assert decode_e2m1(code).item() == sign * expected


def test_e2m1_negative_saturation_and_codes():
    codes = round_to_e2m1_codes(torch.tensor([-9.0, -6.0, -0.5, 0.5, 6.0]))
    assert codes.tolist() == [0xF, 0xF, 0x9, 0x1, 0x7]


def test_e2m1_zero_is_canonical_code_zero():
    # -0.0 and small negatives that round to zero carry no sign bit
    codes = round_to_e2m1_codes(torch.tensor([-0.0, -0.1, -0.25, 0.1]))
    assert codes.tolist() == [0, 0, 0, 0]


def test_e2m1_every_code_round_trips():
    codes = torch.arange(16, dtype=torch.uint8)
    values = decode_e2m1(codes)
    back = round_to_e2m1_codes(values)
    expected = codes.clone()
    expected[8] = 0  # -0 is canonicalised to +0
    assert torch.equal(back, expected)


S1P2_CASES = [
    (0.0, 0.0),
    (0.125, 0.0),
    (0.375, 0.5),
    (0.625, 0.5),
    (0.875, 1.0),
    (1.125, 1.0),
    (1.375, 1.5),
    (1.625, 1.5),
    (0.126, 0.25),
    (1.74, 1.75),
    (1.75, 1.75),
    (1.9, 1.75),
    (5.0, 1.75),
    (1e9, 1.75),
]


@pytest.mark.parametrize("value,expected", S1P2_CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_s1p2_rounding_per_value(value, expected, sign):
    code = round_to_s1p2_codes(torch.tensor([sign * value]))
    assert decode_s1p2(code).item() == sign * expected


def test_nan_element_gives_code_zero():
    # NaN is carried by the block scale, never by an element code
    assert round_to_e2m1_codes(torch.tensor([float("nan")])).item() == 0
    assert round_to_s1p2_codes(torch.tensor([float("nan")])).item() == 0


def test_pack_layout_low_nibble_first():
    codes = torch.tensor([0x1, 0x2, 0xF, 0x0, 0x9, 0x7], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [0x21, 0x0F, 0x79]
    assert torch.equal(unpack_nibbles(packed), codes)


def test_pack_round_trip_3d():
    codes = torch.randint(0, 16, (3, 5, 18), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (3, 5, 9)
    assert torch.equal(unpack_nibbles(packed), codes)


@pytest.mark.skipif(not hasattr(torch, "float4_e2m1fn_x2"), reason="torch without float4_e2m1fn_x2")
def test_pack_is_torch_float4_x2_layout():
    # torch's float4_e2m1fn_x2 is one byte holding two E2M1 codes; our bytes view as it 1:1
    codes = torch.randint(0, 16, (4, 8), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    as_fp4 = packed.view(torch.float4_e2m1fn_x2)
    assert as_fp4.shape == (4, 4)
    assert torch.equal(as_fp4.view(torch.uint8), packed)


def test_pack_errors():
    with pytest.raises(ValueError, match="even"):
        pack_nibbles(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        pack_nibbles(torch.zeros(4, dtype=torch.int32))
