"""Tiny random Qwen2 (q/k/v biases) and Qwen3 (q/k norms) checkpoints in vLLM: every sharq
layer's output equals the checkpoint's SharqLinear modules' bit for bit; greedy decoding runs."""

import pytest

from serving_helpers import TINY_PROMPTS, run_vllm


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])  # Llama: SmolLM2 (test_smollm2.py)
def test_tiny_layers_bit_exact(kind, tiny_folders):
    folder = tiny_folders(kind)
    result, log = run_vllm("layers", str(folder), "--prompts", str(TINY_PROMPTS[:1]), "--generate", "4")
    assert result is not None, log[-4000:]
    layers = result["layers"]
    assert len(layers) == 8  # 2 decoder layers x (qkv, o, gate_up, down)
    assert all(v["equal"] for v in layers.values()), {k: v["max_abs_diff"] for k, v in layers.items()}
    assert len(result["generated"]["token_ids"]) == 4
