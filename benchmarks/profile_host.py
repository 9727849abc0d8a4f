"""Host (Python) time of one eager prefill forward per provider: where the CPU time goes.

A Llama-3.1-8B-shaped model with --layers decoder layers (full width), 1 × --tokens tokens. Per
provider: the wall time of a forward with the GPU synchronized after it, the GPU time of the same
forward (CUDA events), and cProfile's top functions by own time — an eager forward is host-bound
when its wall time exceeds its GPU time.

usage: python benchmarks/profile_host.py [--layers 4] [--tokens 1024] [--out DIR]
Writes <out>/profile-host-<gpu>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from e2e import convert, time_ms
from e2e_models import build_model
from harness import environment, write_json


def _host_ms(fn, reps: int = 5) -> float:
    """Time the CPU spends issuing `fn` (the GPU is idle before; not waited for after)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--providers", default="sharq,bf16,fp8")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import e2e_models

    e2e_models.MODELS["llama-3.1-8b"] = dict(e2e_models.MODELS["llama-3.1-8b"], num_hidden_layers=args.layers)
    device = torch.device("cuda")
    doc = dict(**environment(), layers=args.layers, tokens=args.tokens, providers={})
    for provider in args.providers.split(","):
        model = build_model("llama-3.1-8b", device)
        convert(model, provider)
        ids = torch.randint(0, 128256, (1, args.tokens), device=device)

        def forward():
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)

        for _ in range(3):
            forward()
        torch.cuda.synchronize()
        gpu, host = statistics.median(time_ms(forward, device, reps=5, warmup=0)), _host_ms(forward)
        prof = cProfile.Profile()
        prof.enable()
        forward()
        prof.disable()
        torch.cuda.synchronize()
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]
        top = [
            dict(function=f"{path.split('/')[-1]}:{line}:{name}", calls=cc, own_ms=tt * 1e3, cum_ms=ct * 1e3)
            for (path, line, name), (cc, nc, tt, ct, _) in rows
        ]
        doc["providers"][provider] = dict(gpu_ms=gpu, host_ms=host, top=top)
        print(f"{provider}: GPU {gpu:.2f} ms, host issue {host:.2f} ms ({args.layers} layers, {args.tokens} tokens)")
        for row in top[:18]:
            print(f"   {row['own_ms']:8.2f} ms own {row['cum_ms']:8.2f} cum x{row['calls']:5d}  {row['function'][:90]}")
        model = None  # (not del: forward() closes over the name)
        torch.cuda.empty_cache()
    print(f"wrote {write_json(doc, args.out, 'profile-host')}")


if __name__ == "__main__":
    main()
