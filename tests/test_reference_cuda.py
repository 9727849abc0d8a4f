"""The reference numerics give the same bits on a CUDA device as on the CPU (run with `-m gpu`)."""

import pytest
import torch

from sharq import PRESETS, Format, SharqLinear, prepare_activation, quantize_tensor

from .conftest import outlier_activations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUANT_PRESETS = [name for name, cfg in PRESETS.items() if cfg.quantizes]


@pytest.mark.parametrize("fmt,block", [(Format.NVFP4, 16), (Format.NVFP4, 32), (Format.MXFP4, 32), (Format.HIF4, 64)])
def test_formats_bit_identical_on_cuda(fmt, block):
    x = outlier_activations(256, 1000) * 1e-3
    cpu = quantize_tensor(x, fmt, block)
    gpu = quantize_tensor(x.cuda(), fmt, block)
    for name, tensor in cpu.storage().items():
        assert torch.equal(tensor, gpu.storage()[name].cpu()), name
    assert torch.equal(cpu.dequantize(), gpu.dequantize().cpu())


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_preparation_bit_identical_on_cuda(preset, granularity):
    cfg = PRESETS[preset].replace(granularity=granularity)
    x = outlier_activations(64, 520).to(torch.bfloat16)
    cpu = prepare_activation(x, cfg)
    gpu = prepare_activation(x.cuda(), cfg)
    assert torch.equal(cpu.global_scale, gpu.global_scale.cpu())
    for a, b in ((cpu.backbone, gpu.backbone), (cpu.residual, gpu.residual)):
        if a is None:
            assert b is None
            continue
        for name, tensor in a.storage().items():
            assert torch.equal(tensor, b.storage()[name].cpu()), (preset, name)


@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_linear_on_cuda_matches_cpu(preset):
    torch.backends.cuda.matmul.allow_tf32 = False
    lin = torch.nn.Linear(512, 256)
    layer = SharqLinear.from_float(lin, PRESETS[preset])
    x = outlier_activations(16, 512)
    y_cpu = layer(x)
    y_gpu = layer.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-5, atol=1e-5 * float(y_cpu.abs().max()))
