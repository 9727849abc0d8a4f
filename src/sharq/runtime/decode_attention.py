"""SDPA attention for one-token decode steps of grouped-query models, without copying K/V per head.

transformers' "sdpa" attention (5.17) repeats every key/value head `num_key_value_groups` times
(`repeat_kv`) whenever a mask is passed, because CUDA's masked SDPA kernels do not take
`enable_gqa`. At decode that copies the whole cache twice per layer and step (Llama-3.1-8B, 1 k
context: two ~12 µs copies per layer on the H100, more than the attention itself).

For a single query token the copy is not needed: the `g` query heads that share one key/value head
are stacked as `g` query rows of that head, query (B, H, 1, D) -> (B, H/g, g, D), and one SDPA call
over the un-repeated K/V (B, H/g, S, D) gives every head's softmax over the same keys. A mask shared
by the heads, (B, 1, 1, S) or (B, 1, S)-broadcastable, broadcasts over the stacked rows unchanged.
On CUDA (with Triton) the same stacking runs in `kernels/attention_decode.py`, which also splits the
keys across programs: SDPA's kernels run one program per (sequence, head) and took ~33 µs a layer at
Llama-3.1-8B shapes for ~4.5 MB of cache (benchmarks/decode_attention.py).

`DECODE_SDPA` names this attention function in transformers' `AttentionInterface` (registered on
import). It takes over one-token calls of grouped-query layers and hands every other call (prefill,
several query tokens, per-head masks, soft-capping, dropout, …) to transformers' own
`sdpa_attention_forward` as it is. `decode_attention(model)` switches a model to it for the length
of a `with` block (the decode step of `StaticDecoder`), and back.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _triton_installed

# on CUDA, the split-key Triton kernel (kernels/attention_decode.py) instead of SDPA's kernels;
# SHARQ_DECODE_ATTENTION=sdpa keeps SDPA (the benchmarks' A/B switch)
_TRITON = os.environ.get("SHARQ_DECODE_ATTENTION", "triton") != "sdpa" and _triton_installed()
if _TRITON:
    from ..kernels.attention_decode import decode_attention_supports, decode_attention_triton

__all__ = ["DECODE_SDPA", "decode_sdpa_attention", "decode_attention"]

DECODE_SDPA = "sharq_decode_sdpa"


def _packs(module: nn.Module, query: torch.Tensor, mask: torch.Tensor | None, dropout: float, kwargs: dict) -> bool:
    """True when the call is one query token of a grouped-query layer with a head-independent mask."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups <= 1 or query.shape[2] != 1 or dropout != 0.0:
        return False
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None or kwargs.get("sinks") is not None:
        return False
    if kwargs.get("cache") is not None:  # a paged cache updates K/V inside transformers' function
        return False
    return mask is None or (mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)


def decode_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, T, D), key/value (B, Hkv, S, D),
    attention_mask None or (B, 1, T, S) bool/additive; returns ((B, T, H, D), None)."""
    if not _packs(module, query, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    if heads != kv_heads * module.num_key_value_groups:
        raise ValueError(
            f"{type(module).__name__}: {heads} query heads are not {module.num_key_value_groups} "
            f"groups of {kv_heads} key/value heads"
        )
    if query.is_cuda and _TRITON and decode_attention_supports(query, key, value, attention_mask):
        return decode_attention_triton(query, key, value, attention_mask, scaling), None
    stacked = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # (B, Hkv, g, D): g rows per K/V head
    out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_SDPA, decode_sdpa_attention)
    AttentionMaskInterface.register(DECODE_SDPA, sdpa_mask)


_register()


def _implementations(config) -> dict:
    """{"": the config's attention implementation, sub-config name: its implementation, …}: the
    dict form transformers' `_attn_implementation` setter takes (each entry sets that config only)."""
    out = {"": getattr(config, "_attn_implementation", None)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            out[key] = getattr(sub, "_attn_implementation", None)
    return out


@contextlib.contextmanager
def decode_attention(model: nn.Module):
    """Within the block, the model's (sub-)configs on transformers' "sdpa" attention run
    `decode_sdpa_attention` instead; other attention implementations are left as they are."""
    config = model.config
    before = _implementations(config)
    switched = {key: DECODE_SDPA if impl == "sdpa" else impl for key, impl in before.items()}
    if switched == before:
        yield
        return
    config._attn_implementation = switched
    try:
        yield
    finally:
        config._attn_implementation = before
