"""Per-linear-layer speed at a model's shapes: SharQ (prep + GEMM) against bf16, FP8 and gemlite.

Providers, all timed in the same run the way decode runs them: captured in a CUDA graph (no Python
or launch overhead), the graph cycling through enough copies of the layer's weights (≥ 150 MB of
the smallest payload, at M ≤ 256) that no weight is served from the 50 MB L2; median of 20
replays, divided by the copies:
  bf16          F.linear(x, W) in bf16 (cuBLAS)
  fp8-sharq     sharq.baselines.fp8: per-token E4M3 activation quantization (one compiled kernel) +
                torch._scaled_mm with per-channel E4M3 weight scales, bf16 out
  gemlite-fp8   gemlite's A8W8_fp8_dynamic (Triton), its shipped H100 config loaded
  fp8           the faster of fp8-sharq and gemlite-fp8 at each (layer, M): the FP8 peer
  gemlite-int4  gemlite's A16W4_HQQ_INT: int4 weights in groups of 64 along K, bf16 activations —
                the Triton W4A16 peer (its A16W4_NVFP does not compile on sm_90 with Triton 3.6)
  sharq         sharq_linear with the preset's default config (operand "auto": exact up to 16 rows,
                bf16-sum above), Triton backend: preparation + the planned GEMM (kernels/plan.py)
  sharq-exact   the same with operand "exact" (SPEC §7's two products at every M)
  sharq-gemm    the planned GEMM alone (the GEMV at M ≤ 2) on prepared operands
  copy          a device-to-device copy of the SharQ weight's bytes (payload + scales): the time the
                weight stream would take at copy bandwidth
plus `copy_GBps`: (read + written bytes) / time of a 1 GiB device copy (do_bench), and `summary`: the
four layers summed per M and provider (a decoder layer's linears), as ratios to bf16.
gemlite (PyPI gemlite==0.6.0.post2, pure Python + Triton >= 3.6) is optional: without it its
providers are absent and `fp8` is fp8-sharq.

usage: python benchmarks/linear.py [--preset sharq-nvfp4] [--granularity tensor] [--m 1,8,...] [--model ...]
           [--budget-s S]
(M is the outer loop: the JSON is rewritten after every M, whose four layers are then all measured)
Writes benchmarks/results/linear[-<model>]-<gpu>.json and .png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import copies_beyond_l2, environment, gemlite_fp8_layer, gemlite_int4_layer, graph_ms, write_json
from harness import gemlite as load_gemlite
from shapes import DEFAULT_MODEL, MODEL_LAYERS, layers_of
from sharq import PRESETS
from sharq.baselines.fp8 import fp8_linear, quantize_activation, quantize_weight_e4m3
from sharq.ops import linear_from_prepared, prepare, quantize_weight, sharq_linear

M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192)


def _fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 weight (N, K) and its per-channel FP32 scales (1, N): the library's fp8 baseline."""
    return quantize_weight_e4m3(w)


def _fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    x8, x_scale = quantize_activation(x)  # per-token E4M3 (one compiled kernel on CUDA)
    return fp8_linear(x8, x_scale, w8, w_scale, None, torch.bfloat16)


def _copy_gbps(bench) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def _gemlite_layers(ws: list[torch.Tensor]) -> dict[str, list]:
    """gemlite-fp8 and gemlite-int4 layers for each weight copy (random int4 codes for the W4A16 peer:
    its speed does not depend on the values)."""
    out: dict[str, list] = {"gemlite-fp8": [], "gemlite-int4": []}
    for w in ws:
        n, k = w.shape
        lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
        lin.weight.data.copy_(w)
        out["gemlite-fp8"].append(gemlite_fp8_layer(lin))
        out["gemlite-int4"].append(gemlite_int4_layer(n, k))
    return out


