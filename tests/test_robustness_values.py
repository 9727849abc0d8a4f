"""Value ranges through the public ops, reference backend (hypothesis): zeros, subnormals, values
near the dtype's maximum, NaN and ±Inf, in float32, bfloat16 and float16.

What is promised (SPEC §2–3, §10) and asserted here:
- finite input gives a finite decomposition within an error bound derived from the format
  (|x̂ − x| ≤ amax(|x| of the row) / 4 + the format's absolute floor), and all-zero input gives
  exact zeros (no 0/0);
- the decomposition is odd (x → −x negates it, bit for bit) and, away from the scale floors,
  commutes with powers of two (NVFP4: the FP32 second-level scale absorbs them exactly; MXFP4:
  the E8M0 exponent does);
- NaN / Inf never come out as a finite number: the input positions and output rows that depend on
  them are non-finite, or, with `check_finite=True`, a ValueError;
- weights: finite values quantize within the same bound, NaN / Inf are refused.
Format ranges, measured and documented here: HiF4 has no second-level scale and saturates at
|x| = 1.75 · 4 · 49152 = 344064 (E6M2 scale max 49152); SharQ-MXFP4's two terms can sum past the
FP32 maximum for |x| ≳ 1.75 · 2^127 (each term is finite). Those ranges are tested as such.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sharq import PRESETS, SharqLinear, decompose, prepare_activation, quantize_weight, sharq_linear
from sharq.options import RuntimeOptions

PRESET_NAMES = ["sharq-nvfp4", "sharq-mxfp4", "sharq-hif4", "nvfp4", "mxfp4", "hif4", "dense-dense", "sparse-sparse"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HIF4_MAX = 1.75 * 4 * 49152  # S1P2 max · 2^(E8 + E4) · E6M2 max
KINDS = ["normal", "zeros", "subnormal", "huge", "mixed"]


def _cfg(preset: str, granularity: str = "tensor", **changes):
    cfg = PRESETS[preset].replace(**changes)  # on the CPU: the reference
    return cfg.replace(granularity=granularity) if cfg.has_global_scale else cfg


def _largest_finite(cfg, dtype: torch.dtype) -> float:
    """The largest |x| the preset represents without saturating or overflowing (see module doc)."""
    top = torch.finfo(dtype).max
    if cfg.format.value == "hif4":
        return min(top, 3.0e5)
    if cfg.format.value == "mxfp4":
        return min(top, 2.0**127)
    return top


def _values(kind: str, m: int, k: int, dtype: torch.dtype, seed: int, top: float) -> torch.Tensor:
    """(m, k) values of `kind` in `dtype`; "huge" and "mixed" reach ±top, "subnormal" are all
    subnormal in dtype, "mixed" joins zeros, subnormals, ordinary and huge values in each row."""
    g = torch.Generator().manual_seed(seed)
    fi = torch.finfo(dtype)
    u = torch.rand(m, k, generator=g) * 2 - 1
    if kind == "zeros":
        return (torch.sign(u) * 0.0).to(dtype)  # +0 and -0
    if kind == "subnormal":
        return (u * fi.smallest_normal * 0.99).to(dtype)
    if kind == "huge":
        x = u * top
        x[:, 0] = top * torch.sign(u[:, 0] + 0.5)
        return x.to(dtype)
    if kind == "normal":
        return (torch.randn(m, k, generator=g) * torch.exp(2 * torch.randn(1, k, generator=g))).to(dtype)
    pick = torch.randint(0, 4, (m, k), generator=g)
    scale = torch.tensor([0.0, fi.smallest_normal * 0.5, 1.0, top * 0.9])[pick]
    x = (u * scale).to(dtype)
    x[:, -1] = torch.tensor(top * 0.9).to(dtype)
    return x


def _floor(cfg, parts) -> torch.Tensor:
    """The absolute error floor of the format (values whose block scale underflows): NVFP4 six
    E4M3-subnormal steps of the second-level scale s; MXFP4 the E8M0 minimum 2^-127 (twice);
    HiF4 the E6M2 minimum 2^-48 (twice)."""
    if cfg.format.value == "nvfp4":
        return parts.global_scale * (6 * 2.0**-9)
    return torch.tensor(2.0**-126 if cfg.format.value == "mxfp4" else 2.0**-47)


values = st.fixed_dictionaries(
    {
        "preset": st.sampled_from(PRESET_NAMES),
        "granularity": st.sampled_from(["tensor", "token"]),
        "dtype": st.sampled_from(DTYPES),
        "kind": st.sampled_from(KINDS),
        "m": st.sampled_from([1, 2, 5]),
        "k": st.sampled_from([16, 33, 64, 100]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=200)
@given(values)
def test_finite_input_gives_a_bounded_finite_decomposition(case):
    cfg = _cfg(case["preset"], case["granularity"])
    x = _values(case["kind"], case["m"], case["k"], case["dtype"], case["seed"], _largest_finite(cfg, case["dtype"]))
    assert bool(torch.isfinite(x).all())
    parts = decompose(x, cfg)
    x_hat = parts.backbone + parts.residual
    assert x_hat.dtype == torch.float32 and x_hat.shape == x.shape
    assert bool(torch.isfinite(x_hat).all()), "finite input gave a non-finite decomposition"
    xf = x.float()
    bound = xf.abs().amax(dim=-1, keepdim=True) / 4 + _floor(cfg, parts)
    assert bool(((x_hat - xf).abs() <= bound).all()), float(((x_hat - xf).abs() - bound).max())
    if case["kind"] == "zeros":
        assert not x_hat.any()
    assert torch.equal(parts.backbone + parts.residual, x_hat)
    neg = decompose(-x, cfg)  # odd: rounding and masks are sign-symmetric
    assert torch.equal(neg.backbone, -parts.backbone) and torch.equal(neg.residual, -parts.residual)


@given(
    preset=st.sampled_from(["sharq-nvfp4", "nvfp4", "dense-dense", "sharq-mxfp4", "mxfp4"]),
    granularity=st.sampled_from(["tensor", "token"]),
    j=st.integers(-16, 30),  # below ~2^-19 NVFP4's global scale reaches its 1e-9 floor (not invariant)
    seed=st.integers(0, 2**31 - 1),
)
def test_powers_of_two_pass_through_exactly(preset, granularity, j, seed):
    """decompose(2^j · x) = 2^j · decompose(x), bit for bit, for x away from the scale floors."""
    cfg = _cfg(preset, granularity)
    x = _values("normal", 4, 64, torch.float32, seed, 1.0)
    a, b = decompose(x, cfg), decompose(x * 2.0**j, cfg)
    assert torch.equal(b.backbone, a.backbone * 2.0**j) and torch.equal(b.residual, a.residual * 2.0**j)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", ["sharq-hif4", "hif4", "sharq-mxfp4"])
def test_documented_range_limits(preset, dtype):
    """Past the format's range: HiF4 saturates (finite, |x̂| at most twice its maximum for two
    terms, sign kept); SharQ-MXFP4 near the FP32 maximum overflows to a non-finite value (never a
    finite wrong one)."""
    cfg = _cfg(preset)
    x = _values("huge", 3, 64, dtype, 0, torch.finfo(dtype).max * 0.995)
    parts = decompose(x, cfg)
    x_hat = parts.backbone + parts.residual
    if cfg.format.value == "hif4":
        assert bool(torch.isfinite(x_hat).all())
        terms = 2 if cfg.residual.value != "none" else 1
        assert float(x_hat.abs().max()) <= terms * HIF4_MAX
        assert float(parts.backbone.abs().max()) == HIF4_MAX  # saturated, not wrapped or zeroed
        big = x.float().abs() > HIF4_MAX
        assert torch.equal(torch.sign(x_hat[big]), torch.sign(x.float()[big]))
    else:
        assert not bool(torch.isfinite(x_hat).all())


bad_values = st.fixed_dictionaries(
    {
        "preset": st.sampled_from(PRESET_NAMES),
        "granularity": st.sampled_from(["tensor", "token"]),
        "dtype": st.sampled_from(DTYPES),
        "bad": st.sampled_from([math.nan, math.inf, -math.inf]),
        "m": st.sampled_from([1, 3, 6]),
        "k": st.sampled_from([33, 64, 100]),
        "count": st.integers(1, 3),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _with_bad(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordinary values with `count` non-finite entries at random places; and their bool mask."""
    m, k = case["m"], case["k"]
    g = torch.Generator().manual_seed(case["seed"])
    x = _values("normal", m, k, case["dtype"], case["seed"], 1.0)
    where = torch.zeros(m * k, dtype=torch.bool)
    where[torch.randint(0, m * k, (case["count"],), generator=g)] = True
    where = where.reshape(m, k)
    x[where] = case["bad"]
    return x, where


