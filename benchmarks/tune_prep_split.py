"""Launch tilings of the operand-only preparation (prepare_split, bf16 rows) at a model's K.

For each M and K of the model's layers: the operand-only preparation with each (BLOCK_M, BLOCK_K,
num_warps) candidate, against the generic preparation (prepare_fp4) it replaces above 16 rows, and the
bytes it moves at copy bandwidth (x read, operand written). Outputs equal across tilings, checked.
Times: CUDA-graph replays (`harness.graph_ms`), median.

usage: python benchmarks/tune_prep_split.py [--model llama-3.1-8b] [--m 64,1024,4096]
Writes benchmarks/results/prep-split-tuning-<model>-<gpu>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness import environment, graph_ms, write_json
from shapes import layers_of
from sharq import PRESETS
from sharq.kernels.prepare_fp4 import prepare_activation_triton
from sharq.kernels.prepare_split import prepare_split

CANDIDATES = ((4, 128, 4), (8, 128, 4), (8, 64, 4), (16, 128, 8), (8, 256, 8), (2, 128, 2), (1, 128, 1), (2, 256, 4))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--m", default="64,1024,4096")
    parser.add_argument("--granularity", default="tensor")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    config = PRESETS["sharq-nvfp4"].replace(granularity=args.granularity, operand="bf16-sum")
    rows = []
    for m in map(int, args.m.split(",")):
        for k in sorted({k for _, k in layers_of(args.model).values()}):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = dict(M=m, K=k)
            row["generic_ms"] = graph_ms(
                [lambda: prepare_activation_triton(x, config, with_terms=True, terms_layout="rows")]
            )
            want = prepare_split(x, config, two=False)[1][0]
            for bm, bk, nw in CANDIDATES:
                tiles = dict(BLOCK_M=bm, BLOCK_K=bk, num_warps=nw)
                got = prepare_split(x, config, two=False, tiles=tiles)[1][0]
                assert torch.equal(got, want), tiles
                row[f"rows_{bm}x{bk}w{nw}_ms"] = graph_ms(
                    [lambda t=tiles: prepare_split(x, config, two=False, tiles=t)]
                )
            row["default_rows_ms"] = graph_ms([lambda: prepare_split(x, config, two=False)])
            best = min((v, key) for key, v in row.items() if key.startswith("rows_"))
            row["best_rows"] = best[1]
            rows.append(row)
            print(
                f"M={m:5d} K={k:6d} generic {row['generic_ms'] * 1e3:7.1f}us "
                f"default {row['default_rows_ms'] * 1e3:7.1f}"
                f" best {best[0] * 1e3:7.1f} {best[1]} | memory {4 * m * k / 3.0e12 * 1e6:6.1f}us",
                flush=True,
            )

    doc = dict(**environment(), model=args.model, granularity=args.granularity, rows=rows)
    print(write_json(doc, args.out, f"prep-split-tuning-{args.model}"))


if __name__ == "__main__":
    main()
