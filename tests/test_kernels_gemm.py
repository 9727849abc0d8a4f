"""Triton FP4-weight GEMM == FP32 matmul of its own dequantized operands (1e-3 relative, in practice
FP32 summation order), and the preparation's bf16 terms == the reference's dequantized terms, bit
for bit.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes; `-m gpu` runs full shapes.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq import PRESETS  # noqa: E402
from sharq.config import Format  # noqa: E402
from sharq.formats.quantized import QuantizedTensor  # noqa: E402
from sharq.kernels.gemm_fp4 import fp4_weight_gemm, gemm_supports  # noqa: E402
from sharq.kernels.prepare_fp4 import prepare_activation_triton  # noqa: E402
from sharq.ops import quantize_weight  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WEIGHT_PRESETS = ("sharq-nvfp4", "sharq-nvfp4-w16", "sharq-mxfp4")  # NVFP4-32, NVFP4-16, MXFP4-32


def _weight(n: int, k: int, preset: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02 * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    return quantize_weight(w.to(DEVICE), PRESETS[preset])


def _activation(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))
    x[:, torch.randperm(k, generator=g)[: max(1, k // 50)]] *= 30.0
    return x.to(torch.bfloat16).to(DEVICE)


def _expected(terms, s_x, wq, bias):
    """FP64 matmul of the kernel's own operands, then the reference epilogue order."""
    w = wq.dequantize(apply_global_scale=False).double()
    acc = sum(t.double() for t in terms) @ w.T
    s_w = wq.global_scale.double() if wq.global_scale is not None else 1.0
    y = (s_x.double() * s_w) * acc
    return y if bias is None else y + bias.double()


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("preset", WEIGHT_PRESETS)
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (3, 40, 200), (17, 72, 96), (70, 33, 160)])
def test_gemm_matches_fp32_matmul_of_its_operands(preset, m, n, k):
    wq = _weight(n, k, preset, seed=m + n)
    g = torch.Generator().manual_seed(k)
    dtype = torch.bfloat16
    terms = [(torch.randn(m, k, generator=g) * s).to(dtype).to(DEVICE) for s in (4.0, 0.3)]
    s_x = (torch.rand(m, 1, generator=g) + 0.5).to(DEVICE)
    bias = torch.randn(n, generator=g).to(DEVICE)
    for use_terms, scale, b in ((terms, s_x, bias), (terms[:1], s_x[0, 0], None)):
        y = fp4_weight_gemm(use_terms, scale, wq, b, torch.float32)
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert _rel_err(y, _expected(use_terms, scale, wq, b)) < 1e-5


def test_gemm_tilings_agree_and_cover_partial_tiles():
    """Every launch tiling (decode, mid, prefill) over shapes that leave partial tiles in M, N, K."""
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        wq = _weight(80, 224, preset, seed=1)
        a = _activation(37, 224, seed=2).to(torch.bfloat16)
        s_x = torch.tensor(0.75, device=DEVICE)
        want = _expected([a], s_x, wq, None)
        for tiles in (
            dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64),
            dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128),
            dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=32, GROUP_M=2),
            dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, SCRATCH=2),  # bf16 scratch weight
            dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SCRATCH=2),
        ):
            y = fp4_weight_gemm([a], s_x, wq, None, torch.float32, tiles=tiles)
            assert _rel_err(y, want) < 1e-5, (preset, tiles)


