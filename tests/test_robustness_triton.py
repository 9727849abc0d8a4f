"""Bad and unusual input on the Triton backend: the same results or errors as the reference.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes (the interpreter is slow:
an M = 1 call, the GEMV, takes ~2 s). On CUDA the same tests run compiled.
Covered: wrong K (at M = 1 it once ran through the GEMV unnoticed), another device, M = 0,
non-contiguous and 3-D/4-D inputs, NaN/Inf with check_finite off and on, and (hypothesis) zeros,
subnormals, huge and non-finite values prepared bit-identically to the reference.
"""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sharq import PRESETS, SharqLinear, sharq_linear  # noqa: E402
from sharq.ops import prepare  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K, N = 96, 24


TRITON = RuntimeOptions(backend="triton")


def _cfg(preset: str, granularity: str = "token", **changes):
    cfg = PRESETS[preset].replace(**changes)
    return cfg.replace(granularity=granularity) if cfg.has_global_scale else cfg


def _layer(
    preset: str = "sharq-nvfp4", granularity: str = "token", check_finite: bool = False, **changes
) -> SharqLinear:
    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(K, N).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(N, generator=g))
    layer = SharqLinear.from_float(lin, _cfg(preset, granularity, **changes)).to(DEVICE)
    layer.options = TRITON.replace(check_finite=check_finite)
    return layer


def _x(m: int, k: int = K, seed: int = 0, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))).to(dtype).to(DEVICE)


@pytest.mark.parametrize("m", [1, 3])
def test_wrong_k_is_refused(m):
    """K = 64 against a K = 96 weight: both pad to the GEMV's K step, and at M = 1 the GEMV
    returned a result; now a ValueError naming both sizes, before any kernel runs."""
    layer = _layer()
    with pytest.raises(ValueError, match=r"last dimension 64.*K=96"):
        sharq_linear(_x(m, 64), layer.quantized_weight, layer.bias, layer.config, options=layer.options)
    with pytest.raises(ValueError, match=r"last dimension 64.*in_features=96"):
        layer(_x(m, 64))


def test_device_mismatch_is_refused():
    layer = _layer()
    other = "cpu" if DEVICE == "cuda" else "meta"
    with pytest.raises(ValueError, match=rf"activation is on {other}.* weight is on {DEVICE}"):
        sharq_linear(_x(3).to(other), layer.quantized_weight, layer.bias, layer.config, options=layer.options)
    with pytest.raises(ValueError, match=rf"input is on {other}"):
        layer(_x(3).to(other))


@pytest.mark.parametrize(
    "preset,granularity", [("sharq-nvfp4", "tensor"), ("sharq-nvfp4", "token"), ("sharq-mxfp4", "tensor")]
)
def test_empty_batch(preset, granularity):
    layer = _layer(preset, granularity, check_finite=True)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in ((0, K), (2, 0, K), (0, 1, 3, K)):
            y = layer(torch.zeros(shape, dtype=dtype, device=DEVICE))
            assert y.shape == (*shape[:-1], N) and y.dtype == dtype
        y = sharq_linear(
            torch.zeros(0, K, dtype=dtype, device=DEVICE),
            layer.quantized_weight,
            None,
            layer.config,
            options=layer.options,
        )
        assert y.shape == (0, N)


@pytest.mark.parametrize("preset,granularity", [("sharq-nvfp4", "token"), ("sharq-mxfp4", "tensor")])
def test_non_contiguous_and_nd_inputs_equal_contiguous_2d(preset, granularity):
    layer = _layer(preset, granularity)
    x = _x(6)
    want = layer(x)
    transposed = x.t().contiguous().t()
    strided = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    for view in (transposed, strided):
        assert not view.is_contiguous() and torch.equal(view, x)
        assert torch.equal(layer(view), want)
    assert torch.equal(layer(x.reshape(2, 3, K)), want.reshape(2, 3, N))
    assert torch.equal(layer(x.reshape(3, 1, 2, K)), want.reshape(3, 1, 2, N))
    assert torch.equal(
        sharq_linear(
            transposed.reshape(2, 3, K), layer.quantized_weight, layer.bias, layer.config, options=layer.options
        ),
        want.reshape(2, 3, N),
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows(bad):
    """token: only the row holding NaN/Inf is non-finite (the others are what they are without it,
    bit for bit); tensor: every row; M = 1 (the GEMV): the row; check_finite: a ValueError."""
    x = _x(5)
    x[2, 17] = bad
    token, tensor = _layer("sharq-nvfp4", "token"), _layer("sharq-nvfp4", "tensor")
    y = token(x)
    assert not bool(torch.isfinite(y[2]).any())
    clean = x.clone()
    clean[2] = 0.0
    rows = [0, 1, 3, 4]
    assert bool(torch.isfinite(y[rows]).all()) and torch.equal(y[rows], token(clean)[rows])
    assert not bool(torch.isfinite(tensor(x)).any())
    assert not bool(torch.isfinite(token(x[2:3])).any())
    checked = _layer("sharq-nvfp4", "token", check_finite=True)
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        checked(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        prepare(x, checked.config, checked.options)


def _values(kind: str, m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    fi = torch.finfo(dtype)
    u = torch.rand(m, k, generator=g) * 2 - 1
    scale = {"zeros": 0.0, "subnormal": fi.smallest_normal * 0.99, "huge": fi.max, "mixed": 1.0}[kind]
    x = (u * scale).to(dtype)
    if kind == "mixed":  # each row: ordinary values, a subnormal, a huge one and NaN/Inf in some rows
        x[:, 1] = fi.smallest_normal / 4
        x[:, 2] = fi.max / 2
        x[0, 3] = float("nan")
        x[m - 1, 5] = float("-inf")
    return x.to(DEVICE)


@settings(max_examples=12)
@given(
    preset=st.sampled_from(["sharq-nvfp4", "sharq-mxfp4", "nvfp4", "dense-dense"]),
    granularity=st.sampled_from(["tensor", "token"]),
    kind=st.sampled_from(["zeros", "subnormal", "huge", "mixed"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    m=st.sampled_from([2, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_extreme_values_prepare_like_the_reference(preset, granularity, kind, dtype, m, seed):
    """The Triton preparation of extreme values: codes, scales and s_x bit-identical to the
    reference's (NaN matching NaN)."""
    cfg = _cfg(preset, granularity)
    x = _values(kind, m, 64, dtype, seed)
    got, ref = prepare(x, cfg, TRITON), prepare_activation(x, cfg)
    for a, b in [(got.backbone, ref.backbone), (got.residual, ref.residual)]:
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    gs, rs = got.global_scale, ref.global_scale
    assert torch.equal(gs.isnan(), rs.isnan()) and torch.equal(gs.nan_to_num(0.0), rs.nan_to_num(0.0))
