"""Block formats end to end: quantize -> packed storage -> dequantize (SPEC §2–3)."""

import math

import pytest
import torch

from sharq import Format, quantize_tensor
from sharq.formats import nvfp4_global_scale, quantize_hif4, quantize_mxfp4, quantize_nvfp4, unpack_nibbles
from sharq.formats.blocks import pad_last

ONE = torch.ones(())
TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
TIES_ROUNDED = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def _block(values, block, fill=0.0):
    x = torch.full((block,), fill)
    x[: len(values)] = torch.tensor(values)
    return x


# --- NVFP4 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_nvfp4_ties_with_unit_scale(block, sign):
    # amax 6 -> E4M3 scale exactly 1: elements are the E2M1 rounding of the inputs
    x = sign * _block([6.0] + TIES + [0.0], block)
    qt = quantize_nvfp4(x, block, global_scale=ONE)
    assert qt.scale_values().tolist() == [1.0]
    expected = sign * _block([6.0] + TIES_ROUNDED + [0.0], block)
    assert torch.equal(qt.dequantize(), expected)


def test_nvfp4_saturation_when_scale_rounds_down():
    # amax/6 = 1.0625 ties to E4M3 1.0 (even): the amax element is 6.375 / 1 -> saturates to 6
    x = _block([6.375, -6.375, 3.0], 16)
    qt = quantize_nvfp4(x, 16, global_scale=ONE)
    assert qt.scale_values().item() == 1.0
    assert qt.dequantize()[:3].tolist() == [6.0, -6.0, 3.0]


def test_nvfp4_e4m3_subnormal_block_scale():
    # amax 6 * 3 * 2^-9: the scale is the subnormal 3 * 2^-9, codes stay exact
    s = 3 * 2.0**-9
    x = _block([6 * s, 4 * s, -1.5 * s], 16)
    qt = quantize_nvfp4(x, 16, global_scale=ONE)
    assert qt.scale_values().item() == s
    assert torch.equal(qt.dequantize(), x)


def test_nvfp4_block_scale_rounds_to_zero_gives_zero_codes():
    x = _block([1e-4, -5e-5], 16)  # amax/6 below half the smallest E4M3 subnormal
    qt = quantize_nvfp4(x, 16, global_scale=ONE)
    assert qt.scale_values().item() == 0.0
    assert torch.all(unpack_nibbles(qt.codes) == 0)
    assert torch.equal(qt.dequantize(), torch.zeros(16))


def test_nvfp4_global_scale_tensor_and_token():
    x = torch.tensor([[1.0, -2688.0], [0.5, 0.25]])
    s = nvfp4_global_scale(x, "tensor")
    assert s.shape == () and s.item() == 1.0
    st = nvfp4_global_scale(x, "token")
    assert st.shape == (2, 1)
    assert st[0].item() == 1.0 and st[1].item() == pytest.approx(0.5 / 2688, rel=1e-7)
    assert nvfp4_global_scale(torch.zeros(3, 4)).item() == pytest.approx(1e-9)


def test_nvfp4_global_scale_maps_amax_to_6_times_448():
    x = torch.randn(8, 64) * 37
    qt = quantize_nvfp4(x, 16)
    top = qt.scale_values().max().item()
    assert top == 448.0  # the block holding amax gets the largest E4M3 scale
    assert qt.dequantize().abs().max().item() == pytest.approx(x.abs().max().item(), rel=1e-6)


def test_nvfp4_token_granularity_rows_independent():
    x = torch.randn(4, 48)
    y = x.clone()
    y[0] *= 1000  # another row changes
    a = quantize_nvfp4(x, 16, granularity="token").dequantize()
    b = quantize_nvfp4(y, 16, granularity="token").dequantize()
    assert torch.equal(a[1:], b[1:])
    c = quantize_nvfp4(x, 16, granularity="tensor").dequantize()
    d = quantize_nvfp4(y, 16, granularity="tensor").dequantize()
    assert not torch.equal(c[1:], d[1:])  # with one scale per tensor they are not


# --- MXFP4 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mxfp4_ties_with_unit_scale(sign):
    x = sign * _block([6.0] + TIES, 32)  # floor(log2 6) - 2 = 0 -> scale 1
    qt = quantize_mxfp4(x)
    assert qt.scale_values().tolist() == [1.0]
    assert torch.equal(qt.dequantize(), sign * _block([6.0] + TIES_ROUNDED, 32))


