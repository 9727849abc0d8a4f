"""The models `e2e.py` measures: real hyperparameters, random weights, built on the target device.

No download and no CPU copy: the model is constructed under `torch.device(device)`, so every
parameter is allocated and initialized (transformers' init: normal(0, 0.02) for linears and
embeddings, ones for norms, zeros for biases) directly there, in bfloat16.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

_LLAMA_31_8B = dict(
    kind="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)
_QWEN25_7B = dict(
    kind="qwen2",
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    use_sliding_window=False,
    tie_word_embeddings=False,
    bos_token_id=151643,
    eos_token_id=151643,  # q/k/v biases: Qwen2 always has them
)
_TINY = dict(  # CPU smoke tests: a Llama with every size a multiple of the blocks
    kind="llama",
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=512,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=False,
)
_QWEN3_30B_A3B = dict(  # every layer a MoE layer: 128 experts of MLP 768, 8 routed per token, no shared expert
    kind="qwen3_moe",
    hidden_size=2048,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=128,
    num_experts_per_tok=8,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    vocab_size=151936,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    attention_bias=False,
    tie_word_embeddings=False,
    bos_token_id=151643,
    eos_token_id=151645,
)
_TINY_MOE = dict(  # CPU smoke tests of the MoE paths: a Qwen3-MoE with every size a multiple of the blocks
    kind="qwen3_moe",
    hidden_size=256,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=8,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    vocab_size=512,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=False,
)
MODELS = {
    "llama-3.1-8b": _LLAMA_31_8B,
    "qwen2.5-7b": _QWEN25_7B,
    "qwen3-30b-a3b": _QWEN3_30B_A3B,
    "tiny": _TINY,
    "tiny-moe": _TINY_MOE,
}


def is_moe(name: str) -> bool:
    """True for the mixture-of-experts models (no fp8 baseline: it refuses fused experts)."""
    return MODELS[name]["kind"] == "qwen3_moe"


def model_config(name: str, layers: int | None = None):
    """The transformers config of `name` (one of MODELS); `layers`: another number of decoder layers
    (a shorter run of the same layer shapes)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3MoeConfig

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    fields = dict(MODELS[name])
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        fields["num_hidden_layers"] = layers
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3_moe": Qwen3MoeConfig}[fields.pop("kind")]
    return cls(**fields)


def build_model(name: str, device: torch.device, seed: int = 0, layers: int | None = None) -> nn.Module:
    """A random-weight causal LM of `name` in bfloat16 on `device`, in eval mode (sdpa attention).
    MoE models keep transformers' default experts implementation (`grouped_mm` where torch has it:
    sorted on the device, no host synchronisation)."""
    from transformers import AutoModelForCausalLM

    config = model_config(name, layers)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval().requires_grad_(False)


def _tensors(module: nn.Module):
    seen = set()
    for t in itertools.chain(module.parameters(), module.buffers()):
        key = (t.device, t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            yield t


def is_experts(module: nn.Module) -> bool:
    """A fused-experts module: transformers' (3-D `gate_up_proj`) or sharq's `SharqExperts`."""
    from sharq.nn.experts import SharqExperts

    gate_up = getattr(module, "gate_up_proj", None)
    return isinstance(module, SharqExperts) or (isinstance(gate_up, torch.Tensor) and gate_up.dim() == 3)


def weight_bytes(model: nn.Module, linear_types: tuple[type, ...]) -> tuple[int, int]:
    """(all, linear-only) bytes of the tensors the model holds (parameters and buffers, each once).

    linear-only: the modules of `linear_types` and the fused experts (`is_experts`) except `lm_head`
    — the layers a provider quantizes.
    """
    total = sum(t.numel() * t.element_size() for t in _tensors(model))
    linear = 0
    for name, module in model.named_modules():
        if (isinstance(module, linear_types) or is_experts(module)) and not name.endswith("lm_head"):
            linear += sum(t.numel() * t.element_size() for t in _tensors(module))
    return total, linear
