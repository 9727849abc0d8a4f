"""Where one decode step's time goes, per provider: CUDA kernel time by kernel and category.

A Llama-3.1-8B-shaped model with `--layers` decoder layers (full width; per-layer costs are what the
32-layer model repeats), random weights, StaticCache at `--context` tokens, batch `--batch`. Per
provider: the decode step in a CUDA graph (ms per step, median of 20 replays) and one eager step
under torch.profiler (kernel time summed by kernel name and by e2e_profile's categories), so the
graph time can be set against the sum of its kernels.

With --compile the step is compiled (`StaticDecoder(compile=True)`, inductor) before the graph
captures it, and the profiled eager step is the compiled one too.

usage: python benchmarks/profile_decode.py [--layers 4] [--batch 1] [--compile] [--out DIR]
Writes <out>/profile-decode-<gpu>.json (with --compile: profile-decode-compiled-<gpu>.json).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from e2e import convert
from e2e_models import build_model
from e2e_profile import profile_forward
from harness import environment, write_json
from sharq.runtime import StaticDecoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--providers", default="sharq,bf16,fp8")
    ap.add_argument("--compile", action="store_true", help="compile the decode step (inductor)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import e2e_models

    e2e_models.MODELS["llama-3.1-8b"] = dict(e2e_models.MODELS["llama-3.1-8b"], num_hidden_layers=args.layers)
    device = torch.device("cuda")
    doc = dict(
        **environment(),
        layers=args.layers,
        batch=args.batch,
        context=args.context,
        compile="inductor" if args.compile else None,
        providers={},
    )
    for provider in args.providers.split(","):
        model = build_model("llama-3.1-8b", device)
        convert(model, provider)
        dec = StaticDecoder(model, args.batch, args.context + 64, compile=args.compile)
        ids = torch.randint(0, 128256, (args.batch, args.context), device=device)
        dec.prefill(ids)
        dec.decode(4, keep=False)  # captures the graph
        times = []
        for _ in range(20):
            dec.rewind(args.context)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dec.decode(8, keep=False)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 8)
        graph_ms = statistics.median(times)
        dec.rewind(args.context)
        eager = StaticDecoder(model, args.batch, args.context + 64, graph=False, compile=args.compile)
        eager.prefill(ids)
        eager.decode(2, keep=False)
        prof = profile_forward(lambda: eager.decode(1, keep=False), device, top=25)
        doc["providers"][provider] = dict(graph_ms_per_step=graph_ms, profile=prof)
        print(
            f"{provider}: graph {graph_ms:.3f} ms/step ({args.layers} layers); eager kernel sum "
            f"{prof['total']:.3f} ms: " + ", ".join(f"{c} {v:.3f}" for c, v in prof["by_category"].items())
        )
        for row in prof["top"][:14]:
            print(f"   {row['ms'] * 1e3:8.1f} us  x{row['calls']:3d}  {row['category']:11s} {row['name'][:90]}")
    path = write_json(doc, args.out, "profile-decode-compiled" if args.compile else "profile-decode")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
