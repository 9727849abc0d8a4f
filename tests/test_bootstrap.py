"""The paired bootstrap of perplexities and of the recovered share (sharq.eval.bootstrap)."""

from __future__ import annotations

import math

import pytest
import torch

from sharq.eval.bootstrap import perplexity_interval, recovered_share, relative_change, resample_windows


def _windows(per_token: torch.Tensor, tokens: int) -> list[float]:
    """Summed NLL of windows of `tokens` tokens whose mean per-token NLL is `per_token` (W,)."""
    return (per_token.double() * tokens).tolist()


def test_known_share_on_identical_windows():
    tokens = [100] * 12
    ref, plain, cand = ([h * 100] * 12 for h in (2.0, 3.0, 2.5))
    share = recovered_share(ref, plain, cand, tokens, resamples=200)
    expected = (math.e**3 - math.e**2.5) / (math.e**3 - math.e**2)
    assert share.value == pytest.approx(expected, rel=1e-12)
    # every resample holds the same windows: no spread at all
    assert share.low == pytest.approx(expected, rel=1e-12) and share.high == pytest.approx(expected, rel=1e-12)
    assert (share.windows, share.resamples, share.level) == (12, 200, 0.95)
    assert recovered_share(ref, plain, ref, tokens).value == pytest.approx(1.0)
    assert recovered_share(ref, plain, plain, tokens).value == pytest.approx(0.0)


def test_perplexity_weights_windows_by_their_tokens():
    # a 10-token window at 4 nats/token and a 90-token window at 1 nat/token: exp(130 / 100), not a window mean
    ppl = perplexity_interval([40.0, 90.0], [10, 90], resamples=500)
    assert ppl.value == pytest.approx(math.exp(1.3), rel=1e-12)
    assert ppl.low < ppl.value < ppl.high
    assert ppl.low >= math.exp(1.0) - 1e-9 and ppl.high <= math.exp(4.0) + 1e-9


def test_pairing_cancels_the_difficulty_shared_by_every_preset():
    """Windows differ a lot in difficulty, but each preset adds the same per-token offset to every
    window: a paired resample keeps the share fixed, while each perplexity alone spreads widely."""
    g = torch.Generator().manual_seed(1)
    difficulty = 1.0 + 2.0 * torch.rand(40, generator=g, dtype=torch.float64)  # per-token NLL of each window, 1..3 nats
    tokens = [128] * 40
    ref, plain, cand = (_windows(difficulty + offset, 128) for offset in (0.0, 0.5, 0.25))
    share = recovered_share(ref, plain, cand, tokens)
    expected = (math.exp(0.5) - math.exp(0.25)) / (math.exp(0.5) - 1.0)  # the difficulty cancels
    assert share.value == pytest.approx(expected, rel=1e-9)
    assert share.high - share.low < 1e-9
    alone = perplexity_interval(ref, tokens)
    assert (alone.high - alone.low) / alone.value > 0.1


def test_interval_shrinks_with_more_windows_and_covers_the_value():
    def width(windows: int, seed: int) -> tuple[float, float, float]:
        g = torch.Generator().manual_seed(seed)
        difficulty = 2.0 + 0.5 * torch.randn(windows, generator=g)
        noise = [0.05 * torch.randn(windows, generator=g) for _ in range(3)]
        nll = [_windows(difficulty + off + n, 256) for off, n in zip((0.0, 0.4, 0.2), noise)]
        s = recovered_share(*nll, [256] * windows, resamples=1000)
        return s.value, s.low, s.high

    few = [width(16, seed) for seed in range(4)]
    many = [width(256, seed) for seed in range(4)]
    for value, low, high in few + many:
        assert low < value < high
        assert -0.5 < value < 1.5
    mean_width = [sum(h - lo for _, lo, h in runs) / len(runs) for runs in (few, many)]
    # 16× the windows: about 4× narrower (1/sqrt(n)); at least 2.5× to leave room for the noise
    assert mean_width[0] > 2.5 * mean_width[1]


def test_resamples_are_seeded():
    a, b, c = (resample_windows(10, 50, seed) for seed in (3, 3, 4))
    assert a.shape == (50, 10) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) <= 9
    g = torch.Generator().manual_seed(0)
    nll = (torch.rand(20, generator=g) * 100 + 200).tolist()
    assert perplexity_interval(nll, [100] * 20, seed=5) == perplexity_interval(nll, [100] * 20, seed=5)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1.0, 2.0], [2.0, 3.0], [1.5], [1, 1]), {}, "nll_candidate: 1 windows, expected 2"),
        (([1.0], [1.0], [1.0], [1]), {}, "no gap"),
        (([1.0], [2.0], [1.5], [0]), {}, "at least one token"),
        (([1.0], [2.0], [1.5], [1]), {"level": 1.0}, "level"),
        (([1.0], [2.0], [float("nan")], [1]), {}, "non-finite"),
        (([], [], [], []), {}, "no windows"),
    ],
)
def test_recovered_share_refuses_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        recovered_share(*args, **kwargs)


def test_relative_change_is_paired_and_exact_on_a_shared_offset():
    """Each window of `other` is 0.01 nats/token above `base`: ppl_other / ppl_base − 1 = e^0.01 − 1
    on every resample, however different the windows are; swapped, the change is negative."""
    g = torch.Generator().manual_seed(4)
    difficulty = 1.0 + 2.0 * torch.rand(30, generator=g, dtype=torch.float64)
    tokens = [100] * 30
    base, other = _windows(difficulty, 100), _windows(difficulty + 0.01, 100)
    change = relative_change(base, other, tokens)
    assert change.value == pytest.approx(math.expm1(0.01), rel=1e-9)
    assert change.high - change.low < 1e-9
    assert relative_change(other, base, tokens).value == pytest.approx(math.expm1(-0.01), rel=1e-9)
    noisy = _windows(difficulty + 0.01 + 0.05 * torch.randn(30, generator=g, dtype=torch.float64), 100)
    spread = relative_change(base, noisy, tokens)
    assert spread.low < spread.value < spread.high
    with pytest.raises(ValueError, match="expected 30"):
        relative_change(base, other[:-1], tokens)


def test_accuracy_recovered_share_values_and_pairing():
    from sharq.eval.bootstrap import accuracy_recovered_share

    ref = [True] * 60 + [False] * 40  # 60%
    plain = [True] * 40 + [False] * 60  # 40%
    half = [True] * 50 + [False] * 50  # 50%: half the gap
    share = accuracy_recovered_share(ref, plain, half, resamples=300)
    assert share.value == pytest.approx(0.5)
    assert share.low <= 0.5 <= share.high and share.windows == 100
    assert accuracy_recovered_share(ref, plain, ref).value == pytest.approx(1.0)
    assert accuracy_recovered_share(ref, plain, plain).value == pytest.approx(0.0)
    # paired: a candidate that differs from the reference on one document has a tight interval
    near = list(ref)
    near[0] = False
    tight = accuracy_recovered_share(ref, plain, near, resamples=300)
    assert tight.high - tight.low < 0.3  # unpaired, two 100-document accuracies would span more than 1
    with pytest.raises(ValueError, match="no gap"):
        accuracy_recovered_share(ref, ref, plain)
    with pytest.raises(ValueError, match="one value a document"):
        accuracy_recovered_share(ref, plain[:-1], half)
