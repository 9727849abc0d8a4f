"""Small-M (decode batches, M = 1-16) tilings of the tensor-core FP4-weight GEMM with the packed-register
weight decode (`gemm_fp4`, DECODE 2), against the decode GEMV and the GEMM's in-loop FP32 decode.

Timing as benchmarks/linear.py: CUDA graphs cycling >= 150 MB of weight copies (no L2 reuse), median
of 20 replays, two bf16 terms (the GEMM) or the GEMV operand (the GEMV). Every tiling's output is
checked against the FP32-decode GEMM (relative error of the largest |y|), and once per layer a
one-hot activation (each output one product) against it bit for bit. Prints the best per layer and
M, and writes benchmarks/results/small-m-tuning-<gpu>.json, the data behind `gemm_fp4._tiles`'
small-M rows and the GEMV/GEMM split by M.

usage: python benchmarks/tune_small_m.py [--model llama-3.1-8b] [--m 1,2,4,8,16] [--layers ...] [--split 1,2,4]
"""

from __future__ import annotations

import itertools

import torch

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
from sharq.kernels.gemv_nvfp4 import GEMV_MAX_M, fp4_weight_gemv, gemv_operand_of
from sharq.ops import prepare, quantize_weight
from sharq.options import RuntimeOptions


def sweep(bn: str, bk: str, warps: str, stages: str, stack: str = "0", split: str = "1", k_dim: int = 0) -> list[dict]:
    """Tilings of the packed decode; stack 1: both terms' 8 rows in one 16-row MMA operand; split:
    SPLIT_K values (K cut into chunks of at least SPLIT_MIN_STEPS BLOCK_K steps of the K = k_dim layer)."""
    axes = (bn, bk, warps, stages, stack, split)
    return [
        dict(
            BLOCK_M=8 if st else 16,
            BLOCK_N=n,
            BLOCK_K=k,
            GROUP_M=1,
            num_warps=w,
            num_stages=s,
            SCRATCH=1,
            DECODE=2,
            STACK=2 if st else 1,
            SPLIT_K=sk,
        )
        for n, k, w, s, st, sk in itertools.product(*(map(int, v.split(",")) for v in axes))
        if sk == 1 or k_dim // k >= SPLIT_MIN_STEPS * sk
    ]


def main() -> None:
    ap = layer_parser(m="1,2,4,8,16")
    ap.add_argument("--bn", default="32,64,128")
    ap.add_argument("--bk", default="128,256,512")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="3,4")
    ap.add_argument("--stack", default="0,1", help="STACK values (used for M <= 8)")
    ap.add_argument("--split", default="1", help="SPLIT_K values (K cut into chunks, partials reduced after)")
    args = ap.parse_args()
    shapes = selected_layers(args)
    config = PRESETS["sharq-nvfp4"]  # backend auto: Triton on CUDA
    rows = []
    for layer, (n, k) in shapes.items():
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        nbytes = quantize_weight(w0, config).nbytes
        wqs = rotated_weights(w0, lambda w: quantize_weight(w, config), nbytes)
        bf16 = [w0 + 0.001 * torch.randn_like(w0) for _ in range(copies_beyond_l2(2 * n * k))]
        # one-hot rows: every output is one weight value times s_w, no summation -> bit-exact
        onehot = torch.zeros(16, k, device="cuda", dtype=torch.bfloat16)
        onehot[torch.arange(16), torch.randint(0, k, (16,))] = 1.0
        sx1 = torch.ones(16, 1, device="cuda")
        want1 = fp4_weight_gemm([onehot], sx1, wqs[0], None, torch.float32, tiles=dict(DECODE=1))
        for cfg in sweep("64", "128", "4", "3"):  # one term: STACK does not apply
            got1 = fp4_weight_gemm([onehot], sx1, wqs[0], None, torch.float32, tiles=cfg)
            if not torch.equal(got1, want1):
                raise SystemExit(f"{layer}: one-hot mismatch with {cfg}: {(got1 - want1).abs().max()}")
        for m in (int(v) for v in args.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            p = prepare(x, config, RuntimeOptions(backend="reference"))
            terms = [
                p.backbone.dequantize(apply_global_scale=False).to(torch.bfloat16),
                p.residual.dequantize(apply_global_scale=False).to(torch.bfloat16),
            ]
            fp32_decode = dict(DECODE=1)
            want = fp4_weight_gemm(terms, p.global_scale, wqs[0], None, torch.float32, tiles=fp32_decode)
            base = dict(layer=layer, M=m, N=n, K=k, weight_bytes=nbytes)
            t_bf16 = graph_ms([lambda w=w: torch.nn.functional.linear(x, w) for w in bf16])
            t_gemm = graph_ms(
                [
                    lambda q=q: fp4_weight_gemm(terms, p.global_scale, q, None, torch.bfloat16, tiles=fp32_decode)
                    for q in wqs
                ]
            )
            rows += [
                dict(base, provider="bf16", median_ms=t_bf16),
                dict(base, provider="gemm-fp32-decode", median_ms=t_gemm),
            ]
            line = f"{layer:8s} M={m:2d} bf16 {t_bf16 * 1e3:6.1f} gemm {t_gemm * 1e3:6.1f}"
            if m <= GEMV_MAX_M:
                gterms = [*gemv_operand_of(p.backbone), *gemv_operand_of(p.residual)]
                t_gemv = graph_ms(
                    [lambda q=q: fp4_weight_gemv(gterms, p.global_scale, q, None, torch.bfloat16) for q in wqs]
                )
                rows.append(dict(base, provider="gemv", median_ms=t_gemv))
                line += f" gemv {t_gemv * 1e3:6.1f}"
            tried, best = best_tiling(
                sweep(args.bn, args.bk, args.warps, args.stages, args.stack if m <= 8 else "0", args.split, k),
                run=lambda cfg: fp4_weight_gemm(terms, p.global_scale, wqs[0], None, torch.float32, tiles=cfg),
                check=lambda y: float((y - want).abs().max() / want.abs().max()),
                time=lambda cfg: graph_ms(
                    [
                        lambda q=q: fp4_weight_gemm(terms, p.global_scale, q, None, torch.bfloat16, tiles=cfg)
                        for q in wqs
                    ]
                ),
            )
            rows += [
                dict(base, provider="gemm-packed", tiles=r["tiles"], median_ms=r["ms"], rel_err_vs_gemm=r["err"])
                for r in tried
            ]
            keys = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "STACK", "SPLIT_K")
            print(
                f"{line} | packed best {best['ms'] * 1e3:6.1f}us {nbytes / (best['ms'] * 1e-3) / 1e9:5.0f} GB/s "
                f"{ {key: best['tiles'][key] for key in keys} } "
                f"err {best['err']:.1e}",
                flush=True,
            )
        wqs = bf16 = None  # (not del: the timed lambdas close over the names)
        torch.cuda.empty_cache()
        path = write(args, rows)  # after every layer: a run cut off keeps what it measured
    print("wrote", path)


def write(args, rows: list):
    doc = dict(
        **environment(),
        model=args.model,
        sweep=dict(bn=args.bn, bk=args.bk, warps=args.warps, stages=args.stages, stack=args.stack, split=args.split),
        rows=rows,
    )
    stem = "small-m-tuning" if args.model == DEFAULT_MODEL else f"small-m-tuning-{args.model}"
    return write_json(doc, args.out, stem)


if __name__ == "__main__":
    main()
