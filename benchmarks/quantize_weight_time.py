"""Wall time of `quantize_weight` on one 8B-model-sized matrix (4096 x 14336, Llama-3-8B's
down_proj transposed), amax rule vs the "-mse" block-scale search, on the given device.

usage: python benchmarks/quantize_weight_time.py [--device cpu] [--repeat 3] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sharq import PRESETS, quantize_weight


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="4096,14336")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n, k = (int(v) for v in args.shape.split(","))
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16).to(args.device)
    rows = []
    for preset in ("sharq-nvfp4", "sharq-nvfp4-mse", "sharq-nvfp4-w16", "sharq-nvfp4-w16-mse"):
        times = []
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            quantize_weight(w, PRESETS[preset])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows.append(dict(preset=preset, seconds_min=round(min(times), 3), seconds=[round(t, 3) for t in times]))
        print(
            f"{preset:22s} {n}x{k}: min {min(times):.2f} s of {args.repeat} ({args.device}, "
            f"{torch.get_num_threads()} threads)",
            flush=True,
        )
    if args.out:
        doc = dict(
            shape=[n, k], device=args.device, threads=torch.get_num_threads(), torch=torch.__version__, rows=rows
        )
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
