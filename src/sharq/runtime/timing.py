"""Small timing helpers for `sharq bench`: one quantized linear, or a whole model's prefill and decode.

Times are wall-clock medians over `repeat` calls after `warmup` calls; on CUDA the device is
synchronized around every call. These are quick, CPU-capable measurements for a first look; the
scripts under benchmarks/ are the careful ones (CUDA graphs, rotated weights, many shapes).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ..config import SharqConfig
from ..nn.linear import SharqLinear
from ..ops import resolve_backend

__all__ = ["median_seconds", "bench_linear", "bench_model", "BENCH_DECODE"]


def median_seconds(fn: Callable[[], object], *, repeat: int, warmup: int = 1, device: torch.device) -> float:
    """Median wall time of `fn()` in seconds over `repeat` calls (after `warmup` untimed calls)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_linear(
    config: SharqConfig,
    m: int,
    k: int,
    n: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int = 5,
    seed: int = 0,
) -> dict:
    """y = x Wᵀ for x (m, k), W (n, k): an nn.Linear in `dtype` against its SharqLinear."""
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(k, n, bias=False, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
    linear = linear.to(device)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    layer = SharqLinear.from_float(linear, config, name="bench")
    dense_s = median_seconds(lambda: linear(x), repeat=repeat, device=device)
    sharq_s = median_seconds(lambda: layer(x), repeat=repeat, device=device)
    dense_bytes = linear.weight.numel() * linear.weight.element_size()
    return {
        "shape": {"m": m, "k": k, "n": n},
        "backend": resolve_backend(config, device).value,
        "dense_us": dense_s * 1e6,
        "sharq_us": sharq_s * 1e6,
        "sharq_vs_dense": dense_s / sharq_s,
        "dense_weight_bytes": dense_bytes,
        "sharq_weight_bytes": layer.quantized_weight.nbytes,
        "weight_bits": layer.weight_bits_per_value,
    }


BENCH_DECODE = ("eager", "graph", "graph-compile")


def bench_model(
    model: nn.Module, *, vocab: int, tokens: int, new_tokens: int, repeat: int = 3, seed: int = 0, decode: str = "eager"
) -> dict:
    """Prefill of `tokens` random tokens (batch 1) and greedy decode of `new_tokens` more.

    decode: "eager" — transformers' `generate` (dynamic cache; decode time = generate − prefill);
    "graph" — `StaticDecoder` (StaticCache, the step in a CUDA graph on CUDA, uncaptured elsewhere),
    the decode steps timed alone after a prefill; "graph-compile" — the same with the step compiled
    by torch.compile (inductor) first. Compilation and capture happen before the timed runs.
    """
    if decode not in BENCH_DECODE:
        raise ValueError(f"decode must be one of {BENCH_DECODE}, got {decode!r}")
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    prefill_s = median_seconds(lambda: model(ids), repeat=repeat, device=device)
    if decode == "eager":
        options = dict(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        total_s = median_seconds(lambda: model.generate(ids, **options), repeat=repeat, device=device)
        decode_s = max(total_s - prefill_s, 1e-9)
    else:
        from .static_decode import StaticDecoder

        decoder = StaticDecoder(model, 1, tokens + new_tokens + 2, compile=decode == "graph-compile")
        with torch.no_grad():
            decoder.prefill(ids)
            decoder.decode(1, keep=False)  # compiles and captures the step

        def steps():
            decoder.rewind(tokens)
            decoder.decode(new_tokens, keep=False)

        decode_s = max(median_seconds(steps, repeat=repeat, device=device), 1e-9)
    return {
        "tokens": tokens,
        "new_tokens": new_tokens,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tokens_per_s": tokens / prefill_s,
        "decode_ms_per_token": decode_s * 1e3 / new_tokens,
        "decode_tokens_per_s": new_tokens / decode_s,
        "decode": decode,
    }
