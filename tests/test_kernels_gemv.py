"""Triton decode GEMV (M ≤ 8 rows, NVFP4 weights, integer dot products) == FP64 matmul of its own
operands (1e-6 relative: FP32 summation order), the preparation's GEMV operand == the reference
codes and scales bit for bit, and the short-batch SharQ linear on the Triton backend runs the GEMV
and equals the reference linear.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes, with the integer twins of
the two asm helpers (`ASM=False`); `-m gpu` runs the prmt/dp4a asm at full shapes.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

import sharq.kernels.gemv_nvfp4 as gemv_module  # noqa: E402
from sharq import PRESETS  # noqa: E402
from sharq.config import Format  # noqa: E402
from sharq.formats.pack import pack_nibbles  # noqa: E402
from sharq.formats.quantized import QuantizedTensor  # noqa: E402
from sharq.formats.scales import encode_e4m3  # noqa: E402
from sharq.kernels import interpreting  # noqa: E402
from sharq.kernels.gemv_nvfp4 import (  # noqa: E402
    GEMV_AUTO_MAX_M,
    GEMV_GROUP_MAX,
    GEMV_MAX_M,
    fp4_weight_gemv,
    fp4_weight_gemv_group,
    gemv_group_supports,
    gemv_operand,
    gemv_operand_of,
    gemv_padded,
    gemv_supports,
)
from sharq.kernels.prepare_fp4 import prepare_activation_triton  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _weight(n: int, k: int, preset: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02 * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    return quantize_weight(w.to(DEVICE), PRESETS[preset])


def _nvfp4_term(m: int, k: int, block: int, seed: int) -> QuantizedTensor:
    """A random NVFP4 term (M, K): every E2M1 code, E4M3 block scales over the whole range
    (subnormal scales included), some zero blocks."""
    g = torch.Generator().manual_seed(seed)
    kp = -(-k // block) * block
    codes = torch.randint(0, 16, (m, kp), generator=g, dtype=torch.uint8)
    codes[:, k:] = 0
    scales = torch.exp2(torch.randint(-9, 8, (m, kp // block), generator=g).float()) * (  # E4M3: at most 448
        1 + torch.randint(0, 8, (m, kp // block), generator=g) / 8
    )
    scales = torch.where(torch.rand(m, kp // block, generator=g) < 0.1, 0.0, scales)
    return QuantizedTensor(
        format=Format.NVFP4,
        codes=pack_nibbles(codes).to(DEVICE),
        scales=encode_e4m3(scales).to(DEVICE),
        shape=(m, k),
        block=block,
        global_scale=torch.ones((), device=DEVICE),
    )


def _operand(terms):
    return [t for term in terms for t in gemv_operand_of(term)]


def _expected(terms, s_x, wq, bias):
    w = wq.dequantize(apply_global_scale=False).double()
    x = sum(t.dequantize(apply_global_scale=False).double() for t in terms)
    y = (s_x.double().reshape(-1, 1) * wq.global_scale.double()) * (x @ w.T)
    return y if bias is None else y + bias.double()


def _rel_err(got, want) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-nvfp4-w16"])
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (1, 13, 200), (2, 9, 2100), (2, 20, 96)])
def test_gemv_matches_fp64_matmul_of_its_operands(preset, m, n, k):
    wq = _weight(n, k, preset, seed=n + k)
    terms = [_nvfp4_term(m, k, 32, seed=k), _nvfp4_term(m, k, 16, seed=k + 1)]  # SharQ: B per 32, R per 16
    s_x = torch.rand(m, 1, device=DEVICE) + 0.1
    bias = torch.randn(n, device=DEVICE)
    for use, b, sx in ((terms, bias, s_x), (terms[:1], None, s_x[0, 0])):
        y = fp4_weight_gemv(_operand(use), sx, wq, b, torch.float32)
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert _rel_err(y, _expected(use, sx, wq, b)) < 1e-6


def test_gemv_tilings_agree():
    wq = _weight(21, 2100, "sharq-nvfp4", seed=3)
    terms = [_nvfp4_term(2, 2100, 32, seed=4), _nvfp4_term(2, 2100, 16, seed=5)]
    s_x = torch.tensor(1.5, device=DEVICE)
    want = _expected(terms, s_x, wq, None)
    for tiles in (
        dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4),
        dict(BLOCK_N=8, BLOCK_K=512, num_warps=2),
        dict(BLOCK_N=1, BLOCK_K=2048, num_warps=1),
    ):
        assert _rel_err(fp4_weight_gemv(_operand(terms), s_x, wq, None, torch.float32, tiles=tiles), want) < 1e-6, tiles


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("sizes", [(16, 8, 8), (8, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_grouped_gemv_equals_one_launch_per_weight(m, sizes, with_bias):
    """One launch over q/k/v- or gate/up-like weights of one K writes, in each weight's columns,
    exactly what that weight's own launch writes (same programs, same summation order)."""
    k = 1100  # a masked last K step
    weights = [_weight(n, k, "sharq-nvfp4", seed=10 + i) for i, n in enumerate(sizes)]
    weights[1] = quantize_weight(weights[1].dequantize() * 300.0, PRESETS["sharq-nvfp4"])  # another s_w
    biases = [torch.randn(n, device=DEVICE).to(torch.bfloat16) if with_bias else None for n in sizes]
    terms = _operand([_nvfp4_term(m, k, 32, seed=1), _nvfp4_term(m, k, 16, seed=2)])
    s_x = torch.rand(m, 1, device=DEVICE) + 0.5
    assert gemv_group_supports(weights, m)
    y = fp4_weight_gemv_group(terms, s_x, weights, biases, torch.bfloat16)
    assert y.shape == (m, sum(sizes)) and y.dtype == torch.bfloat16
    alone = torch.cat([fp4_weight_gemv(terms, s_x, w, b, torch.bfloat16) for w, b in zip(weights, biases)], dim=1)
    assert torch.equal(y, alone)


