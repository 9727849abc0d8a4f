"""Programmatic dependent launch at decode sizes: off and on.

Per Llama-3.1-8B linear (qkv, o, gate_up, down) and M in --m, times the SharQ linear (preparation +
GEMV/GEMM) and the GEMV/GEMM alone the way linear.py does (CUDA graph over ≥ 150 MB of rotated
weight copies, median of 20 replays), for each variant:
  off        SHARQ_PDL=0: plain launches
  pdl        SHARQ_PDL=1: launch_pdl, griddepcontrol wait / launch_dependents
and the bf16 F.linear of the same shapes in the same run. Each variant's outputs are checked equal to
the "off" outputs bit for bit. (pdl-tuning-h100.json also holds two variants since removed, which
first asked the first 512 bytes or the whole of each program's weight rows into L2: slower still.)

usage: python benchmarks/tune_pdl.py [--m 1,2,8] [--out benchmarks/results] [--choice-file F]
Writes <out>/pdl-tuning-<gpu>.json.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from harness import copies_beyond_l2, environment, graph_ms, write_json
from shapes import DEFAULT_MODEL, layers_of
from sharq import PRESETS
from sharq.ops import linear_from_prepared, prepare, quantize_weight, sharq_linear

VARIANTS = (("off", "0"), ("pdl", "1"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,2,8")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument(
        "--choice-file",
        default=None,
        help="write 1 there if 'pdl' beats 'off' summed over every layer and M (sharq linear), else 0",
    )
    args = ap.parse_args()
    config = PRESETS["sharq-nvfp4"]  # backend auto: Triton on CUDA
    rows = []
    torch.manual_seed(0)
    for layer, (n, k) in layers_of(DEFAULT_MODEL).items():
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        copies = copies_beyond_l2(quantize_weight(w0, config).nbytes)
        ws = [w0] + [w0 + 0.001 * torch.randn_like(w0) for _ in range(copies - 1)]
        wqs = [quantize_weight(w, config) for w in ws]
        for m in map(int, args.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t = {"bf16": graph_ms([lambda w=w: F.linear(x, w) for w in ws])}
            want = None
            for name, flag in VARIANTS:
                os.environ["SHARQ_PDL"] = flag
                prepared = prepare(x, config)
                got = sharq_linear(x, wqs[0], None, config)
                want = got if want is None else want
                same = bool(torch.equal(got, want))
                t[name] = graph_ms([lambda q=q: sharq_linear(x, q, None, config) for q in wqs])
                t[name + "/gemm"] = graph_ms(
                    [lambda q=q: linear_from_prepared(prepared, q, None, torch.bfloat16) for q in wqs]
                )
                rows.append(
                    dict(
                        layer=layer,
                        M=m,
                        N=n,
                        K=k,
                        variant=name,
                        sharq_ms=t[name],
                        gemm_ms=t[name + "/gemm"],
                        bf16_ms=t["bf16"],
                        equal_to_off=same,
                    )
                )
            print(
                f"{layer:8s} M={m} bf16 {t['bf16'] * 1e3:6.1f} | "
                + " | ".join(f"{name} {t[name] * 1e3:6.1f} ({t[name + '/gemm'] * 1e3:5.1f})" for name, _ in VARIANTS),
                flush=True,
            )
        del ws, wqs
        torch.cuda.empty_cache()
    os.environ.pop("SHARQ_PDL")
    sums = {}
    for r in rows:
        key = (r["M"], r["variant"])
        sums.setdefault(key, [0.0, 0.0, 0.0])
        sums[key][0] += r["sharq_ms"]
        sums[key][1] += r["gemm_ms"]
        sums[key][2] += r["bf16_ms"]
    for (m, name), (s, g, b) in sorted(sums.items()):
        print(
            f"M={m} {name:10s} four linears: sharq {s * 1e3:6.1f} us (gemm alone {g * 1e3:6.1f}), bf16 {b * 1e3:6.1f}"
            f" -> {b / s:.2f}x bf16"
        )
    if args.choice_file:
        total = {name: sum(v[0] for (m, n), v in sums.items() if n == name) for name, _ in VARIANTS}
        choice = "1" if total["pdl"] < total["off"] else "0"
        open(args.choice_file, "w").write(choice)
        print(
            f"PDL {'on' if choice == '1' else 'off'}: sums over layers and M: "
            + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in total.items())
        )

    doc = dict(**environment(), preset="sharq-nvfp4", variants=[v[0] for v in VARIANTS], rows=rows)
    print(f"wrote {write_json(doc, args.out, 'pdl-tuning')}")


if __name__ == "__main__":
    main()