@settings(max_examples=150)
@given(bad_values)
def test_nan_and_inf_never_come_out_finite(case):
    cfg = _cfg(case["preset"], case["granularity"])
    x, where = _with_bad(case)
    parts = decompose(x, cfg)
    x_hat = parts.backbone + parts.residual
    assert not bool(torch.isfinite(x_hat[where]).any()), "a NaN/Inf input position decomposed to a finite value"
    n, k = 8, case["k"]
    lin = torch.nn.Linear(k, n).to(case["dtype"])
    layer = SharqLinear.from_float(lin, cfg)
    y = layer(x)
    bad_rows = where.any(dim=-1)
    per_tensor = cfg.has_global_scale and case["granularity"] == "tensor"
    hit = torch.ones_like(bad_rows) if per_tensor else bad_rows  # SPEC §10: the rows that depend on it
    assert not bool(torch.isfinite(y[hit]).any())
    assert bool(torch.isfinite(y[~hit]).all())
    assert torch.equal(sharq_linear(x, layer.quantized_weight, layer.bias, cfg).isnan(), y.isnan())


@given(bad_values)
def test_check_finite_raises_instead(case):
    cfg = _cfg(case["preset"], case["granularity"])
    checked = RuntimeOptions(check_finite=True)
    x, _ = _with_bad(case)
    layer = SharqLinear.from_float(torch.nn.Linear(case["k"], 8), cfg, name="model.layers.4.mlp.up_proj")
    layer.options = checked
    with pytest.raises(ValueError, match=r"model\.layers\.4\.mlp\.up_proj: input contains NaN or Inf"):
        layer(x)
    for call in (
        lambda: prepare_activation(x, cfg, check_finite=True),
        lambda: decompose(x, cfg, check_finite=True),
        lambda: sharq_linear(x, layer.quantized_weight, layer.bias, cfg, options=checked),
    ):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()
    finite = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    assert bool(torch.isfinite(layer(finite)).all())  # the same layer runs on finite input


