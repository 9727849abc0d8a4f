"""The Triton kernels as torch ops: schema, fake (meta) implementations, torch.compile.

`sharq::prepare_fp4` and `sharq::fp4_weight_gemm` are `torch.library.custom_op`s with fake
implementations, so torch.compile traces a SharQ linear without running or breaking on the
kernels, and CUDA graphs capture them (benchmarks/linear.py captures every provider). On the CPU
the kernels run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit decorates the kernels
triton = pytest.importorskip("triton")

import sharq.kernels.gemm_fp4  # noqa: E402,F401  (registers sharq::fp4_weight_gemm)
import sharq.kernels.prepare_fp4  # noqa: E402,F401  (registers sharq::prepare_fp4)
from sharq import PRESETS  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _x(m: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))).to(torch.bfloat16).to(DEVICE)


def test_prepare_op_passes_opcheck():
    x = _x(5, 96)
    # sharq-nvfp4 per token and per tensor (pair4of8 backbone, quantized residual, every output), and
    # plain MXFP4 (no second-level scale, no residual)
    # and 2 rows, whose amax the preparation computes itself (per token, per tensor)
    for args in ((x, 2, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, True, 1, 0, 64, 0),
                 (x, 1, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, False, 2, 4, 32, 2),
                 (x, 0, True, 0, 1, 1, 0, 0, 1, 1, 32, 32, False, 1, 0, 32, 0),
                 (x[:2], 2, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, False, 1, 0, 0, 0),
                 (x[:2], 1, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, False, 1, 0, 0, 0)):
        torch.library.opcheck(torch.ops.sharq.prepare_fp4.default, args)


def test_gemm_op_passes_opcheck():
    wq = quantize_weight(torch.randn(24, 96, device=DEVICE) * 0.1, PRESETS["sharq-nvfp4"])
    a, r = _x(5, 96, 1), _x(5, 96, 2)
    sx = torch.full((5,), 0.5, device=DEVICE)
    bias = torch.randn(24, device=DEVICE)
    for args in ((a, r, wq.codes, wq.scales, sx, wq.global_scale, bias, False, 32, torch.bfloat16, [0] * 7),
                 (a, None, wq.codes, wq.scales, sx[:1], None, None, False, 32, torch.float32, [16, 16, 32, 1, 4, 2, 0]),
                 (a, r, wq.codes, wq.scales, sx, wq.global_scale, bias, False, 32, torch.float32,
                  [16, 16, 32, 1, 4, 2, 2])):  # the bf16-scratch path
        torch.library.opcheck(torch.ops.sharq.fp4_weight_gemm.default, args)


@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4"])
def test_sharq_linear_compiles_in_one_graph(preset):
    """torch.compile(fullgraph=True) traces the Triton linear through the ops' fake implementations
    and the compiled function returns exactly what the eager one does."""
    torch._dynamo.reset()
    config = PRESETS[preset].replace(backend="triton", granularity="token")
    wq = quantize_weight(torch.randn(40, 96, device=DEVICE) * 0.05, config)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)

    def layer(x):
        return sharq_linear(x, wq, bias, config)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for m in (3, 7):
        x = _x(m, 96, seed=m)
        assert torch.equal(compiled(x), layer(x))


def test_dequant_op_passes_opcheck():
    import sharq.kernels.dequant_fp4  # noqa: F401  (registers sharq::dequantize_fp4_bf16)

    wq = quantize_weight(torch.randn(24, 96, device=DEVICE) * 0.1, PRESETS["sharq-nvfp4"])
    torch.library.opcheck(torch.ops.sharq.dequantize_fp4_bf16.default, (wq.codes, wq.scales, 96, False, 32))
