"""`sharq.SharqLinear` (SPEC §6–7, §10): packed weight, forward numerics, state_dict, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sharq
from sharq import PRESETS, RuntimeOptions, SharqConfig, SharqLinear, prepare_activation, sharq_linear
from sharq.formats import quantize_nvfp4
from sharq.metrics import sqnr_db

QUANT_PRESETS = [name for name, cfg in PRESETS.items() if cfg.quantizes]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_linear(k: int, n: int, bias: bool = True, seed: int = 0, dtype=torch.float32) -> nn.Linear:
    """nn.Linear with gaussian weights (std 0.05) from its own generator."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin.to(dtype)


def activations(*shape: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., 3] *= 60.0  # an outlier channel
    return x


def recompute(x2: torch.Tensor, layer: SharqLinear, config: SharqConfig) -> torch.Tensor:
    """SPEC §7 in FP32 from the layer's own dequantized operands (x2 is (M, K)), in the one-GEMM
    form the layer computes: s_x · s_w · (deq(B) + deq(R)) · deq(W)ᵀ."""
    p = prepare_activation(x2, config)
    qw = layer.quantized_weight
    w = qw.dequantize(apply_global_scale=False)
    s_w = qw.global_scale if qw.global_scale is not None else torch.ones(())
    b = p.backbone.dequantize(apply_global_scale=False)
    r = p.residual.dequantize(apply_global_scale=False) if p.residual is not None else torch.zeros_like(b)
    y = p.global_scale * s_w * ((b + r) @ w.T)
    if layer.bias is not None:
        y = y + layer.bias.float()
    return y


# --------------------------------------------------------------------------------------------------
# forward: dtypes, shapes, bias
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_forward_dtypes_and_shapes(preset, bias):
    k, n = 96, 24
    lin = make_linear(k, n, bias=bias)
    layer = SharqLinear.from_float(lin, PRESETS[preset])
    assert (layer.bias is None) == (not bias)
    for dtype in FLOAT_DTYPES:
        for shape in [(5, k), (1, k), (2, 3, k), (k,)]:
            x = activations(*shape).to(dtype)
            y = layer(x)
            assert y.dtype == dtype
            assert y.shape == (*shape[:-1], n)
            assert bool(torch.isfinite(y).all())
            # close to the float layer (FP4 quantization noise only)
            with torch.no_grad():
                ref = lin(x.float())
            assert sqnr_db(ref, y.float()) > 10.0, (preset, dtype, shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_layer(dtype):
    lin = make_linear(64, 16, dtype=dtype)
    layer = SharqLinear.from_float(lin, PRESETS["sharq-nvfp4"])
    assert layer.bias.dtype == dtype
    x = activations(4, 64).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (4, 16)
    # the FP32 math, rounded once to the model dtype
    assert torch.equal(y, recompute(x, layer, PRESETS["sharq-nvfp4"]).to(dtype))


# --------------------------------------------------------------------------------------------------
# SPEC §7: output = FP32 recomputation from the layer's own dequantized operands
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_output_equals_fp32_recomputation(preset, granularity):
    cfg = PRESETS[preset].replace(granularity=granularity)
    k, n = 128, 32
    lin = make_linear(k, n, seed=2)
    layer = SharqLinear.from_float(lin, cfg)
    x = activations(2, 3, k, seed=3)
    x[1] *= 7.0
    y = layer(x)
    x2 = x.reshape(-1, k)
    y_ref = recompute(x2, layer, cfg).reshape(2, 3, n)
    scale = float(y_ref.abs().max())
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6 * scale)
    # the 3-D input is the flattened 2-D input
    assert torch.equal(y.reshape(-1, n), layer(x2))
    # two-path form == one-GEMM form up to FP32 summation order
    y1 = sharq_linear(x, layer.quantized_weight, layer.bias, cfg, one_gemm=True)
    y2 = sharq_linear(x, layer.quantized_weight, layer.bias, cfg, one_gemm=False)
    assert torch.equal(y1, y)
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5 * scale)
    # and the layer really quantizes: it is not the float layer
    with torch.no_grad():
        assert not torch.allclose(y, lin(x), rtol=1e-4, atol=1e-4 * scale)


def test_recomputation_has_teeth():
    """The recomputation is sensitive to the residual: dropping it is a visible change."""
    cfg = PRESETS["sharq-nvfp4"]
    layer = SharqLinear.from_float(make_linear(128, 32), cfg)
    x = activations(6, 128)
    y = layer(x)
    y_sparse_only = sharq_linear(x, layer.quantized_weight, layer.bias, PRESETS["sparse-only"])
    scale = float(y.abs().max())
    assert float((y - y_sparse_only).abs().max()) > 1e-3 * scale