def test_grouped_gemv_refuses_what_one_launch_cannot_serve():
    k = 96
    c, sc = gemv_operand(torch.zeros(2, k, dtype=torch.uint8, device=DEVICE), torch.ones(2, k // 16, device=DEVICE))
    one = torch.ones((), device=DEVICE)
    q, kv = _weight(16, k, "sharq-nvfp4", seed=0), _weight(8, k, "sharq-nvfp4", seed=1)
    assert gemv_group_supports([q, kv, kv], 2) and not gemv_group_supports([q, kv] * 2, 2)
    with pytest.raises(ValueError, match=f"1 to {GEMV_GROUP_MAX} weights"):
        fp4_weight_gemv_group([c, sc], one, [q, kv, kv, kv], [None] * 4, torch.float32)
    with pytest.raises(ValueError, match="one bias"):
        fp4_weight_gemv_group([c, sc], one, [q, kv], [None], torch.float32)
    odd = _weight(12, k, "sharq-nvfp4", seed=2)  # 12 rows: not a multiple of the 2-row launch's BLOCK_N (8)
    assert not gemv_group_supports([q, odd], 2) and gemv_group_supports([q, odd], 1)
    with pytest.raises(ValueError, match="multiple of BLOCK_N"):
        fp4_weight_gemv_group([c, sc], one, [q, odd], [None, None], torch.float32)
    other_k = _weight(8, 2 * k, "sharq-nvfp4", seed=3)
    assert not gemv_group_supports([q, other_k], 1)
    w16 = _weight(8, k, "sharq-nvfp4-w16", seed=4)
    assert not gemv_group_supports([q, w16], 1)  # another weight block
    b16, b8 = torch.zeros(16, device=DEVICE), torch.zeros(8, device=DEVICE)
    assert gemv_group_supports([q, kv], 1, biases=[b16, b8]) and gemv_group_supports([q, kv], 1, biases=[None, None])
    assert not gemv_group_supports([q, kv], 1, biases=[b16, None])
    assert not gemv_group_supports([q, kv], 1, biases=[b16, b8.to(torch.bfloat16)])
    with pytest.raises(ValueError, match="for every weight or for none"):
        fp4_weight_gemv_group([c, sc], one, [q, kv], [torch.zeros(16, device=DEVICE), None], torch.float32)
    with pytest.raises(ValueError, match="one dtype"):
        fp4_weight_gemv_group(
            [c, sc],
            one,
            [q, kv],
            [torch.zeros(16, device=DEVICE), torch.zeros(8, device=DEVICE, dtype=torch.bfloat16)],
            torch.float32,
        )


def test_gemv_decodes_every_code_of_both_operands():
    """A Latin square of all 16 E2M1 weight codes against activation rows that, over eight calls of 2
    rows, put every code at every column: each output is a sum of small exact products, so it
    equals the FP64 value rounded once by the per-tensor scale."""
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    square = e2m1[(torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 16]
    wq = quantize_weight(torch.cat([square, square.flip(1)], dim=1).to(DEVICE) * 0.01, PRESETS["sharq-nvfp4"])
    deq = wq.dequantize(apply_global_scale=False).double()
    assert set(range(16)) - {8} <= set(torch.cat([wq.codes & 15, wq.codes >> 4], dim=1).unique().tolist())
    scales = torch.ones(2, 2, device=DEVICE)
    for call in range(8):
        codes = ((torch.arange(2)[:, None] + 2 * call + torch.arange(32)[None, :]) % 16).to(torch.uint8).to(DEVICE)
        y = fp4_weight_gemv(
            list(gemv_operand(codes, scales)), torch.tensor(1.0, device=DEVICE), wq, None, torch.float32
        )
        exact = (e2m1.double()[codes.long().cpu()].to(DEVICE) @ deq.T).float()
        assert torch.equal(y, exact * wq.global_scale), call


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "nvfp4", "sparse-only", "sharq-nvfp4-w16"])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("m", [1, 2])
def test_prepared_gemv_operand_is_the_reference_bit_for_bit(preset, granularity, m):
    config = PRESETS[preset].replace(granularity=granularity)
    g = torch.Generator().manual_seed(7 + m)
    x = (torch.randn(m, 200, generator=g) * torch.exp(torch.randn(m, 200, generator=g))).to(torch.bfloat16).to(DEVICE)
    got = prepare_activation_triton(x, config, with_terms=True, terms_layout="gemv")
    ref = prepare_activation(x, config)
    want = _operand([ref.backbone] + ([ref.residual] if ref.residual is not None else []))
    assert got.terms is not None and len(got.terms) == len(want)
    for t, w in zip(got.terms, want):
        assert t.dtype == w.dtype and torch.equal(t, w)  # the zero padding included
    assert got.terms[0].shape == (m, gemv_padded(200))
    assert torch.equal(got.global_scale, ref.global_scale)
    assert torch.equal(got.backbone.codes, ref.backbone.codes)


def test_prepare_refuses_gemv_layout_where_it_does_not_apply():
    x = torch.randn(GEMV_MAX_M + 1, 64, device=DEVICE).to(torch.bfloat16)
    with pytest.raises(ValueError, match="rows of NVFP4"):
        prepare_activation_triton(x, PRESETS["sharq-nvfp4"], with_terms=True, terms_layout="gemv")
    with pytest.raises(ValueError, match="rows of NVFP4"):
        prepare_activation_triton(x[:1], PRESETS["sharq-mxfp4"], with_terms=True, terms_layout="gemv")
    with pytest.raises(ValueError, match="bf16-sum"):
        prepare_activation_triton(
            x[:1], PRESETS["sharq-nvfp4"].replace(operand="bf16-sum"), with_terms=True, terms_layout="gemv"
        )
    with pytest.raises(ValueError, match="terms_layout"):
        prepare_activation_triton(x, PRESETS["sharq-nvfp4"], with_terms=True, terms_layout="cols")
    got = prepare_activation_triton(x, PRESETS["sharq-nvfp4"], with_terms=True, terms_layout="auto")
    assert got.terms[0].dtype == torch.bfloat16  # 9 rows: the GEMM's rows


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_short_batch_linear_runs_the_gemv_and_equals_the_reference(granularity, monkeypatch):
    """sharq_linear with 1 to GEMV_AUTO_MAX_M rows on the Triton backend launches the GEMV kernel
    (counted); from there to 8 rows the tensor-core GEMM with the packed decode and both terms
    stacked in one operand, to 16 rows the packed decode unstacked, beyond that (operand auto:
    bf16-sum, one term) the FP32 decode (launch arguments recorded). Every size is within one bf16
    ulp of the reference linear."""
    from sharq.kernels import gemm_fp4

    from .kernel_launches import RecordingKernel

    gemv_launches, gemm_launches = [], []
    monkeypatch.setattr(gemv_module, "_gemv_kernel", RecordingKernel(gemv_module._gemv_kernel, gemv_launches))
    monkeypatch.setattr(
        gemm_fp4, "_fp4_weight_gemm_kernel", RecordingKernel(gemm_fp4._fp4_weight_gemm_kernel, gemm_launches)
    )
    config = PRESETS["sharq-nvfp4"].replace(granularity=granularity)
    wq = quantize_weight(torch.randn(40, 96, device=DEVICE) * 0.05, config)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 17, 96, generator=g) * 3).to(torch.bfloat16).to(DEVICE)
    for m in (1, GEMV_AUTO_MAX_M, 3, 8, 9, 16, 17):
        ref = sharq_linear(x[:, :m], wq, bias, config, options=RuntimeOptions(backend="reference"))
        got = sharq_linear(x[:, :m], wq, bias, config, options=RuntimeOptions(backend="triton"))
        assert got.shape == ref.shape == (1, m, 40)
        ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
        assert bool(((got.float() - ref.float()).abs() <= ulp).all()), m
    assert len(gemv_launches) == 2
    packed = 2 if os.environ.get("TRITON_INTERPRET") == "1" else 1  # the twin or the asm
    assert [(k["FAST"], k["STACK"], k["BLOCK_M"]) for k in gemm_launches] == [
        (packed, True, 8),
        (packed, True, 8),
        (packed, False, 16),
        (packed, False, 16),
        (packed, False, 32),  # 17 rows: the medium-M tiles of the packed decode
    ]


