"""Sweep launch tilings of the NVFP4 decode GEMV (`kernels/gemv_nvfp4.py`) at Llama-3.1-8B shapes.

Timing as benchmarks/linear.py: CUDA graphs cycling ≥ 150 MB of weight copies (no L2 reuse),
median of 20 replays, M rows (default 1, 2, 4, 8), two terms. Each tiling is checked against the
tensor-core GEMM (relative error), which is timed too. Prints the best per layer and M with its
weight stream in GB/s and writes benchmarks/results/gemv-tuning-<gpu>.json, the data behind
`gemv_nvfp4._tiles` and the plan's GEMV_AUTO_MAX_M.

usage: python benchmarks/tune_gemv.py [--layers qkv,o,gate_up,down] [--m 1,2,4,8]
"""

from __future__ import annotations

import itertools

import torch

from harness import (
    best_tiling,
    environment,
    graph_ms,
    layer_parser,
    rotated_weights,
    selected_layers,
    write_json,
)
from shapes import DEFAULT_MODEL
from sharq import PRESETS
from sharq.kernels.gemm_fp4 import fp4_weight_gemm
from sharq.kernels.gemv_nvfp4 import fp4_weight_gemv, gemv_operand_of
from sharq.ops import prepare, quantize_weight
from sharq.options import RuntimeOptions


def sweep(bn: str, bk: str, warps: str) -> list[dict]:
    return [
        dict(BLOCK_N=n, BLOCK_K=k, num_warps=w)
        for n, k, w in itertools.product(*(map(int, v.split(",")) for v in (bn, bk, warps)))
    ]


def main() -> None:
    ap = layer_parser(m="1,2")
    ap.add_argument("--preset", default="sharq-nvfp4")
    ap.add_argument("--bn", default="1,2,4", help="BLOCK_N values to sweep")
    ap.add_argument("--bk", default="1024,2048", help="BLOCK_K values to sweep")
    ap.add_argument("--warps", default="1,2,4", help="num_warps values to sweep")
    args = ap.parse_args()
    shapes = selected_layers(args)
    config = PRESETS[args.preset]  # backend auto: Triton on CUDA
    rows = []
    for layer, (n, k) in shapes.items():
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        nbytes = quantize_weight(w0, config).nbytes
        wqs = rotated_weights(w0, lambda w: quantize_weight(w, config), nbytes)
        for m in (int(v) for v in args.m.split(",")):
            p = prepare(
                torch.randn(m, k, device="cuda", dtype=torch.bfloat16), config, RuntimeOptions(backend="reference")
            )
            rows_terms = [
                p.backbone.dequantize(apply_global_scale=False).to(torch.bfloat16),
                p.residual.dequantize(apply_global_scale=False).to(torch.bfloat16),
            ]
            terms = [*gemv_operand_of(p.backbone), *gemv_operand_of(p.residual)]
            want = fp4_weight_gemm(rows_terms, p.global_scale, wqs[0], None, torch.float32)
            t_gemm = graph_ms(
                [lambda q=q: fp4_weight_gemm(rows_terms, p.global_scale, q, None, torch.bfloat16) for q in wqs]
            )
            tried, best = best_tiling(
                sweep(args.bn, args.bk, args.warps),
                run=lambda cfg: fp4_weight_gemv(terms, p.global_scale, wqs[0], None, torch.float32, tiles=cfg),
                check=lambda y: float((y - want).abs().max() / want.abs().max()),
                time=lambda cfg: graph_ms(
                    [
                        lambda q=q: fp4_weight_gemv(terms, p.global_scale, q, None, torch.bfloat16, tiles=cfg)
                        for q in wqs
                    ]
                ),
            )
            rows += [
                dict(
                    layer=layer,
                    M=m,
                    N=n,
                    K=k,
                    **r["tiles"],
                    median_ms=r["ms"],
                    GBps=nbytes / (r["ms"] * 1e-3) / 1e9,
                    rel_err_vs_gemm=r["err"],
                    tc_gemm_ms=t_gemm,
                )
                for r in tried
            ]
            print(
                f"{layer:8s} M={m} best {best['ms'] * 1e3:6.1f}us {nbytes / (best['ms'] * 1e-3) / 1e9:5.0f} GB/s "
                f"{best['tiles']} err {best['err']:.1e} | tensor-core GEMM {t_gemm * 1e3:6.1f}us",
                flush=True,
            )
        wqs = None  # (not del: the timed lambdas close over the name)
        torch.cuda.empty_cache()
    doc = dict(
        **environment(),
        model=args.model,
        sweep=dict(bn=args.bn, bk=args.bk, warps=args.warps),
        preset=args.preset,
        rows=rows,
    )
    stem = "gemv-tuning" if args.model == DEFAULT_MODEL else f"gemv-tuning-{args.model}"
    print("wrote", write_json(doc, args.out, stem))


if __name__ == "__main__":
    main()
