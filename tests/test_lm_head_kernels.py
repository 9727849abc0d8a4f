"""The weight-only quantized lm_head's Triton path (W4A16 GEMV up to 2 rows, gemm_fp4 with one bf16
term above) == its torch reference (`ops.lm_head_reference`), bit for bit where FP32 summation order
cannot matter, and within FP32 rounding of an FP64 matmul elsewhere; the plan's kernel is the one
that runs.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes; `-m gpu` runs them compiled.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq import SharqConfig  # noqa: E402
from sharq.config import Format  # noqa: E402
from sharq.formats.pack import pack_nibbles  # noqa: E402
from sharq.formats.quantized import QuantizedTensor  # noqa: E402
from sharq.kernels import gemm_fp4, gemv_w4a16, interpreting  # noqa: E402
from sharq.kernels.plan import LM_HEAD_GEMV_MAX_M, plan_lm_head  # noqa: E402
from sharq.ops import lm_head_linear, lm_head_reference, quantize_lm_head_weight  # noqa: E402
from sharq.options import Backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEAD = SharqConfig(lm_head="nvfp4-w16")


def _exact_weight(n: int, k: int, seed: int, block: int = 16) -> QuantizedTensor:
    """An NVFP4 weight whose scaled values are multiples of 2^-6 below 22.5: random E2M1 codes (every
    code, both signs) and E4M3 scales with exponents 2^-2 … 2^1 and every mantissa; s_w random."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    exponent = torch.randint(5, 9, (n, k // block), generator=g, dtype=torch.uint8)  # E4M3 bias 7
    scales = (exponent << 3) | torch.randint(0, 8, (n, k // block), generator=g, dtype=torch.uint8)
    s_w = (torch.rand((), generator=g) * 1e-3 + 1e-4).float()
    return QuantizedTensor(
        format=Format.NVFP4, codes=pack_nibbles(codes), scales=scales, shape=(n, k), block=block, global_scale=s_w
    ).to(DEVICE)


def _exact_input(m: int, k: int, seed: int) -> torch.Tensor:
    """bf16 multiples of 1/8 below 2: with `_exact_weight` every product is a multiple of 2^-9 below
    2^6, so a sum of up to 2^8 of them is exact in FP32 in any order."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-15, 16, (m, k), generator=g).float() / 8).to(torch.bfloat16).to(DEVICE)


def _bf16_as_stored(y32: torch.Tensor) -> torch.Tensor:
    """FP32 -> bf16 as the kernels' store converts: round to nearest even compiled (as torch does),
    toward zero under TRITON_INTERPRET=1 (the interpreter drops the low 16 bits)."""
    if not interpreting():
        return y32.to(torch.bfloat16)
    return (y32.contiguous().view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


# GEMV, GEMV, small-M GEMM (packed decode), FP32-decode GEMM, bf16-scratch GEMM
@pytest.mark.parametrize("m, bias", [(1, False), (2, True), (3, True), (17, False), (520, True)])
def test_triton_equals_reference_bit_for_bit(m, bias):
    n, k = 24, 128
    w = _exact_weight(n, k, seed=m)
    x = _exact_input(m, k, seed=m + 1)
    b = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).to(DEVICE) if bias else None
    want32 = lm_head_reference(x.float(), w, b)  # FP32 output: no bf16 rounding to hide a difference
    got = lm_head_linear(x, w, b, Backend.TRITON)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    assert torch.equal(got, _bf16_as_stored(want32))
    if not interpreting():
        assert torch.equal(got, lm_head_reference(x, w, b))
    if plan_lm_head(m) == "w4a16-gemv":
        got32 = gemv_w4a16.w4a16_gemv(x, w, b, torch.float32)
    else:
        one = torch.ones((), device=DEVICE)
        got32 = gemm_fp4.fp4_weight_gemm([x], one, w, b, torch.float32)
    assert torch.equal(got32, want32)


@pytest.mark.parametrize(
    "m, block, tiles",
    [(1, 16, dict(BLOCK_N=8, BLOCK_K=32, num_warps=1)), (2, 32, dict(BLOCK_N=8, BLOCK_K=64, num_warps=2))],
)
def test_gemv_tilings_with_partial_tiles_bit_for_bit(m, block, tiles):
    """K = 208 / 224 (not a multiple of BLOCK_K: the last step is masked), N = 37 (a partial N tile),
    16- and 32-blocks."""
    n, k = 37, 224 if block == 32 else 208
    w = _exact_weight(n, k, seed=block + m, block=block)
    x = _exact_input(m, k, seed=m)
    got = gemv_w4a16.w4a16_gemv(x, w, None, torch.float32, tiles=tiles)
    assert torch.equal(got, lm_head_reference(x.float(), w, None))


def _fp64(x: torch.Tensor, w: QuantizedTensor) -> torch.Tensor:
    return w.global_scale.double() * (x.double() @ w.dequantize(apply_global_scale=False).double().T)


@pytest.mark.parametrize("m", [1, 40])
def test_realistic_operands_within_fp32_rounding(m):
    """A weight quantized by the lm_head's quantizer, hidden states with outlier channels: the kernels
    and the reference both lie within FP32 summation error of an FP64 matmul."""
    n, k = 48, 200  # K padded to 208 in the payload
    g = torch.Generator().manual_seed(m)
    w = quantize_lm_head_weight(torch.randn(n, k, generator=g) * 0.05, HEAD).to(DEVICE)
    assert w.block == 16 and w.format is Format.NVFP4
    x = torch.randn(m, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:4]] *= 30.0
    x = x.to(torch.bfloat16).to(DEVICE)
    exact = _fp64(x, w)
    bound = 1e-5 * (
        w.global_scale.double() * (x.double().abs() @ w.dequantize(apply_global_scale=False).double().abs().T)
    )
    for y in (lm_head_linear(x, w, None, Backend.TRITON).double(), lm_head_reference(x, w, None).double()):
        assert ((y - exact).abs() <= bound + exact.abs() * 2**-7).all()  # bf16 output: an ulp (interpreter truncates)
    if plan_lm_head(m) == "w4a16-gemv":
        y32 = gemv_w4a16.w4a16_gemv(x, w, None, torch.float32)
    else:
        y32 = gemm_fp4.fp4_weight_gemm([x], torch.ones((), device=DEVICE), w, None, torch.float32)
    assert ((y32.double() - exact).abs() <= bound).all()


def test_plan_routes_rows_to_the_kernel_that_runs(monkeypatch):
    """Each M runs the planned kernel and only it; the reference does not run on the Triton backend."""
    assert [plan_lm_head(m) for m in (1, 2, 3, 16, 17, 511, 512)] == [
        "w4a16-gemv",
        "w4a16-gemv",
        "small-m",
        "small-m",
        "medium-m",
        "medium-m",
        "bf16-scratch",
    ]
    assert LM_HEAD_GEMV_MAX_M == 2
    calls = []
    real_gemv, real_gemm = gemv_w4a16.w4a16_gemv, gemm_fp4.fp4_weight_gemm
    monkeypatch.setattr(gemv_w4a16, "w4a16_gemv", lambda *a, **kw: calls.append("gemv") or real_gemv(*a, **kw))
    monkeypatch.setattr(gemm_fp4, "fp4_weight_gemm", lambda *a, **kw: calls.append("gemm") or real_gemm(*a, **kw))
    monkeypatch.setattr("sharq.ops.lm_head_reference", lambda *a: pytest.fail("the reference ran on Triton"))
    w = _exact_weight(24, 64, seed=0)
    for m, kernel in ((1, "gemv"), (2, "gemv"), (3, "gemm"), (20, "gemm")):
        calls.clear()
        lm_head_linear(_exact_input(m, 64, seed=m).reshape(1, m, 64), w, None, Backend.TRITON)
        assert calls == [kernel], m


def test_backend_resolution_and_refusals():
    """auto: Triton only for bf16 on CUDA; triton: refuses other dtypes naming the dtype."""
    from sharq.ops import resolve_lm_head_backend

    w = _exact_weight(8, 32, seed=1)
    x32 = torch.zeros(1, 32, device=DEVICE)
    assert resolve_lm_head_backend(Backend.AUTO, x32) is Backend.REFERENCE
    expected = Backend.TRITON if DEVICE == "cuda" else Backend.REFERENCE
    assert resolve_lm_head_backend(Backend.AUTO, x32.to(torch.bfloat16)) is expected
    with pytest.raises(NotImplementedError, match="bfloat16 input, got torch.float32"):
        lm_head_linear(x32, w, None, Backend.TRITON)
    with pytest.raises(ValueError, match="K=32"):
        lm_head_linear(torch.zeros(1, 16, device=DEVICE), w, None, Backend.REFERENCE)
    with pytest.raises(ValueError, match="BLOCK_K 48"):
        gemv_w4a16.w4a16_gemv(x32.to(torch.bfloat16), w, None, torch.float32, tiles=dict(BLOCK_K=48))


def test_non_finite_inputs_give_non_finite_rows():
    """A NaN in one row makes that row NaN on both paths; the other row is unchanged (SPEC §10)."""
    w = _exact_weight(16, 64, seed=2)
    x = _exact_input(2, 64, seed=2)
    x[0, 5] = float("nan")
    clean = lm_head_reference(x[1:].float(), w, None)[0]
    for y, row in (
        (lm_head_linear(x, w, None, Backend.TRITON), _bf16_as_stored(clean)),
        (lm_head_reference(x.float(), w, None), clean),
    ):
        assert y[0].isnan().all() and torch.equal(y[1], row)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(49152, 576), (128256, 4096)])  # SmolLM2-135M, Llama-3.1-8B lm_heads
@pytest.mark.parametrize("m", [1, 2, 16, 300, 1024])
def test_full_shapes_on_cuda(shape, m):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert not interpreting()  # the asm decode, not its interpreter twin
    n, k = shape
    g = torch.Generator().manual_seed(m)
    w = quantize_lm_head_weight((torch.randn(n, k, generator=g) * 0.02).to(DEVICE), HEAD)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16).to(DEVICE)
    exact = _fp64(x, w)
    bound = 1e-5 * (
        w.global_scale.double() * (x.double().abs() @ w.dequantize(apply_global_scale=False).double().abs().T)
    )
    y = lm_head_linear(x, w, None, Backend.AUTO)
    assert y.dtype == torch.bfloat16
    assert ((y.double() - exact).abs() <= bound + exact.abs() * 2**-8).all()  # + half a bf16 ulp (RTNE)


@pytest.mark.gpu
def test_module_in_a_cuda_graph_equals_eager():
    """The decode call of the lm_head (one row) captured in a CUDA graph gives the eager bits."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from sharq.nn import SharqLMHead

    linear = torch.nn.Linear(576, 49152, bias=False, dtype=torch.bfloat16, device=DEVICE)
    head = SharqLMHead.from_float(linear, HEAD)
    x = torch.randn(1, 1, 576, dtype=torch.bfloat16, device=DEVICE)
    eager = head(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = head(x)
    graph.replay()
    assert torch.equal(out, eager)


def test_gemv_op_passes_opcheck():
    """sharq::w4a16_gemv as a torch op: schema, fake implementation, no aliasing (torch.compile, graphs)."""
    w = _exact_weight(24, 64, seed=4)
    x = _exact_input(2, 64, seed=4)
    for args in (
        (x, w.codes, w.scales, w.global_scale.reshape(1), None, 16, torch.float32, [0, 0, 0]),
        (
            x[:1],
            w.codes,
            w.scales,
            w.global_scale.reshape(1),
            torch.randn(24, device=DEVICE),
            16,
            torch.bfloat16,
            [8, 32, 1],
        ),
    ):
        torch.library.opcheck(torch.ops.sharq.w4a16_gemv.default, args)