def test_gemv_refuses_bad_input():
    wq = _weight(16, 64, "sharq-nvfp4", seed=0)
    c, sc = gemv_operand(torch.zeros(1, 64, dtype=torch.uint8, device=DEVICE), torch.ones(1, 4, device=DEVICE))
    one = torch.ones((), device=DEVICE)
    with pytest.raises(ValueError, match="torch.int8"):
        fp4_weight_gemv([c.to(torch.int16), sc], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match=r"\(1, 2048\)"):
        fp4_weight_gemv([c[:, :64], sc], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="1 or 2 terms"):
        fp4_weight_gemv([c, sc, c], one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="rows"):
        big = gemv_operand(
            torch.zeros(GEMV_MAX_M + 1, 64, dtype=torch.uint8, device=DEVICE),
            torch.ones(GEMV_MAX_M + 1, 4, device=DEVICE),
        )
        fp4_weight_gemv(list(big), one, wq, None, torch.float32)
    with pytest.raises(ValueError, match="s_x"):
        fp4_weight_gemv([c, sc], torch.ones(2, device=DEVICE), wq, None, torch.float32)
    with pytest.raises(ValueError, match="bias"):
        fp4_weight_gemv([c, sc], one, wq, torch.zeros(3, device=DEVICE), torch.float32)
    mx = _weight(16, 64, "sharq-mxfp4", seed=0)
    assert not gemv_supports(mx) and gemv_supports(wq)
    with pytest.raises(ValueError, match="mxfp4"):
        fp4_weight_gemv([c, sc], one, mx, None, torch.float32)
    with pytest.raises(ValueError, match="NVFP4 terms"):
        gemv_operand_of(mx)


