"""Determinism: the same input gives bit-identical output, call after call and process after
process, on the reference and the Triton backends (TRITON_INTERPRET=1 on the CPU; `-m gpu`
compiled on CUDA at Llama-like shapes)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharq import PRESETS, SharqLinear, prepare_activation, quantize_weight  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cfg(preset: str, granularity: str):
    cfg = PRESETS[preset]
    return cfg.replace(granularity=granularity) if cfg.has_global_scale else cfg


def _linear(k: int, n: int, seed: int = 0, dtype=torch.bfloat16) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g))
    return lin.to(dtype)


def _x(m: int, k: int, seed: int = 1, dtype=torch.bfloat16, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(2 * torch.randn(1, k, generator=g))
    return x.to(dtype).to(device)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4", "sharq-hif4", "nvfp4", "dense-dense"])
def test_reference_repeats_bit_for_bit(preset, granularity):
    """Two layers from one float layer hold identical bytes; three calls give identical outputs."""
    cfg = _cfg(preset, granularity)
    lin = _linear(96, 40)
    a, b = SharqLinear.from_float(lin, cfg), SharqLinear.from_float(lin, cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    for m in (1, 7):
        x = _x(m, 96)
        first = a(x)
        assert torch.equal(a(x), first) and torch.equal(b(x), first)
        p, q = prepare_activation(x, cfg), prepare_activation(x, cfg)
        assert torch.equal(p.backbone.codes, q.backbone.codes) and torch.equal(p.global_scale, q.global_scale)


_CHILD = """
import hashlib, sys, torch
sys.path.insert(0, {tests!r})
from test_determinism import _cfg, _linear, _x, _digest
from sharq import SharqLinear
torch.set_num_threads({threads})
layer = SharqLinear.from_float(_linear(256, 64), _cfg("sharq-nvfp4", "token"))
print(_digest(layer(_x(33, 256))))
"""


def test_reference_repeats_across_processes():
    """A second Python process (two threads, where this one uses one) computes the same bytes."""
    layer = SharqLinear.from_float(_linear(256, 64), _cfg("sharq-nvfp4", "token"))
    here = _digest(layer(_x(33, 256)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    code = _CHILD.format(tests=str(ROOT / "tests"), threads=2)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("preset,granularity", [("sharq-nvfp4", "token"), ("sharq-mxfp4", "tensor")])
def test_triton_repeats_bit_for_bit(preset, granularity, m):
    pytest.importorskip("triton")
    cfg = _cfg(preset, granularity)
    layer = SharqLinear.from_float(_linear(96, 24), cfg, options=RuntimeOptions(backend="triton"))
    x = _x(m, 96)
    first = layer(x)
    assert torch.equal(layer(x.clone()), first)  # (an interpreted M = 1 call takes ~3 s: two calls)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize(
    "preset,granularity", [("sharq-nvfp4", "token"), ("sharq-nvfp4", "tensor"), ("sharq-mxfp4", "tensor")]
)
def test_cuda_repeats_bit_for_bit(preset, granularity, backend):
    """K = N = 4096 on CUDA, M in {1, 16, 300}: five calls, one output; quantizing the weight
    twice gives the same bytes."""
    k = n = 4096
    cfg = _cfg(preset, granularity)
    lin = _linear(k, n).cuda()
    a = quantize_weight(lin.weight, cfg)
    b = quantize_weight(lin.weight, cfg)
    assert all(torch.equal(a.storage()[key], b.storage()[key]) for key in a.storage())
    layer = SharqLinear.from_float(lin, cfg, options=RuntimeOptions(backend=backend))
    for m in (1, 16, 300):
        x = _x(m, k, seed=m, device="cuda")
        first = layer(x)
        for _ in range(4):
            assert torch.equal(layer(x), first), m
