"""The "-mse" block-scale rule (SPEC §6): each block's scale is the candidate with the smallest squared
error, ties to the larger; the amax rule is unchanged; the payload format is the same."""

import pytest
import torch

from sharq import PRESETS, quantize_tensor
from sharq.formats.blocks import to_blocks
from sharq.formats.elements import decode_e2m1, round_to_e2m1_codes
from sharq.formats.ieee import div_rn
from sharq.formats.mxfp4 import MXFP4_MSE_EXPONENT_STEPS
from sharq.formats.nvfp4 import NVFP4_MSE_DIVISORS, quantize_nvfp4
from sharq.formats.scale_search import choose_block_scales, tree_sum_last
from sharq.formats.scales import decode_e8m0, e8m0_exponent, round_e4m3
from sharq.ops import quantize_weight

ONE = torch.ones(())


def _block(values, block=16):
    x = torch.zeros(block)
    x[: len(values)] = torch.tensor(values)
    return x


def _sse64(blocks: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP64 squared error of each block (..., nb, B) quantized with `scale` (..., nb), SPEC §2 rounding."""
    s = scale.unsqueeze(-1)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    deq = torch.where(s == 0, torch.zeros_like(s), decode_e2m1(round_to_e2m1_codes(blocks / safe)) * s)
    return ((blocks.double() - deq.double()) ** 2).sum(-1)


def _weights(n=64, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(0.7 * torch.randn(n, 1, generator=g))
    w[torch.rand(n, k, generator=g) < 0.01] *= 8.0  # outliers
    w[:, :32] = 0.0  # whole zero blocks
    w[0, 32:64] *= 1e-6  # blocks far below the matrix amax: subnormal / zero E4M3 scales
    return w


@pytest.mark.parametrize("block", [16, 32])
def test_nvfp4_mse_scale_is_a_candidate_with_minimal_block_error(block):
    w = _weights()
    qt = quantize_tensor(w, "nvfp4", block, scale_rule="mse")
    xs = w / qt.global_scale
    blocks = to_blocks(xs, block)
    amax = blocks.abs().amax(-1)
    assert {6.0, 4.0} <= set(NVFP4_MSE_DIVISORS)  # at least amax/6 and amax/4 (Four Over Six)
    cands = torch.stack([round_e4m3(div_rn(amax, d)) for d in NVFP4_MSE_DIVISORS])  # (C, N, nb)
    chosen = qt.scale_values()
    assert bool(((cands == chosen).any(0)).all())  # always one of the candidates
    sse = torch.stack([_sse64(blocks, c) for c in cands])
    got = _sse64(blocks, chosen)
    assert bool((got <= sse.min(0).values * (1 + 1e-6) + 1e-30).all())  # FP32 choice, FP64 check
    # the stored codes are those of the chosen scale (SPEC §2 elements), dequantizing to x's domain
    assert torch.allclose(((xs - qt.dequantize(apply_global_scale=False)).double() ** 2).sum(), got.sum(), rtol=1e-9)
    # the search pays on real-looking weights: less total error than the amax rule, and some blocks moved
    amax_qt = quantize_tensor(w, "nvfp4", block)
    assert not torch.equal(amax_qt.scales, qt.scales)
    assert float(got.sum()) < float(_sse64(blocks, amax_qt.scale_values()).sum())


@pytest.mark.parametrize("block", [16, 32])
def test_amax_rule_is_unchanged_bit_for_bit(block):
    w = _weights(seed=3)
    qt = quantize_weight(w, PRESETS["nvfp4"].replace(weight_block=block))
    assert torch.equal(qt.scales, quantize_tensor(w, "nvfp4", block).scales)
    s_w = torch.clamp(div_rn(w.abs().amax(), 2688.0), min=1e-9)
    assert torch.equal(qt.global_scale, s_w)
    spec_scale = round_e4m3(div_rn(to_blocks(w / s_w, block).abs().amax(-1), 6.0))  # SPEC §2: E4M3(amax/6)
    assert torch.equal(qt.scale_values(), spec_scale)
    explicit = quantize_tensor(w, "nvfp4", block, scale_rule="amax")
    assert torch.equal(explicit.codes, qt.codes) and torch.equal(explicit.scales, qt.scales)


def test_four_over_six_picks_amax_over_four_when_it_is_exact():
    # 6 and 4.5 with scale 1 (amax/6): 4.5 -> 4 (error 0.5); with scale 1.5 (amax/4): 4 and 3, exact
    x = _block([6.0, 4.5, -4.5])
    assert quantize_nvfp4(x, 16, global_scale=ONE).scale_values().item() == 1.0
    qt = quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse")
    assert qt.scale_values().item() == 1.5
    assert torch.equal(qt.dequantize(), x)


def test_amax_over_six_kept_when_it_is_better():
    x = _block([6.0, 0.5, -1.0])  # exact on scale 1; scale 1.5 gives 0.5 -> 0.75 (error)
    assert quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse").scale_values().item() == 1.0


@pytest.mark.parametrize("values", [[6.0], [6.0, 3.0, -1.5], [-6.0, 0.0, 3.0]])
def test_ties_pick_the_larger_scale(values):
    # exact on both grids (scale 1 and scale 1.5): equal errors (0) -> the larger scale
    x = _block(values)
    qt = quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse")
    assert qt.scale_values().item() == 1.5 and torch.equal(qt.dequantize(), x)
    blocks = x.reshape(1, 16)
    small, large = torch.tensor([1.0]), torch.tensor([1.5])
    for order in ([small, large], [large, small]):  # the order of the candidates does not matter
        assert choose_block_scales(blocks, order).item() == 1.5


def test_zero_blocks_and_scales_that_flush_to_zero():
    zero = quantize_nvfp4(torch.zeros(2, 32), 16, global_scale=ONE, scale_rule="mse")
    assert torch.equal(zero.scales, torch.zeros_like(zero.scales)) and not zero.dequantize().any()
    # amax/6 below half the smallest E4M3 subnormal (2^-9) rounds to 0; amax/4 does not: the
    # search takes the non-zero scale, which keeps the block
    x = _block([0.005, -0.002])
    assert quantize_nvfp4(x, 16, global_scale=ONE).scale_values().item() == 0.0
    qt = quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse")
    assert qt.scale_values().item() == 2.0**-9
    assert qt.dequantize()[0].item() == 3 * 2.0**-9
    # both flush to zero: codes 0
    tiny = quantize_nvfp4(_block([1e-4]), 16, global_scale=ONE, scale_rule="mse")
    assert tiny.scale_values().item() == 0.0 and not tiny.codes.any()


def test_subnormal_and_saturating_scales():
    # subnormal candidates: amax = 6 * 3 * 2^-9 -> amax/6 = 3 * 2^-9, amax/4 = 4.5 * 2^-9 (ties to 4 * 2^-9)
    s = 2.0**-9
    x = _block([18 * s, 12 * s, -9 * s])
    qt = quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse")
    blocks = x.reshape(1, 16)
    cands = [round_e4m3(div_rn(blocks.abs().amax(-1), d)) for d in NVFP4_MSE_DIVISORS]
    assert {3 * s, 4 * s} <= {c.item() for c in cands}
    best = min(_sse64(blocks, c).item() for c in cands)
    assert _sse64(blocks, qt.scale_values()).item() == best
    # saturation: amax/6 and amax/4 above 448 both clamp to 448 (a tie of equal scales)
    big = _block([3000.0, -2000.0, 100.0])
    qt = quantize_nvfp4(big, 16, global_scale=ONE, scale_rule="mse")
    assert qt.scale_values().item() == 448.0
    assert qt.dequantize()[0].item() == 6 * 448.0  # saturated element, as under the amax rule
    assert torch.equal(qt.codes, quantize_nvfp4(big, 16, global_scale=ONE).codes)


def test_nan_block_keeps_a_nan_scale():
    x = torch.zeros(2, 16)
    x[0, 3] = float("nan")
    x[1, :3] = torch.tensor([6.0, 4.5, 1.0])
    qt = quantize_nvfp4(x, 16, global_scale=ONE, scale_rule="mse")
    vals = qt.scale_values()
    assert torch.isnan(vals[0, 0]) and vals[1, 0].item() in (1.0, 1.5)


def test_mxfp4_mse_takes_the_floor_or_next_exponent_by_error():
    # amax 7.5: floor rule 2^0 saturates 7.5 -> 6 (error 1.5); 2^1: 3.75 -> 4 -> 8 (error 0.5)
    x = _block([7.5, 1.0], 32)
    assert quantize_tensor(x, "mxfp4", 32).scale_values().item() == 1.0
    assert quantize_tensor(x, "mxfp4", 32, scale_rule="mse").scale_values().item() == 2.0
    y = _block([4.0, 1.5, 0.5], 32)  # exact on 2^0, coarser on 2^1 (0.5 -> 0 or 1)
    assert quantize_tensor(y, "mxfp4", 32, scale_rule="mse").scale_values().item() == 1.0
    # random blocks: the choice is one of the candidates with minimal error
    w = _weights(32, 256, seed=5)
    qt = quantize_tensor(w, "mxfp4", 32, scale_rule="mse")
    blocks = to_blocks(w, 32)
    exp = e8m0_exponent(blocks.abs().amax(-1))
    cands = [decode_e8m0((torch.clamp(exp + j, max=127) + 127).to(torch.uint8)) for j in MXFP4_MSE_EXPONENT_STEPS]
    chosen = qt.scale_values()
    sse = torch.stack([_sse64(blocks, c) for c in cands]).min(0).values
    assert bool(((torch.stack(cands) == chosen).any(0)).all())
    assert bool((_sse64(blocks, chosen) <= sse * (1 + 1e-6) + 1e-30).all())
    assert ((w - qt.dequantize()) ** 2).sum() < ((w - quantize_tensor(w, "mxfp4", 32).dequantize()) ** 2).sum()


def test_hif4_refuses_the_search():
    with pytest.raises(ValueError, match="hif4 has no block-scale search"):
        quantize_tensor(torch.randn(4, 64), "hif4", 64, scale_rule="mse")
    with pytest.raises(ValueError, match="scale_rule"):
        quantize_tensor(torch.randn(4, 64), "nvfp4", 16, scale_rule="l2")


def test_payload_format_is_the_amax_payload_format():
    w = _weights(48, 200, seed=7)  # K not a multiple of the block: padded like the amax rule
    for preset in ("nvfp4-mse", "sharq-nvfp4-mse", "sharq-nvfp4-w16-mse"):
        cfg = PRESETS[preset]
        a, m = quantize_weight(w, cfg.replace(weight_scale="amax")), quantize_weight(w, cfg)
        for name, t in a.storage().items():
            u = m.storage()[name]
            assert (u.dtype, u.shape) == (t.dtype, t.shape), (preset, name)
        assert torch.equal(a.global_scale, m.global_scale)  # s_w: the SPEC's, unchanged
        assert (m.format, m.block, m.shape, m.bits_per_value) == (a.format, a.block, a.shape, a.bits_per_value)


def test_tree_sum_is_a_sum_and_refuses_other_lengths():
    t = torch.randn(5, 32, dtype=torch.float64)
    assert torch.allclose(tree_sum_last(t), t.sum(-1))
    assert torch.equal(tree_sum_last(torch.arange(8.0).reshape(1, 8)), torch.tensor([28.0]))
    with pytest.raises(ValueError, match="power-of-two"):
        tree_sum_last(torch.ones(3, 12))


def test_magnitude_rounding_equals_the_code_rounding():
    from sharq.formats.elements import _E2M1_MIDPOINTS, round_e2m1_magnitudes

    mids = torch.tensor(_E2M1_MIDPOINTS)
    around = [mids]
    for target in (10.0, 0.0):  # 4 floats above and below every midpoint (ties and their neighbours)
        x = mids
        for _ in range(4):
            x = torch.nextafter(x, torch.full_like(x, target))
            around.append(x)
    g = torch.Generator().manual_seed(0)
    a = torch.cat(around + [torch.rand(200_000, generator=g) * 8, torch.tensor([0.0, 1e-45, 6.0, 6.5, 7.0, 3e38])])
    assert torch.equal(round_e2m1_magnitudes(a), decode_e2m1(round_to_e2m1_codes(a)))


def test_block_error_is_the_signed_error():
    from sharq.formats.scale_search import block_sse_e2m1

    g = torch.Generator().manual_seed(1)
    blocks = torch.randn(50, 4, 16, generator=g) * torch.exp(torch.randn(50, 4, 1, generator=g))
    scale = round_e4m3(blocks.abs().amax(-1) / 5.0)
    scale[0, 0] = 0.0
    got = block_sse_e2m1(blocks.abs(), scale)
    assert torch.allclose(got.double(), _sse64(blocks, scale), rtol=1e-5, atol=0)
    assert torch.isclose(got[0, 0], (blocks[0, 0] ** 2).sum(), rtol=1e-6)  # scale 0: the block is lost
