"""A SmolLM2-135M-shaped model quantized with SharQ gives the same perplexity on the Triton backend as on
the reference backend (GPU, random weights of the real shape; run with `-m gpu`).

The two backends compute the same numbers up to FP32 summation order in the GEMMs (the preparation is
bit-identical), so perplexities agree to far better than any quantization effect. Sequence lengths
cover every GEMM regime: 200 tokens (the tensor-core GEMM dequantizing in its loop), 1024 (the bf16
scratch GEMM) and one-token decode steps (the NVFP4 GEMV).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _smollm2_shaped(seed: int):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        initializer_range=0.04,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()


def _nll(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(ids).logits.float()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_triton_and_reference_backends_give_the_same_perplexity(granularity):
    from sharq import PRESETS, quantize_
    from sharq.nn import SharqLinear

    base = _smollm2_shaped(seed=0)
    models = {}
    for backend in ("reference", "triton"):
        model = copy.deepcopy(base)
        quantize_(model, PRESETS["sharq-nvfp4"].replace(granularity=granularity), backend=backend)
        assert all(m.options.backend.value == backend for m in model.modules() if isinstance(m, SharqLinear))
        models[backend] = model
    g = torch.Generator().manual_seed(1)
    for length in (200, 1024):
        ids = torch.randint(0, 49152, (2, length), generator=g).cuda()
        ppl = {b: math.exp(_nll(m, ids)) for b, m in models.items()}
        print(f"granularity={granularity} length={length} ppl {ppl}")
        assert abs(ppl["triton"] / ppl["reference"] - 1) < 1e-3, (length, ppl)

    # decode: one token at a time through the KV cache (the M = 1 GEMV on the Triton backend)
    prompt = torch.randint(0, 49152, (1, 16), generator=g).cuda()
    steps = torch.randint(0, 49152, (24,), generator=g).tolist()
    logps = {}
    for backend, model in models.items():
        with torch.no_grad():
            out = model(prompt, use_cache=True)
            cache, total = out.past_key_values, 0.0
            for tok in steps:
                logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[tok]
                total += float(logp)
                out = model(torch.tensor([[tok]], device="cuda"), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
        logps[backend] = total / len(steps)
    print(f"granularity={granularity} decode mean log-prob {logps}")
    assert abs(logps["triton"] - logps["reference"]) < 1e-3 * abs(logps["reference"]), logps
