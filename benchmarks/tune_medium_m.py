"""Medium-M (17-511 rows) tilings of the tensor-core FP4-weight GEMM with the packed-register weight
decode (`gemm_fp4`, DECODE 2) on the one bf16-sum operand, against what the plan runs there today.

Issue 21 asks for the packed bf16 weight decode at M = 17-511 instead of the FP32 decode. The packed
decode was swept only up to 16 rows (tune_small_m.py). This script times, per layer and M, on the
operand `operand="auto"` gives above 16 rows (bf16-sum, one term):
  bf16          F.linear (cuBLAS)
  plan-gemm     the GEMM the plan picks for M (the packed decode on `_medium_packed_tiles` below 512,
                the bf16 scratch weight from 512), GEMM alone
  plan          the plan end to end: `ops.prepare` + `ops.linear_from_prepared` (preparation included)
  prep          the preparation alone (`ops.prepare`), the preset's "tensor" scale; prep_token: with
                one scale per row ("token", what a server runs)
  packed        gemm_fp4 with the packed decode, each candidate tiling; the fastest is reported
Every packed result is checked against the FP32-decode GEMM on the same operand (equal up to FP32
summation order; the relative error of the largest |y| is recorded). Times: CUDA-graph replays over
rotating weight copies (no layer served from L2, `harness.graph_ms`), median.

usage: python benchmarks/tune_medium_m.py [--model llama-3.1-8b] [--m 32,64,128,256,512] [--layers ...]
Writes benchmarks/results/medium-m-tuning[-<model>]-<gpu>.json.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton

from harness import (
    best_tiling,
    copies_beyond_l2,
    environment,
    graph_ms,
    layer_parser,
    rotated_weights,
    selected_layers,
    write_json,
)
from shapes import DEFAULT_MODEL
from sharq import PRESETS
from sharq.kernels.gemm_fp4 import SPLIT_MIN_STEPS, fp4_weight_gemm
from sharq.kernels.plan import plan_linear
from sharq.kernels.prepare_split import prepare_split
from sharq.ops import linear_from_prepared, prepare, quantize_weight


def candidates(m: int, k_dim: int, bn: str, bk: str, warps: str, stages: str, splits: str) -> list[dict]:
    """Packed-decode tilings for M rows: BLOCK_M of 32 up to 256 (no wider than M needs; 256 decodes
    each weight tile once for 256 rows), each with K split into SPLIT_K chunks (at least SPLIT_MIN_STEPS
    BLOCK_K steps a chunk)."""
    block_ms = [b for b in (32, 64, 128, 256) if b <= max(32, triton.next_power_of_2(m))]
    axes = (bn, bk, warps, stages, splits)
    return [
        dict(
            BLOCK_M=bm,
            BLOCK_N=n,
            BLOCK_K=k,
            GROUP_M=8,
            num_warps=w,
            num_stages=s,
            SCRATCH=1,
            DECODE=2,
            STACK=1,
            SPLIT_K=sk,
        )
        for bm, n, k, w, s, sk in itertools.product(block_ms, *(map(int, v.split(",")) for v in axes))
        if bm * n <= 128 * 128  # the accumulator stays in registers
        and k_dim // k >= SPLIT_MIN_STEPS * sk
    ]


def main() -> None:
    ap = layer_parser(m="32,64,128,256,512")
    ap.add_argument("--bn", default="32,64,128")
    ap.add_argument("--bk", default="128,256")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="3")
    ap.add_argument("--split", default="1", help="SPLIT_K values (K cut into chunks, partials reduced after)")
    args = ap.parse_args()
    shapes = selected_layers(args)
    config = PRESETS["sharq-nvfp4"]  # operand auto: bf16-sum above 16 rows
    token = config.replace(granularity="token")  # what a server runs (SPEC §3)
    rows = []
    totals: dict[int, dict[str, float]] = {}
    for layer, (n, k) in shapes.items():
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        nbytes = quantize_weight(w0, config).nbytes
        wqs = rotated_weights(w0, lambda w: quantize_weight(w, config), nbytes)
        bf16 = [w0 + 0.001 * torch.randn_like(w0) for _ in range(copies_beyond_l2(2 * n * k))]
        for m in (int(v) for v in args.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            plan = plan_linear(m, config, x.device)
            p = prepare(x, config)
            sx, (operand,) = prepare_split(x, config, two=False)  # the bf16-sum operand, rows
            want = fp4_weight_gemm([operand], sx, wqs[0], None, torch.float32, tiles=dict(DECODE=1))
            base = dict(layer=layer, M=m, N=n, K=k, weight_bytes=nbytes, plan=str(plan))
            fp32 = dict(DECODE=1)
            bf = torch.bfloat16
            t = dict(
                bf16=graph_ms([lambda w=w: F.linear(x, w) for w in bf16]),
                # 8 calls a graph: one call alone would carry the graph launch (~10 us at these sizes)
                prep=graph_ms([lambda: prepare(x, config)] * 8),
                prep_token=graph_ms([lambda: prepare(x, token)] * 8),
                plan=graph_ms([lambda q=q: linear_from_prepared(prepare(x, config), q, None, bf) for q in wqs]),
                plan_gemm=graph_ms([lambda q=q: linear_from_prepared(p, q, None, bf) for q in wqs]),
                fp32_decode=graph_ms(
                    [lambda q=q: fp4_weight_gemm([operand], sx, q, None, bf, tiles=fp32) for q in wqs]
                ),
            )
            tried, best = best_tiling(
                candidates(m, k, args.bn, args.bk, args.warps, args.stages, args.split),
                run=lambda cfg: fp4_weight_gemm([operand], sx, wqs[0], None, torch.float32, tiles=cfg),
                check=lambda y: float((y - want).abs().max() / want.abs().max()),
                time=lambda cfg: graph_ms(
                    [lambda q=q: fp4_weight_gemm([operand], sx, q, None, torch.bfloat16, tiles=cfg) for q in wqs]
                ),
            )
            rows += [dict(base, provider=name, median_ms=ms) for name, ms in t.items()]
            rows += [
                dict(base, provider="packed", tiles=r["tiles"], median_ms=r["ms"], rel_err_vs_fp32_decode=r["err"])
                for r in tried
            ]
            if best is not None:
                t["packed_best"] = best["ms"]
            for name, ms in t.items():
                totals.setdefault(m, {}).setdefault(name, 0.0)
                totals[m][name] += ms
            show = (
                {key: best["tiles"][key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "SPLIT_K")}
                if best
                else None
            )
            print(
                f"{layer:8s} M={m:4d} "
                + " ".join(f"{name} {ms * 1e3:7.1f}" for name, ms in t.items())
                + f" | best {show} err {best['err'] if best else float('nan'):.1e}",
                flush=True,
            )
        wqs = bf16 = None  # (not del: the timed lambdas close over the names)
        torch.cuda.empty_cache()
        write(args, totals, rows, quiet=True)  # after every layer: a cut-off run keeps what it measured
    for m, t in totals.items():  # the layers summed; packed + prep = what a packed plan would take
        packed_plan = t.get("packed_best", float("nan")) + t["prep"]
        print(
            f"sum M={m:4d} bf16 {t['bf16'] * 1e3:7.1f}us plan {t['plan'] * 1e3:7.1f}us ({t['bf16'] / t['plan']:.2f}x) "
            f"prep {t['prep'] * 1e3:6.1f} (token {t['prep_token'] * 1e3:6.1f}) plan-gemm {t['plan_gemm'] * 1e3:7.1f} "
            f"fp32-decode {t['fp32_decode'] * 1e3:7.1f} "
            f"packed {t.get('packed_best', float('nan')) * 1e3:7.1f} -> prep+packed {packed_plan * 1e3:7.1f}us "
            f"({t['bf16'] / packed_plan:.2f}x)",
            flush=True,
        )
    write(args, totals, rows)


def write(args, totals: dict, rows: list, quiet: bool = False) -> None:
    doc = dict(
        **environment(),
        model=args.model,
        operand="bf16-sum (operand auto above 16 rows)",
        sweep=dict(bn=args.bn, bk=args.bk, warps=args.warps, stages=args.stages, split=args.split),
        sums_ms={str(m): t for m, t in totals.items()},
        rows=rows,
    )
    stem = "medium-m-tuning" if args.model == DEFAULT_MODEL else f"medium-m-tuning-{args.model}"
    path = write_json(doc, args.out, stem)
    if not quiet:
        print("wrote", path)


if __name__ == "__main__":
    main()