@given(
    preset=st.sampled_from(["sharq-nvfp4", "sharq-nvfp4-w16", "sharq-mxfp4", "sharq-hif4"]),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS + ["nan", "inf"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_weight_values(preset, dtype, kind, seed):
    """Weights: finite values of every range quantize within the bound (all-zero exactly to zero);
    NaN / Inf are refused with a ValueError."""
    cfg = _cfg(preset)
    if kind in ("nan", "inf"):
        w = _values("normal", 6, 64, dtype, seed, 1.0)
        w[seed % 6, seed % 64] = math.nan if kind == "nan" else -math.inf
        with pytest.raises(ValueError, match="NaN or Inf"):
            quantize_weight(w, cfg)
        return
    w = _values(kind, 6, 64, dtype, seed, _largest_finite(cfg, dtype))
    assume(bool(torch.isfinite(w).all()))
    qt = quantize_weight(w, cfg)
    w_hat = qt.dequantize()
    assert bool(torch.isfinite(w_hat).all())
    wf = w.float()
    floor = qt.global_scale * (6 * 2.0**-9) if qt.global_scale is not None else 2.0**-47
    assert bool(((w_hat - wf).abs() <= wf.abs().amax() / 4 + floor).all())
    if kind == "zeros":
        assert not w_hat.any()
