"""`sharq.runtime.decode_attention`: one-token grouped-query SDPA without per-head K/V copies.

The stacked call must give what transformers' own path (repeat_kv + SDPA) gives, hand every other
call to transformers unchanged, and `decode_attention` must switch only "sdpa" configs and restore
them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward  # noqa: E402

from sharq.runtime.decode_attention import DECODE_SDPA, decode_attention, decode_sdpa_attention  # noqa: E402

from .tiny_models import tiny_model  # noqa: E402


class _Layer(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _qkv(batch, heads, kv_heads, q_len, kv_len, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (6, 3), (4, 1)])
def test_stacked_heads_equal_repeated_kv(heads, kv_heads, mask_kind):
    batch, kv_len, dim = 3, 11, 16
    q, k, v = _qkv(batch, heads, kv_heads, 1, kv_len, dim)
    lengths = torch.tensor([11, 4, 7])  # a different number of visible slots per sequence
    visible = torch.arange(kv_len).view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)  # (B, 1, 1, S)
    mask = {
        "bool": visible,
        "none": None,
        "additive": torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min),
    }[mask_kind]
    layer = _Layer(heads // kv_heads)
    out, weights = decode_sdpa_attention(layer, q, k, v, mask, scaling=0.25)
    assert weights is None and out.shape == (batch, 1, heads, dim)
    # transformers' path with a mask: every K/V head repeated for its query heads
    expected = F.scaled_dot_product_attention(
        q,
        repeat_kv(k, layer.num_key_value_groups),
        repeat_kv(v, layer.num_key_value_groups),
        attn_mask=mask,
        scale=0.25,
    )
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-6, atol=1e-6)
    # query head h reads K/V head h // groups: a head that sees only zeros in V gives zeros
    v0 = v.clone()
    v0[:, 0] = 0
    out0, _ = decode_sdpa_attention(layer, q, k, v0, mask, scaling=0.25)
    assert torch.all(out0[:, 0, : heads // kv_heads] == 0) and torch.all(out0[:, 0, heads // kv_heads :] != 0)


def test_other_calls_go_to_transformers_unchanged():
    layer = _Layer(4)
    q, k, v = _qkv(2, 8, 2, 5, 9)  # prefill: five query tokens
    mask = torch.ones(2, 1, 5, 9, dtype=torch.bool).tril(diagonal=4)
    out, _ = decode_sdpa_attention(layer, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=0.3)
    assert torch.equal(out, ref)
    q1, k1, v1 = _qkv(2, 8, 8, 1, 9)  # no grouping: nothing to stack
    out, _ = decode_sdpa_attention(_Layer(1), q1, k1, v1, None, scaling=0.3)
    assert torch.equal(out, sdpa_attention_forward(_Layer(1), q1, k1, v1, None, scaling=0.3)[0])
    per_head = torch.ones(2, 8, 1, 9, dtype=torch.bool)  # a mask that differs per head is not stacked
    q2, _, _ = _qkv(2, 8, 2, 1, 9)
    out, _ = decode_sdpa_attention(layer, q2, k, v, per_head, scaling=0.3)
    assert torch.equal(out, sdpa_attention_forward(layer, q2, k, v, per_head, scaling=0.3)[0])


def test_decode_attention_switches_sdpa_only_and_restores():
    model = tiny_model("llama")
    assert model.config._attn_implementation == "sdpa"
    with decode_attention(model):
        assert model.config._attn_implementation == DECODE_SDPA
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"):
        with decode_attention(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"  # restored on an error too
    model.config._attn_implementation = "eager"
    with decode_attention(model):
        assert model.config._attn_implementation == "eager"


def test_model_decode_step_is_the_same_with_stacked_heads():
    """A whole tiny GQA Llama: one decode step after a prefill, transformers' attention vs stacked."""
    from transformers import DynamicCache

    model = tiny_model("llama").float()
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    ids = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    logits = []
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape, k.shape))
        return original(q, k, v, **kw)

    for switch in (False, True):
        calls.clear()  # (newer transformers stack one-token GQA calls themselves: count the switched run only)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :5], past_key_values=cache, use_cache=True)
            mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
            torch.nn.functional.scaled_dot_product_attention = spy
            try:
                if switch:
                    with decode_attention(model):
                        out = model(input_ids=ids[:, 5:], attention_mask=mask, past_key_values=cache, use_cache=True)
                else:
                    out = model(input_ids=ids[:, 5:], attention_mask=mask, past_key_values=cache, use_cache=True)
            finally:
                torch.nn.functional.scaled_dot_product_attention = original
        logits.append(out.logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    stacked = [q for q, k in calls if q[1] == model.config.num_key_value_heads and q[2] == groups]
    assert len(stacked) == model.config.num_hidden_layers  # the switched step stacked every layer
