"""Gemma 3's tokenizer rebuilt from a GGUF file's metadata, the same under every transformers 5.x.

transformers' own GGUF tokenizer for Gemma depends on its version: 5.17 builds a Unigram model
from the file's scores and adds no BOS ("Hello world" becomes four pieces, no `<bos>`), so the
model reads token sequences it never saw in training; 5.25 builds the BPE tokenizer Gemma uses.
sharq builds it here instead, so that a number measured on one machine and on another come from
the same token ids.

The file (llama.cpp's export of a SentencePiece model) lists, per token id, its text, a score and
a type: 1 normal, 3 control, 4 user-defined, 6 byte. SentencePiece's BPE, which Gemma's tokenizer
is, encodes a text by first cutting out user-defined pieces whole (newline runs, space runs, tabs,
a few HTML tags; llama.cpp stores their spaces as real spaces), then repeatedly merging the two
adjacent pieces whose concatenation is the best-scoring token, with bytes for characters outside the
vocabulary. A normal token's score falls strictly with its id, so the merge list is every split of
a normal token into two normal tokens, ranked by that token's id. `gemma_tokenizer_from_gguf`
hands that vocabulary and merge list to transformers' `GemmaTokenizer` (BPE with byte fallback,
spaces written "▁"), adds the user-defined tokens as tokens matched in the raw text and the control
tokens (`<bos>`, `<start_of_turn>`, …) as special tokens, and prepends BOS as the file says.

`gguf_architecture` reads `general.architecture` from the header (gguf's reader).
"""

from __future__ import annotations

import os

__all__ = ["gguf_architecture", "gemma_tokenizer_from_gguf", "bpe_merges", "GEMMA_GGUF_ARCHITECTURES"]

# architectures whose GGUF tokenizer sharq rebuilds itself (the ones checked token for token)
GEMMA_GGUF_ARCHITECTURES = ("gemma3",)

_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def gguf_architecture(path: str | os.PathLike) -> str | None:
    """The file's `general.architecture` (e.g. "llama", "gemma3"), None when it has none; gguf's
    reader maps the file, it does not read the tensors."""
    from gguf import GGUFReader

    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
    found = _field(GGUFReader(str(path)), "general.architecture")
    return bytes(found[0]).decode("utf-8") if found else None


def bpe_merges(tokens: list[str], types: list[int]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal token, both parts normal tokens, in the
    order of the token they make (its id); the splits of one token by (left's id, right's id)."""
    normal = {token: i for i, (token, kind) in enumerate(zip(tokens, types)) if kind == _NORMAL}
    merges = []
    for token, kind in zip(tokens, types):
        if kind != _NORMAL or len(token) < 2:
            continue
        splits = [
            (normal[token[:cut]], normal[token[cut:]], token[:cut], token[cut:])
            for cut in range(1, len(token))
            if token[:cut] in normal and token[cut:] in normal
        ]
        merges.extend((left, right) for _, _, left, right in sorted(splits))
    return merges


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    return [field.parts[i] for i in field.data]


def gemma_tokenizer_from_gguf(path: str | os.PathLike):
    """transformers' `GemmaTokenizer` for the vocabulary of the GGUF file at `path` (module docstring)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    reader = GGUFReader(str(path))
    model = bytes(_field(reader, "tokenizer.ggml.model")[0]).decode("utf-8")
    if model != "llama":
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {model!r}; a SentencePiece ('llama') vocabulary was expected"
        )
    tokens = [bytes(part).decode("utf-8") for part in _field(reader, "tokenizer.ggml.tokens")]
    types = [int(part[0]) for part in _field(reader, "tokenizer.ggml.token_type")]

    def token_of(key: str, default: str | None) -> str | None:
        found = _field(reader, f"tokenizer.ggml.{key}")
        return tokens[int(found[0][0])] if found is not None else default

    def flag(key: str, default: bool) -> bool:
        found = _field(reader, f"tokenizer.ggml.{key}")
        return bool(found[0][0]) if found is not None else default

    tokenizer = GemmaTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=bpe_merges(tokens, types),
        bos_token=token_of("bos_token_id", "<bos>"),
        eos_token=token_of("eos_token_id", "<eos>"),
        unk_token=token_of("unknown_token_id", "<unk>"),
        pad_token=token_of("padding_token_id", "<pad>"),
        add_bos_token=flag("add_bos_token", True),
        add_eos_token=flag("add_eos_token", False),
    )
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
    tokenizer.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    if len(tokenizer) != len(tokens):
        raise ValueError(f"{path}: the rebuilt tokenizer has {len(tokenizer)} tokens, the file {len(tokens)}")
    return tokenizer
