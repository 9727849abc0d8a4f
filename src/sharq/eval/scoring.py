"""Log-likelihood of continuations under a causal LM, batched (what zero-shot tasks are scored by).

`encode_pairs` turns (context, continuation) strings into token ids the way lm-evaluation-harness
does for causal models: trailing spaces of the context move to the continuation, the continuation
is what `tokenize(context + continuation)` adds after `tokenize(context)`, and an empty context
gets the prefix token. `score_pairs` runs them through the model — longest first, left-padded,
only the continuation's logits kept — and returns (sum of log-probabilities, greedy?) per pair.

This file needs only torch and a tokenizer: lm-evaluation-harness calls it through `SharqLM`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["prefix_token_id", "tokenizer_adds_bos", "encode_pairs", "score_pairs", "batches_by_tokens"]


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts BOS in front by itself (Gemma does; SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def prefix_token_id(tokenizer) -> int:
    """The token a text starts from: BOS, else EOS (separator of documents)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a text with")
    return token


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids (context, continuation) of each (context, continuation) string pair."""
    prefix = prefix_token_id(tokenizer)
    add_bos = tokenizer_adds_bos(tokenizer)
    out = []
    for context, continuation in pairs:
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        context = stripped
        whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
        ctx = tokenizer(context, add_special_tokens=False).input_ids if context else []
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
        if add_bos or not ctx:
            ctx = [prefix] + ctx
        out.append((ctx, cont))
    return out


def batches_by_tokens(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped longest first into batches of at most `max_batch` rows and `max_tokens`
    padded tokens (a single longer row still gets its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def score_pairs(
    model,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    max_length: int = 2048,
    max_batch_tokens: int = 16384,
    max_batch: int = 256,
    progress=None,
) -> list[tuple[float, bool]]:
    """(log P(continuation | context), continuation is the greedy choice) for each encoded pair.

    Sequences longer than `max_length` input tokens lose their oldest context tokens.
    `progress`: an optional callable taking the number of pairs just scored (e.g. tqdm.update).
    """
    device = next(model.parameters()).device
    # Pairs whose input sequences are equal (e.g. BoolQ's " no" / " yes" after one passage) share a
    # row: each reads its own continuation from the same logits.
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(encoded):
        seq = tuple((ctx + cont)[:-1][-max_length:])  # (L,) input; the model predicts seq[1:] + last
        rows_of.setdefault(seq, []).append(i)
    inputs = list(rows_of)
    conts = [cont for _, cont in encoded]
    results: list[tuple[float, bool] | None] = [None] * len(encoded)
    for batch in batches_by_tokens([len(s) for s in inputs], max_batch_tokens, max_batch):
        width = max(len(inputs[u]) for u in batch)
        keep = max(len(conts[i]) for u in batch for i in rows_of[inputs[u]])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, u in enumerate(batch):  # left padding: every row ends at the last position
            seq = inputs[u]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,
            use_cache=False,
        ).logits  # (B, keep, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, keep, V)
        greedy_tokens = logprobs.argmax(-1)  # (B, keep)
        requests = [(row, i) for row, u in enumerate(batch) for i in rows_of[inputs[u]]]
        target = torch.zeros(len(requests), keep, dtype=torch.long)
        scored = torch.zeros(len(requests), keep, dtype=torch.bool)
        for j, (_, i) in enumerate(requests):  # continuations right-aligned, like the rows
            cont = conts[i]
            target[j, keep - len(cont) :] = torch.tensor(cont)
            scored[j, keep - len(cont) :] = True
        target, scored = target.to(device), scored.to(device)
        row = torch.tensor([r for r, _ in requests], device=device)[:, None]  # (R, 1)
        position = torch.arange(keep, device=device)[None, :]  # (1, keep)
        token_lp = logprobs[row, position, target]  # (R, keep)
        totals = torch.where(scored, token_lp, torch.zeros_like(token_lp)).sum(-1)
        greedy = ((greedy_tokens[row, position] == target) | ~scored).all(-1)
        for (_, i), total, is_greedy in zip(requests, totals.tolist(), greedy.tolist()):
            results[i] = (total, bool(is_greedy))
        if progress is not None:
            progress(len(requests))
    return results  # type: ignore[return-value]
