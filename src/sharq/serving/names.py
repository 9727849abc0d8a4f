"""Names between a sharq checkpoint and vLLM's model (no vLLM import).

sharq records one entry per *logical* matrix (`model.layers.0.self_attn.q_proj`); vLLM fuses q/k/v
into one `qkv_proj` layer and gate/up into one `gate_up_proj` (its `packed_modules_mapping`), and
its name mapper sends `…q_proj.weight_codes` to `…qkv_proj.weight_codes` with shard id "q".
"""

from __future__ import annotations

__all__ = ["SERVED_ARCHITECTURES", "logical_modules", "DROPPED_SUFFIXES", "PARAM_FIELDS"]

# sharq's architecture names (quantization_config.architecture) that the vLLM method serves.
SERVED_ARCHITECTURES = ("Llama", "Qwen2/2.5", "Qwen3")

# Tensors `sharq quantize` writes that vLLM's models do not have: the rotary tables transformers
# registers as buffers (vLLM computes its own). vLLM already drops `rotary_emb.inv_freq`.
DROPPED_SUFFIXES = (".rotary_emb.original_inv_freq", ".rotary_emb.inv_freq")

# The packed weight of one linear, as stored by `sharq quantize` (NVFP4): `weight_<field>`.
PARAM_FIELDS = ("codes", "scales", "global_scale")


def logical_modules(prefix: str, packed_modules_mapping: dict[str, list[str]]) -> list[str]:
    """The checkpoint's module names behind vLLM layer `prefix`, in the order of its output columns.

    `model.layers.0.self_attn.qkv_proj` with {"qkv_proj": ["q_proj", "k_proj", "v_proj"]} gives
    [`…q_proj`, `…k_proj`, `…v_proj`]; a layer that is not fused gives [prefix].
    """
    parent, _, leaf = prefix.rpartition(".")
    parts = packed_modules_mapping.get(leaf)
    if not parts:
        return [prefix]
    return [f"{parent}.{p}" if parent else p for p in parts]
