"""Bad and unusual input to the public ops, reference backend: a correct result or a clear error.

Covered: `quantize`, `quantize_weight`, `prepare_activation`, `decompose`, `sharq_linear`,
`SharqLinear` (forward, from_float) and `nm_mask` with integer / bool / complex / float64 tensors,
scalars, a wrong K, another device (the meta device stands in for a second device on the CPU),
empty M = 0 batches, K not a multiple of the block, non-contiguous and 3-D/4-D inputs.
Each error is checked for the problem it names; each accepted input against an independent
computation (the contiguous / 2-D / zero-padded / float32 form of the same input), bit for bit.
Value ranges (zeros, subnormals, huge, NaN, Inf) are fuzzed in test_robustness_values.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sharq
from sharq import PRESETS, SharqLinear, decompose, prepare_activation, quantize_tensor, quantize_weight, sharq_linear
from sharq.config import parse_mask
from sharq.options import RuntimeOptions
from sharq.sparse import nm_mask

REF = "reference"
# one preset of each activation layout: SharQ in the three formats, plain NVFP4, two dense terms
PRESET_NAMES = ["sharq-nvfp4", "sharq-mxfp4", "sharq-hif4", "nvfp4", "dense-dense"]
FORMAT_BLOCKS = [("nvfp4", 16), ("nvfp4", 32), ("mxfp4", 32), ("hif4", 64)]
NOT_FLOAT = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]


def _cfg(preset: str, granularity: str = "tensor") -> sharq.SharqConfig:
    cfg = PRESETS[preset]  # on the CPU every backend choice runs the reference
    return cfg.replace(granularity=granularity) if cfg.has_global_scale else cfg


def _x(m: int, k: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))).to(dtype)


def _layer(k: int, n: int, preset: str = "sharq-nvfp4", granularity: str = "tensor", seed: int = 1) -> SharqLinear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(n, generator=g))
    return SharqLinear.from_float(lin, _cfg(preset, granularity))


def _same_storage(a: sharq.QuantizedTensor, b: sharq.QuantizedTensor) -> bool:
    sa, sb = a.storage(), b.storage()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa) and a.shape == b.shape


def _parts_equal(a: sharq.Decomposition, b: sharq.Decomposition) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------
def _public_calls(x: torch.Tensor) -> dict:
    """Every public op applied to `x` (and a K = 64 layer), by name."""
    cfg = _cfg("sharq-nvfp4")
    layer = _layer(64, 8)
    return {
        "quantize": lambda: quantize_tensor(x, "nvfp4", 16),
        "quantize mxfp4": lambda: quantize_tensor(x, "mxfp4", 32),
        "quantize hif4": lambda: quantize_tensor(x, "hif4", 64),
        "quantize_weight": lambda: quantize_weight(x, cfg),
        "prepare_activation": lambda: prepare_activation(x, cfg),
        "decompose": lambda: decompose(x, cfg),
        "decompose bf16 preset": lambda: decompose(x, PRESETS["bf16"]),
        "sharq_linear": lambda: sharq_linear(x, layer.quantized_weight, None, cfg),
        "SharqLinear": lambda: layer(x),
        "nm_mask": lambda: nm_mask(x, "2:4"),
    }


@pytest.mark.parametrize("op", list(_public_calls(torch.ones(1))))
@pytest.mark.parametrize("dtype", NOT_FLOAT, ids=str)
def test_non_float_input_is_refused_naming_its_dtype(dtype, op):
    """Integer, bool and complex tensors: a TypeError that names the dtype, from every public op
    (`quantize` and `nm_mask` accepted them before; complex lost its imaginary part)."""
    x = torch.ones(3, 64).to(dtype)
    with pytest.raises(TypeError, match=re.escape(str(dtype))):
        _public_calls(x)[op]()


@pytest.mark.parametrize("fmt,block", FORMAT_BLOCKS)
def test_quantize_float64_is_its_float32_rounding(fmt, block):
    """`quantize` accepts float64 (documented: any float dtype) and quantizes its float32 rounding:
    the packed storage is bit-identical to that of `x.float()`."""
    x = _x(5, 100, seed=3).double() * (1 + 1e-12)  # values float32 cannot hold exactly
    assert not torch.equal(x, x.float().double())
    assert _same_storage(quantize_tensor(x, fmt, block), quantize_tensor(x.float(), fmt, block))


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4", "sharq-hif4", "sharq-nvfp4-w16"])
def test_quantize_weight_float64_is_its_float32_rounding(preset):
    w = _x(12, 96, seed=4).double() * 0.1
    assert _same_storage(quantize_weight(w, _cfg(preset)), quantize_weight(w.float(), _cfg(preset)))


def test_float64_activation_is_refused_naming_the_dtypes():
    """Activations are float32 / bfloat16 / float16 (SharqLinear's documented input): float64 is
    a TypeError naming float64 and the accepted dtypes, never a silent cast."""
    x = _x(3, 64).double()
    cfg = _cfg("sharq-nvfp4")
    layer = _layer(64, 8)
    for call in (
        lambda: prepare_activation(x, cfg),
        lambda: decompose(x, cfg),
        lambda: sharq_linear(x, layer.quantized_weight, None, cfg),
        lambda: layer(x),
    ):
        with pytest.raises(TypeError, match=r"torch\.float64.*float32, bfloat16 or float16"):
            call()


@given(st.integers(1, 6), st.sampled_from(["2:4", "4:8", "pair4of8", "8:16"]), st.integers(0, 2**31 - 1))
def test_nm_mask_float64_keeps_the_largest_float64_values(rows, mask, seed):
    """float64 values that round to one float32 are still ranked in float64: each group keeps its
    N largest |x| (ties: lower index), checked against a direct float64 sort. (Ranked in float32
    before, the lower index won such a near-tie and a smaller value was kept.)"""
    g = torch.Generator().manual_seed(seed)
    spec = parse_mask(mask)
    k = 32
    base = torch.randint(1, 4, (rows, k), generator=g).double()  # many exact ties
    x = base * (1 + torch.randint(0, 3, (rows, k), generator=g).double() * 1e-12)  # float32 cannot tell apart
    x = x * torch.where(torch.rand(rows, k, generator=g) < 0.5, -1.0, 1.0).double()
    got = nm_mask(x, mask)
    unit = 2 if spec.pairs else 1
    n, m = (4, 8) if spec.pairs else (spec.n, spec.m)
    scores = x.abs().reshape(rows, k // m, m // unit, unit).amax(-1)  # (rows, groups, units)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., : n // unit]
    want = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, True)
    assert torch.equal(got, want.repeat_interleave(unit, dim=-1).reshape(rows, k))


# --------------------------------------------------------------------------------------------------
# scalars, wrong K, devices, wrong operand types
# --------------------------------------------------------------------------------------------------
def test_scalar_input_is_refused():
    s = torch.tensor(1.0)
    cfg = _cfg("sharq-nvfp4")
    layer = _layer(64, 8)
    for call in (
        lambda: quantize_tensor(s, "nvfp4", 16),
        lambda: prepare_activation(s, cfg),
        lambda: decompose(s, cfg),
        lambda: sharq_linear(s, layer.quantized_weight, None, cfg),
        lambda: layer(s),
        lambda: nm_mask(s, "2:4"),
    ):
        with pytest.raises(ValueError, match="scalar|last dimension"):
            call()


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("k_in", [48, 60, 65, 128])
def test_wrong_k_is_refused_naming_both_sizes(m, k_in):
    """x's K differs from the weight's (60 pads to the weight's 64 and once slipped through the
    M = 1 Triton GEMV; here on the reference, test_robustness_triton.py on Triton)."""
    layer = _layer(64, 8)
    cfg = layer.config
    x = _x(m, k_in)
    with pytest.raises(ValueError, match=rf"last dimension {k_in}.*K=64"):
        sharq_linear(x, layer.quantized_weight, layer.bias, cfg)
    with pytest.raises(ValueError, match=rf"last dimension {k_in}.*in_features=64"):
        layer(x)


def test_device_mismatch_is_refused_naming_the_devices():
    """An activation or bias on another device than the weight (meta stands in for a GPU here):
    a ValueError naming both devices — before, sharq_linear returned a meta tensor."""
    layer = _layer(64, 8)
    cfg = layer.config
    wq = layer.quantized_weight
    x = _x(3, 64)
    with pytest.raises(ValueError, match="activation is on meta but the weight is on cpu"):
        sharq_linear(x.to("meta"), wq, None, cfg)
    with pytest.raises(ValueError, match="bias is on meta but the weight is on cpu"):
        sharq_linear(x, wq, torch.zeros(8, device="meta"), cfg)
    with pytest.raises(ValueError, match="input is on meta but the layer's weight is on cpu"):
        layer(x.to("meta"))


def test_meta_weight_cannot_be_quantized():
    """A weight without values (meta) gives an error that says so, not `.item()` on a meta tensor."""
    with pytest.raises(ValueError, match="meta device"):
        quantize_weight(torch.empty(8, 64, device="meta"), _cfg("sharq-nvfp4"))
    with torch.device("meta"):
        lin = torch.nn.Linear(64, 8)
    with pytest.raises(ValueError, match=r"SharqLinear\(64->8\): weight is on the meta device"):
        SharqLinear.from_float(lin, _cfg("sharq-nvfp4"))


def test_wrong_operand_types_and_bias_shape():
    layer = _layer(64, 8)
    cfg = layer.config
    x = _x(3, 64)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        sharq_linear(x, torch.randn(8, 64), None, cfg)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\), got \(7,\)"):
        sharq_linear(x, layer.quantized_weight, torch.zeros(7), cfg)
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_tensor([[1.0, 2.0]], "nvfp4", 16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        nm_mask([1.0, 2.0, 3.0, 4.0], "2:4")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# empty batches
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_empty_batch_gives_empty_results(preset, granularity):
    """M = 0 (2-D, and 0 in a leading dimension of 3-D input): empty results of the right shapes and
    dtypes from every op, also with check_finite on."""
    cfg = _cfg(preset, granularity)
    layer = SharqLinear.from_float(torch.nn.Linear(96, 8), cfg)
    layer.options = RuntimeOptions(check_finite=True)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.zeros(0, 96, dtype=dtype)
        parts = decompose(x, cfg, check_finite=True)
        assert parts.backbone.shape == parts.residual.shape == (0, 96) and parts.backbone.dtype == torch.float32
        prepared = prepare_activation(x, cfg, check_finite=True)
        assert prepared.backbone.shape == (0, 96) and prepared.backbone.codes.shape[0] == 0
        assert sharq_linear(x, layer.quantized_weight, layer.bias, cfg, options=layer.options).shape == (0, 8)
        for shape in ((0, 96), (2, 0, 96), (0, 3, 5, 96)):
            y = layer(torch.zeros(shape, dtype=dtype))
            assert y.shape == (*shape[:-1], 8) and y.dtype == dtype
        assert nm_mask(x, cfg.mask or "2:4").shape == (0, 96)
    for fmt, block in FORMAT_BLOCKS:
        q = quantize_tensor(torch.zeros(0, 40), fmt, block)
        assert q.dequantize().shape == (0, 40)


# --------------------------------------------------------------------------------------------------
# K not a multiple of the block; non-contiguous and 3-D/4-D inputs (hypothesis)
# --------------------------------------------------------------------------------------------------
@given(
    preset=st.sampled_from(PRESET_NAMES),
    granularity=st.sampled_from(["tensor", "token"]),
    m=st.sampled_from([1, 2, 5]),
    k=st.sampled_from([1, 7, 15, 31, 33, 63, 65, 100]),
    seed=st.integers(0, 2**31 - 1),
)
def test_k_off_the_block_is_zero_padding(preset, granularity, m, k, seed):
    """SPEC §2: K not a multiple of the block is padded with zeros and the padding dropped: the
    decomposition of x equals the first K columns of that of x zero-padded to 128, bit for bit,
    and the padded columns decompose to zero."""
    cfg = _cfg(preset, granularity)
    x = _x(m, k, seed)
    padded = torch.nn.functional.pad(x, (0, 128 - k))
    got, full = decompose(x, cfg), decompose(padded, cfg)
    assert got.backbone.shape == (m, k)
    assert torch.equal(got.backbone, full.backbone[:, :k]) and torch.equal(got.residual, full.residual[:, :k])
    assert not full.backbone[:, k:].any() and not full.residual[:, k:].any()
    assert torch.equal(got.global_scale, full.global_scale)
    fmt, block = FORMAT_BLOCKS[seed % len(FORMAT_BLOCKS)]
    assert torch.equal(
        quantize_tensor(x, fmt, block).dequantize(), quantize_tensor(padded, fmt, block).dequantize()[:, :k]
    )


def _non_contiguous(x: torch.Tensor, how: str) -> torch.Tensor:
    """A view of x's values that is not contiguous in memory."""
    if how == "transposed":
        return x.t().contiguous().t()
    if how == "strided":
        return torch.stack([x, torch.full_like(x, 7.0)], dim=-1)[..., 0]  # every other element
    return torch.stack([x, torch.full_like(x, 7.0)], dim=1).reshape(-1, x.shape[-1])[::2]  # every other row


@given(
    preset=st.sampled_from(PRESET_NAMES),
    granularity=st.sampled_from(["tensor", "token"]),
    how=st.sampled_from(["transposed", "strided", "rows"]),
    m=st.sampled_from([1, 3, 8]),
    k=st.sampled_from([32, 64, 100]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_non_contiguous_input_equals_contiguous(preset, granularity, how, m, k, dtype, seed):
    if m == 1:
        how = "strided"  # a single row is contiguous under any row or transpose stride
    x = _x(m, k, seed, dtype)
    view = _non_contiguous(x, how)
    assert torch.equal(view, x) and not view.is_contiguous()
    cfg = _cfg(preset, granularity)
    assert _parts_equal(decompose(view, cfg), decompose(x, cfg))
    assert torch.equal(nm_mask(view, "pair4of8"), nm_mask(x, "pair4of8"))
    fmt, block = FORMAT_BLOCKS[seed % len(FORMAT_BLOCKS)]
    assert _same_storage(quantize_tensor(view, fmt, block), quantize_tensor(x, fmt, block))
    layer = _layer(k, 8, preset, granularity)
    y = layer(x)
    assert torch.equal(layer(view), y)
    assert torch.equal(sharq_linear(view, layer.quantized_weight, layer.bias, layer.config), y)
    w = torch.randn(k, 8).t()  # a transposed (non-contiguous) weight
    assert _same_storage(quantize_weight(w, cfg), quantize_weight(w.contiguous(), cfg))


@given(
    preset=st.sampled_from(PRESET_NAMES),
    granularity=st.sampled_from(["tensor", "token"]),
    lead=st.sampled_from([(1,), (2, 3), (3, 1, 2), (2, 2, 2)]),
    k=st.sampled_from([32, 96]),
    seed=st.integers(0, 2**31 - 1),
)
def test_3d_and_4d_inputs_equal_their_2d_rows(preset, granularity, lead, k, seed):
    """(..., K) input gives (..., N), each row what the flattened (M, K) input gives, bit for bit
    (the layer's granularity then spans the same rows)."""
    m = 1
    for d in lead:
        m *= d
    x2 = _x(m, k, seed, torch.bfloat16)
    x = x2.reshape(*lead, k)
    layer = _layer(k, 8, preset, granularity)
    y = layer(x)
    assert y.shape == (*lead, 8) and y.dtype == torch.bfloat16
    assert torch.equal(y.reshape(m, 8), layer(x2))
    assert torch.equal(sharq_linear(x, layer.quantized_weight, layer.bias, layer.config), y)
    parts, flat = decompose(x, layer.config), decompose(x2, layer.config)
    assert parts.backbone.shape == x.shape
    assert torch.equal(parts.backbone.reshape(m, k), flat.backbone)
    assert torch.equal(parts.residual.reshape(m, k), flat.residual)