def test_gemv_op_passes_opcheck():
    wq = _weight(24, 96, "sharq-nvfp4", seed=2)
    bc, bs, rc, rs = _operand([_nvfp4_term(3, 96, 32, seed=5), _nvfp4_term(3, 96, 16, seed=6)])
    one = torch.ones(1, device=DEVICE)
    kv = _weight(8, 96, "sharq-nvfp4", seed=3)
    for args in (
        (
            bc,
            bs,
            rc,
            rs,
            [wq.codes],
            [wq.scales],
            one,
            [wq.global_scale],
            [torch.randn(24, device=DEVICE)],
            32,
            torch.bfloat16,
            [0] * 3,
        ),
        (
            bc,
            bs,
            None,
            None,
            [wq.codes],
            [wq.scales],
            torch.ones(3, device=DEVICE),
            [wq.global_scale],
            [],
            32,
            torch.float32,
            [8, 512, 2],
        ),
        (
            bc,
            bs,
            rc,
            rs,
            [wq.codes, kv.codes, kv.codes],
            [wq.scales, kv.scales, kv.scales],
            one,
            [wq.global_scale, kv.global_scale, kv.global_scale],
            [],
            32,
            torch.bfloat16,
            [8, 0, 0],
        ),
    ):
        torch.library.opcheck(torch.ops.sharq.fp4_weight_gemv.default, args)


