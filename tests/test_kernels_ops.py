"""The Triton kernels as torch ops: schema, fake (meta) implementations, torch.compile.

`sharq::prepare_fp4` and `sharq::fp4_weight_gemm` are `torch.library.custom_op`s with fake
implementations, so torch.compile traces a SharQ linear without running or breaking on the
kernels, and CUDA graphs capture them (benchmarks/linear.py captures every provider). On the CPU
the kernels run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import sharq.kernels.gemm_fp4  # noqa: E402,F401  (registers sharq::fp4_weight_gemm)
import sharq.kernels.prepare_fp4  # noqa: E402,F401  (registers sharq::prepare_fp4)
import sharq.kernels.prepare_split  # noqa: E402,F401  (registers sharq::prepare_split)
from sharq import PRESETS  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = RuntimeOptions(backend="triton")


def _x(m: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))).to(torch.bfloat16).to(DEVICE)


def test_prepare_op_passes_opcheck():
    x = _x(5, 96)
    # sharq-nvfp4 per token and per tensor (pair4of8 backbone, quantized residual, every output), and
    # plain MXFP4 (no second-level scale, no residual)
    # and 2 rows, whose amax the preparation computes itself (per token, per tensor)
    for args in (
        (x, 2, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 1, 0, 64, 0),
        (x, 1, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 2, 4, 32, 2),
        (x, 0, True, 0, 1, 1, 0, 0, 1, 1, 32, 32, 1, 0, 32, 0),
        (x[:2], 2, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 1, 0, 0, 0),
        (x[:2], 1, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 1, 0, 0, 0),
    ):
        torch.library.opcheck(torch.ops.sharq.prepare_fp4.default, args)


def test_prepare_split_op_passes_opcheck():
    x = _x(20, 128)
    # sharq-nvfp4 per token / per tensor, bf16 sum and two terms
    for token, two in ((True, False), (False, True), (True, True), (False, False)):
        torch.library.opcheck(
            torch.ops.sharq.prepare_split.default, (x, token, 1, 2, 8, 1, 0, 1, 1, 32, 16, two, [0, 0, 0])
        )


def test_gemm_op_passes_opcheck():
    wq = quantize_weight(torch.randn(24, 96, device=DEVICE) * 0.1, PRESETS["sharq-nvfp4"])
    a, r = _x(5, 96, 1), _x(5, 96, 2)
    sx = torch.full((5,), 0.5, device=DEVICE)
    bias = torch.randn(24, device=DEVICE)
    for args in (
        (a, r, wq.codes, wq.scales, sx, wq.global_scale, bias, False, 32, torch.bfloat16, [0] * 7),
        (a, None, wq.codes, wq.scales, sx[:1], None, None, False, 32, torch.float32, [16, 16, 32, 1, 4, 2, 0]),
        (a, r, wq.codes, wq.scales, sx, wq.global_scale, bias, False, 32, torch.float32, [16, 16, 32, 1, 4, 2, 2]),
        # 20 rows, one term: the medium-M packed decode with the plan's tiles
        (_x(20, 96, 3), None, wq.codes, wq.scales, sx[:1], wq.global_scale, bias, False, 32, torch.bfloat16, [0] * 9),
    ):  # the third: the bf16-scratch path
        torch.library.opcheck(torch.ops.sharq.fp4_weight_gemm.default, args)


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4"])
def test_sharq_linear_compiles_in_one_graph(preset):
    """torch.compile(fullgraph=True) traces the Triton linear through the ops' fake implementations
    and the compiled function returns exactly what the eager one does."""
    torch._dynamo.reset()
    config = PRESETS[preset].replace(granularity="token")
    wq = quantize_weight(torch.randn(40, 96, device=DEVICE) * 0.05, config)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)

    def layer(x):
        return sharq_linear(x, wq, bias, config, options=TRITON)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for m in (3, 7):
        x = _x(m, 96, seed=m)
        assert torch.equal(compiled(x), layer(x))


def test_dequant_op_passes_opcheck():
    import sharq.kernels.dequant_fp4  # noqa: F401  (registers sharq::dequantize_fp4_bf16)

    wq = quantize_weight(torch.randn(24, 96, device=DEVICE) * 0.1, PRESETS["sharq-nvfp4"])
    torch.library.opcheck(torch.ops.sharq.dequantize_fp4_bf16.default, (wq.codes, wq.scales, 96, False, 32))


def test_direct_call_only_where_the_op_would_do_the_same():
    """Eager wrappers skip the dispatcher (host time) only for plain tensors, outside tracing and
    dispatch modes, and without an input that needs a gradient."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sharq.kernels.direct import direct_call_ok

    x = torch.ones(2, 3)
    assert direct_call_ok(x, None)
    with FakeTensorMode():
        assert not direct_call_ok(x)
    w = torch.ones(2, 3, requires_grad=True)
    assert not direct_call_ok(x, w)
    with torch.no_grad():
        assert direct_call_ok(x, w)
    assert not direct_call_ok(torch.nn.Parameter(torch.ones(1), requires_grad=False))  # a subclass


def test_eager_linear_skips_the_dispatcher_and_equals_the_op_path(monkeypatch):
    """The same Triton linear with the direct implementation calls and with every call through
    torch.ops gives the same bits; eagerly, torch.ops is not called."""
    import sharq.kernels.direct as direct_mod
    from sharq.kernels import gemm_fp4, gemv_nvfp4, prepare_fp4

    config = PRESETS["sharq-nvfp4"]
    wq = quantize_weight((torch.randn(48, 96, generator=torch.Generator().manual_seed(1))).to(DEVICE), config)
    calls = []
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):  # records every op that reaches the dispatcher
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(str(func))
            return func(*args, **(kwargs or {}))

    direct_calls = []

    def counted(module, name):  # the custom ops hold the original functions: only direct calls count
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a: direct_calls.append(name) or original(*a))

    outs = {}
    for m in (1, 12):  # the decode GEMV and the GEMM
        x = _x(m, 96, seed=m)
        with torch.no_grad():
            for module, name in ((prepare_fp4, "_prepare_impl"), (gemm_fp4, "_gemm_impl"), (gemv_nvfp4, "_gemv_impl")):
                counted(module, name)
            direct = sharq_linear(x, wq, None, config, options=TRITON)
            assert direct_calls == ["_prepare_impl", "_gemv_impl" if m == 1 else "_gemm_impl"]
            direct_calls.clear()
            for module in (prepare_fp4, gemm_fp4, gemv_nvfp4):
                monkeypatch.setattr(module, "direct_call_ok", lambda *t: False)
            through_ops = sharq_linear(x, wq, None, config, options=TRITON)
            assert direct_calls == []  # every call went through torch.ops
            monkeypatch.undo()
        assert torch.equal(direct, through_ops)
        outs[m] = direct
    # a dispatch mode is active: the wrappers must go through torch.ops (and the mode sees them)
    with torch.no_grad(), Ops():
        sharq_linear(_x(1, 96), wq, None, config, options=TRITON)
    assert any("sharq.prepare_fp4" in c for c in calls) and any("sharq.fp4_weight_gemv" in c for c in calls)
    assert direct_mod.direct_call_ok(_x(1, 96))
