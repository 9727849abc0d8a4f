"""Triton one-token GQA attention (kernels/attention_decode.py) == SDPA over repeated K/V heads.

CPU: under TRITON_INTERPRET=1 in FP32 (both products FP32), against torch's SDPA in float64:
every mask form, uneven splits, fully masked splits, several groupings and head dims. `-m gpu`:
bf16 at Llama-3.1-8B / Qwen2.5-7B shapes against an FP32 reference, within bf16 rounding, inside
a CUDA graph too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import sharq.kernels.attention_decode as attention_module  # noqa: E402
from sharq.kernels.attention_decode import decode_attention_supports, decode_attention_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(q, k, v, mask, scale):
    """FP64 SDPA with every K/V head repeated for its query heads; (B, 1, H, D)."""
    groups = q.shape[1] // k.shape[1]
    kr = k.double().repeat_interleave(groups, dim=1)
    vr = v.double().repeat_interleave(groups, dim=1)
    m = mask if mask is None or mask.dtype == torch.bool else mask.double()
    return F.scaled_dot_product_attention(q.double(), kr, vr, attn_mask=m, scale=scale).transpose(1, 2)


def _operands(batch, heads, kv_heads, slots, dim, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, 1, dim, generator=g)
    k = torch.randn(batch, kv_heads, slots, dim, generator=g)
    v = torch.randn(batch, kv_heads, slots, dim, generator=g)
    return q.to(dtype).to(device), k.to(dtype).to(device), v.to(dtype).to(device)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none", "shared-bool"])
@pytest.mark.parametrize("heads,kv_heads,dim", [(8, 2, 16), (7, 1, 32), (12, 4, 16)])
def test_matches_sdpa_over_repeated_heads(heads, kv_heads, dim, mask_kind):
    batch, slots = 3, 150  # 3 key blocks of 64, the last one partial
    q, k, v = _operands(batch, heads, kv_heads, slots, dim, torch.float32)
    lengths = torch.tensor([150, 5, 97], device=DEVICE)  # sequence 1: every split but the first fully masked
    visible = torch.arange(slots, device=DEVICE).view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)
    mask = {
        "bool": visible,
        "none": None,
        "shared-bool": visible[2:3],
        "additive": torch.zeros(visible.shape, device=DEVICE).masked_fill(~visible, torch.finfo(torch.float32).min),
    }[mask_kind]
    out = decode_attention_triton(q, k, v, mask, scale=0.3)
    assert out.shape == (batch, 1, heads, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, 0.3), rtol=2e-5, atol=2e-5)


def test_splits_and_default_scale(monkeypatch):
    """Many splits of several blocks each (a small program target), and scale None = 1/sqrt(D)."""
    monkeypatch.setattr(attention_module, "TARGET_PROGRAMS", 4)
    q, k, v = _operands(1, 4, 2, 700, 16, torch.float32, seed=2)
    out = decode_attention_triton(q, k, v, None)
    torch.testing.assert_close(out.double(), _reference(q, k, v, None, 0.25), rtol=2e-5, atol=2e-5)


def test_refuses_what_it_does_not_take():
    q, k, v = _operands(2, 8, 2, 10, 16, torch.float32)
    assert decode_attention_supports(q, k, v, None)
    bad = [
        (q.expand(2, 8, 2, 16), k, v, None),  # two query tokens
        (q, k[:, :, :, :12], v[:, :, :, :12], None),  # head dim mismatch
        (q[:, :6], k[:, :1].expand(2, 4, 10, 16), v[:, :1].expand(2, 4, 10, 16), None),  # 4 does not divide 6
        (q, k, v, torch.ones(2, 8, 1, 10, dtype=torch.bool, device=DEVICE)),  # a per-head mask
        (q, k, v, torch.ones(2, 1, 1, 10, dtype=torch.int32, device=DEVICE)),  # integer mask
        (q.half(), k, v, None),  # mixed dtypes
    ]
    for args in bad:
        assert not decode_attention_supports(*args)
        with pytest.raises(ValueError, match="decode_attention_triton takes"):
            decode_attention_triton(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("heads,kv_heads", [(32, 8), (28, 4)])
def test_bf16_at_model_shapes_in_a_cuda_graph(batch, heads, kv_heads):
    slots, dim = 1088, 128
    q, k, v = _operands(batch, heads, kv_heads, slots, dim, torch.bfloat16, seed=5)
    lengths = torch.randint(1, slots + 1, (batch,), device=DEVICE)
    lengths[0] = 1025
    mask = torch.arange(slots, device=DEVICE).view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)
    want = _reference(q, k, v, mask, dim**-0.5)
    out = decode_attention_triton(q, k, v, mask)
    err = (out.double() - want).abs().max().item()
    assert err < 2e-2 * want.abs().max().item(), err
    graph = torch.cuda.CUDAGraph()
    static_q = q.clone()
    with torch.cuda.graph(graph):
        got = decode_attention_triton(static_q, k, v, mask)
    q2 = torch.randn_like(q)
    static_q.copy_(q2)
    graph.replay()
    assert torch.equal(got, decode_attention_triton(q2, k, v, mask))
