"""The split argmax (kernels/argmax.py) returns torch.argmax's indices exactly: random rows, ties
(first index), NaN (the first NaN, either sign), -Inf, all-equal rows, -0.0 against +0.0, vocab
sizes that are not a multiple of the block, every split boundary, three dtypes, and it runs inside
a fullgraph torch.compile (an opaque op with a fake, no host synchronisation).

Without a GPU the kernels run under TRITON_INTERPRET=1; `-m gpu` runs them compiled at vocab 128k.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq.kernels.argmax import BLOCK, argmax_splits, split_argmax  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _check(x: torch.Tensor) -> None:
    got = split_argmax(x)
    want = torch.argmax(x, dim=-1)
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(got.cpu(), want.cpu()), (got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
def test_random_rows(dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    x = (torch.randn(3, vocab, generator=g) * 4).to(dtype).to(DEVICE)
    _check(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_nan_inf_and_signed_zero(dtype):
    v = 2 * BLOCK + 37  # three slices, the last one partial
    nan, inf = float("nan"), float("inf")
    rows = torch.full((10, v), -3.0)
    rows[0, [5, BLOCK + 3, 2 * BLOCK + 1]] = 7.0  # a tie across slices: the first
    rows[1, [BLOCK + 3, BLOCK + 9]] = 7.0  # a tie inside one slice
    rows[2, [9, BLOCK + 2, 2 * BLOCK]] = nan  # NaN wins over everything: the first NaN
    rows[2, 0] = inf
    rows[3, [2 * BLOCK + 36]] = -nan  # a negative NaN in the last position
    rows[3, 4] = inf
    rows[4] = -inf  # all -Inf: index 0
    rows[5] = 1.5  # all equal: index 0
    rows[6] = -inf
    rows[6, v - 1] = -1e30 if dtype != torch.float16 else -6e4  # one finite value at the very end
    rows[7] = 0.0
    rows[7, : BLOCK + 4] = -0.0  # -0.0 == +0.0: the first of them
    rows[8, [BLOCK - 1, BLOCK]] = inf  # a tie on both sides of a slice boundary
    rows[9, torch.arange(0, v, 2)] = nan  # NaN at every even position
    x = rows.to(dtype).to(DEVICE)
    _check(x)
    expected = [5, BLOCK + 3, 9, 2 * BLOCK + 36, 0, 0, v - 1, 0, BLOCK - 1, 0]
    assert split_argmax(x).tolist() == expected


def test_a_single_maximum_is_found_at_every_edge():
    """One large value at each block and slice edge (and a random sample of positions) of a row of
    2 slices + 3: each is found (no boundary drops a candidate)."""
    v = 2 * BLOCK + 3
    edges = [0, 1, BLOCK - 2, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, v - 2, v - 1]
    where = torch.tensor(edges + torch.randperm(v)[:30].tolist())
    x = torch.full((len(where), v), -1.0)
    x[torch.arange(len(where)), where] = 1.0
    assert torch.equal(split_argmax(x.to(DEVICE)).cpu(), where)


def test_shapes_keepdim_strides_and_errors():
    x = torch.randn(2, 3, 50, device=DEVICE)
    assert torch.equal(split_argmax(x), torch.argmax(x, dim=-1))
    assert torch.equal(split_argmax(x, keepdim=True), torch.argmax(x, dim=-1, keepdim=True))
    wide = torch.randn(4, 1, 80, device=DEVICE)[:, 0]  # a row stride that is not the vocab
    assert torch.equal(split_argmax(wide), torch.argmax(wide, dim=-1))
    cols = torch.randn(80, 4, device=DEVICE).T  # vocab not contiguous: copied first
    assert torch.equal(split_argmax(cols), torch.argmax(cols, dim=-1))
    assert split_argmax(torch.randn(0, 9, device=DEVICE)).shape == (0,)
    with pytest.raises(ValueError, match="non-empty"):
        split_argmax(torch.randn(2, 0, device=DEVICE))
    with pytest.raises(TypeError, match="float"):
        split_argmax(torch.zeros(2, 5, dtype=torch.int32, device=DEVICE))


def test_splits_cover_the_vocab():
    for vocab in (1, BLOCK, BLOCK + 1, 128256, 151936, 10**6):
        splits, slice_ = argmax_splits(vocab)
        assert slice_ % BLOCK == 0 and splits * slice_ >= vocab > (splits - 1) * slice_
        assert splits <= 128
    assert argmax_splits(128256) == (126, BLOCK)


def test_runs_in_a_fullgraph_compile():
    x = torch.randn(2, 3 * BLOCK + 1, device=DEVICE).to(torch.bfloat16)
    fn = torch.compile(lambda t: split_argmax(t, keepdim=True) + 0, fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x), torch.argmax(x, dim=-1, keepdim=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_vocab_128k_on_the_gpu_and_in_a_graph(dtype):
    x = torch.randn(8, 128256, device="cuda").to(dtype)
    x[3, [1000, 90000]] = 50.0
    x[5, 77777] = float("nan")
    _check(x)
    out = torch.empty(8, dtype=torch.int64, device="cuda")
    split_argmax(x)  # compile first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(split_argmax(x))
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.argmax(x, dim=-1))


def test_static_decoder_picks_with_the_split_argmax(monkeypatch):
    """StaticDecoder(split_argmax=True) launches the kernel for every pick (prefill and each step,
    eager and compiled) and produces torch.argmax's tokens; the default on the CPU is torch.argmax."""
    pytest.importorskip("transformers")
    import sharq.kernels.argmax as argmax_module
    from sharq.runtime import StaticDecoder

    from .tiny_models import VOCAB, tiny_model

    model = tiny_model("llama", dtype=torch.float32)
    ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    plain = StaticDecoder(model, 2, 12)
    assert plain.split_argmax is (DEVICE == "cuda")
    want = StaticDecoder(model, 2, 12, split_argmax=False).generate(ids, 4)
    calls = []
    real = argmax_module.split_argmax
    monkeypatch.setattr(argmax_module, "split_argmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(StaticDecoder(model, 2, 12, split_argmax=True).generate(ids, 4), want)
    assert len(calls) == 4  # the prefill's pick and three steps
    compiled = StaticDecoder(model, 2, 12, split_argmax=True, compile="aot_eager")
    assert torch.equal(compiled.generate(ids, 4), want)


def test_op_passes_opcheck():
    torch.library.opcheck(torch.ops.sharq.split_argmax.default, (torch.randn(3, BLOCK + 9, device=DEVICE),))
