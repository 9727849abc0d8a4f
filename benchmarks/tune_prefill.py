"""Sweep the large-M (prefill) path and the preparation's launch tiles on the GPU.

Per layer (Llama-3.1-8B and Qwen2.5-7B shapes) and M, timed with `do_bench` (median) in one run:
  bf16            F.linear(x, W), bf16 weights (cuBLAS): the baseline
  dequant         the FP4 weight dequantized into a bf16 scratch matrix alone
  loop-<t>        the FP4-weight GEMM dequantizing each weight tile in its loop (t terms: 2 = exact
                  SharQ, 1 = operand="bf16-sum")
  scratch-<t>-<tiles>  dequantize into scratch, then the Triton bf16 GEMM with the SharQ epilogue
  tma<v>-<t>-<tiles>   the same over TMA descriptors, persistent (gemm_bf16_tma.py; v = the TMA tile
                  key: 2 plain, 3 warp-specialized, 4 flattened, 5 both), with --tma
  cublas-ceiling  dequantize + F.linear(T, deq(W)) in bf16 out: not SharQ's epilogue or rounding,
                  the best a cuBLAS call could give one term
  prep-<mode>-<bm>x<bk>w<nw>  the fused preparation (exact: two bf16 terms; sum: one) per tiling
and, at M = 1, the preparation timed in a CUDA graph (launch latency included) with the amax
computed inside its programs ("inline") or by the amax kernel first ("separate").

usage: python benchmarks/tune_prefill.py [--m 256,1024,4096,8192] [--models llama-3.1-8b,qwen2.5-7b]
           [--terms 1,2] [--tma 2,3,4,5] [--no-prep]
Writes benchmarks/results/prefill-tuning-<gpu>.json.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from harness import environment, graph_ms, write_json
from shapes import MODEL_LAYERS as MODELS
from sharq import PRESETS
from sharq.kernels import prepare_fp4
from sharq.kernels.dequant_fp4 import dequantize_fp4_bf16
from sharq.kernels.gemm_fp4 import fp4_weight_gemm
from sharq.kernels.prepare_fp4 import prepare_activation_triton
from sharq.ops import prepare, quantize_weight

SCRATCH_TILES = [  # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages
    (128, 256, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (128, 128, 64, 8, 4),
    (128, 128, 64, 4, 4),
    (256, 128, 64, 8, 3),
    (128, 256, 32, 8, 4),
    (64, 256, 64, 4, 4),
    (128, 128, 128, 8, 3),
]
TMA_TILES = [  # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages
    (128, 256, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (128, 128, 64, 8, 4),
    (128, 128, 64, 4, 4),
    (128, 256, 64, 12, 3),
]
PREP_TILES = [(8, 64, 4), (8, 128, 4), (16, 128, 8), (8, 256, 8), (4, 256, 4)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="256,1024,4096,8192")
    ap.add_argument("--models", default="llama-3.1-8b,qwen2.5-7b", help=f"any of {','.join(MODELS)}")
    ap.add_argument("--prep-m", type=int, default=4096)
    ap.add_argument("--terms", default="2,1", help="2: the exact operand's two terms, 1: bf16-sum")
    ap.add_argument("--tma", default="", help="TMA loop variants to add (2,3,4,5), on TMA_TILES")
    ap.add_argument("--no-prep", action="store_true", help="skip the preparation sweeps")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from triton.testing import do_bench

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))

    config = PRESETS["sharq-nvfp4"]  # backend auto: Triton on CUDA
    summed = config.replace(operand="bf16-sum")
    rows = []

    def record(model, layer, m, n, k, name, ms):
        rows.append(dict(model=model, layer=layer, M=m, N=n, K=k, variant=name, median_ms=ms))

    torch.manual_seed(0)
    for model in args.models.split(","):
        for layer, (n, k) in MODELS[model].items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            wq = quantize_weight(w, config)
            # decode: the preparation of one row, in a graph of 32 calls (launch latency included)
            x1 = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            for inline, bk, nw in itertools.product((4, 0), (64, 256), (2, 4)) if not args.no_prep else ():
                prepare_fp4.AMAX_INLINE_MAX_M = inline
                ms = graph_ms(
                    [
                        lambda: prepare_activation_triton(
                            x1, config, with_terms=True, terms_layout="auto", block_k=bk, num_warps=nw
                        )
                    ]
                    * 32
                )
                record(model, layer, 1, n, k, f"prep1-{'inline' if inline else 'separate'}-bk{bk}w{nw}", ms)
            prepare_fp4.AMAX_INLINE_MAX_M = 4
            for m in map(int, args.m.split(",")):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                t2 = prepare(x, config).terms
                t1 = prepare(x, summed).terms
                sx = torch.tensor(0.01, device="cuda")
                t = {"bf16": bench(lambda: F.linear(x, w)), "dequant": bench(lambda: dequantize_fp4_bf16(wq))}
                for name, terms in (("2", t2), ("1", t1)):
                    if name not in args.terms.split(","):
                        continue
                    t[f"loop-{name}"] = bench(
                        lambda: fp4_weight_gemm(terms, sx, wq, None, torch.bfloat16, tiles=dict(SCRATCH=1))
                    )
                    for bm, bn, bk, nw, ns in SCRATCH_TILES:
                        tiles = dict(
                            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=nw, num_stages=ns, SCRATCH=2
                        )
                        try:
                            t[f"scratch-{name}-{bm}x{bn}x{bk}w{nw}s{ns}"] = bench(
                                lambda: fp4_weight_gemm(terms, sx, wq, None, torch.bfloat16, tiles=tiles)
                            )
                        except Exception as err:  # noqa: BLE001 - a tiling that does not fit is skipped
                            print(f"  skip {tiles}: {type(err).__name__}")
                    for v, (bm, bn, bk, nw, ns) in itertools.product(
                        [int(v) for v in args.tma.split(",") if v], TMA_TILES
                    ):
                        tiles = dict(
                            BLOCK_M=bm,
                            BLOCK_N=bn,
                            BLOCK_K=bk,
                            GROUP_M=8,
                            num_warps=nw,
                            num_stages=ns if name == "1" else min(ns, 2),
                            SCRATCH=2,
                            TMA=v,
                        )
                        key = f"tma{v}-{name}-{bm}x{bn}x{bk}w{nw}s{tiles['num_stages']}"
                        try:
                            t[key] = bench(lambda: fp4_weight_gemm(terms, sx, wq, None, torch.bfloat16, tiles=tiles))
                        except Exception as err:  # noqa: BLE001 - a variant this Triton cannot build is skipped
                            print(f"  skip {key}: {type(err).__name__}: {str(err)[:160]}")
                t["cublas-ceiling"] = bench(lambda: F.linear(t1[0], dequantize_fp4_bf16(wq)))
                if m == args.prep_m and not args.no_prep:
                    for bm, bk, nw in PREP_TILES:
                        for mode, cfg in (("exact", config), ("sum", summed)):
                            t[f"prep-{mode}-{bm}x{bk}w{nw}"] = bench(
                                lambda: prepare_activation_triton(
                                    x, cfg, with_terms=True, block_m=bm, block_k=bk, num_warps=nw
                                )
                            )
                for name, ms in t.items():
                    record(model, layer, m, n, k, name, ms)
                line = f"{model} {layer:8s} M={m:5d} bf16 {t['bf16'] * 1e3:7.1f}us dequant {t['dequant'] * 1e3:6.1f}"
                for name in args.terms.split(","):
                    for family in ("scratch", *(f"tma{v}" for v in args.tma.split(",") if v)):
                        got = [(v, kk) for kk, v in t.items() if kk.startswith(f"{family}-{name}-")]
                        if got:
                            best = min(got)
                            line += f" | {family}-{name} {best[0] * 1e3:7.1f} ({t['bf16'] / best[0]:.2f}x) {best[1]}"
                print(f"{line} | cublas {t['cublas-ceiling'] * 1e3:7.1f}", flush=True)
    doc = dict(**environment(), timing="do_bench median (prep1-*: CUDA graph of 32 calls, per call)", rows=rows)
    path = write_json(doc, args.out, "prefill-tuning")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