@pytest.mark.parametrize("preset", ("sharq-nvfp4", "sharq-nvfp4-w16"))
def test_split_k_equals_its_operands_and_is_deterministic(preset, monkeypatch):
    """SPLIT_K cuts K into chunks of whole BLOCK_K steps (here 3 chunks over 7 steps: 3 + 3 + 1, the
    last partial in K too), both terms, row scales and a bias: the FP64 matmul of the operands, and
    the same bits at every call (the partials are added in chunk order, no atomics)."""
    k = 7 * 32 - 8
    wq = _weight(72, k, preset, seed=11)
    g = torch.Generator().manual_seed(12)
    terms = [(torch.randn(37, k, generator=g) * s).to(torch.bfloat16).to(DEVICE) for s in (4.0, 0.3)]
    s_x = (torch.rand(37, 1, generator=g) + 0.5).to(DEVICE)
    bias = torch.randn(72, generator=g).to(DEVICE)
    want = _expected(terms, s_x, wq, bias)
    for split in (2, 3, 7):
        tiles = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, DECODE=2, SPLIT_K=split)
        y = fp4_weight_gemm(terms, s_x, wq, bias, torch.float32, tiles=tiles)
        assert _rel_err(y, want) < 1e-5, split
        assert torch.equal(y, fp4_weight_gemm(terms, s_x, wq, bias, torch.float32, tiles=tiles))
    # decode-sized: both terms' 6 rows stacked into one MMA operand (STACK), K split in 3
    stacked = dict(BLOCK_M=8, BLOCK_N=32, BLOCK_K=32, DECODE=2, STACK=2, SPLIT_K=3)
    y = fp4_weight_gemm([t[:6] for t in terms], s_x[:6], wq, bias, torch.float32, tiles=stacked)
    assert _rel_err(y, _expected([t[:6] for t in terms], s_x[:6], wq, bias)) < 1e-5
    tiles = dict(BLOCK_K=32, SPLIT_K=2)  # one term, one scale; the bf16 output is the FP32 one rounded
    one = fp4_weight_gemm(terms[:1], s_x[0, 0], wq, None, torch.float32, tiles=tiles)
    assert _rel_err(one, _expected(terms[:1], s_x[0, 0], wq, None)) < 1e-5
    low = fp4_weight_gemm(terms[:1], s_x[0, 0], wq, None, torch.bfloat16, tiles=tiles)
    if DEVICE == "cuda":
        assert torch.equal(low, one.bfloat16())
    else:  # the interpreter's FP32 -> bf16 cast truncates (split or not): within one bf16 ulp
        assert bool(((low.float() - one).abs() <= one.abs() * 2.0**-7).all())
    # the plan's own split (no tiles given): 20 rows of a narrow layer split K in 4 where K is long
    # enough, here in 2 so that each chunk keeps 4 of the 8 BLOCK_K steps K = 2,048 has; a short K whole
    from sharq.kernels.gemm_fp4 import _tiles

    assert [_tiles(20, 40, k, packed=True, two=False)["SPLIT_K"] for k in (4096, 2048, 576)] == [4, 2, 1]
    x = terms[0][:20, :].repeat(1, 10)[:, :2048].contiguous()
    w2 = _weight(40, 2048, preset, seed=13)
    from sharq.kernels import gemm_fp4

    from .kernel_launches import RecordingKernel

    launches, reductions = [], []
    for attr, log in (("_fp4_weight_gemm_kernel", launches), ("_split_k_reduce_kernel", reductions)):
        monkeypatch.setattr(gemm_fp4, attr, RecordingKernel(getattr(gemm_fp4, attr), log))
    y = fp4_weight_gemm([x], s_x[:20], w2, None, torch.float32)
    assert [k["SPLIT_K"] for k in launches] == [2] and [k["SPLIT_K"] for k in reductions] == [2]  # it ran split
    monkeypatch.undo()
    assert _rel_err(y, _expected([x], s_x[:20], w2, None)) < 1e-5
    assert torch.equal(y, fp4_weight_gemm([x], s_x[:20], w2, None, torch.float32, tiles=dict(SPLIT_K=2)))
    # decode-sized, the plan's own: 6 rows of two terms on a narrow layer with K >= 8,192 stack both
    # terms and split K in 4 (down_proj's shape class); 9-16 rows of a narrow layer split too
    assert [_tiles(m, 4096, kk, packed=True, two=True)["SPLIT_K"] for m, kk in ((6, 14336), (6, 4096), (12, 4096))] == [
        4,
        1,
        4,
    ]
    w3 = _weight(40, 8192, preset, seed=14)
    t3 = [t[:6].repeat(1, 40)[:, :8192].contiguous() for t in terms]
    launches.clear()
    reductions.clear()
    for attr, log in (("_fp4_weight_gemm_kernel", launches), ("_split_k_reduce_kernel", reductions)):
        monkeypatch.setattr(gemm_fp4, attr, RecordingKernel(getattr(gemm_fp4, attr), log))
    y = fp4_weight_gemm(t3, s_x[:6], w3, bias[:40], torch.float32)
    monkeypatch.undo()
    assert [(k["STACK"], k["SPLIT_K"]) for k in launches] == [(True, 4)] and len(reductions) == 1
    assert _rel_err(y, _expected(t3, s_x[:6], w3, bias[:40])) < 1e-5
    with pytest.raises(ValueError, match="SPLIT_K 8"):
        fp4_weight_gemm(terms, s_x, wq, None, torch.float32, tiles=dict(BLOCK_K=32, SPLIT_K=8))
    with pytest.raises(ValueError, match="SPLIT_K 2"):
        fp4_weight_gemm(terms, s_x, wq, None, torch.float32, tiles=dict(BLOCK_K=32, SPLIT_K=2, SCRATCH=2))


