"""Eager prefill of a Llama-3.1-8B-shaped model: one GEMM per q/k/v and gate/up group against one per
linear, and how much of the forward is host time.

    PYTHONPATH=src python benchmarks/prefill_grouping.py [--layers 8] [--tokens 1024,4096] [--reps 5]

Random weights at the model's real shapes (`e2e_models.build_model`, fewer layers: the same layer
shapes), bf16 and `sharq-nvfp4` (default operand) in the same run. For each prompt length and
variant: the forward's CUDA-event time (what `e2e.py`'s prefill rows report) and its host time —
the wall time of the Python call without waiting for the GPU. When the host time is close to the
event time, the forward is bound by launching kernels, not by running them. Variants of sharq:
`grouped` (the default: `ops.grouped_linear_from_prepared`, one GEMM per group from SCRATCH_MIN_M
rows) and `per-linear` (the groups' members cleared: one GEMM per linear). Writes
benchmarks/results/prefill-grouping-<gpu>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sharq  # noqa: E402
from e2e_models import build_model  # noqa: E402
from harness import environment, write_json  # noqa: E402
from sharq.nn.linear import SharqLinear  # noqa: E402


def _groups(model):
    return {m.shared_input for m in model.modules() if isinstance(m, SharqLinear) and m.shared_input is not None}


def _time(model, ids, reps: int) -> dict:
    """Median event and host milliseconds of `reps` forwards (two untimed first)."""
    events, hosts = [], []
    with torch.no_grad():
        for i in range(reps + 2):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t = time.perf_counter()
            start.record()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            end.record()
            host = (time.perf_counter() - t) * 1e3
            end.synchronize()
            if i >= 2:
                events.append(start.elapsed_time(end))
                hosts.append(host)
    return {"event_ms": statistics.median(events), "host_ms": statistics.median(hosts), "reps": reps}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", default="1024,4096")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("prefill_grouping.py needs a CUDA GPU")
    device = torch.device("cuda")
    tokens = [int(t) for t in args.tokens.split(",")]
    model = build_model(args.model, device, layers=args.layers).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = {t: torch.randint(0, vocab, (1, t), generator=g).to(device) for t in tokens}
    rows = []
    for t in tokens:
        rows.append({"provider": "bf16", "variant": "cuBLAS", "tokens": t, **_time(model, ids[t], args.reps)})
        print(rows[-1], flush=True)
    sharq.quantize_(model, sharq.PRESETS["sharq-nvfp4"])
    groups = {g: g.members for g in _groups(model)}
    for t in tokens:
        for variant in ("grouped", "per-linear", "grouped"):  # grouped again: drift between the two
            for g, members in groups.items():
                g.set_members(members if variant == "grouped" else ())
            rows.append({"provider": "sharq", "variant": variant, "tokens": t, **_time(model, ids[t], args.reps)})
            print(rows[-1], flush=True)
    env = environment(device)
    doc = {
        **env,
        "model": args.model,
        "layers": args.layers,
        "timing": "eager forward, use_cache=False, logits of the last token; event = CUDA events around the "
        "call, host = wall time of the call without synchronizing; medians",
        "rows": rows,
    }
    path = write_json(doc, args.out, "prefill-grouping")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
