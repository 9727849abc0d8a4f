"""Programmatic dependent launch (kernels/pdl.py): when it is on, and that it changes no bit.

CPU: PDL is off on the CPU, under the interpreter, with SHARQ_PDL=0 and, for the weight-streaming
kernels, by default (measured slower, pdl-tuning-h100.json), and a launch then passes no
`launch_pdl`. `-m gpu` (H100): the preparation and the GEMV launch with PDL, and a chain of decode
linears — every layer reading the one before, two layers reading one shared preparation — gives
the same bits with PDL on and off, eagerly and replayed from a CUDA graph with fresh inputs (a
kernel reading before its predecessor finished would show as a difference).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import sharq.kernels.gemv_nvfp4 as gemv_module  # noqa: E402
import sharq.kernels.prepare_fp4 as prep_module  # noqa: E402
from sharq import PRESETS  # noqa: E402
from sharq.kernels.pdl import pdl_enabled  # noqa: E402
from sharq.kernels.prepare_fp4 import prepare_activation_triton  # noqa: E402
from sharq.ops import quantize_weight, sharq_linear  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402

from .kernel_launches import RecordingKernel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = RuntimeOptions(backend="triton")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _record(monkeypatch):
    prep, gemv = [], []
    monkeypatch.setattr(prep_module, "_prepare_kernel", RecordingKernel(prep_module._prepare_kernel, prep))
    monkeypatch.setattr(gemv_module, "_gemv_kernel", RecordingKernel(gemv_module._gemv_kernel, gemv))
    return prep, gemv


def test_pdl_is_off_on_the_cpu_and_when_switched_off(monkeypatch):
    assert not pdl_enabled(torch.device("cpu")) and not pdl_enabled(torch.device("cpu"), default=True)
    monkeypatch.setenv("SHARQ_PDL", "0")
    assert not pdl_enabled(torch.device("cuda", 0), default=True)  # decided before any CUDA query
    monkeypatch.delenv("SHARQ_PDL")
    assert not pdl_enabled(torch.device("cuda", 0))  # unset: the kernel's default (off for the weight streams)
    monkeypatch.setenv("SHARQ_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl_enabled(torch.device("cuda", 0))


def test_launches_without_pdl_pass_no_launch_option(monkeypatch):
    """Off (here: the CPU, or SHARQ_PDL=0 on a GPU), the kernels compile with PDL=False and the
    launch carries no `launch_pdl`."""
    monkeypatch.setenv("SHARQ_PDL", "0")
    prep, gemv = _record(monkeypatch)
    config = PRESETS["sharq-nvfp4"]
    wq = quantize_weight(torch.randn(24, 64, device=DEVICE) * 0.05, config)
    sharq_linear(torch.randn(1, 64, device=DEVICE).to(torch.bfloat16), wq, None, config, options=TRITON)
    assert prep and gemv
    assert all(k["PDL"] is False and "launch_pdl" not in k for k in prep + gemv)


def _chain(xs, weights, config):
    """Decode-shaped chain: h = x; per layer pair, two linears read one preparation of h and the
    next h is their sum (so every preparation depends on the GEMVs before it)."""
    h = xs
    for w_a, w_b in weights:
        prepared = prepare_activation_triton(h, config, with_terms=True, terms_layout="auto")
        a = sharq_linear(h, w_a, None, config, prepared=prepared, options=TRITON)
        b = sharq_linear(h, w_b, None, config, prepared=prepared, options=TRITON)
        h = (a.float() + b.float()).to(torch.bfloat16) * 4
    return h


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_pdl_chain_is_bit_identical_eager_and_in_a_cuda_graph(monkeypatch, m, granularity):
    config = PRESETS["sharq-nvfp4"].replace(granularity=granularity)
    g = torch.Generator().manual_seed(3)
    k = 4096
    weights = [
        tuple(quantize_weight((torch.randn(k, k, generator=g) * 0.02).to(DEVICE), config) for _ in range(2))
        for _ in range(3)
    ]
    inputs = [(torch.randn(m, k, generator=g) * 2).to(torch.bfloat16).to(DEVICE) for _ in range(4)]

    monkeypatch.setenv("SHARQ_PDL", "0")
    expected = [_chain(x, weights, config) for x in inputs]

    monkeypatch.setenv("SHARQ_PDL", "1")
    assert pdl_enabled(torch.device(DEVICE))
    prep, gemv = _record(monkeypatch)
    for x, want in zip(inputs, expected):
        assert torch.equal(_chain(x, weights, config), want)
    assert prep and gemv and all(kw.get("launch_pdl") is True and kw["PDL"] is True for kw in prep + gemv)

    static = inputs[0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _chain(static, weights, config)  # warm-up: compiles outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _chain(static, weights, config)
    for _ in range(3):
        for x, want in zip(inputs, expected):
            static.copy_(x)
            graph.replay()
            assert torch.equal(out, want)
