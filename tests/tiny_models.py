"""Tiny random-weight transformers models of every supported architecture, built from a config.

No download: each model is a few hundred kB, with sizes that are multiples of every block (64).
"""

from __future__ import annotations

import torch

H, I, HEADS, KV, HEAD_DIM, LAYERS, VOCAB = 128, 256, 4, 2, 32, 2, 256

COMMON = dict(
    hidden_size=H,
    intermediate_size=I,
    num_attention_heads=HEADS,
    num_key_value_heads=KV,
    head_dim=HEAD_DIM,
    num_hidden_layers=LAYERS,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**COMMON))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**COMMON))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**COMMON))


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**COMMON))


def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = dict(
        COMMON,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        norm_topk_prob=True,
    )
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**cfg))


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = dict(COMMON, num_local_experts=4, num_experts_per_tok=2)
    return MixtralForCausalLM(MixtralConfig(**cfg))


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = dict(COMMON, sliding_window=64, query_pre_attn_scalar=HEAD_DIM)
    return Gemma3ForCausalLM(Gemma3TextConfig(**cfg))


def _qwen3_vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = dict(COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
    vision = dict(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=H,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision))


BUILDERS = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral,
    "gemma3": _gemma3,
    "qwen3_vl": _qwen3_vl,
}


def tiny_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """A tiny random-weight model of architecture `kind` in eval mode and `dtype`."""
    torch.manual_seed(seed)
    model = BUILDERS[kind]().to(dtype).eval()
    # Random init gives near-zero norm weights in Gemma (1 + w); make every norm non-trivial.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p.float()).to(p.dtype))
    return model


def tiny_tokenizer():
    """A byte-level tokenizer of exactly VOCAB = 256 tokens (one per byte), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level symbols
    assert len(alphabet) == VOCAB
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=alphabet[0], pad_token=alphabet[0])


def tiny_folder(path, kind: str = "llama", *, seed: int = 0, tie: bool = False):
    """Write a tiny model of `kind` (bfloat16) and the byte tokenizer as a local Hugging Face folder."""
    torch.manual_seed(seed)
    model = tiny_model(kind, seed=seed)
    if tie:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.get_input_embeddings().weight
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