@pytest.mark.parametrize("preset", WEIGHT_PRESETS)
def test_scratch_gemm_with_two_terms_bias_and_row_scales(preset):
    """The large-M path (weight dequantized into bf16 scratch first) with both terms, one scale per
    row and a bias: the same numbers as the FP64 matmul of its operands."""
    wq = _weight(40, 200, preset, seed=5)
    g = torch.Generator().manual_seed(6)
    terms = [(torch.randn(21, 200, generator=g) * s).to(torch.bfloat16).to(DEVICE) for s in (4.0, 0.3)]
    s_x = (torch.rand(21, 1, generator=g) + 0.5).to(DEVICE)
    bias = torch.randn(40, generator=g).to(DEVICE)
    y = fp4_weight_gemm(terms, s_x, wq, bias, torch.float32, tiles=dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SCRATCH=2))
    assert _rel_err(y, _expected(terms, s_x, wq, bias)) < 1e-5


@pytest.mark.parametrize("preset", WEIGHT_PRESETS)
@pytest.mark.parametrize("n,k", [(5, 32), (33, 200), (64, 96)])
def test_dequantize_to_bf16_scratch_is_exact(preset, n, k):
    """The scratch matrix is deq(W) in the scaled domain, every value exact in bf16 (bit for bit),
    including subnormal and zero block scales and K not a multiple of the block."""
    from sharq.kernels.dequant_fp4 import dequantize_fp4_bf16

    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g)
    w[min(1, n - 1)] *= 3e-5  # tiny block scales
    wq = quantize_weight(w.to(DEVICE), PRESETS[preset])
    got = dequantize_fp4_bf16(wq)
    want = wq.dequantize(apply_global_scale=False)
    assert got.dtype == torch.bfloat16 and got.shape == (n, k)
    assert torch.equal(want.bfloat16().float(), want)  # the values are bf16 numbers
    assert torch.equal(got.float(), want)