def summarize(rows: list[dict]) -> dict:
    """Per M and provider: the layers' median times summed (ms) and the ratio bf16 / provider."""
    by: dict = {}
    for r in rows:
        by.setdefault(r["M"], {}).setdefault(r["provider"], 0.0)
        by[r["M"]][r["provider"]] += r["median_ms"]
    return {m: {p: dict(ms=t, vs_bf16=by[m]["bf16"] / t) for p, t in ps.items()} for m, ps in sorted(by.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="sharq-nvfp4")
    ap.add_argument("--granularity", default="tensor")
    ap.add_argument("--m", default=",".join(map(str, M_VALUES)))
    ap.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=list(MODEL_LAYERS),
        help="whose layer shapes (benchmarks/shapes.py; default llama-3.1-8b)",
    )
    ap.add_argument("--layers", default=None, help="comma-separated layer names (default: all of --model's)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new M after this many seconds (0: none)")
    args = ap.parse_args()
    shapes = layers_of(args.model)
    args.layers = args.layers or ",".join(shapes)
    from triton.testing import do_bench

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/linear.py needs a CUDA GPU")

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    config = PRESETS[args.preset].replace(granularity=args.granularity)
    exact = config.replace(operand="exact")
    gemlite = load_gemlite()
    copy_gbps = _copy_gbps(bench)
    print(f"device copy: {copy_gbps:.0f} GB/s (read + written); gemlite {getattr(gemlite, '__version__', 'absent')}")
    rows = []
    done: list[int] = []  # the M values measured on every layer
    stem = "linear" if args.model == DEFAULT_MODEL else f"linear-{args.model}"
    layers = args.layers.split(",")

    def document() -> dict:
        """The JSON document of the rows so far (every layer at each M of `done`)."""
        return dict(
            **environment(),
            gemlite=getattr(gemlite, "__version__", None),
            model=args.model,
            preset=args.preset,
            granularity=args.granularity,
            config=config.to_dict(),
            copy_GBps=copy_gbps,
            timing="CUDA graph over rotated weight copies (>=150 MB at M<=256), median of 20 replays per call",
            layers=layers,
            m_measured=done,
            rows=rows,
            summary={str(m): v for m, v in summarize(rows).items()},
        )

    torch.manual_seed(0)
    weights = {}  # every layer's weight copies, built once: M is the outer loop, so a cut-off run keeps whole M rows
    for layer in layers:
        n, k = shapes[layer]
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        weight_bytes = quantize_weight(w0, config).nbytes
        n_copies = copies_beyond_l2(weight_bytes)
        ws = [w0] + [w0 + 0.001 * torch.randn_like(w0) for _ in range(n_copies - 1)]
        weights[layer] = dict(
            ws=ws,
            wqs=[quantize_weight(w, config) for w in ws],
            fp8s=[_fp8_weight(w) for w in ws],
            peers=_gemlite_layers(ws) if gemlite is not None else {},
            blobs=[
                (
                    torch.empty(weight_bytes, dtype=torch.uint8, device="cuda"),
                    torch.empty(weight_bytes, dtype=torch.uint8, device="cuda"),
                )
                for _ in ws
            ],
        )
    t0 = time.monotonic()
    for m in map(int, args.m.split(",")):
        if args.budget_s and time.monotonic() - t0 > args.budget_s:
            print(f"--budget-s {args.budget_s} spent: M = {m} and after not measured")
            break
        for layer in layers:
            n, k = shapes[layer]
            ws, wqs, fp8s, peers, blobs = (weights[layer][key] for key in ("ws", "wqs", "fp8s", "peers", "blobs"))
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            prepared = prepare(x, config)
            c = len(ws) if m <= 256 else 1
            providers = {
                "bf16": [lambda w=w: F.linear(x, w) for w in ws[:c]],
                "fp8-sharq": [lambda f=f: _fp8_linear(x, *f) for f in fp8s[:c]],
                **{name: [lambda g=g: g(x) for g in group[:c]] for name, group in peers.items()},
                "sharq": [lambda q=q: sharq_linear(x, q, None, config) for q in wqs[:c]],
                "sharq-exact": [lambda q=q: sharq_linear(x, q, None, exact) for q in wqs[:c]],
                "sharq-gemm": [lambda q=q: linear_from_prepared(prepared, q, None, torch.bfloat16) for q in wqs[:c]],
                "copy": [lambda b=b: b[1].copy_(b[0]) for b in blobs[:c]],
            }
            t = {}
            for name, fns in providers.items():
                try:
                    t[name] = graph_ms(fns)
                except Exception as err:  # a peer that cannot run this shape is reported, not timed
                    print(f"{layer} M={m} {name}: {type(err).__name__}: {str(err)[:200]}")
                    continue
                rows.append(dict(layer=layer, M=m, N=n, K=k, provider=name, median_ms=t[name], weight_copies=c))
            fp8_name = min((p for p in ("fp8-sharq", "gemlite-fp8") if p in t), key=t.get)
            t["fp8"] = t[fp8_name]
            rows.append(
                dict(layer=layer, M=m, N=n, K=k, provider="fp8", median_ms=t["fp8"], source=fp8_name, weight_copies=c)
            )
            print(
                f"{layer:8s} M={m:5d} "
                + " ".join(f"{p} {v * 1e3:7.1f}us" for p, v in t.items())
                + f" | sharq {t['bf16'] / t['sharq']:.2f}x bf16, {t['fp8'] / t['sharq']:.2f}x fp8 ({fp8_name})"
                + (f", {t['gemlite-int4'] / t['sharq']:.2f}x gemlite-int4" if "gemlite-int4" in t else ""),
                flush=True,
            )
        done.append(m)
        write_json(document(), args.out, stem)  # after every M: a run cut off keeps the M values it measured
    summary = summarize(rows)
    print("layers summed, ratio to bf16:")
    names = list(next(iter(summary.values())))
    print("      M " + " ".join(f"{p:>13s}" for p in names))
    for m, ps in summary.items():
        print(f"{m:7d} " + " ".join(f"{ps[p]['vs_bf16']:13.2f}" if p in ps else " " * 13 for p in names))
    doc = document()
    path = write_json(doc, args.out, stem)
    _plot(doc, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


PLOTTED = ("fp8", "gemlite-fp8", "gemlite-int4", "sharq", "sharq-exact", "sharq-gemm")


def _plot(doc: dict, path: Path) -> None:
    """Speed-up over bf16 vs M: the layers summed (first panel), then each layer; every provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.2 * (len(layers) + 1), 3.8), squeeze=False)
    panels = [("layers summed", doc["rows"], None)] + [
        (layer, [r for r in doc["rows"] if r["layer"] == layer], layer) for layer in layers
    ]
    for ax, (title, rows, layer) in zip(axes[0], panels):
        t: dict = {}
        for r in rows:
            t[(r["provider"], r["M"])] = t.get((r["provider"], r["M"]), 0.0) + r["median_ms"]
        ms = sorted({r["M"] for r in rows})
        for provider in PLOTTED:
            if all((provider, m) in t for m in ms):
                ax.plot(ms, [t[("bf16", m)] / t[(provider, m)] for m in ms], marker="o", ms=3, label=provider)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(title if layer is None else f"{layer} ({rows[0]['N']}×{rows[0]['K']})", fontsize=9)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speed-up over bf16")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{doc['model']} {doc['preset']} ({doc['granularity']}), {doc['gpu']}, torch {doc['torch']}, "
        f"triton {doc['triton']}, gemlite {doc.get('gemlite')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
