"""Perplexity over non-overlapping windows of a token stream.

The corpus (documents joined by a blank line) is tokenized once; its first `max_tokens` tokens (all
by default) are cut into windows of `seq_len - 1` tokens. Each window is fed as
[prefix token] + window, and every one of its tokens is scored, so each token of the slice is
predicted exactly once, from the context inside its own window only. The result keeps each
window's summed NLL and token count too (`window_nll`, `window_tokens`), for bootstrap intervals
over windows (bootstrap.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import torch

from .scoring import prefix_token_id

__all__ = ["PerplexityResult", "corpus_tokens", "perplexity", "quantized_copy", "quantized_perplexity"]


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # summed negative log-likelihood (nats)
    tokens: int  # tokens scored
    windows: int
    corpus_tokens: int  # tokens in the whole corpus (the slice is [0, tokens))
    seq_len: int
    window_nll: tuple[float, ...] = ()  # summed NLL (nats) of each window, in corpus order
    window_tokens: tuple[int, ...] = ()  # tokens scored in each window (sums to `tokens`)

    def describe(self) -> str:
        share = f"tokens [0, {self.tokens}) of {self.corpus_tokens}"
        return f"ppl {self.ppl:.3f} over {self.tokens} tokens ({self.windows} windows of {self.seq_len}; {share})"


def corpus_tokens(tokenizer, texts: Sequence[str], separator: str = "\n\n") -> list[int]:
    """Token ids of the documents joined by `separator` (no special tokens)."""
    return tokenizer(separator.join(texts), add_special_tokens=False).input_ids


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    tokens: Sequence[int],
    *,
    seq_len: int = 2048,
    max_tokens: int | None = None,
    batch_size: int = 1,
    progress=None,
) -> PerplexityResult:
    """Perplexity of `model` on `tokens[:max_tokens]` in windows of `seq_len` positions."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(tokens) if max_tokens is None else min(max_tokens, len(tokens))
    if n == 0:
        raise ValueError("no tokens to score")
    device = next(model.parameters()).device
    prefix = prefix_token_id(tokenizer)
    step = seq_len - 1
    windows = [list(tokens[s : min(s + step, n)]) for s in range(0, n, step)]
    nll = 0.0
    window_nll: list[float] = []
    # full windows in batches, the shorter last window alone
    groups: list[list[list[int]]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and len(groups[-1][0]) == len(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    for group in groups:
        targets = torch.tensor(group, device=device)  # (B, L)
        prefix_col = torch.full((len(group), 1), prefix, device=device)
        ids = torch.cat([prefix_col, targets[:, :-1]], dim=1)  # (B, L): predicts every target
        logits = model(input_ids=ids, use_cache=False).logits  # (B, L, V)
        for row in range(len(group)):
            window_nll.append(
                torch.nn.functional.cross_entropy(logits[row].float(), targets[row], reduction="sum").item()
            )
            nll += window_nll[-1]
        if progress is not None:
            progress(int(targets.numel()))
    return PerplexityResult(
        math.exp(nll / n),
        nll,
        n,
        len(windows),
        len(tokens),
        seq_len,
        window_nll=tuple(window_nll),
        window_tokens=tuple(len(w) for w in windows),
    )


def quantized_perplexity(
    base: torch.nn.Module,
    tokenizer,
    tokens: Sequence[int],
    config=None,
    *,
    seq_len: int,
    max_tokens: int | None = None,
    backend: str = "auto",
) -> tuple[PerplexityResult, float]:
    """(perplexity of a copy of `base` quantized with `config` — a SharqConfig, None: unquantized —,
    seconds the quantization took), scored through `quantized_copy`; `base` is left as it was."""
    with quantized_copy(base, config, backend=backend) as (model, seconds):
        result = perplexity(model, tokenizer, tokens, seq_len=seq_len, max_tokens=max_tokens)
    return result, seconds


@contextlib.contextmanager
def quantized_copy(base: torch.nn.Module, config=None, *, backend: str = "auto"):
    """Yields (a copy of `base` quantized with `config` — a SharqConfig or preset name, None:
    unquantized —, seconds the quantization took), inside `kept_dequantized_weights` (each weight
    decoded once, the same outputs) for scoring; `base` is left as it was."""
    import copy
    import time

    from ..models.convert import quantize_
    from ..runtime.weight_cache import kept_dequantized_weights

    model = copy.deepcopy(base)
    start = time.perf_counter()
    if config is not None:
        quantize_(model, config, backend=backend)
    seconds = time.perf_counter() - start
    with kept_dequantized_weights(model):
        yield model, seconds
