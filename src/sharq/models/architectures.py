"""The decoder architectures `sharq.quantize_` converts with norm fusion, and how to find their parts.

Every supported architecture has pre-norm decoder layers (`*DecoderLayer`) with
`self_attn.{q,k,v,o}_proj`, an input RMSNorm in front of q/k/v, and an MLP whose gate/up read a
second RMSNorm — `post_attention_layernorm`, or `pre_feedforward_layernorm` in Gemma 3. The MLP is
dense (`gate_proj`, `up_proj`, `down_proj`) or a mixture of experts (`mlp.experts`: fused 3-D
parameters in recent transformers, a ModuleList of MLPs in older ones; the router stays).
"""

from __future__ import annotations

import dataclasses

from torch import nn

__all__ = ["DecoderArchitecture", "ARCHITECTURES", "find_architecture", "supported_names", "decoder_layers"]


@dataclasses.dataclass(frozen=True)
class DecoderArchitecture:
    """How to convert one family of transformers decoders."""

    name: str  # what users call it, e.g. "Qwen3-MoE"
    model_types: tuple[str, ...]  # `config.model_type` values (top-level model)
    norm_variant: str = "llama"  # FusedRMSNormPrep variant of its RMSNorm
    attn_norm: str = "input_layernorm"
    attn: str = "self_attn"
    qkv: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj")
    o: str = "o_proj"
    mlp_norm: str = "post_attention_layernorm"
    mlp: tuple[str, ...] = ("mlp",)  # attribute names tried in order
    gate_up: tuple[str, str] = ("gate_proj", "up_proj")
    down: str = "down_proj"
    moe: bool = False
    note: str = ""


ARCHITECTURES: tuple[DecoderArchitecture, ...] = (
    DecoderArchitecture("Llama", ("llama",)),
    DecoderArchitecture("Mistral", ("mistral",)),
    DecoderArchitecture("Qwen2/2.5", ("qwen2",), note="q/k/v biases kept in the model dtype"),
    DecoderArchitecture("Qwen3", ("qwen3",), note="q/k norms after the projections stay"),
    DecoderArchitecture("Qwen3-MoE", ("qwen3_moe",), moe=True, note="every expert; the router stays"),
    DecoderArchitecture(
        "Mixtral", ("mixtral",), mlp=("mlp", "block_sparse_moe"), moe=True, note="every expert; the router stays"
    ),
    DecoderArchitecture(
        "Gemma3",
        ("gemma3", "gemma3_text"),
        norm_variant="gemma",
        mlp_norm="pre_feedforward_layernorm",
        note="the vision tower stays",
    ),
    DecoderArchitecture(
        "Qwen3-VL",
        ("qwen3_vl", "qwen3_vl_text"),
        note="language model only; the vision tower stays unless filter_fn selects it",
    ),
)


def supported_names() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in ARCHITECTURES)


def model_type_of(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def find_architecture(model: nn.Module) -> DecoderArchitecture | None:
    """The supported architecture of a transformers model, or None (not one, or not supported)."""
    model_type = model_type_of(model)
    return next((a for a in ARCHITECTURES if model_type in a.model_types), None)


def _num_hidden_layers(model: nn.Module) -> int | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def decoder_layers(model: nn.Module, arch: DecoderArchitecture) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every decoder layer of the language model, in order.

    Raises ValueError when the layers found do not match the config (a layout sharq does not know).
    """
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__.endswith("DecoderLayer")
        and hasattr(module, arch.attn_norm)
        and hasattr(module, arch.attn)
    ]
    expected = _num_hidden_layers(model)
    if not layers or (expected is not None and len(layers) != expected):
        raise ValueError(
            f"{arch.name}: found {len(layers)} decoder layers with `{arch.attn_norm}` and `{arch.attn}`, "
            f"the config says {expected}; this model's layout is not one sharq can fuse"
        )
    return layers
