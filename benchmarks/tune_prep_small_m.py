"""Sweep the preparation's launch tiling for short batches (decode, M = 1-16) at Llama-3.1-8B K.

Times `prepare_activation_triton` (rows or GEMV operand, as the linear routes M) in a CUDA graph,
median of 20 replays, per (block_m, block_k, num_warps), and checks each tiling's codes against
the default's bit for bit. Writes benchmarks/results/prep-small-m-tuning-<gpu>.json, the data
behind `prepare_fp4._prep_tiles` for short batches.

usage: python benchmarks/tune_prep_small_m.py [--m 1,2,4,8,16] [--k 4096,14336]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from harness import environment, graph_ms, write_json
from sharq import PRESETS
from sharq.kernels.gemv_nvfp4 import GEMV_AUTO_MAX_M
from sharq.kernels.prepare_fp4 import prepare_activation_triton


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,2,4,8,16")
    ap.add_argument("--k", default="4096,14336")
    ap.add_argument("--block-m", default="1,2,4,8,16")
    ap.add_argument("--block-k", default="64,128,256")
    ap.add_argument("--warps", default="1,2,4")
    ap.add_argument(
        "--inline-max-m",
        type=int,
        default=None,
        help="set prepare_fp4.AMAX_INLINE_MAX_M (rows up to which the programs compute the amax)",
    )
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import triton

    from sharq.kernels import prepare_fp4

    if args.inline_max_m is not None:
        prepare_fp4.AMAX_INLINE_MAX_M = args.inline_max_m

    config = PRESETS["sharq-nvfp4"]  # backend auto: Triton on CUDA
    rows = []
    for k, m in itertools.product(map(int, args.k.split(",")), map(int, args.m.split(","))):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        layout = "gemv" if m <= GEMV_AUTO_MAX_M else "rows"
        want = prepare_activation_triton(x, config, with_terms=True, terms_layout=layout)
        t0 = graph_ms([lambda: prepare_activation_triton(x, config, with_terms=True, terms_layout=layout)] * 20)
        rows.append(dict(M=m, K=k, layout=layout, tiles="default", median_ms=t0))
        best = (t0, "default")
        for bm, bk, w in itertools.product(*(map(int, v.split(",")) for v in (args.block_m, args.block_k, args.warps))):
            if bm > triton.next_power_of_2(m):
                continue
            kw = dict(with_terms=True, terms_layout=layout, block_m=bm, block_k=bk, num_warps=w)
            got = prepare_activation_triton(x, config, **kw)
            same = all(torch.equal(a, b) for a, b in zip(got.terms, want.terms))
            same = same and torch.equal(got.backbone.codes, want.backbone.codes)
            ms = graph_ms([lambda kw=kw: prepare_activation_triton(x, config, **kw)] * 20)
            rows.append(
                dict(
                    M=m,
                    K=k,
                    layout=layout,
                    tiles=dict(block_m=bm, block_k=bk, num_warps=w),
                    median_ms=ms,
                    bit_equal_to_default=same,
                )
            )
            if not same:
                raise SystemExit(f"M={m} K={k} {kw}: output differs from the default tiling")
            best = min(best, (ms, f"{bm}x{bk} w{w}"))
        print(
            f"M={m:2d} K={k:5d} {layout}: default {t0 * 1e3:5.1f}us best {best[0] * 1e3:5.1f}us {best[1]}", flush=True
        )
    doc = dict(
        **environment(),
        amax_inline_max_m=prepare_fp4.AMAX_INLINE_MAX_M,
        granularity=config.granularity.value,
        rows=rows,
    )
    stem = "prep-small-m-tuning" + ("" if args.inline_max_m is None else f"-inline{args.inline_max_m}")
    print("wrote", write_json(doc, args.out, stem))


if __name__ == "__main__":
    main()
