"""The kernels read an "-mse" weight unchanged: the Triton GEMM and decode GEMV (TRITON_INTERPRET=1
without a GPU) on a weight whose block scales were searched equal the reference linear, and the
FP4-weight GEMM equals an FP64 matmul of its dequantized operands."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq import PRESETS  # noqa: E402
from sharq.kernels.gemm_fp4 import fp4_weight_gemm  # noqa: E402
from sharq.kernels.gemv_nvfp4 import fp4_weight_gemv, gemv_operand_of  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MSE_PRESETS = ("nvfp4-mse", "sharq-nvfp4-mse", "sharq-nvfp4-w16-mse")


def _mse_weight(n: int, k: int, config, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    w = w.to(DEVICE)
    wq = quantize_weight(w, config)
    assert not torch.equal(wq.scales, quantize_weight(w, config.replace(weight_scale="amax")).scales)
    return wq


@pytest.mark.parametrize("preset", MSE_PRESETS)
@pytest.mark.parametrize("m", [1, 10])
def test_triton_linear_on_mse_weight_equals_reference_linear(preset, m):
    config = PRESETS[preset]
    wq = _mse_weight(40, 96, config, seed=m)
    bias = torch.randn(40, device=DEVICE).to(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(m, 96, generator=g) * 3).to(torch.bfloat16).to(DEVICE)
    ref = sharq_linear(x, wq, bias, config, options=RuntimeOptions(backend="reference"))
    got = sharq_linear(x, wq, bias, config, options=RuntimeOptions(backend="triton"))
    assert got.shape == ref.shape == (m, 40)
    ulp = ref.float().abs().clamp_min(1e-3) * 2.0**-7
    assert bool(((got.float() - ref.float()).abs() <= ulp).all())


@pytest.mark.parametrize("preset", ["sharq-nvfp4-mse", "sharq-nvfp4-w16-mse"])
def test_kernels_equal_fp64_matmul_of_mse_weight(preset):
    config = PRESETS[preset]
    wq = _mse_weight(24, 160, config, seed=5)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 160, generator=g) * 2).to(DEVICE)  # the GEMV takes 1-2 rows
    prep = prepare_activation(x, config)
    terms = [prep.backbone, prep.residual]
    w = wq.dequantize(apply_global_scale=False).double()
    deq = sum(t.dequantize(apply_global_scale=False).double() for t in terms)
    want = (prep.global_scale.double() * wq.global_scale.double()) * (deq @ w.T)
    rows = tuple(t.dequantize(apply_global_scale=False).to(torch.bfloat16) for t in terms)  # exact in bf16
    got = fp4_weight_gemm(rows, prep.global_scale, wq, None, torch.float32)
    assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5
    operand = [t for term in terms for t in gemv_operand_of(term)]
    got = fp4_weight_gemv(operand, prep.global_scale, wq, None, torch.float32)
    assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5