LLAMA_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


@pytest.mark.gpu
@pytest.mark.parametrize("layer", list(LLAMA_8B))
@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-nvfp4-w16"])
@pytest.mark.parametrize("m", [1, 2])
def test_gemv_full_shapes_on_cuda(layer, preset, m):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert not interpreting()  # the asm helpers, not their interpreter twins
    n, k = LLAMA_8B[layer]
    wq = _weight(n, k, preset, seed=n)
    terms = [_nvfp4_term(m, k, 32, seed=k), _nvfp4_term(m, k, 16, seed=k + 1)]
    s_x = torch.rand(m, 1, device=DEVICE) + 0.5
    y = fp4_weight_gemv(_operand(terms), s_x, wq, None, torch.float32)
    assert _rel_err(y, _expected(terms, s_x, wq, None)) < 1e-6
    x = (torch.randn(m, k, device=DEVICE) * 2).to(torch.bfloat16)
    config = PRESETS[preset]
    ref = sharq_linear(x, wq, None, config, options=RuntimeOptions(backend="reference"))
    got = sharq_linear(x, wq, None, config, options=RuntimeOptions(backend="triton"))
    ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
    assert bool(((got.float() - ref.float()).abs() <= ulp).all())


@pytest.mark.gpu
@pytest.mark.parametrize("sizes", [(4096, 1024, 1024), (14336, 14336)])  # Llama-3.1-8B q/k/v and gate/up
@pytest.mark.parametrize("m", [1, 2])
def test_grouped_gemv_full_shapes_on_cuda(sizes, m):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    k = 4096
    weights = [_weight(n, k, "sharq-nvfp4", seed=i) for i, n in enumerate(sizes)]
    terms = _operand([_nvfp4_term(m, k, 32, seed=k), _nvfp4_term(m, k, 16, seed=k + 1)])
    s_x = torch.rand(m, 1, device=DEVICE) + 0.5
    y = fp4_weight_gemv_group(terms, s_x, weights, [None] * len(sizes), torch.bfloat16)
    alone = [fp4_weight_gemv(terms, s_x, w, None, torch.bfloat16) for w in weights]
    assert torch.equal(y, torch.cat(alone, dim=1))
