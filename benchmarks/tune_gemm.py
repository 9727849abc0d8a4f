"""Sweep launch tilings of the Triton FP4-weight GEMM at Llama-3.1-8B layer shapes.

For each layer and M, every tiling in the sweep is timed (`do_bench` median, L2 flushed) on the same
prepared operands (two bf16 terms, NVFP4-32 weight); tilings that do not compile (shared memory)
are skipped. Prints the best per (layer, M) and writes benchmarks/results/gemm-tuning-<gpu>.json,
the data behind `gemm_fp4._tiles`.

usage: python benchmarks/tune_gemm.py [--m 1,16,4096] [--layers qkv,o,gate_up,down]
"""

from __future__ import annotations

import itertools

import torch

from harness import environment, layer_parser, selected_layers, write_json
from shapes import DEFAULT_MODEL
from sharq import PRESETS
from sharq.kernels.gemm_fp4 import fp4_weight_gemm
from sharq.ops import prepare, quantize_weight


def sweep(m: int) -> list[dict]:
    if m <= 16:
        return [
            dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, num_warps=w, num_stages=s)
            for bn, bk, w, s in itertools.product((16, 32, 64, 128), (128, 256, 512), (4, 8), (3, 4))
        ]
    if m <= 256:
        return [
            dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in itertools.product((32, 64), (64, 128), (128, 256), (4,), (3, 4))
        ]
    return [
        dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in (
            (128, 128, 64, 8, 3),
            (128, 256, 64, 8, 3),
            (128, 128, 128, 8, 3),
            (64, 128, 64, 4, 4),
            (128, 128, 32, 4, 4),
            (128, 256, 32, 8, 4),
            (64, 256, 64, 8, 3),
            (128, 64, 64, 4, 4),
            (256, 128, 64, 8, 3),
            (128, 128, 64, 4, 3),
            (128, 256, 128, 8, 2),
        )
    ]


def main() -> None:
    args = layer_parser(m="1,64,4096").parse_args()
    shapes = selected_layers(args)
    from triton.testing import do_bench

    config = PRESETS["sharq-nvfp4"]  # backend auto: Triton on CUDA
    results = []
    for layer, (n, k) in shapes.items():
        wq = quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, config)
        for m in map(int, args.m.split(",")):
            prepared = prepare(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), config)
            timed = []
            for tiles in sweep(m):
                try:
                    fn = lambda: fp4_weight_gemm(
                        prepared.terms,
                        prepared.global_scale,
                        wq,
                        None,  # noqa: E731
                        torch.bfloat16,
                        tiles=tiles,
                    )
                    fn()
                    torch.cuda.synchronize()
                    ms = float(do_bench(fn, warmup=10, rep=40, return_mode="median"))
                except Exception as exc:  # a tiling that does not fit (shared memory, registers)
                    print(f"  skip {tiles}: {type(exc).__name__}")
                    continue
                timed.append(
                    dict(
                        layer=layer, M=m, N=n, K=k, tiles=tiles, median_ms=ms, weight_GBps=wq.nbytes / (ms * 1e-3) / 1e9
                    )
                )
            timed.sort(key=lambda r: r["median_ms"])
            results += timed
            best = timed[0]
            print(
                f"{layer:8s} M={m:5d} best {best['median_ms'] * 1e3:8.1f} us ({best['weight_GBps']:.0f} GB/s) "
                f"{best['tiles']}; worst {timed[-1]['median_ms'] * 1e3:.1f} us",
                flush=True,
            )
    doc = dict(**environment(), model=args.model, rows=results)
    stem = "gemm-tuning" if args.model == DEFAULT_MODEL else f"gemm-tuning-{args.model}"
    print(f"wrote {write_json(doc, args.out, stem)}")


if __name__ == "__main__":
    main()
