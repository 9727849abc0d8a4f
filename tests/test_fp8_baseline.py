"""The FP8 baseline (`sharq.baselines`): numerics, `Fp8Linear`, `fp8_quantize_` on tiny models.

`torch._scaled_mm` runs on the CPU in the torch versions tested here, so the product is compared with
an independent emulation: FP64 math on the E4M3-rounded operands, rounded once to bfloat16.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharq.baselines import E4M3_MAX, Fp8Linear, fp8_linear, fp8_quantize_, quantize_rows_e4m3, quantize_weight_e4m3

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# every finite E4M3 value, for "is this exactly representable" checks
_CODES = torch.arange(256, dtype=torch.uint8)
E4M3_VALUES = _CODES.view(torch.float8_e4m3fn).float()
E4M3_EVEN = (_CODES % 2 == 0)[torch.isfinite(E4M3_VALUES)]  # last mantissa bit 0
E4M3_VALUES = E4M3_VALUES[torch.isfinite(E4M3_VALUES)]


def _w(n=48, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * torch.exp(torch.randn(n, 1, generator=g))).to(torch.bfloat16)


def _nearest_e4m3(t: torch.Tensor) -> torch.Tensor:
    """Round FP32 `t` to the nearest finite E4M3 value by search; a tie goes to the even code."""
    dist = (t.unsqueeze(-1).double() - E4M3_VALUES.double()).abs()  # (..., 254)
    nearest = dist == dist.min(-1, keepdim=True).values
    pick = nearest & (E4M3_EVEN | (nearest.sum(-1, keepdim=True) == 1))  # ties: only the even code
    return E4M3_VALUES[pick.double().argmax(-1)]


def _emulate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Independent FP8 linear: per-row FP32 scales, E4M3 rounding by search, FP64 product of the
    rounded operands, one bfloat16 rounding at the end."""

    def rows(t):
        t = t.float()
        scale = (t.abs().amax(dim=1, keepdim=True) / 448.0).clamp_min(1e-12)
        return _nearest_e4m3(t / scale).double(), scale.double()

    xq, sx = rows(x.reshape(-1, x.shape[-1]))
    wq, sw = rows(weight)
    y = (xq @ wq.T) * sx * sw.T
    if bias is not None:
        y = y + bias.double()
    return y.to(torch.bfloat16)


def _one_ulp_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """y and ref (bfloat16) differ by at most one bfloat16 rounding of the same FP32 sum."""
    y, ref = y.cpu().float(), ref.cpu().float()
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(2**-100))) - 7)
    assert bool(((y - ref).abs() <= ulp + 1e-6 * float(ref.abs().max())).all()), float((y - ref).abs().max())


def test_weight_scales_are_per_channel_and_codes_exact():
    w = _w()
    w8, scale = quantize_weight_e4m3(w)
    assert w8.dtype == torch.float8_e4m3fn and w8.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (1, w.shape[0])
    torch.testing.assert_close(scale[0], w.float().abs().amax(dim=1) / E4M3_MAX, rtol=0, atol=0)
    # each channel's largest magnitude lands exactly on 448, and every code is a finite E4M3 value
    assert torch.equal(w8.float().abs().amax(dim=1), torch.full((w.shape[0],), 448.0))
    # round to nearest: |W8 - W/s| is at most half the E4M3 spacing at that magnitude (3 mantissa bits)
    exact = w.float() / scale.T
    err = (w8.float() - exact).abs()
    spacing = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(2**-6))) - 3)
    assert bool((err <= spacing / 2 + 1e-6).all())


