"""The fast decode paths give the tokens of transformers' eager `generate` (greedy), on the CPU.

"graph" (`StaticDecoder`) runs its decode step uncaptured on the CPU — the very step the CUDA graph
captures on a GPU (tests marked gpu check the captured replay); "compile" runs transformers'
static-cache generate with torch.compile, traced with the "eager" backend here.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import sharq  # noqa: E402
from sharq.baselines import fp8_quantize_  # noqa: E402
from sharq.runtime import StaticDecoder  # noqa: E402
from sharq.runtime.generation import DECODE_MODES, generate_text, resolve_decode  # noqa: E402

from .tiny_models import COMMON, VOCAB, tiny_model, tiny_tokenizer  # noqa: E402

REFERENCE = sharq.PRESETS["sharq-nvfp4"]  # on the CPU: the reference backend


def _greedy(model, ids, n, **options):
    return model.generate(
        ids,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        temperature=None,
        top_p=None,
        top_k=None,
        **options,
    )


def _ids(batch, length, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("provider", ["bf16", "sharq", "fp8"])
def test_static_decoder_matches_generate(kind, provider):
    """Float32 model: transformers >= 5.2x runs an unpadded decode step as an unmasked SDPA call,
    whose CPU kernel sums in another order than the masked call over the static cache; in bf16 that
    moves attention outputs by an ulp, enough to flip an FP8/FP4 rounding and then a greedy token
    (seen with 5.25). In float32 both orders agree to ~1e-7 and the tokens must be equal."""
    model = tiny_model(kind, dtype=torch.float32)
    if provider == "sharq":
        sharq.quantize_(model, REFERENCE)
    elif provider == "fp8":
        fp8_quantize_(model)
    ids = _ids(2, 7)
    expected = _greedy(model, ids, 6)
    decoder = StaticDecoder(model, batch_size=2, max_cache_len=16)
    assert not decoder.graph_enabled  # CPU: the step runs uncaptured
    assert torch.equal(decoder.generate(ids, 6), expected)
    # the decoder is reusable: a second prompt of another length starts from an empty cache
    other = _ids(2, 4, seed=2)
    again = decoder.generate(other, 5)
    # transformers' own static-cache generate: the same cache shape, so the same attention sums
    assert torch.equal(again, _greedy(model, other, 5, cache_implementation="static"))
    assert decoder.length == 4 + 4


@pytest.mark.parametrize("provider", ["bf16", pytest.param("sharq", marks=pytest.mark.slow)])  # sharq: ~1 min
def test_compiled_static_decoder_matches_generate(provider):
    """compile= traces the whole step (forward, mask, greedy pick) with torch.compile: same tokens."""
    torch._dynamo.reset()
    model = tiny_model("llama")
    if provider == "sharq":
        sharq.quantize_(model, REFERENCE)
    ids = _ids(2, 5)
    decoder = StaticDecoder(model, batch_size=2, max_cache_len=14, compile="aot_eager")
    assert decoder.compile_backend == "aot_eager"
    assert torch.equal(decoder.generate(ids, 6), _greedy(model, ids, 6))
    # more decoders than torch.compile's recompilation limit (8): each compiles its own step
    for length in range(9, 19):
        assert torch.equal(
            StaticDecoder(model, 2, length, compile="aot_eager").generate(ids, 3), _greedy(model, ids, 3)
        )
    with pytest.raises(TypeError, match="compile must be"):
        StaticDecoder(model, 1, 8, compile=3)
    assert StaticDecoder(model, 1, 8, compile=True).compile_backend == "inductor"


def test_static_decoder_eager_attention_and_errors():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON, attn_implementation="eager")).to(torch.bfloat16).eval()
    ids = _ids(1, 5)
    assert torch.equal(StaticDecoder(model, 1, 12).generate(ids, 4), _greedy(model, ids, 4))
    decoder = StaticDecoder(model, 1, 8)
    with pytest.raises(RuntimeError, match="prefill first"):
        decoder.decode(2)
    with pytest.raises(ValueError, match=r"shape \(1, T\)"):
        decoder.prefill(_ids(2, 3))
    with pytest.raises(ValueError, match="does not fit"):
        decoder.prefill(_ids(1, 8))
    decoder.prefill(_ids(1, 6))
    with pytest.raises(ValueError, match="exceed max_cache_len=8"):
        decoder.decode(3)
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(model, 1, 8, graph=True)
    with pytest.raises(ValueError, match="full-attention"):
        StaticDecoder(tiny_model("gemma3"), 1, 8)


def test_generate_text_modes_agree_with_eager():
    torch._dynamo.reset()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**dict(COMMON, num_hidden_layers=1))).to(torch.bfloat16).eval()
    sharq.quantize_(model, REFERENCE)
    tokenizer = tiny_tokenizer()
    model.generation_config.eos_token_id = None  # generate all the tokens asked for
    eager = generate_text(model, tokenizer, "hello", max_new_tokens=5, decode="eager")
    graph = generate_text(model, tokenizer, "hello", max_new_tokens=5, decode="graph")
    compiled = generate_text(model, tokenizer, "hello", max_new_tokens=5, decode="compile", compile_backend="eager")
    assert len(eager.new_token_ids) == 5
    assert graph.new_token_ids == eager.new_token_ids and compiled.new_token_ids == eager.new_token_ids
    assert (eager.decode, graph.decode, compiled.decode) == ("eager", "graph", "compile")
    assert generate_text(model, tokenizer, "hello", max_new_tokens=2).decode == "eager"  # auto on CPU


def test_decode_mode_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode("auto", cpu, False) == "eager"
    assert resolve_decode("auto", cuda, False) == "graph" and resolve_decode("auto", cuda, True) == "compile"
    with pytest.raises(ValueError, match="greedy only"):
        resolve_decode("graph", cuda, True)
    with pytest.raises(ValueError, match="decode must be one of"):
        resolve_decode("fast", cpu, False)
    from sharq.cli.model_commands import DECODE_CHOICES

    assert DECODE_CHOICES == DECODE_MODES


def test_bench_model_decode_modes():
    from sharq.cli.model_commands import BENCH_DECODE_CHOICES
    from sharq.runtime.timing import BENCH_DECODE, bench_model

    assert BENCH_DECODE_CHOICES == BENCH_DECODE
    model = tiny_model("llama")
    for decode in ("eager", "graph"):
        r = bench_model(model, vocab=VOCAB, tokens=6, new_tokens=3, repeat=1, decode=decode)
        assert r["decode"] == decode and r["decode_ms_per_token"] > 0 and r["prefill_ms"] > 0
    with pytest.raises(ValueError, match="decode must be one of"):
        bench_model(model, vocab=VOCAB, tokens=6, new_tokens=3, decode="fast")
