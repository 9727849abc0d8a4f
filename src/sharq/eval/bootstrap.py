"""Paired bootstrap intervals for perplexities and for the recovered share of the FP4 gap.

Every preset scores the same token windows, so a window's difficulty is shared by all of them. The
bootstrap resamples *windows* (with replacement) and applies the same resample to every preset:
the noise common to all presets cancels in their differences, and the correlation of the tokens
inside a window is kept (the window is the unit, never the token).

Inputs are per-window sums: `nll[i]` the summed negative log-likelihood (nats) of window i and
`tokens[i]` the number of tokens it scored. A resample's perplexity is
exp(Σ nll[idx] / Σ tokens[idx]); intervals are percentile intervals of the resampled statistic, the
point value is the statistic on all windows.

  perplexity_interval(nll, tokens)                         ppl with its interval
  recovered_share(nll_ref, nll_plain, nll_cand, tokens)    (ppl_plain − ppl_cand) / (ppl_plain − ppl_ref)
  relative_change(nll_base, nll_other, tokens)            ppl_other / ppl_base − 1
  accuracy_recovered_share(ok_ref, ok_plain, ok_cand)      (acc_cand − acc_plain) / (acc_ref − acc_plain),
                                                           documents as the resampled unit
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

__all__ = [
    "Interval",
    "resample_windows",
    "perplexity_interval",
    "recovered_share",
    "relative_change",
    "accuracy_recovered_share",
]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic on all windows and its percentile bootstrap interval [low, high] at `level`."""

    value: float
    low: float
    high: float
    level: float
    resamples: int
    windows: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resample_windows(windows: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """(resamples, windows) int64 window indices drawn uniformly with replacement, seeded."""
    if windows < 1 or resamples < 1:
        raise ValueError(f"need at least one window and one resample, got {windows} and {resamples}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, windows, (resamples, windows), generator=generator)


def _as_windows(name: str, values: Sequence[float], count: int | None) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name}: no windows")
    if count is not None and t.numel() != count:
        raise ValueError(f"{name}: {t.numel()} windows, expected {count} (every preset scores the same windows)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: non-finite values")
    return t


def _ppl(nll: torch.Tensor, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(R,) float64 perplexity of each resample `idx` (R, W)."""
    return torch.exp(nll[idx].sum(dim=1) / tokens[idx].sum(dim=1))


def _interval(value: float, samples: torch.Tensor, level: float, windows: int) -> Interval:
    tail = (1.0 - level) / 2.0
    finite = samples[torch.isfinite(samples)]  # a resample whose gap is exactly 0 has no share
    if finite.numel() == 0:
        return Interval(value, math.nan, math.nan, level, int(samples.numel()), windows)
    low, high = torch.quantile(finite, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return Interval(value, low, high, level, int(samples.numel()), windows)


def _check_level(resamples: int, level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")


def _check(tokens: Sequence[int], resamples: int, level: float) -> torch.Tensor:
    _check_level(resamples, level)
    t = _as_windows("tokens", tokens, None)
    if bool((t <= 0).any()):
        raise ValueError("tokens: every window must score at least one token")
    return t


def perplexity_interval(
    nll: Sequence[float], tokens: Sequence[int], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Perplexity exp(Σ nll / Σ tokens) over the windows, with a bootstrap interval over windows."""
    t = _check(tokens, resamples, level)
    n = _as_windows("nll", nll, t.numel())
    value = math.exp(float(n.sum() / t.sum()))
    idx = resample_windows(t.numel(), resamples, seed)
    return _interval(value, _ppl(n, t, idx), level, t.numel())


def recovered_share(
    nll_reference: Sequence[float],
    nll_plain: Sequence[float],
    nll_candidate: Sequence[float],
    tokens: Sequence[int],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Share of the plain-FP4 → reference perplexity gap that the candidate closes,
    (ppl_plain − ppl_candidate) / (ppl_plain − ppl_reference), with a paired bootstrap interval:
    each resample draws one set of windows and scores all three presets on it.

    1 means the candidate matches the reference, 0 the plain format; the value may fall outside
    [0, 1]. Resamples whose gap is exactly 0 are left out of the interval; ValueError when the gap
    on all windows is 0 (nothing to recover).
    """
    t = _check(tokens, resamples, level)
    ref = _as_windows("nll_reference", nll_reference, t.numel())
    plain = _as_windows("nll_plain", nll_plain, t.numel())
    cand = _as_windows("nll_candidate", nll_candidate, t.numel())
    total = t.sum()
    p_ref, p_plain, p_cand = (math.exp(float(x.sum() / total)) for x in (ref, plain, cand))
    if p_plain == p_ref:
        raise ValueError("the plain and reference perplexities are equal: there is no gap to recover")
    value = (p_plain - p_cand) / (p_plain - p_ref)
    idx = resample_windows(t.numel(), resamples, seed)
    r_ref, r_plain, r_cand = (_ppl(x, t, idx) for x in (ref, plain, cand))
    gap = r_plain - r_ref
    shares = torch.where(gap != 0, (r_plain - r_cand) / gap, torch.full_like(gap, math.nan))
    return _interval(value, shares, level, t.numel())


def relative_change(
    nll_base: Sequence[float],
    nll_other: Sequence[float],
    tokens: Sequence[int],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """ppl_other / ppl_base − 1 (0.01: `other` 1% higher), with a paired bootstrap interval: each
    resample draws one set of windows and scores both on it."""
    t = _check(tokens, resamples, level)
    base = _as_windows("nll_base", nll_base, t.numel())
    other = _as_windows("nll_other", nll_other, t.numel())
    value = math.exp(float((other.sum() - base.sum()) / t.sum())) - 1.0
    idx = resample_windows(t.numel(), resamples, seed)
    return _interval(value, _ppl(other, t, idx) / _ppl(base, t, idx) - 1.0, level, t.numel())


def accuracy_recovered_share(
    correct_reference: Sequence[bool],
    correct_plain: Sequence[bool],
    correct_candidate: Sequence[bool],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Share of the plain-FP4 → reference accuracy gap the candidate closes, (acc_candidate −
    acc_plain) / (acc_reference − acc_plain), from per-document correctness (one bool a document, the
    same documents in each list), with a paired bootstrap interval over documents. Resamples whose
    gap is exactly 0 are left out of the interval; ValueError when the gap on all documents is 0."""
    _check_level(resamples, level)
    ref, plain, cand = (
        torch.as_tensor(list(x), dtype=torch.float64) for x in (correct_reference, correct_plain, correct_candidate)
    )
    if ref.numel() == 0 or not ref.numel() == plain.numel() == cand.numel():
        raise ValueError(f"need one value a document in each list, got {ref.numel()}, {plain.numel()}, {cand.numel()}")
    if float(ref.mean()) == float(plain.mean()):
        raise ValueError("the plain and reference accuracies are equal: there is no gap to recover")
    value = float((cand.mean() - plain.mean()) / (ref.mean() - plain.mean()))
    idx = resample_windows(ref.numel(), resamples, seed)
    r_ref, r_plain, r_cand = (x[idx].mean(dim=1) for x in (ref, plain, cand))
    gap = r_ref - r_plain
    shares = torch.where(gap != 0, (r_cand - r_plain) / gap, torch.full_like(gap, math.nan))
    return _interval(value, shares, level, ref.numel())