def test_row_quantization_is_per_token_and_handles_zero_and_nan_rows():
    x = _w(5, 64, seed=1)
    x[1] = 0
    x[3, 7] = float("nan")
    x8, sx = quantize_rows_e4m3(x)
    assert x8.shape == x.shape and sx.shape == (5, 1)
    assert torch.equal(x8[1].float(), torch.zeros(64)) and float(sx[1]) == float(torch.tensor(1e-12))
    assert torch.isnan(sx[3]).all()
    # rows are independent: quantizing one row alone gives the same codes and scale
    x8_row, sx_row = quantize_rows_e4m3(x[2:3])
    assert torch.equal(x8_row.view(torch.uint8), x8[2:3].view(torch.uint8)) and torch.equal(sx_row, sx[2:3])


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scaled_mm_matches_emulation(m, with_bias):
    w = _w(48, 64).to(DEVICE)
    x = _w(m, 64, seed=2 + m).to(DEVICE)
    bias = (torch.randn(48, generator=torch.Generator().manual_seed(9)) * 0.1).to(torch.bfloat16).to(DEVICE)
    b = bias if with_bias else None
    w8, sw = quantize_weight_e4m3(w)
    x8, sx = quantize_rows_e4m3(x)
    y = fp8_linear(x8, sx, w8, sw, b, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == (m, 48)
    # the library's codes are the nearest E4M3 values (independent rounding by search)
    assert torch.equal(x8.float().cpu(), _nearest_e4m3((x.float() / sx).cpu()))
    assert torch.equal(w8.float().cpu(), _nearest_e4m3((w.float() / sw.T).cpu()))
    # the product: FP64 math on those operands, one bf16 rounding; _scaled_mm sums in FP32 in
    # another order, which can move the result by one bf16 step at most
    ref = _emulate(x.cpu(), w.cpu(), None if b is None else b.cpu())
    _one_ulp_close(y, ref)


def test_fp8_linear_module_matches_emulation_and_keeps_shapes():
    lin = nn.Linear(64, 48, bias=True, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(_w(48, 64))
    layer = Fp8Linear.from_float(lin.to(DEVICE), name="probe")
    x = _w(6, 64, seed=5).reshape(2, 3, 64).to(DEVICE)
    y = layer(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    ref = _emulate(x.cpu(), lin.weight.detach().cpu(), lin.bias.detach().cpu()).reshape(2, 3, 48)
    _one_ulp_close(y, ref)
    assert layer(x[:, :0]).shape == (2, 0, 48)
    assert "e4m3" in repr(layer)


def test_fp8_linear_errors_name_the_problem():
    lin = nn.Linear(64, 48, dtype=torch.bfloat16)
    layer = Fp8Linear.from_float(lin, name="model.layers.0.mlp.up_proj")
    with pytest.raises(ValueError, match=r"up_proj.*in_features=64"):
        layer(torch.zeros(2, 32, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"up_proj.*int64"):
        layer(torch.zeros(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="meta"):
        layer(torch.zeros(2, 64, dtype=torch.bfloat16, device="meta"))
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear.from_float(nn.Linear(60, 48), name="odd")
    with pytest.raises(TypeError, match="nn.Linear"):
        Fp8Linear.from_float(nn.Conv1d(4, 4, 1))
    bad = nn.Linear(64, 48)
    with torch.no_grad():
        bad.weight[3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"bad_proj: .*NaN or Inf"):
        Fp8Linear.from_float(bad, name="bad_proj")


# --- whole models ----------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")

import sharq  # noqa: E402
from sharq.models.convert import conversion_groups, conversion_targets  # noqa: E402

from .tiny_models import VOCAB, tiny_model  # noqa: E402


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_fp8_quantize_swaps_what_quantize_swaps_and_stays_close(kind):
    model = tiny_model(kind)
    expected = conversion_targets(model)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits.float()
    report = fp8_quantize_(model)
    assert set(report.converted) == set(expected)
    swapped = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert swapped == set(expected)
    assert type(model.lm_head) is nn.Linear
    with torch.no_grad():
        out = model(ids).logits.float()
    # 8-bit weights and activations: closer to the bf16 model than SharQ's 4-bit ones
    sharq_model = tiny_model(kind)
    sharq.quantize_(sharq_model, sharq.PRESETS["sharq-nvfp4"], backend="reference")
    with torch.no_grad():
        fp4 = sharq_model(ids).logits.float()
    err_fp8, err_fp4 = (out - ref).norm() / ref.norm(), (fp4 - ref).norm() / ref.norm()
    assert err_fp8 < 0.3 and err_fp8 < err_fp4 / 2, (float(err_fp8), float(err_fp4))
    # q/k/v and gate/up quantized their input once per forward
    groups = conversion_groups(tiny_model(kind))[1]
    shared = {m.shared_input for m in model.modules() if isinstance(m, Fp8Linear) and m.shared_input}
    assert {s.name for s in shared} == set(groups)
    assert all(s.quantize_count == 1 for s in shared)
    assert all(s._source is None for s in shared)  # nothing kept after the last consumer


def test_fp8_quantize_refuses_twice_and_moe_and_leaves_model_untouched():
    model = tiny_model("llama")
    fp8_quantize_(model)
    with pytest.raises(ValueError, match="already an Fp8Linear"):
        fp8_quantize_(model)
    moe = tiny_model("qwen3_moe")
    before = {n: type(m) for n, m in moe.named_modules()}
    with pytest.raises(ValueError, match="mixture-of-experts"):
        fp8_quantize_(moe)
    assert {n: type(m) for n, m in moe.named_modules()} == before
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fp8_quantize_("llama")


def test_shared_quantization_is_not_reused_after_in_place_change():
    model = tiny_model("llama")
    fp8_quantize_(model)
    attn = model.model.layers[0].self_attn
    x = _w(4, 128, seed=7).reshape(1, 4, 128)
    q_shared = attn.q_proj(x)
    x.mul_(2)  # same tensor, changed in place: k must not reuse the quantization of the old values
    k_after = attn.k_proj(x)
    attn.v_proj(x)
    alone = Fp8Linear.from_float(nn.Linear(128, 64, bias=False, dtype=torch.bfloat16))
    alone.weight_e4m3.copy_(attn.k_proj.weight_e4m3)
    alone.weight_scale.copy_(attn.k_proj.weight_scale)
    assert torch.equal(k_after, alone(x))
    assert q_shared.shape[-1] == attn.q_proj.out_features
