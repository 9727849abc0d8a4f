"""The benchmark scripts' shared harness: CUDA-graph timing, the weight-rotation rule, the record of
the machine and versions every JSON names, and where results are written.

  graph_ms(fns)         median ms of one call, from a CUDA graph that runs every fn once
  copies_beyond_l2(b)   how many copies of a b-byte weight a timed loop rotates through so that no
                        call finds its weight in the 50 MB L2 (150 MB of weights in all)
  environment()         {"gpu", "torch", "triton", "transformers", "sharq", "cuda", "date"}
  write_json(doc, out, stem)   <out>/<stem>-<gpu tag>.json
  best_tiling(...)      the sweep loop of the tune_* scripts: try each tiling, skip those that do
                        not fit, time the rest, keep the fastest
  layer_parser / selected_layers / rotated_weights   their command line (--model --layers --m
                        --out), the layer shapes it selects, and the rotated weight copies
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

__all__ = [
    "graph_ms",
    "copies_beyond_l2",
    "environment",
    "gpu_tag",
    "write_json",
    "best_tiling",
    "layer_parser",
    "selected_layers",
    "rotated_weights",
]

L2_FLUSH_BYTES = 150_000_000


def graph_ms(fns: list[Callable[[], object]], reps: int = 20) -> float:
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


def copies_beyond_l2(nbytes: int, budget: int = L2_FLUSH_BYTES) -> int:
    """Copies of an `nbytes` weight to rotate through so the loop streams `budget` bytes (≥ 1)."""
    return max(1, -(-budget // max(1, int(nbytes))))


def environment(device: str | torch.device = "cuda") -> dict:
    """The machine and versions a result was measured with (every benchmark JSON carries them)."""
    from sharq.version import __version__

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return dict(
        gpu=gpu,
        torch=torch.__version__,
        triton=version("triton"),
        transformers=version("transformers"),
        sharq=__version__,
        cuda=torch.version.cuda,
        date=datetime.date.today().isoformat(),
    )


def gpu_tag(gpu: str) -> str:
    """'h100' for an H100, else the last word of the device name, lower-case ('cpu' stays 'cpu')."""
    return "h100" if "H100" in gpu else gpu.split()[-1].lower()


def write_json(doc: dict, out_dir: str | Path, stem: str) -> Path:
    """Write `doc` (which names its "gpu") to <out_dir>/<stem>-<gpu tag>.json and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{gpu_tag(doc['gpu'])}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def best_tiling(
    candidates: Iterable[dict],
    run: Callable[[dict], object],
    time: Callable[[dict], float],
    check: Callable[[object], float] | None = None,
) -> tuple[list[dict], dict | None]:
    """Each candidate tiling: `run(tiles)` once (a tiling that does not fit the GPU raises and is
    skipped), `check(result)` (an error to record, e.g. relative to a reference), `time(tiles)` in ms.
    Returns (one row per tiling that ran: {"tiles", "ms", "err"}, the fastest row or None)."""
    rows = []
    for tiles in candidates:
        try:
            result = run(tiles)
        except Exception as exc:  # out of shared memory / registers: not a candidate on this GPU
            print(f"skip {tiles}: {type(exc).__name__}")
            continue
        rows.append(dict(tiles=tiles, ms=time(tiles), err=None if check is None else check(result)))
    return rows, min(rows, key=lambda r: r["ms"], default=None)


def layer_parser(m: str, description: str | None = None) -> argparse.ArgumentParser:
    """The command line of a per-layer sweep: --model (shapes.MODEL_LAYERS), --layers, --m (a
    comma-separated list of row counts, default `m`), --out (the results folder)."""
    from shapes import DEFAULT_MODEL, MODEL_LAYERS

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=list(MODEL_LAYERS))
    ap.add_argument("--layers", default=None, help="comma-separated layer names (default: all of --model's)")
    ap.add_argument("--m", default=m, help=f"comma-separated row counts (default {m})")
    ap.add_argument("--out", default="benchmarks/results")
    return ap


def selected_layers(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """name -> (N, K) of the layers `layer_parser`'s arguments select, in the model's order."""
    from shapes import layers_of

    shapes = layers_of(args.model)
    names = args.layers.split(",") if args.layers else list(shapes)
    unknown = [name for name in names if name not in shapes]
    if unknown:
        raise SystemExit(f"--layers: {', '.join(unknown)} not in {args.model}'s layers {', '.join(shapes)}")
    return {name: shapes[name] for name in names}


def rotated_weights(w0: torch.Tensor, quantize: Callable[[torch.Tensor], object], nbytes: int) -> list:
    """`copies_beyond_l2(nbytes)` quantized copies of w0, each perturbed a little (different bytes)."""
    return [quantize(w0 + 0.001 * torch.randn_like(w0)) for _ in range(copies_beyond_l2(nbytes))]


@functools.cache
def gemlite():
    """gemlite with its shipped H100 config loaded (on a Hopper GPU, H100 or H200: gemlite ships no
    H200 file and the H200 is the same sm_90 chip with more, faster memory; once a process), or None
    where it is not installed (PyPI gemlite==0.6.0.post2, pure Python + Triton)."""
    try:
        import gemlite as module
    except ImportError:
        return None
    config = Path(module.__file__).parent / "configs" / "h100.json"
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    if ("H100" in name or "H200" in name) and config.exists():
        module.load_config(str(config))
    return module


def gemlite_fp8_layer(linear: torch.nn.Linear):
    """gemlite's A8W8_fp8_dynamic layer (E4M3 weights per channel, activations quantized per token in
    its kernels) built from a bf16 CUDA `linear` (kept: del_orig=False)."""
    from gemlite.helper import A8W8_fp8_dynamic

    return A8W8_fp8_dynamic(device="cuda", dtype=torch.bfloat16).from_linear(linear, del_orig=False)


def gemlite_int4_layer(
    n: int, k: int, *, bias: torch.Tensor | None = None, group: int = 64, generator: torch.Generator | None = None
):
    """gemlite's A16W4_HQQ_INT layer for a (n, k) weight: random int4 codes (n, k) uint8, bf16 scales
    and zero points per `group` along K, on CUDA (its speed does not depend on the values)."""
    from gemlite.helper import A16W4_HQQ_INT

    if k % group:
        raise ValueError(f"gemlite-int4: K={k} is not a multiple of the group {group}")
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda", generator=generator)
    scales = torch.rand(n, k // group, dtype=torch.bfloat16, device="cuda", generator=generator) * 0.01
    zeros = torch.full((n, k // group), 7.5, dtype=torch.bfloat16, device="cuda")
    return A16W4_HQQ_INT(device="cuda", dtype=torch.bfloat16).from_weights(codes, scales, zeros, bias=bias)
