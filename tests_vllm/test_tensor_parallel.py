"""Tensor parallelism (CPU, gloo): TP=2 and TP=3 give TP=1's logprobs within FP32 summation order.

The tiny model has 6 heads of 32 (hidden 192), an MLP of 384 and 384 tokens: o_proj's K slices are 96 / 64
columns, down_proj's 192 / 128 — whole 32-blocks — and the row-parallel ranks quantize their K
slice with the whole row's scale (MAX all-reduce of the row amax, SPEC §3). Measured on the CPU:
TP=2 and TP=3 vs TP=1 within 4.8e-7 (float32). A TP size whose K slice breaks a block is refused by name.
"""

import pytest

from serving_helpers import TINY_PROMPTS, run_vllm

SHAPES = dict(
    hidden_size=192, num_attention_heads=6, num_key_value_heads=6, head_dim=32, intermediate_size=384, vocab_size=384
)  # vLLM splits the vocabulary too
TOLERANCE = 1e-4  # float32 logprobs: summation order only (the codes are the single-device codes)


@pytest.fixture(scope="module")
def tp1(tiny_folders):
    result, log = run_vllm(
        "logprobs", str(tiny_folders("llama", **SHAPES)), "--dtype", "float32", "--prompts", str(TINY_PROMPTS)
    )
    assert result is not None, log[-4000:]
    return result["vllm_logprobs"]


@pytest.mark.parametrize("tp", [2, 3])
def test_tensor_parallel_equals_one_device(tp, tp1, tiny_folders):
    result, log = run_vllm(
        "logprobs",
        str(tiny_folders("llama", **SHAPES)),
        "--dtype",
        "float32",
        "--prompts",
        str(TINY_PROMPTS),
        "--tp",
        str(tp),
        timeout=400,
        env={"OMP_NUM_THREADS": "1"},
    )  # one thread per rank process on 2 cores
    assert result is not None, log[-4000:]
    for one, many in zip(tp1, result["vllm_logprobs"]):
        assert list(many)[:5] == list(one)[:5]
        shared = [t for t in one if t in many]
        assert len(shared) >= 15
        assert max(abs(one[t] - many[t]) for t in shared) <= TOLERANCE


def test_tensor_parallel_size_breaking_a_block_is_refused(tiny_folders):
    """down_proj's K = 336 splits into 168 columns at TP=2: not whole 32-blocks."""
    folder = tiny_folders("llama", **dict(SHAPES, intermediate_size=336))
    result, log = run_vllm("load", str(folder), "--tp", "2", timeout=400)
    assert result is not None and "error" in result, log[-4000:]
    expected = "tensor-parallel size 2 splits the input K=336 of row-parallel layer model.layers.0.mlp.down_proj"
    assert expected in log, log[-4000:]