def test_mxfp4_amax_over_scale_saturates():
    # amax 7.5: scale 2^(2-2) = 1, amax/scale = 7.5 >= 6 -> saturates to 6
    x = _block([7.5, -7.0, 100.0 / 16], 32)
    qt = quantize_mxfp4(x)
    assert qt.scale_values().item() == 1.0
    assert qt.dequantize()[:3].tolist() == [6.0, -6.0, 6.0]
    # amax 8: exponent 1, scale 2: 8/2 = 4 exact
    qt = quantize_mxfp4(_block([8.0, 3.0], 32))
    assert qt.scale_values().item() == 2.0
    assert qt.dequantize()[:2].tolist() == [8.0, 3.0]  # 3/2 = 1.5 is exact in E2M1


def test_mxfp4_scale_bits():
    qt = quantize_mxfp4(torch.cat([_block([6.0], 32), _block([0.75], 32), torch.zeros(32)]))
    assert qt.scales.tolist() == [127, 127 - 3, 0]  # 2^0, 2^(floor(log2 .75) - 2) = 2^-3, zero block 2^-127


# --- HiF4 ----------------------------------------------------------------------------------------
def test_hif4_exponent_bits_and_values():
    x = torch.zeros(64)
    x[0:4] = torch.tensor([7.0, -3.5, 0.9, 0.0])  # group-of-8 #0 max 7 >= 4 -> E8=1; group-of-4 #0: 7/2 >= 2 -> E4=1
    x[4:8] = torch.tensor([1.0, 0.5, -0.3, 0.2])  # group-of-4 #1: 1/2 < 2 -> E4=0 (multiplier 2)
    x[8:12] = torch.tensor([3.0, 0.25, 0.0, 0.0])  # group-of-8 #1 max 3 < 4 -> E8=0; 3 >= 2 -> E4=1
    x[12:16] = torch.tensor([1.0, 0.125, 0.375, -1.9])  # max 1.9 < 2 -> E4=0 (multiplier 1)
    qt = quantize_hif4(x)
    assert qt.scale_values().item() == 1.0  # E6M2(7 / 7)
    assert qt.exponents8.tolist() == [0b00000001]
    assert qt.exponents4.tolist() == [[0b00000101, 0]]
    expected = torch.zeros(64)
    # group-of-4 #0, multiplier 2^(1+1) = 4: 7/4 = 1.75; -3.5/4 = -0.875 ties 0.75|1.0 -> even (1.0); 0.9/4 -> 0.25
    expected[0:4] = torch.tensor([7.0, -4.0, 1.0, 0.0])
    # group-of-4 #1, multiplier 2^(1+0) = 2: 0.5, 0.25, -0.15 -> -0.25, 0.1 -> 0
    expected[4:8] = torch.tensor([1.0, 0.5, -0.5, 0.0])
    # group-of-4 #2, multiplier 2^(0+1) = 2: 1.5, 0.125 ties 0|0.25 -> 0
    expected[8:12] = torch.tensor([3.0, 0.0, 0.0, 0.0])
    # group-of-4 #3, multiplier 1: 0.125 -> 0, 0.375 ties 0.25|0.5 -> 0.5, -1.9 saturates to -1.75
    expected[12:16] = torch.tensor([1.0, 0.0, 0.5, -1.75])
    assert torch.equal(qt.dequantize(), expected)


def test_hif4_scale_and_saturation_bounds():
    # Vmax = 7 * 2^15 * 1.5 is the largest level-1 scale; beyond it elements saturate at 1.75 * 4
    big = 7 * 49152.0
    qt = quantize_hif4(_block([big * 2], 64))
    assert qt.scale_values().item() == 49152.0
    assert qt.dequantize()[0].item() == 49152.0 * 4 * 1.75


# --- every format --------------------------------------------------------------------------------
FORMATS = [(Format.NVFP4, 16), (Format.NVFP4, 32), (Format.MXFP4, 32), (Format.HIF4, 64)]


@pytest.mark.parametrize("fmt,block", FORMATS)
def test_all_zero_gives_zero_never_nan(fmt, block):
    for shape in [(block,), (3, 2 * block), (2, 0, block), (5, 7)]:
        qt = quantize_tensor(torch.zeros(shape), fmt, block)
        out = qt.dequantize()
        assert out.shape == shape
        assert torch.equal(out, torch.zeros(shape))