@pytest.mark.parametrize("preset", WEIGHT_PRESETS)
def test_gemm_subnormal_and_zero_weight_scales(preset):
    """Blocks far below the matrix amax get E4M3-subnormal (or zero) scales; the kernel decodes them."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(32, 128, generator=g)
    w[1] *= 3e-5  # E4M3 subnormal block scales after s_w
    w[2] *= 1e-7  # underflows to zero scales
    w[3, :64] = 0.0
    wq = quantize_weight(w.to(DEVICE), PRESETS[preset])
    if wq.format.value == "nvfp4":
        assert bool((wq.scales[1] < 8).any()) and bool((wq.scales[1] > 0).any())  # subnormal E4M3 bit patterns
    a = (torch.randn(3, 128, generator=g) * 2).to(torch.bfloat16).to(DEVICE)
    s_x = torch.tensor(1.5, device=DEVICE)
    y = fp4_weight_gemm([a], s_x, wq, None, torch.float32)
    want = _expected([a], s_x, wq, None)
    for row in (1, 2, 3, 4):  # rows checked on their own scale
        err = (y[:, row].double() - want[:, row]).abs().max() / want[:, row].abs().max().clamp_min(1e-300)
        assert float(err) < 1e-5 or float(want[:, row].abs().max()) == 0.0, row
    assert torch.equal(y[:, 2] == 0, want[:, 2] == 0)


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4", "nvfp4", "sparse-only", "naive-residual"])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_prepared_terms_are_the_reference_terms_bit_for_bit(preset, granularity):
    config = PRESETS[preset].replace(granularity=granularity)
    x = _activation(9, 160, seed=3)
    got = prepare_activation_triton(x, config, with_terms=True)
    ref = prepare_activation(x, config)
    want = [ref.backbone.dequantize(apply_global_scale=False)]
    if ref.residual is not None:
        want.append(ref.residual.dequantize(apply_global_scale=False))
    assert got.terms is not None and len(got.terms) == len(want)
    for t, w in zip(got.terms, want):
        assert t.dtype == torch.bfloat16 and torch.equal(t.float(), w)  # exact in its type


def test_linear_on_triton_equals_reference_linear():
    """prepare + GEMM on the Triton backend = the reference SharQ linear, bf16 out (≤ 1 bf16 ulp)."""
    from sharq.ops import sharq_linear

    for preset in ("sharq-nvfp4", "sharq-mxfp4", "nvfp4"):
        for granularity in ("tensor", "token"):
            config = PRESETS[preset].replace(granularity=granularity)
            wq = quantize_weight(torch.randn(64, 96, device=DEVICE) * 0.05, config)
            x = _activation(2 * 5, 96, seed=4).reshape(2, 5, 96)
            bias = torch.randn(64, device=DEVICE).to(torch.bfloat16)
            ref = sharq_linear(x, wq, bias, config, options=RuntimeOptions(backend="reference"))
            got = sharq_linear(x, wq, bias, config, options=RuntimeOptions(backend="triton"))
            assert got.shape == ref.shape == (2, 5, 64) and got.dtype == torch.bfloat16
            ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
            assert bool(((got.float() - ref.float()).abs() <= ulp).all()), (preset, granularity)


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4", "nvfp4"])
def test_bf16_sum_operand_is_the_reference_operand_and_one_term(preset):
    """operand="bf16-sum": the preparation writes one term, bf16(deq(B) + deq(R)), bit-equal to the
    reference's `dense`; the Triton linear equals the reference linear within one bf16 ulp and
    differs from the exact linear only by that rounding."""
    from sharq.ops import sharq_linear

    for granularity in ("tensor", "token"):
        config = PRESETS[preset].replace(granularity=granularity, operand="bf16-sum")
        x = _activation(11, 96, seed=5)
        got = prepare_activation_triton(x, config, with_terms=True)
        ref = prepare_activation(x, config)
        assert got.terms is not None and len(got.terms) == 1
        assert torch.equal(got.terms[0].float(), ref.dense)
        exact = ref.backbone.dequantize(apply_global_scale=False)
        if ref.residual is not None:
            exact = exact + ref.residual.dequantize(apply_global_scale=False)
        assert torch.equal(ref.dense, exact.to(torch.bfloat16).float())
        wq = quantize_weight(torch.randn(48, 96, device=DEVICE) * 0.05, config)
        y_ref = sharq_linear(x, wq, None, config, options=RuntimeOptions(backend="reference"))
        y_tri = sharq_linear(x, wq, None, config, options=RuntimeOptions(backend="triton"))
        ulp = y_ref.float().abs().clamp_min(1e-3) * 2.0**-7
        assert bool(((y_tri.float() - y_ref.float()).abs() <= ulp).all())


def _every_code_and_scale(block: int, device: str) -> QuantizedTensor:
    """NVFP4 weight (127, 32): row n has E4M3 scale byte n (0: zero, 1-7: subnormal, 8-126: normal)
    and holds every E2M1 code twice, in a row-dependent order."""
    n, k = 127, 32
    codes = (torch.arange(k)[None, :] + torch.arange(n)[:, None]) % 16
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    scales = torch.arange(n, dtype=torch.uint8)[:, None].repeat(1, k // block)
    return QuantizedTensor(
        format=Format.NVFP4,
        codes=packed.to(device),
        scales=scales.to(device),
        shape=(n, k),
        block=block,
        global_scale=torch.tensor(1.0, device=device),
    )


def _check_packed_decode_exact(device: str) -> None:
    """One-hot activation rows make every output one weight value (no summation): the packed bf16
    decode (DECODE 2: the asm on the GPU, its per-element twin under the interpreter), stacked or
    not, gives deq(W) bit for bit, for every code under every scale."""
    one = torch.ones((), device=device)
    for block in (16, 32):
        wq = _every_code_and_scale(block, device)
        want = wq.dequantize(apply_global_scale=False)  # (127, 32) FP32
        eye = torch.eye(32, dtype=torch.bfloat16, device=device)
        for start in (0, 8, 16, 24):
            rows, zero = eye[start : start + 8], torch.zeros(8, 32, dtype=torch.bfloat16, device=device)
            for terms in ([rows, zero], [zero, rows]):  # the backbone's and the residual's half of the operand
                y = fp4_weight_gemm(
                    terms,
                    one,
                    wq,
                    None,
                    torch.float32,
                    tiles=dict(DECODE=2, STACK=2, BLOCK_M=8, BLOCK_N=32, BLOCK_K=32),
                )
                assert torch.equal(y, want[:, start : start + 8].T), (block, start)
        for start in (0, 16):
            y = fp4_weight_gemm(
                [eye[start : start + 16]],
                one,
                wq,
                None,
                torch.float32,
                tiles=dict(DECODE=2, STACK=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=32),
            )
            assert torch.equal(y, want[:, start : start + 16].T), (block, start)
        from sharq.kernels.dequant_fp4 import dequantize_fp4_bf16

        assert torch.equal(dequantize_fp4_bf16(wq).float(), want), block  # the scratch weight too


def test_packed_decode_is_exact_for_every_code_and_scale():
    _check_packed_decode_exact(DEVICE)


@pytest.mark.gpu
def test_packed_decode_asm_is_exact_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _check_packed_decode_exact("cuda")


def test_packed_decode_routing_and_its_refusals():
    """NVFP4 rows below 512 take the packed decode (stacked terms up to 8 rows with two terms, the
    medium-M tiles from 17 rows), from 512 the bf16 scratch weight; MXFP4 the FP32 decode below 512;
    STACK without two terms or the packed decode is refused."""
    from sharq.kernels.gemm_fp4 import _tiles

    assert _tiles(5, 4096, 4096, packed=True, two=True)["STACK"] == 2
    assert _tiles(5, 4096, 4096, packed=True, two=False)["STACK"] == 1
    assert _tiles(12, 4096, 4096, packed=True)["DECODE"] == 2 and _tiles(12, 4096, 4096, packed=True)["STACK"] == 1
    for m in (17, 64, 256, 511):
        tiles = _tiles(m, 4096, 4096, packed=True)
        assert tiles["DECODE"] == 2 and tiles["STACK"] == 1 and tiles["SCRATCH"] == 1 and tiles["BLOCK_M"] >= 32
    assert _tiles(512, 4096, 4096, packed=True)["SCRATCH"] == 2
    assert _tiles(17, 4096, 4096, packed=False)["DECODE"] == 1
    assert _tiles(5, 4096, 4096, packed=False)["DECODE"] == 1
    wq = _weight(16, 64, "sharq-nvfp4", seed=0)
    a = torch.zeros(4, 64, dtype=torch.bfloat16, device=DEVICE)
    one = torch.ones((), device=DEVICE)
    with pytest.raises(ValueError, match="STACK"):
        fp4_weight_gemm([a], one, wq, None, torch.float32, tiles=dict(STACK=2, BLOCK_M=8))
    with pytest.raises(ValueError, match="STACK"):
        fp4_weight_gemm(
            [a, a], one, _weight(16, 64, "sharq-mxfp4", seed=0), None, torch.float32, tiles=dict(STACK=2, BLOCK_M=8)
        )


def test_gemm_refuses_bad_input():
    wq = _weight(16, 64, "sharq-nvfp4", seed=0)
    a = torch.zeros(2, 64, dtype=torch.bfloat16, device=DEVICE)
    one = torch.ones((), device=DEVICE)
    with pytest.raises(ValueError, match="bf16"):
        fp4_weight_gemm([a.float()], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match=r"\(M, 64\)"):
        fp4_weight_gemm([a[:, :32]], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="1 or 2"):
        fp4_weight_gemm([a, a, a], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="s_x"):
        fp4_weight_gemm([a], torch.ones(3, device=DEVICE), wq, None, torch.float32)
    with pytest.raises(ValueError, match="bias"):
        fp4_weight_gemm([a], one, wq, torch.zeros(8, device=DEVICE), torch.float32)
    hif4 = quantize_weight(torch.randn(16, 64, device=DEVICE), PRESETS["sharq-hif4"])
    assert not gemm_supports(hif4)
    with pytest.raises(ValueError, match="hif4"):
        fp4_weight_gemm([a], one, hif4, None, torch.float32)


def test_empty_batch():
    wq = _weight(16, 64, "sharq-nvfp4", seed=0)
    y = fp4_weight_gemm(
        [torch.zeros(0, 64, dtype=torch.bfloat16, device=DEVICE)],
        torch.ones((), device=DEVICE),
        wq,
        None,
        torch.bfloat16,
    )
    assert y.shape == (0, 16)


LLAMA_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


@pytest.mark.gpu
@pytest.mark.parametrize("layer", list(LLAMA_8B))
@pytest.mark.parametrize("preset", WEIGHT_PRESETS)
def test_gemm_full_shapes_on_cuda(layer, preset):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n, k = LLAMA_8B[layer]
    wq = _weight(n, k, preset, seed=n)
    for m in (1, 7, 16, 100, 1024, 4099):  # 1024 and up: the bf16 scratch path
        terms = [(torch.randn(m, k, device=DEVICE) * s).to(torch.bfloat16) for s in (4.0, 0.3)]
        s_x = torch.rand(m, 1, device=DEVICE) + 0.5
        y = fp4_weight_gemm(terms, s_x, wq, None, torch.float32)
        assert _rel_err(y, _expected(terms, s_x, wq, None)) < 1e-3, (layer, m)
    if preset != "sharq-mxfp4":  # split K on the packed decode, at a medium M
        a = (torch.randn(48, k, device=DEVICE) * 4.0).to(torch.bfloat16)
        s_x = torch.rand(48, 1, device=DEVICE) + 0.5
        for split in (2, 4):
            tiles = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=256, DECODE=2, SPLIT_K=split)
            y = fp4_weight_gemm([a], s_x, wq, None, torch.float32, tiles=tiles)
            assert _rel_err(y, _expected([a], s_x, wq, None)) < 1e-3, (layer, split)
            assert torch.equal(y, fp4_weight_gemm([a], s_x, wq, None, torch.float32, tiles=tiles))
