"""Linear-layer shapes (N out, K in) of the models the kernels are measured and tuned on.

One decoder layer each; q/k/v and gate/up are the fused widths a shared preparation feeds (the
kernels see them as separate linears of the same K, which the sums in linear.py count together).
  llama-3.1-8b    hidden 4096, 32 q / 8 kv heads of 128, MLP 14336
  qwen2.5-7b      hidden 3584, 28 q / 4 kv heads of 128, MLP 18944
  qwen3-30b-a3b   hidden 2048, 32 q / 4 kv heads of 128 (attention width 4096), 128 experts with
                  MLP 768, 8 routed per token: an expert's linears are tiny, decode reads them at M ≤ 8
  smollm2-135m    hidden 576, 9 q / 3 kv heads of 64, MLP 1536 (the embedded default model)
"""

from __future__ import annotations

MODEL_LAYERS: dict[str, dict[str, tuple[int, int]]] = {
    "llama-3.1-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
    "qwen2.5-7b": {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)},
    "qwen3-30b-a3b": {
        "qkv": (5120, 2048),
        "o": (2048, 4096),
        "expert_gate_up": (1536, 2048),
        "expert_down": (2048, 768),
    },
    "smollm2-135m": {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)},
}
DEFAULT_MODEL = "llama-3.1-8b"
LAYERS = MODEL_LAYERS[DEFAULT_MODEL]


def layers_of(model: str) -> dict[str, tuple[int, int]]:
    """The {layer: (N, K)} of `model` (one of MODEL_LAYERS), with a clear error otherwise."""
    if model not in MODEL_LAYERS:
        raise SystemExit(f"unknown model {model!r}; choose one of {', '.join(MODEL_LAYERS)}")
    return MODEL_LAYERS[model]
