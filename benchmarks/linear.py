"""Per-linear-layer speed at Llama-3.1-8B shapes: bf16, FP8, SharQ (prep + GEMM), SharQ GEMM alone.

Providers, all timed in the same run the way decode runs them: captured in a CUDA graph (no Python
or launch overhead), the graph cycling through enough copies of the layer's weights (≥ 150 MB of
the smallest payload, at M ≤ 256) that no weight is served from the 50 MB L2; median of 20
replays, divided by the copies:
  bf16        F.linear(x, W) in bf16 (cuBLAS)
  fp8         dynamic per-token E4M3 activation quantization + torch._scaled_mm with per-channel
              E4M3 weight scales, bf16 out — what serving engines call fp8 (`sharq.baselines.fp8`;
              since issue 6 the quantization is one compiled kernel, before it was eager torch ops)
  sharq       sharq_linear on the Triton backend: global scale, fused preparation, FP4-weight GEMM
  sharq-gemm  the FP4-weight GEMM alone (the GEMV at M = 1), on prepared operands
  sharq-bf16sum  sharq with operand="bf16-sum" (one MMA on bf16(deq(B) + deq(R)): an approximation)
  copy        a device-to-device copy of the SharQ weight's bytes (payload + scales): the time the
              weight stream would take at copy bandwidth
plus `copy_GBps`: (read + written bytes) / time of a 1 GiB device copy (do_bench).

usage: python benchmarks/linear.py [--preset sharq-nvfp4] [--granularity tensor] [--m 1,8,...]
Writes benchmarks/results/linear-<gpu>.json and .png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import sharq
from _results import write_json
from sharq import PRESETS
from sharq.baselines.fp8 import fp8_linear, quantize_activation, quantize_weight_e4m3
from sharq.ops import linear_from_prepared, prepare, quantize_weight, sharq_linear
from shapes import DEFAULT_MODEL, MODEL_LAYERS, layers_of

M_VALUES = (1, 8, 16, 64, 256, 1024, 4096, 8192)


def _fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 weight (N, K) and its per-channel FP32 scales (1, N): the library's fp8 baseline."""
    return quantize_weight_e4m3(w)


def _fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    x8, x_scale = quantize_activation(x)  # per-token E4M3 (one compiled kernel on CUDA)
    return fp8_linear(x8, x_scale, w8, w_scale, None, torch.bfloat16)


def _graph_ms(fns, reps: int = 20) -> float:
    """Median ms of one call, timing a CUDA graph that runs every fn in `fns` once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles, cuBLAS picks) outside the capture
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    del graph
    return sorted(times)[len(times) // 2]


def _copy_gbps(bench) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="sharq-nvfp4")
    ap.add_argument("--granularity", default="tensor")
    ap.add_argument("--m", default=",".join(map(str, M_VALUES)))
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=list(MODEL_LAYERS),
                    help="whose layer shapes (benchmarks/shapes.py; default llama-3.1-8b)")
    ap.add_argument("--layers", default=None, help="comma-separated layer names (default: all of --model's)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    shapes = layers_of(args.model)
    args.layers = args.layers or ",".join(shapes)
    import triton
    from triton.testing import do_bench

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/linear.py needs a CUDA GPU")

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    config = PRESETS[args.preset].replace(granularity=args.granularity, backend="triton")
    summed = config.replace(operand="bf16-sum")
    copy_gbps = _copy_gbps(bench)
    print(f"device copy: {copy_gbps:.0f} GB/s (read + written)")
    rows = []
    torch.manual_seed(0)
    for layer in args.layers.split(","):
        n, k = shapes[layer]
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        weight_bytes = quantize_weight(w0, config).nbytes
        n_copies = max(1, -(-150_000_000 // weight_bytes))
        ws = [w0] + [w0 + 0.001 * torch.randn_like(w0) for _ in range(n_copies - 1)]
        wqs = [quantize_weight(w, config) for w in ws]
        fp8s = [_fp8_weight(w) for w in ws]
        blobs = [(torch.empty(weight_bytes, dtype=torch.uint8, device="cuda"),
                  torch.empty(weight_bytes, dtype=torch.uint8, device="cuda")) for _ in ws]
        for m in map(int, args.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            prepared = prepare(x, config)
            c = n_copies if m <= 256 else 1
            providers = {
                "bf16": [lambda w=w: F.linear(x, w) for w in ws[:c]],
                "fp8": [lambda f=f: _fp8_linear(x, *f) for f in fp8s[:c]],
                "sharq": [lambda q=q: sharq_linear(x, q, None, config) for q in wqs[:c]],
                "sharq-gemm": [lambda q=q: linear_from_prepared(prepared, q, None, torch.bfloat16) for q in wqs[:c]],
                "copy": [lambda b=b: b[1].copy_(b[0]) for b in blobs[:c]],
                "sharq-bf16sum": [lambda q=q: sharq_linear(x, q, None, summed) for q in wqs[:c]],
            }
            t = {}
            for name, fns in providers.items():
                t[name] = _graph_ms(fns)
                rows.append(dict(layer=layer, M=m, N=n, K=k, provider=name, median_ms=t[name], weight_copies=c))
            print(f"{layer:8s} M={m:5d} " + " ".join(f"{p} {v * 1e3:7.1f}us" for p, v in t.items()) +
                  f" | sharq {t['bf16'] / t['sharq']:.2f}x bf16, {t['fp8'] / t['sharq']:.2f}x fp8; gemm alone "
                  f"{t['bf16'] / t['sharq-gemm']:.2f}x bf16, streams {weight_bytes / (t['sharq-gemm'] * 1e-3) / 1e9:.0f}"
                  f" GB/s; prep {100 * (t['sharq'] - t['sharq-gemm']) / t['sharq']:.0f}%", flush=True)
        del ws, wqs, fp8s, blobs
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    doc = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, sharq=sharq.__version__,
               model=args.model, preset=args.preset, granularity=args.granularity, copy_GBps=copy_gbps,
               timing="CUDA graph over rotated weight copies (>=150 MB at M<=256), median of 20 replays per call",
               rows=rows)
    path = write_json(doc, args.out, "linear" if args.model == DEFAULT_MODEL else f"linear-{args.model}")
    _plot(doc, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        rows = [r for r in doc["rows"] if r["layer"] == layer]
        ms = sorted({r["M"] for r in rows})
        t = {(r["provider"], r["M"]): r["median_ms"] for r in rows}
        for provider in ("fp8", "sharq", "sharq-gemm", "sharq-bf16sum"):
            if (provider, ms[0]) not in t:
                continue
            ax.plot(ms, [t[("bf16", m)] / t[(provider, m)] for m in ms], marker="o", label=provider)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{layer} ({rows[0]['N']}×{rows[0]['K']})")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speed-up over bf16")
        ax.legend(fontsize=8)
    fig.suptitle(f"{doc['preset']} ({doc['granularity']}) linear layers, {doc['gpu']}, torch {doc['torch']}, "
                 f"triton {doc['triton']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