@pytest.mark.parametrize("fmt,block", FORMATS)
def test_padding_equals_explicit_zero_padding(fmt, block):
    x = torch.randn(3, 37) * 5
    qt = quantize_tensor(x, fmt, block)
    kw = {"global_scale": qt.global_scale} if qt.global_scale is not None else {}
    padded = quantize_tensor(pad_last(x, block), fmt, block, **kw)
    assert qt.codes.shape == padded.codes.shape
    assert torch.equal(qt.codes, padded.codes) and torch.equal(qt.scales, padded.scales)
    assert torch.equal(qt.dequantize(), padded.dequantize()[:, :37])


@pytest.mark.parametrize("fmt,block", FORMATS)
def test_1d_2d_3d_agree(fmt, block):
    x = torch.randn(2, 3, 2 * block) * 3
    q3 = quantize_tensor(x, fmt, block).dequantize()
    q2 = quantize_tensor(x.reshape(6, -1), fmt, block).dequantize()
    q1 = quantize_tensor(x.reshape(-1), fmt, block).dequantize()
    assert q3.shape == x.shape
    assert torch.equal(q3.reshape(6, -1), q2)
    assert torch.equal(q3.reshape(-1), q1)


@pytest.mark.parametrize(
    "fmt,block,bits",
    [(Format.NVFP4, 16, 4.5), (Format.NVFP4, 32, 4.25), (Format.MXFP4, 32, 4.25), (Format.HIF4, 64, 4.5)],
)
def test_real_packed_storage_bits_per_value(fmt, block, bits):
    x = torch.randn(256, 1024, dtype=torch.bfloat16)
    qt = quantize_tensor(x, fmt, block)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (256, 512)
    extra = 32 / x.numel() if fmt is Format.NVFP4 else 0.0  # one FP32 global scale
    assert qt.bits_per_value == pytest.approx(bits + extra)


@pytest.mark.parametrize("fmt,block", FORMATS)
def test_quantization_error_is_bounded(fmt, block):
    x = torch.randn(64, 256)
    qt = quantize_tensor(x, fmt, block)
    err = (qt.dequantize() - x).abs()
    # relative to each block's amax, a 4-bit element format errs by at most half its coarsest step
    amax = x.abs().reshape(64, -1, block).amax(-1, keepdim=True).expand(-1, -1, block).reshape(64, 256)
    bound = {Format.NVFP4: 1 / 6 + 1 / 16, Format.MXFP4: 1 / 4 + 1 / 16, Format.HIF4: 1 / 7 + 1 / 16}[fmt]
    assert torch.all(err <= bound * amax + 1e-6)


@pytest.mark.parametrize("fmt,block", FORMATS)
def test_non_finite_input_gives_nan_not_finite(fmt, block):
    x = torch.randn(2, 2 * block)
    x[0, 3] = float("nan")
    x[1, block + 1] = float("inf")
    out = quantize_tensor(x, fmt, block).dequantize()
    if fmt is Format.NVFP4:  # one global scale: the whole tensor depends on it
        assert torch.isnan(out).all()
    else:  # no second level: exactly the affected blocks
        assert torch.isnan(out[0, :block]).all() and torch.isnan(out[1, block:]).all()
        assert torch.isfinite(out[0, block:]).all() and torch.isfinite(out[1, :block]).all()


def test_scale_views_repeat_stored_scales():
    x = torch.randn(4, 96)
    qt = quantize_nvfp4(x, 32)
    per16 = qt.scale_values(16)
    assert per16.shape == (4, 6)
    assert torch.equal(per16[:, 0::2], qt.scale_values()) and torch.equal(per16[:, 1::2], qt.scale_values())
    assert torch.equal(qt.dequantize(scale_block=16), qt.dequantize())
    with pytest.raises(ValueError, match="view"):
        qt.scale_values(64)


def test_quantize_rejects_global_scale_for_formats_without_one():
    with pytest.raises(ValueError, match="second-level"):
        quantize_tensor(torch.randn(4, 32), Format.MXFP4, 32, global_scale=ONE)
    with pytest.raises(ValueError, match="block"):
        quantize_tensor(torch.randn(4, 32), Format.NVFP4, 64)


def test_bf16_and_fp16_inputs_quantize_like_fp32():
    x = torch.randn(8, 64).to(torch.bfloat16)
    a = quantize_tensor(x, Format.NVFP4, 16)
    b = quantize_tensor(x.float(), Format.NVFP4, 16)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert math.isclose(a.global_scale.item(), b.global_scale.item())
