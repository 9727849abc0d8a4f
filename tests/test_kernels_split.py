"""The M > 16 path: the operand-only preparation (`prepare_split`, bf16 rows) == the reference bit for
bit (every NVFP4 preset the kernel takes, both granularities, sum and two-term operands, specials),
and the medium-M GEMM (`gemm_fp4`'s packed decode, the plan's tiles and others) == an FP64 matmul
of its own operands (FP32 summation order), partial tiles.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes; `-m gpu` runs Llama shapes.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq import PRESETS  # noqa: E402
from sharq.kernels.gemm_fp4 import _tiles, fp4_weight_gemm  # noqa: E402
from sharq.kernels.prepare_split import prepare_split, prepare_split_supports  # noqa: E402
from sharq.ops import quantize_weight  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPLIT_PRESETS = (
    "sharq-nvfp4",
    "sharq-nvfp4-w16",
    "nvfp4",
    "sparse-only",
    "dense-dense",
    "sparse-sparse",
    "naive-residual",
)


def _activation(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(m, k, generator=g)
        * torch.exp(torch.randn(m, 1, generator=g))
        * torch.exp(torch.randn(1, k, generator=g))
    )
    x[:, torch.randperm(k, generator=g)[: max(1, k // 40)]] *= 40.0
    return x.to(torch.bfloat16).to(DEVICE)


def _want(x: torch.Tensor, config, two: bool):
    ref = prepare_activation(x, config.replace(operand="bf16-sum"))
    if two and ref.residual is not None:
        terms = (ref.backbone.dequantize(apply_global_scale=False), ref.residual.dequantize(apply_global_scale=False))
    else:
        terms = (ref.dense,)
    return ref.global_scale, terms


def _assert_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.float().view(torch.int32), want.view(torch.int32)), (
        f"{int((got.float() != want).sum())} of {want.numel()} values differ"
    )


@pytest.mark.parametrize("preset", SPLIT_PRESETS)
@pytest.mark.parametrize("granularity", ["token", "tensor"])
@pytest.mark.parametrize("two", [False, True])
def test_prepare_split_equals_reference_bits(preset, granularity, two):
    config = PRESETS[preset].replace(granularity=granularity)
    assert prepare_split_supports(config)
    for m, k, seed in ((19, 256, 1), (5, 200, 2)):  # 200: a partial 64-wide step, masked
        x = _activation(m, k, seed)
        s, terms = prepare_split(x, config, two=two)
        want_s, want = _want(x, config, two)
        assert torch.equal(s, want_s)
        assert len(terms) == len(want)
        for t, w in zip(terms, want):
            assert t.shape == (m, k)
            _assert_bits(t, w)


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_prepare_split_specials_and_rounding_cases(granularity):
    """Zeros, subnormals, E2M1 midpoints at every scale, huge values and NaN/Inf rows: the reference's bits."""
    config = PRESETS["sharq-nvfp4"].replace(granularity=granularity)
    g = torch.Generator().manual_seed(7)
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 0.5, 6.0])
    rows = [
        torch.zeros(128),
        torch.full((128,), 1e-40),  # subnormal
        mids.repeat(13)[:128] * 2.0 ** torch.randint(-20, 20, (1,), generator=g).float(),
        -mids.repeat(13)[:128],
        torch.randn(128, generator=g) * 3e38,
        torch.randn(128, generator=g) * 1e-30,
        torch.randn(128, generator=g),
    ]
    x = torch.stack(rows)
    if granularity == "token":  # non-finite rows only where they cannot reach the others' scale
        bad = torch.randn(3, 128, generator=g)
        bad[0, 5], bad[1, 70], bad[2, 9] = float("nan"), float("inf"), -float("inf")
        x = torch.cat([x, bad])
    x = x.to(torch.bfloat16).to(DEVICE)
    for two in (False, True):
        s, terms = prepare_split(x, config, two=two)
        want_s, want = _want(x, config, two)
        assert torch.allclose(s, want_s, rtol=0, atol=0, equal_nan=True)
        for t, w in zip(terms, want):
            got = t.float()
            same = (got == w) | (got.isnan() & w.isnan())
            assert bool(same.all()), f"{int((~same).sum())} values differ"
            assert torch.equal(got[~got.isnan()].view(torch.int32), w[~w.isnan()].view(torch.int32))


def test_prepare_split_refuses_what_it_does_not_prepare():
    x = _activation(4, 64, 0)
    with pytest.raises(ValueError, match="NVFP4"):
        prepare_split(x, PRESETS["sharq-mxfp4"], two=False)
    with pytest.raises(ValueError, match="2-D"):
        prepare_split(x[None], PRESETS["sharq-nvfp4"], two=False)
    s, terms = prepare_split(x[:0], PRESETS["sharq-nvfp4"], two=False)
    assert terms[0].shape == (0, 64)


def _fp64(terms, s_x, wq, bias):
    w = wq.dequantize(apply_global_scale=False).double()
    acc = sum(t.double() for t in terms) @ w.T
    y = (s_x.double().reshape(-1, 1) * wq.global_scale.double()) * acc
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-nvfp4-w16"])
@pytest.mark.parametrize("two", [False, True])
@pytest.mark.parametrize("m,n,k", [(17, 48, 256), (70, 130, 200)])
def test_medium_m_gemm_matches_fp64_matmul_of_its_operands(preset, two, m, n, k):
    """The packed weight decode at 17-511 rows on the operand-only preparation's rows."""
    config = PRESETS[preset].replace(granularity="token" if m % 2 else "tensor")
    g = torch.Generator().manual_seed(m + n)
    wq = quantize_weight((torch.randn(n, k, generator=g) * 0.02).to(DEVICE), config)
    bias = torch.randn(n, generator=g).to(torch.bfloat16).to(DEVICE)
    x = _activation(m, k, m)
    s, terms = prepare_split(x, config, two=two)
    want = _fp64(terms, s, wq, bias)
    assert _tiles(m, n, k, packed=True)["DECODE"] == 2  # the plan's regime for these rows
    packed = dict(DECODE=2, STACK=1, GROUP_M=8, num_warps=4, num_stages=3, SCRATCH=1)
    for tiles in (
        None,
        dict(packed, BLOCK_M=32, BLOCK_N=32, BLOCK_K=64),
        dict(packed, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
    ):
        got = fp4_weight_gemm(list(terms), s, wq, bias, torch.float32, tiles=tiles)
        err = float((got.double() - want).abs().max() / want.abs().max())
        assert err < 2e-6, (tiles, err)  # FP32 summation order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [17, 300, 4099])
def test_split_path_at_llama_shapes(m):
    """Compiled kernels at Llama-3.1-8B's gate_up/down shapes: preparation bit for bit, GEMM vs FP64."""
    config = PRESETS["sharq-nvfp4"].replace(granularity="token")
    for n, k in ((28672, 4096), (4096, 14336)):
        x = _activation(m, k, m)
        for two in (False, True):
            s, terms = prepare_split(x, config, two=two)
            want_s, want = _want(x, config, two)
            assert torch.equal(s, want_s)
            for t, w in zip(terms, want):
                _assert_bits(t, w)
            wq = quantize_weight(torch.randn(n, k, device=DEVICE) * 0.02, config)
            rows = torch.arange(0, m, max(1, m // 64), device=DEVICE)  # FP64 on a sample of rows
            got = fp4_weight_gemm(list(terms), s, wq, None, torch.float32)[rows]
            ref = _fp64(tuple(t[rows] for t in terms), s[rows], wq, None)
            assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5
