"""Tile sweep of the M > 16 path (pair-split preparation + weight-as-A GEMM) at a model's layer shapes.

For each M and layer: bf16 F.linear (cuBLAS), the pair-split preparation alone (sum and two-term),
the pair-split GEMM with each candidate tiling (one term: bf16-sum; the best also with two terms:
exact), and the path it replaces (the generic preparation + gemm_fp4, bf16-sum). Every GEMM output
is checked against the first candidate's (equal up to FP32 summation order) and the preparation
against the reference (bit for bit). Times: CUDA-graph replays over rotating weight copies
(`harness.graph_ms`), median.

usage: python benchmarks/tune_split.py [--model llama-3.1-8b] [--m 32,64,...]
Writes benchmarks/results/split-tuning-<model>-<gpu>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import environment, graph_ms, write_json
from shapes import layers_of
from sharq import PRESETS
from sharq.kernels.gemm_fp4 import fp4_weight_gemm
from sharq.kernels.gemm_nvfp4_split import fp4_weight_gemm_split, split_gemm_tiles
from sharq.kernels.prepare_fp4 import prepare_activation_triton
from sharq.kernels.prepare_split import prepare_split, split_padded, split_positions
from sharq.ops import quantize_weight
from sharq.sparse.decompose import prepare_activation

CANDIDATES = (  # BLOCK_N, BLOCK_M, BLOCK_K, GROUP_N, num_warps, num_stages
    (128, 32, 128, 1, 4, 4),
    (128, 64, 128, 1, 4, 4),
    (128, 64, 64, 8, 4, 5),
    (128, 128, 64, 8, 8, 4),
    (128, 128, 128, 8, 8, 3),
    (256, 128, 64, 8, 8, 3),
    (128, 256, 64, 8, 8, 3),
    (128, 256, 64, 4, 8, 4),
    (256, 256, 64, 8, 8, 3),
)
KEYS = ("BLOCK_N", "BLOCK_M", "BLOCK_K", "GROUP_N", "num_warps", "num_stages")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--m", default="17,32,64,128,256,512,1024,4096")
    parser.add_argument("--granularity", default="token")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = PRESETS["sharq-nvfp4"].replace(granularity=args.granularity, operand="bf16-sum")
    rows = []
    for m in (int(v) for v in args.m.split(",")):
        for name, (n, k) in layers_of(args.model).items():
            copies = max(1, min(8, int(150e6 // (n * k // 2)))) if m <= 256 else 1
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
            wq = [quantize_weight(w, config) for w in ws]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, :8] *= 30  # a few outlier channels
            row = dict(M=m, layer=name, N=n, K=k)
            row["bf16_ms"] = graph_ms([lambda w=w: F.linear(x, w) for w in ws])
            s, terms = prepare_split(x, config, two=False)
            ref = prepare_activation(x, config)
            want = torch.zeros(m, split_padded(k), device="cuda")
            want[:, :k] = ref.dense
            want = want[:, split_positions(k, device="cuda")]
            row["prep_exact_bits"] = bool(torch.equal(terms[0].float(), want) and torch.equal(s, ref.global_scale))
            row["prep_sum_ms"] = graph_ms([lambda: prepare_split(x, config, two=False)])
            row["prep_two_ms"] = graph_ms([lambda: prepare_split(x, config, two=True)])
            _, terms2 = prepare_split(x, config, two=True)
            base = None
            best = None
            for cand in CANDIDATES:
                tiles = dict(zip(KEYS, cand))
                try:
                    y = fp4_weight_gemm_split(terms, s, wq[0], None, torch.bfloat16, tiles=tiles)
                    ms = graph_ms(
                        [lambda q=q: fp4_weight_gemm_split(terms, s, q, None, torch.bfloat16, tiles=tiles) for q in wq]
                    )
                except Exception as err:  # out of shared memory / registers: not a candidate here
                    row[f"gemm_{cand}"] = f"failed: {type(err).__name__}"
                    continue
                if base is None:
                    base = y.float()
                err = ((y.float() - base).abs().max() / base.abs().max()).item()
                row[f"gemm_{cand}"] = dict(ms=ms, rel_diff=err)
                if best is None or ms < best[1]:
                    best = (cand, ms)
            row["best"], row["best_gemm_ms"] = best
            row["default_tiles"] = split_gemm_tiles(m, n, k)
            dflt = split_gemm_tiles(m, n, k)
            row["default_gemm_ms"] = graph_ms(
                [lambda q=q: fp4_weight_gemm_split(terms, s, q, None, torch.bfloat16, tiles=dflt) for q in wq]
            )
            row["best_two_ms"] = graph_ms(
                [
                    lambda q=q: fp4_weight_gemm_split(
                        terms2, s, q, None, torch.bfloat16, tiles=dict(zip(KEYS, best[0]))
                    )
                    for q in wq
                ]
            )
            old = prepare_activation_triton(x, config, with_terms=True, terms_layout="rows")
            row["old_prep_ms"] = graph_ms(
                [lambda: prepare_activation_triton(x, config, with_terms=True, terms_layout="rows")]
            )
            row["old_gemm_ms"] = graph_ms(
                [lambda q=q: fp4_weight_gemm(old.terms, old.global_scale, q, None, torch.bfloat16) for q in wq]
            )
            y_old = fp4_weight_gemm(old.terms, old.global_scale, wq[0], None, torch.float32)
            y_new = fp4_weight_gemm_split(terms, s, wq[0], None, torch.float32)
            row["new_vs_old_rel"] = ((y_new - y_old).abs().max() / y_old.abs().max()).item()
            rows.append(row)
            print(
                f"M={m:5d} {name:8s} bf16 {row['bf16_ms'] * 1e3:8.1f}us prep {row['prep_sum_ms'] * 1e3:7.1f}us "
                f"(old {row['old_prep_ms'] * 1e3:7.1f}) gemm best {best[1] * 1e3:8.1f}us {best[0]} dflt "
                f"{row['default_gemm_ms'] * 1e3:8.1f} two {row['best_two_ms'] * 1e3:8.1f} "
                f"old {row['old_gemm_ms'] * 1e3:8.1f}"
                f" | ratio {row['bf16_ms'] / (best[1] + row['prep_sum_ms']):.2f} bits {row['prep_exact_bits']} "
                f"rel {row['new_vs_old_rel']:.1e}",
                flush=True,
            )
            del ws, wq

    doc = dict(**environment(), model=args.model, granularity=args.granularity, rows=rows)
    print(write_json(doc, Path(__file__).parent / "results", f"split-tuning-{args.model}"))


if __name__ == "__main__":
    main()
