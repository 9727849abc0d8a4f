"""SPEC §4: input-adaptive N:M activation masks (`sharq.sparse.masks`).

Every mask is checked two ways: against a brute-force reference written here with plain Python
loops (rank counting, independent of the implementation's sort), and through the properties the
SPEC states (exactly N of every M kept, the kept ones are the largest, ties to the lower index).

Padding (K not a multiple of the group) is zeros appended at the *end* of the last group, so a real
value never loses to padding: a real zero ties with padding and wins by its lower index. A partial
group with c real values therefore keeps exactly min(N, c) of them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharq.config import MaskSpec
from sharq.sparse.masks import apply_mask, nm_mask, pair4of8_mask, topn_mask

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMED_MASKS = ["2:4", "8:16", "16:32", "1:4", "3:8"]


# --------------------------------------------------------------------------------------------------
# Brute-force references (plain Python, one row at a time)
# --------------------------------------------------------------------------------------------------
def _score(v: float) -> tuple[int, float]:
    """Sort key of |v|: NaN and ±Inf count as the largest magnitude (equal: lower index wins)."""
    if math.isnan(v) or math.isinf(v):
        return (1, 0.0)
    return (0, abs(v))


def _beats(si: tuple, i: int, sj: tuple, j: int) -> bool:
    """Does candidate i (score si) rank before candidate j? Larger score, then lower index."""
    return si > sj or (si == sj and i < j)


def ref_topn_row(row: list[float], n: int, m: int) -> list[bool]:
    """Keep j iff fewer than n members of its (zero-padded) group of m rank before it."""
    k = len(row)
    out = [False] * k
    for g0 in range(0, k, m):
        vals = [row[g0 + t] if g0 + t < k else 0.0 for t in range(m)]
        scores = [_score(v) for v in vals]
        for j in range(m):
            better = sum(1 for i in range(m) if i != j and _beats(scores[i], i, scores[j], j))
            if better < n and g0 + j < k:
                out[g0 + j] = True
    return out


def ref_pair4of8_row(row: list[float]) -> list[bool]:
    """Per group of 8 (zero padded): 4 pairs scored max(|a|, |b|); keep the 2 best pairs."""
    k = len(row)
    out = [False] * k
    for g0 in range(0, k, 8):
        vals = [row[g0 + t] if g0 + t < k else 0.0 for t in range(8)]
        pair_scores = [max(_score(vals[2 * p]), _score(vals[2 * p + 1])) for p in range(4)]
        for p in range(4):
            better = sum(1 for q in range(4) if q != p and _beats(pair_scores[q], q, pair_scores[p], p))
            if better < 2:
                for t in (2 * p, 2 * p + 1):
                    if g0 + t < k:
                        out[g0 + t] = True
    return out


def ref_mask(x: torch.Tensor, spec: str) -> torch.Tensor:
    k = x.shape[-1]
    rows = x.reshape(-1, k).tolist()
    if spec == "pair4of8":
        out = [ref_pair4of8_row(r) for r in rows]
    else:
        n, m = (int(t) for t in spec.split(":"))
        out = [ref_topn_row(r, n, m) for r in rows]
    return torch.tensor(out, dtype=torch.bool).reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# Property checkers (no reference: what SPEC §4 says, group by group)
# --------------------------------------------------------------------------------------------------
def check_topn_properties(x: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> None:
    assert mask.dtype == torch.bool
    assert mask.shape == x.shape
    k = x.shape[-1]
    for row, mrow in zip(x.reshape(-1, k).tolist(), mask.reshape(-1, k).tolist()):
        for g0 in range(0, k, m):
            idx = list(range(g0, min(g0 + m, k)))
            kept = [i for i in idx if mrow[i]]
            dropped = [i for i in idx if not mrow[i]]
            # exactly N of a full group; min(N, real count) of a partial one (padding loses ties)
            assert len(kept) == min(n, len(idx)), (g0, row[g0 : g0 + m], kept)
            for i in kept:
                for j in dropped:
                    si, sj = _score(row[i]), _score(row[j])
                    assert si >= sj, (i, j, row[i], row[j])  # kept ones are the largest
                    if si == sj:
                        assert i < j, (i, j, row[i], row[j])  # ties: the lower index wins


def check_pair_properties(x: torch.Tensor, mask: torch.Tensor) -> None:
    assert mask.dtype == torch.bool
    assert mask.shape == x.shape
    k = x.shape[-1]
    for row, mrow in zip(x.reshape(-1, k).tolist(), mask.reshape(-1, k).tolist()):
        for g0 in range(0, k, 8):
            pairs = []  # (pair index, real positions, score, kept)
            for p in range(4):
                pos = [i for i in (g0 + 2 * p, g0 + 2 * p + 1) if i < k]
                if not pos:
                    continue
                flags = {mrow[i] for i in pos}
                assert len(flags) == 1, f"pair {p} of group at {g0} half kept"  # pairs move together
                score = max(_score(row[i]) for i in pos)
                pairs.append((p, pos, score, flags.pop()))
            kept = [t for t in pairs if t[3]]
            dropped = [t for t in pairs if not t[3]]
            assert len(kept) == min(2, len(pairs)), (g0, row[g0 : g0 + 8])
            for pk, _, sk, _ in kept:
                for pd, _, sd, _ in dropped:
                    assert sk >= sd
                    if sk == sd:
                        assert pk < pd


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------
# Few distinct magnitudes make ties common; plain floats exercise the ordering.
TIE_VALUES = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0]
FINITE = st.one_of(
    st.sampled_from(TIE_VALUES),
    st.floats(min_value=-1e6, max_value=1e6, width=32, allow_subnormal=True),
)
WITH_NONFINITE = st.one_of(FINITE, st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def small_tensors(draw, elements=FINITE, max_k=24):
    """Element-by-element drawn tensors (hypothesis can shrink them): 1-D/2-D/3-D, K in 1..max_k."""
    lead = draw(st.lists(st.integers(1, 2), min_size=0, max_size=2))
    k = draw(st.integers(1, max_k))
    shape = (*lead, k)
    size = math.prod(shape)
    values = draw(st.lists(elements, min_size=size, max_size=size))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


@st.composite
def random_tensors(draw, max_k=70):
    """Larger tensors from a seeded generator: 1-D/2-D/3-D, K in 1..max_k, several distributions."""
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    k = draw(st.integers(1, max_k))
    shape = (*lead, k)
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["gauss", "ties", "heavy", "zeros", "nonfinite"]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "ties":  # a handful of integer levels: many equal magnitudes in every group
        x = torch.randint(-2, 3, shape, generator=g).float()
    elif kind == "heavy":  # outlier channels, as in LLM activations
        x = x * torch.where(torch.rand(k, generator=g) < 0.1, 100.0, 1.0)
    elif kind == "zeros":
        x = torch.where(torch.rand(shape, generator=g) < 0.7, torch.zeros(shape), x)
    elif kind == "nonfinite":
        r = torch.rand(shape, generator=g)
        x = torch.where(r < 0.05, torch.full(shape, math.nan), x)
        x = torch.where((r >= 0.05) & (r < 0.08), torch.full(shape, math.inf), x)
        x = torch.where((r >= 0.08) & (r < 0.1), torch.full(shape, -math.inf), x)
    return x


@st.composite
def nm_specs(draw):
    m = draw(st.integers(2, 16))
    n = draw(st.integers(1, m - 1))
    return n, m


# --------------------------------------------------------------------------------------------------
# N:M masks
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", NAMED_MASKS)
@SETTINGS
@given(x=random_tensors())
def test_named_nm_masks_properties_and_reference(spec, x):
    n, m = (int(t) for t in spec.split(":"))
    mask = nm_mask(x, spec)
    check_topn_properties(x, mask, n, m)
    assert torch.equal(mask, ref_mask(x, spec))


@SETTINGS
@given(x=small_tensors(elements=WITH_NONFINITE), spec=st.sampled_from(NAMED_MASKS))
def test_named_nm_masks_small_drawn_inputs(x, spec):
    n, m = (int(t) for t in spec.split(":"))
    mask = nm_mask(x, spec)
    check_topn_properties(x, mask, n, m)
    assert torch.equal(mask, ref_mask(x, spec))


@SETTINGS
@given(x=random_tensors(max_k=40), nm=nm_specs())
def test_general_nm_mask(x, nm):
    n, m = nm
    spec = f"{n}:{m}"
    mask = nm_mask(x, spec)
    check_topn_properties(x, mask, n, m)
    assert torch.equal(mask, ref_mask(x, spec))
    assert torch.equal(topn_mask(x, n, m), mask)
    assert torch.equal(nm_mask(x, MaskSpec(n, m)), mask)


@SETTINGS
@given(x=random_tensors(max_k=64))
def test_full_groups_keep_exactly_n(x):
    """Full groups: exactly N kept; the whole mask keeps N/M of a K that is a multiple of M."""
    for n, m in [(2, 4), (8, 16), (16, 32), (1, 4), (3, 8)]:
        k_full = (x.shape[-1] // m) * m
        if k_full == 0:
            continue
        mask = nm_mask(x, f"{n}:{m}")[..., :k_full]
        counts = mask.reshape(*mask.shape[:-1], k_full // m, m).sum(dim=-1)
        assert bool((counts == n).all())


def test_partial_group_padding_loses_ties():
    # K = 5 with 2:4: the second group has one real value (0.0) and three padding zeros.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0])
    assert nm_mask(x, "2:4").tolist() == [False, False, True, True, True]
    # K = 3: a partial group keeps min(N, 3) = 2 real values even when all are zero.
    assert nm_mask(torch.zeros(3), "2:4").tolist() == [True, True, False]
    # K = 1: the single value is kept
    assert nm_mask(torch.tensor([-0.0]), "2:4").tolist() == [True]
    # 8:16 with K = 20: second group has 4 real values, all kept
    x = torch.arange(20, dtype=torch.float32)
    mask = nm_mask(x, "8:16")
    assert mask[:16].tolist() == [False] * 8 + [True] * 8
    assert mask[16:].tolist() == [True] * 4


@pytest.mark.parametrize(
    "values, spec, expected",
    [
        ([1.0, -3.0, 3.0, 2.0], "2:4", [False, True, True, False]),  # |-3| == |3|: both kept
        ([2.0, 2.0, 2.0, 2.0], "2:4", [True, True, False, False]),  # all equal: lowest indices
        ([0.0, 0.0, 0.0, 0.0], "2:4", [True, True, False, False]),
        ([-0.0, 0.0, -0.0, 0.0], "2:4", [True, True, False, False]),
        ([1.0, 2.0, -2.0, 0.5], "2:4", [False, True, True, False]),
        ([5.0, -5.0, 5.0, 1.0], "2:4", [True, True, False, False]),  # three-way tie
        ([0.0, 0.0, 0.0, 7.0], "1:4", [False, False, False, True]),
        ([1.0, 1.0, 1.0, 1.0], "1:4", [True, False, False, False]),
        ([1.0, 4.0, 4.0, 0.0, 4.0, 2.0, 3.0, 3.0], "3:8", [False, True, True, False, True, False, False, False]),
        ([1.0, math.nan, 5.0, 2.0], "2:4", [False, True, True, False]),  # NaN = largest
        ([math.nan, math.inf, 3.0, 1.0], "2:4", [True, True, False, False]),
        ([3.0, math.inf, math.nan, 1.0], "1:4", [False, True, False, False]),  # NaN ties Inf: lower index
        ([3.0, math.nan, -math.inf, 1.0], "1:4", [False, True, False, False]),
        ([3.0, -math.inf, 1e30, 1.0], "1:4", [False, True, False, False]),  # Inf above any finite
        ([math.nan, 0.0, math.nan, 1.0], "1:4", [True, False, False, False]),  # NaN ties NaN: lower index
        ([0.0, 0.0, math.nan, 0.0], "1:4", [False, False, True, False]),
    ],
)
def test_nm_mask_examples(values, spec, expected):
    x = torch.tensor(values)
    assert nm_mask(x, spec).tolist() == expected


@pytest.mark.parametrize("spec", NAMED_MASKS + ["pair4of8"])
def test_all_equal_and_all_zero_groups_keep_lowest_indices(spec):
    k = 64
    for fill in (0.0, -0.0, 1.5, -2.0):
        x = torch.full((3, k), fill)
        mask = nm_mask(x, spec)
        if spec == "pair4of8":
            group, n = 8, 4
        else:
            n, group = (int(t) for t in spec.split(":"))
        expected = ([True] * n + [False] * (group - n)) * (k // group)
        assert all(row == expected for row in mask.tolist()), (spec, fill)


FLT_MAX = torch.finfo(torch.float32).max


@pytest.mark.parametrize("inf", [math.inf, -math.inf])
def test_inf_beats_float32_max(inf):
    x = torch.tensor([FLT_MAX, inf, 0.0, 0.0])
    assert nm_mask(x, "1:4").tolist() == [False, True, False, False]
    x = torch.tensor([FLT_MAX, 0.0, -FLT_MAX, 0.0, inf, 0.0, 0.0, 0.0])
    assert pair4of8_mask(x).tolist() == [True, True, False, False, True, True, False, False]


@pytest.mark.parametrize("spec", NAMED_MASKS + ["pair4of8"])
def test_nan_is_always_kept(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g) * 100
    pos = [(0, 0), (1, 17), (2, 33), (3, 63)]
    for r, c in pos:
        x[r, c] = math.nan
    mask = nm_mask(x, spec)
    for r, c in pos:
        assert bool(mask[r, c])
    # and apply_mask passes the NaN through
    assert bool(torch.isnan(apply_mask(x, spec)[0, 0]))


# --------------------------------------------------------------------------------------------------
# pair4of8
# --------------------------------------------------------------------------------------------------
@SETTINGS
@given(x=random_tensors())
def test_pair4of8_properties_and_reference(x):
    mask = pair4of8_mask(x)
    check_pair_properties(x, mask)
    assert torch.equal(mask, ref_mask(x, "pair4of8"))
    assert torch.equal(nm_mask(x, "pair4of8"), mask)
    assert torch.equal(nm_mask(x, MaskSpec(4, 8, pairs=True)), mask)


@SETTINGS
@given(x=small_tensors(elements=WITH_NONFINITE))
def test_pair4of8_small_drawn_inputs(x):
    mask = pair4of8_mask(x)
    check_pair_properties(x, mask)
    assert torch.equal(mask, ref_mask(x, "pair4of8"))


@SETTINGS
@given(x=random_tensors(max_k=64))
def test_pair4of8_full_groups_keep_two_pairs(x):
    k_full = (x.shape[-1] // 8) * 8
    if k_full == 0:
        return
    mask = pair4of8_mask(x)[..., :k_full]
    pairs = mask.reshape(*mask.shape[:-1], k_full // 8, 4, 2)
    assert bool((pairs[..., 0] == pairs[..., 1]).all())  # both halves of a pair together
    assert bool((pairs[..., 0].sum(dim=-1) == 2).all())  # exactly 2 of the 4 pairs


@pytest.mark.parametrize(
    "values, kept_pairs",
    [
        ([0, 9, 1, 1, 5, 0, 0, 0], (0, 2)),  # scores 9, 1, 5, 0
        ([1, 1, 1, 1, 1, 1, 1, 1], (0, 1)),  # all equal: lowest pairs
        ([0, 0, 0, 0, 0, 0, 0, 0], (0, 1)),  # all zero: lowest pairs
        ([0, 0, 0, 0, 0, 0, 3, -3], (0, 3)),  # one strong pair, ties among the zeros
        ([1, 2, 2, 1, 0, 2, -2, 0], (0, 1)),  # all four pairs score 2
        ([4, 4, 4, 4, 0, 0, 0, 0], (0, 1)),  # sum would not matter: max does
        ([0, 5, 4, 4, 4, 4, 0, 6], (0, 3)),  # pair scores 5, 4, 4, 6
        ([0, 0, 0, 0, 0, 0, math.nan, 0], (0, 3)),  # NaN pair is the best
        ([-7, 0, 0, 0, 0, 7, 0, 0], (0, 2)),  # |-7| == 7: tie, both kept
        ([1, 0, 3, 0, 2, 0, 2, 0], (1, 2)),  # pair 2 and 3 tie: lower index wins
    ],
)
def test_pair4of8_examples(values, kept_pairs):
    x = torch.tensor(values, dtype=torch.float32)
    expected = [p // 2 in kept_pairs for p in range(8)]
    assert pair4of8_mask(x).tolist() == expected
    assert nm_mask(x, "pair4of8").tolist() == expected


def test_pair4of8_partial_groups():
    # K = 3: pairs (0,1) score 0, (2,pad) score 5, the all-padding pairs score 0 and lose ties
    assert pair4of8_mask(torch.tensor([0.0, 0.0, 5.0])).tolist() == [True, True, True]
    # K = 1: the one value is kept
    assert pair4of8_mask(torch.tensor([0.0])).tolist() == [True]
    # K = 12: second group has pairs (8,9) and (10,11) only: both kept, whatever their values
    x = torch.tensor([9.0, 9.0, 0, 0, 0, 0, 8.0, 0, 0.0, 0.0, 0.0, 0.0])
    assert pair4of8_mask(x).tolist() == [True, True, False, False, False, False, True, True] + [True] * 4
    # K = 13: three real pairs, one of them half padding, in the second group
    x = torch.tensor([0.0] * 8 + [1.0, 0.0, 0.0, 0.0, 2.0])
    assert pair4of8_mask(x)[8:].tolist() == [True, True, False, False, True]


# --------------------------------------------------------------------------------------------------
# apply_mask, dtypes, shapes, errors
# --------------------------------------------------------------------------------------------------
@SETTINGS
@given(x=random_tensors(), spec=st.sampled_from(NAMED_MASKS + ["pair4of8"]))
def test_apply_mask_zeroes_dropped_positions(x, spec):
    x_before = x.clone()
    mask = nm_mask(x, spec)
    out = apply_mask(x, spec)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[mask].nan_to_num(), x[mask].nan_to_num())  # kept: unchanged
    assert bool((out[~mask] == 0).all())  # dropped: zero
    assert torch.equal(x.nan_to_num(), x_before.nan_to_num())  # input not modified
    assert torch.equal(torch.isnan(x), torch.isnan(x_before))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", ["2:4", "8:16", "pair4of8"])
def test_low_precision_inputs(dtype, spec):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 40, generator=g) * 4).to(dtype)
    mask = nm_mask(x, spec)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert torch.equal(mask, nm_mask(x.float(), spec))  # exact conversion: same selection
    out = apply_mask(x, spec)
    assert out.dtype == dtype
    assert torch.equal(out, torch.where(mask, x, torch.zeros_like(x)))


def test_mask_is_deterministic_and_batch_independent():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (5, 48), generator=g).float()
    for spec in ["2:4", "pair4of8", "16:32"]:
        full = nm_mask(x, spec)
        assert torch.equal(full, nm_mask(x, spec))
        for i in range(x.shape[0]):
            assert torch.equal(full[i], nm_mask(x[i], spec))


def test_mask_errors():
    x = torch.randn(8)
    with pytest.raises(ValueError):
        nm_mask(torch.tensor(1.0), "2:4")
    with pytest.raises(ValueError):
        nm_mask(x, "4:4")
    with pytest.raises(ValueError):
        nm_mask(x, "5:4")
    with pytest.raises(ValueError):
        nm_mask(x, "0:4")
    with pytest.raises(ValueError):
        nm_mask(x, "half")
    with pytest.raises(ValueError):
        topn_mask(x, 0, 4)
    with pytest.raises(ValueError):
        topn_mask(x, 4, 4)
