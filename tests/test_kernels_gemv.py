"""Triton decode GEMV (M = 1, NVFP4 weights) == FP64 matmul of its own operands (1e-5 relative: FP32
summation order), the preparation's GEMV-layout terms == the reference terms bit for bit, and the
M = 1 SharQ linear on the Triton backend runs the GEMV and equals the reference linear.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes; `-m gpu` runs full shapes
(where flush-to-zero would break code 1, the subnormal e(c) · 2^-126).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit decorates the kernels
triton = pytest.importorskip("triton")

import sharq.kernels.gemv_nvfp4 as gemv_module  # noqa: E402
from sharq import PRESETS  # noqa: E402
from sharq.kernels.gemv_nvfp4 import fp4_weight_gemv, gemv_supports, gemv_terms_layout, gemv_words  # noqa: E402
from sharq.kernels.prepare_fp4 import prepare_activation_triton  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _weight(n: int, k: int, preset: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02 * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    return quantize_weight(w.to(DEVICE), PRESETS[preset])


def _nvfp4_terms(k: int, seed: int, count: int = 2) -> list[torch.Tensor]:
    """(1, K) bf16 terms with NVFP4 term values: E2M1 values times E4M3-range scales, zeros included."""
    g = torch.Generator().manual_seed(seed)
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    out = []
    for _ in range(count):
        v = e2m1[torch.randint(0, 8, (1, k), generator=g)] * torch.where(torch.rand(1, k, generator=g) < 0.5, -1.0, 1.0)
        scale = torch.exp2(torch.randint(-9, 9, (1, k), generator=g).float()) * (1 + torch.randint(0, 8, (1, k), generator=g) / 8)
        out.append((v * scale).to(torch.bfloat16).to(DEVICE))
    return out


def _expected(terms, s_x, wq, bias):
    w = wq.dequantize(apply_global_scale=False).double()
    y = (s_x.double() * wq.global_scale.double()) * (sum(t.double() for t in terms) @ w.T)
    return y if bias is None else y + bias.double()


def _rel_err(got, want) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-nvfp4-w16"])
@pytest.mark.parametrize("n,k", [(48, 64), (13, 200), (9, 2100)])
def test_gemv_matches_fp64_matmul_of_its_operands(preset, n, k):
    wq = _weight(n, k, preset, seed=n + k)
    terms = _nvfp4_terms(k, seed=k)
    s_x = torch.tensor(0.37, device=DEVICE)
    bias = torch.randn(n, device=DEVICE)
    for use, b in ((terms, bias), (terms[:1], None)):
        y = fp4_weight_gemv([gemv_terms_layout(t) for t in use], s_x, wq, b, torch.float32)
        assert y.shape == (1, n) and y.dtype == torch.float32
        assert _rel_err(y, _expected(use, s_x, wq, b)) < 1e-5


def test_gemv_tilings_agree():
    wq = _weight(21, 2100, "sharq-nvfp4", seed=3)
    terms = [gemv_terms_layout(t) for t in _nvfp4_terms(2100, seed=4)]
    s_x = torch.tensor(1.5, device=DEVICE)
    want = _expected([t for t in _nvfp4_terms(2100, seed=4)], s_x, wq, None)
    for tiles in (dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4), dict(BLOCK_N=8, BLOCK_K=512, num_warps=2),
                  dict(BLOCK_N=16, BLOCK_K=2048, num_warps=8)):
        assert _rel_err(fp4_weight_gemv(terms, s_x, wq, None, torch.float32, tiles=tiles), want) < 1e-5, tiles


def test_gemv_decodes_every_code_including_the_subnormal_one():
    """A Latin square of all 16 E2M1 codes (each of 16 columns holds every code once; code 1, 0.5,
    decodes through an FP32 subnormal), read one column at a time against the dequantized weight."""
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    square = e2m1[(torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 16]
    wq = quantize_weight(torch.cat([square, square.flip(1)], dim=1).to(DEVICE) * 0.01, PRESETS["sharq-nvfp4"])
    deq = wq.dequantize(apply_global_scale=False)
    nibbles = torch.cat([wq.codes & 15, wq.codes >> 4], dim=1)
    assert set(range(16)) - {8} <= set(nibbles.unique().tolist())  # -0 is stored as 0; codes 1, 9 = ±0.5
    t = torch.zeros(1, 32, dtype=torch.bfloat16, device=DEVICE)
    for col in range(16):  # a one-hot term reads one weight per output
        t.zero_()
        t[0, col] = 1.0
        y = fp4_weight_gemv([gemv_terms_layout(t)], torch.tensor(1.0, device=DEVICE), wq, None, torch.float32)
        assert torch.equal(y[0], (deq[:, col] * wq.global_scale).float()), col


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "nvfp4", "sparse-only"])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("operand", ["exact", "bf16-sum"])
def test_prepared_gemv_terms_are_the_reference_terms_bit_for_bit(preset, granularity, operand):
    config = PRESETS[preset].replace(granularity=granularity, operand=operand)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(1, 200, generator=g) * torch.exp(torch.randn(1, 200, generator=g))).to(torch.bfloat16).to(DEVICE)
    got, _ = prepare_activation_triton(x, config, with_terms=True, terms_layout="gemv")
    rows, _ = prepare_activation_triton(x, config, with_terms=True, terms_layout="rows")
    ref = prepare_activation(x, config)
    assert got.terms is not None and len(got.terms) == len(rows.terms)
    for t, r in zip(got.terms, rows.terms):
        assert t.dtype == torch.float32 and t.shape == (1, 8 * gemv_words(200))
        assert torch.equal(t, gemv_terms_layout(r))  # the padding included: zeros
    assert torch.equal(got.global_scale, ref.global_scale)
    assert torch.equal(got.backbone.codes, ref.backbone.codes)


def test_prepare_refuses_gemv_layout_where_it_does_not_apply():
    x = torch.randn(2, 64, device=DEVICE).to(torch.bfloat16)
    with pytest.raises(ValueError, match="one NVFP4 row"):
        prepare_activation_triton(x, PRESETS["sharq-nvfp4"], with_terms=True, terms_layout="gemv")
    with pytest.raises(ValueError, match="one NVFP4 row"):
        prepare_activation_triton(x[:1], PRESETS["sharq-mxfp4"], with_terms=True, terms_layout="gemv")
    with pytest.raises(ValueError, match="terms_layout"):
        prepare_activation_triton(x, PRESETS["sharq-nvfp4"], with_terms=True, terms_layout="cols")


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_one_row_linear_runs_the_gemv_and_equals_the_reference(granularity, monkeypatch):
    """sharq_linear at M = 1 on the Triton backend launches the GEMV kernel (counted) and is within
    one bf16 ulp of the reference linear; M = 2 does not launch it."""
    launches = []
    kernel = gemv_module._gemv_nvfp4_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(gemv_module, "_gemv_nvfp4_kernel", Counting())
    config = PRESETS["sharq-nvfp4"].replace(granularity=granularity)
    wq = quantize_weight(torch.randn(40, 96, device=DEVICE) * 0.05, config)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 1, 96, generator=g) * 3).to(torch.bfloat16).to(DEVICE)
    ref = sharq_linear(x, wq, bias, config.replace(backend="reference"))
    got = sharq_linear(x, wq, bias, config.replace(backend="triton"))
    assert len(launches) == 1 and got.shape == ref.shape == (1, 1, 40)
    ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
    assert bool(((got.float() - ref.float()).abs() <= ulp).all())
    sharq_linear(torch.cat([x, x], dim=1), wq, bias, config.replace(backend="triton"))
    assert len(launches) == 1


def test_gemv_refuses_bad_input():
    wq = _weight(16, 64, "sharq-nvfp4", seed=0)
    t = gemv_terms_layout(torch.zeros(1, 64, dtype=torch.bfloat16, device=DEVICE))
    one = torch.ones((), device=DEVICE)
    with pytest.raises(ValueError, match="FP32"):
        fp4_weight_gemv([t.double()], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match=r"\(1, 2048\)"):
        fp4_weight_gemv([t[:, :64]], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="1 or 2"):
        fp4_weight_gemv([t, t, t], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="s_x"):
        fp4_weight_gemv([t], torch.ones(2, device=DEVICE), wq, None, torch.float32)
    with pytest.raises(ValueError, match="bias"):
        fp4_weight_gemv([t], one, wq, torch.zeros(3, device=DEVICE), torch.float32)
    mx = _weight(16, 64, "sharq-mxfp4", seed=0)
    assert not gemv_supports(mx) and gemv_supports(wq)
    with pytest.raises(ValueError, match="mxfp4"):
        fp4_weight_gemv([t], one, mx, None, torch.float32)


def test_gemv_op_passes_opcheck():
    wq = _weight(24, 96, "sharq-nvfp4", seed=2)
    a, r = (gemv_terms_layout(t) for t in _nvfp4_terms(96, seed=5))
    one = torch.ones(1, device=DEVICE)
    for args in ((a, r, wq.codes, wq.scales, one, wq.global_scale, torch.randn(24, device=DEVICE), 32, torch.bfloat16,
                  [0] * 3),
                 (a, None, wq.codes, wq.scales, one, wq.global_scale, None, 32, torch.float32, [8, 512, 2])):
        torch.library.opcheck(torch.ops.sharq.fp4_weight_gemv.default, args)


LLAMA_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


@pytest.mark.gpu
@pytest.mark.parametrize("layer", list(LLAMA_8B))
@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-nvfp4-w16"])
def test_gemv_full_shapes_on_cuda(layer, preset):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n, k = LLAMA_8B[layer]
    wq = _weight(n, k, preset, seed=n)
    terms = _nvfp4_terms(k, seed=k)
    s_x = torch.tensor(0.8, device=DEVICE)
    y = fp4_weight_gemv([gemv_terms_layout(t) for t in terms], s_x, wq, None, torch.float32)
    assert _rel_err(y, _expected(terms, s_x, wq, None)) < 1e-5
    x = (torch.randn(1, k, device=DEVICE) * 2).to(torch.bfloat16)
    config = PRESETS[preset]
    ref = sharq_linear(x, wq, None, config.replace(backend="reference"))
    got = sharq_linear(x, wq, None, config.replace(backend="triton"))
    ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
    assert bool(((got.float() - ref.float()).abs() <= ulp).all())