# --------------------------------------------------------------------------------------------------
# SPEC §6: the weight
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_no_float_weight_is_kept(preset):
    k, n = 128, 16
    layer = SharqLinear.from_float(make_linear(k, n), PRESETS[preset])
    sd = layer.state_dict()
    for name, t in sd.items():
        if t.is_floating_point():
            assert tuple(t.shape) != (n, k), name
            assert t.numel() <= n, name  # only the bias is floating point
        else:
            assert t.dtype in (torch.uint8, torch.int32), (name, t.dtype)
    for name, p in layer.named_parameters():
        assert tuple(p.shape) != (n, k), name
    assert not hasattr(layer, "weight") or not isinstance(layer.weight, torch.Tensor)
    assert sd["weight_codes"].shape == (n, k // 2)


@pytest.mark.parametrize("k", [64, 128, 256])
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_weight_bits_per_value(preset, k):
    layer = SharqLinear.from_float(make_linear(k, 32), PRESETS[preset])
    bits = layer.quantized_weight.bits_per_value
    assert 4.25 <= bits <= 4.6, bits
    assert layer.weight_bits_per_value == bits
    if PRESETS[preset].format is sharq.Format.NVFP4 and PRESETS[preset].weight_block == 32:
        assert bits < 4.3  # NVFP4-32: 4.25 + the FP32 s_w


@pytest.mark.parametrize("k", [128, 100])
def test_nvfp4_32_weight_scale_views(k):
    n = 24
    lin = make_linear(k, n, seed=4)
    layer = SharqLinear.from_float(lin, PRESETS["sharq-nvfp4"])
    qt = layer.quantized_weight
    assert qt.format is sharq.Format.NVFP4 and qt.block == 32
    nb = -(-k // 32)
    assert layer.weight_scales.shape == (n, nb)  # one per-32 scale stored, nothing twice
    assert layer.weight_codes.shape == (n, nb * 16)
    s32 = qt.scale_values(32)
    s16 = qt.scale_values(16)
    assert s32.shape == (n, nb) and s16.shape == (n, 2 * nb)
    assert torch.equal(s16, s32.repeat_interleave(2, dim=-1))
    assert torch.equal(s16[:, 0::2], s32) and torch.equal(s16[:, 1::2], s32)
    assert torch.equal(qt.dequantize(scale_block=32), qt.dequantize(scale_block=16))
    assert torch.equal(qt.dequantize(), qt.dequantize(scale_block=16))
    assert torch.equal(
        qt.dequantize(scale_block=32, apply_global_scale=False), qt.dequantize(scale_block=16, apply_global_scale=False)
    )
    # SPEC §6: s_w = max(amax(W) / 2688, 1e-9), then NVFP4-32 of W / s_w
    w = lin.weight.detach()
    s_w = torch.clamp(w.abs().amax() / 2688.0, min=1e-9)
    assert torch.equal(qt.global_scale.reshape(()), s_w)
    ref = quantize_nvfp4(w, 32, global_scale=s_w)
    assert torch.equal(qt.codes, ref.codes) and torch.equal(qt.scales, ref.scales)


def test_w16_weight_is_nvfp4_16():
    lin = make_linear(128, 16)
    layer = SharqLinear.from_float(lin, PRESETS["sharq-nvfp4-w16"])
    qt = layer.quantized_weight
    assert qt.block == 16 and layer.weight_scales.shape == (16, 8)
    ref = quantize_nvfp4(lin.weight.detach(), 16, granularity="tensor")
    assert torch.equal(qt.codes, ref.codes) and torch.equal(qt.scales, ref.scales)


@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_dequantized_weight_close_to_float(preset):
    lin = make_linear(256, 64, seed=5)
    layer = SharqLinear.from_float(lin, PRESETS[preset])
    w = lin.weight.detach()
    wd = layer.dequantized_weight()
    assert wd.shape == w.shape and wd.dtype == torch.float32
    assert sqnr_db(w, wd) > 15.0  # measured: NVFP4 ~19.5, MXFP4 ~18.4, HiF4 ~23.7 dB
    assert not torch.equal(w, wd)
    assert layer.dequantized_weight(torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(wd, layer.quantized_weight.dequantize())


# --------------------------------------------------------------------------------------------------
# state_dict, .to(dtype), repr
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_state_dict_round_trip(preset, bias):
    k, n = 100, 20
    cfg = PRESETS[preset]
    for dtype in (torch.float32, torch.bfloat16):
        layer = SharqLinear.from_float(make_linear(k, n, bias=bias, dtype=dtype), cfg)
        x = activations(3, k).to(dtype)
        y = layer(x)
        fresh = SharqLinear(k, n, bias=bias, config=cfg, dtype=dtype)
        assert set(fresh.state_dict()) == set(layer.state_dict())
        assert not torch.equal(fresh(x), y)  # empty storage computes something else (teeth)
        fresh.load_state_dict(layer.state_dict())
        assert torch.equal(fresh(x), y)
        assert torch.equal(fresh.dequantized_weight(), layer.dequantized_weight())


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4", "sharq-hif4"])
def test_to_dtype_keeps_weight_buffers(preset):
    layer = SharqLinear.from_float(make_linear(128, 16), PRESETS[preset])
    before = {name: t.clone() for name, t in layer.named_buffers()}
    assert before and all(not t.is_floating_point() for t in before.values())
    w_before = layer.dequantized_weight()
    layer.to(torch.float16)
    for name, t in layer.named_buffers():
        assert t.dtype == before[name].dtype, name
        assert torch.equal(t, before[name]), name
    assert layer.bias.dtype == torch.float16
    assert torch.equal(layer.dequantized_weight(), w_before)
    layer.to(torch.bfloat16)
    assert torch.equal(layer.dequantized_weight(), w_before)
    y = layer(activations(2, 128).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_extra_repr(preset):
    cfg = PRESETS[preset]
    layer = SharqLinear.from_float(make_linear(64, 8), cfg)
    text = layer.extra_repr()
    assert f"preset={preset}" in text
    assert f"format={cfg.format.value}" in text
    assert "in_features=64" in text and "out_features=8" in text
    assert preset in repr(layer)
    token = SharqLinear.from_float(make_linear(64, 8), cfg.replace(granularity="token"))
    assert "granularity=token" in token.extra_repr()


# --------------------------------------------------------------------------------------------------
# SPEC §10: non-finite input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("preset", [p for p in QUANT_PRESETS if PRESETS[p].format is sharq.Format.NVFP4])
def test_nonfinite_input_nvfp4(preset, bad):
    layer = SharqLinear.from_float(make_linear(96, 12), PRESETS[preset])
    x = activations(4, 96)
    x[1, 10] = bad
    y = layer(x)
    assert bool(torch.isnan(y).all())  # tensor granularity: s_x is NaN/Inf for every row
    token = SharqLinear.from_float(make_linear(96, 12), PRESETS[preset].replace(granularity="token"))
    x3 = x.reshape(2, 2, 96)
    y = token(x3)
    assert bool(torch.isnan(y[0, 1]).all())
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        assert bool(torch.isfinite(y[i, j]).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("preset", ["sharq-mxfp4", "sharq-hif4", "mxfp4", "hif4"])
def test_nonfinite_input_other_formats(preset, bad):
    layer = SharqLinear.from_float(make_linear(128, 12), PRESETS[preset])
    x = activations(4, 128)
    x[2, 100] = bad
    y = layer(x)
    assert bool(torch.isnan(y[2]).all())
    assert bool(torch.isfinite(y[[0, 1, 3]]).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_raises_naming_the_layer(bad):
    layer = SharqLinear.from_float(
        make_linear(64, 8), PRESETS["sharq-nvfp4"], name="layers.0.q_proj", options=RuntimeOptions(check_finite=True)
    )
    x = activations(3, 64)
    assert bool(torch.isfinite(layer(x)).all())  # finite input passes
    x[0, 0] = bad
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj"):
        layer(x)


# --------------------------------------------------------------------------------------------------
# clear errors and degenerate shapes
# --------------------------------------------------------------------------------------------------
def test_errors():
    cfg = PRESETS["sharq-nvfp4"]
    layer = SharqLinear.from_float(make_linear(64, 8), cfg, name="layers.0.q_proj")
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(3, 63))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(3, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.ones(3, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="scalar"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError):
        SharqLinear.from_float(nn.Conv1d(4, 4, 1), cfg)
    with pytest.raises(TypeError):
        SharqLinear.from_float(torch.randn(8, 64), cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SharqLinear.from_float(make_linear(64, 8), PRESETS["bf16"])
    with pytest.raises(ValueError):
        SharqLinear(64, 8, config=PRESETS["bf16"])
    with pytest.raises(TypeError):
        SharqLinear(64, 8, config="sharq-nvfp4")  # type: ignore[arg-type]
    for bad in (math.nan, math.inf):
        lin = make_linear(64, 8)
        with torch.no_grad():
            lin.weight[2, 5] = bad
        with pytest.raises(ValueError, match="layers.0.k_proj"):
            SharqLinear.from_float(lin, cfg, name="layers.0.k_proj")
    hif4 = PRESETS["sharq-hif4"]
    with pytest.raises(NotImplementedError, match="does not implement hif4"):
        triton_layer = SharqLinear.from_float(make_linear(64, 8), hif4, options=RuntimeOptions(backend="triton"))
        triton_layer(torch.randn(2, 64))
    hif4_layer = SharqLinear.from_float(make_linear(64, 8), hif4)
    with pytest.raises(NotImplementedError, match="does not implement hif4"):
        sharq_linear(
            torch.randn(2, 64), hif4_layer.quantized_weight, None, hif4, options=RuntimeOptions(backend="triton")
        )


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-hif4"])
def test_empty_batch(preset):
    layer = SharqLinear.from_float(make_linear(64, 8), PRESETS[preset])
    for dtype in (torch.float32, torch.bfloat16):
        y = layer(torch.zeros(0, 64, dtype=dtype))
        assert y.shape == (0, 8) and y.dtype == dtype
        assert layer(torch.zeros(2, 0, 64, dtype=dtype)).shape == (2, 0, 8)


@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_zero_input_gives_bias(preset):
    lin = make_linear(64, 8)
    layer = SharqLinear.from_float(lin, PRESETS[preset])
    y = layer(torch.zeros(3, 64))
    assert torch.equal(y, lin.bias.detach().expand(3, 8))
