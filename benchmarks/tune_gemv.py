"""Sweep launch tilings of the NVFP4 decode GEMV (`kernels/gemv_nvfp4.py`) at Llama-3.1-8B shapes.

Timing as benchmarks/linear.py: CUDA graphs cycling ≥ 150 MB of weight copies (no L2 reuse),
median of 20 replays, M = 1, two terms. Each tiling is checked against the tensor-core GEMM
(relative error). Prints the best per layer with its weight stream in GB/s and writes
benchmarks/results/gemv-tuning-<gpu>.json, the data behind `gemv_nvfp4._tiles`.

usage: python benchmarks/tune_gemv.py [--layers qkv,o,gate_up,down]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from _results import write_json
from linear import LAYERS, _graph_ms
from sharq import PRESETS
from sharq.kernels.gemm_fp4 import fp4_weight_gemm
from sharq.kernels.gemv_nvfp4 import fp4_weight_gemv, gemv_terms_layout
from sharq.ops import prepare, quantize_weight


def sweep() -> list[dict]:
    return [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=w)
            for bn, bk, w in itertools.product((2, 4, 8, 16), (512, 1024, 2048), (2, 4, 8))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--preset", default="sharq-nvfp4")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    import triton

    config = PRESETS[args.preset].replace(backend="triton")
    rows = []
    for layer in args.layers.split(","):
        n, k = LAYERS[layer]
        w0 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        nbytes = quantize_weight(w0, config).nbytes
        copies = max(1, -(-150_000_000 // nbytes))
        wqs = [quantize_weight(w0 + 0.001 * torch.randn_like(w0), config) for _ in range(copies)]
        p = prepare(torch.randn(1, k, device="cuda", dtype=torch.bfloat16), config.replace(backend="reference"))
        rows_terms = [p.backbone.dequantize(apply_global_scale=False).to(torch.bfloat16),
                      p.residual.dequantize(apply_global_scale=False).to(torch.bfloat16)]
        terms = [gemv_terms_layout(t) for t in rows_terms]
        want = fp4_weight_gemm(rows_terms, p.global_scale, wqs[0], None, torch.float32)
        t_gemm = _graph_ms([lambda q=q: fp4_weight_gemm(rows_terms, p.global_scale, q, None, torch.bfloat16)
                            for q in wqs])
        best = None
        for cfg in sweep():
            try:
                y = fp4_weight_gemv(terms, p.global_scale, wqs[0], None, torch.float32, tiles=cfg)
            except Exception as exc:  # out of resources: skip the tiling
                print(f"skip {cfg}: {type(exc).__name__}")
                continue
            err = float((y - want).abs().max() / want.abs().max())
            ms = _graph_ms([lambda q=q: fp4_weight_gemv(terms, p.global_scale, q, None, torch.bfloat16, tiles=cfg)
                            for q in wqs])
            rows.append(dict(layer=layer, M=1, N=n, K=k, **cfg, median_ms=ms, GBps=nbytes / (ms * 1e-3) / 1e9,
                             rel_err_vs_gemm=err, tc_gemm_ms=t_gemm))
            if best is None or ms < best[0]:
                best = (ms, cfg, err)
        print(f"{layer:8s} M=1 best {best[0] * 1e3:6.1f}us {nbytes / (best[0] * 1e-3) / 1e9:5.0f} GB/s {best[1]} "
              f"err {best[2]:.1e} | tensor-core GEMM {t_gemm * 1e3:6.1f}us", flush=True)
        del wqs
        torch.cuda.empty_cache()
    doc = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               preset=args.preset, rows=rows)
    print("wrote", write_json(doc, args.out, "gemv-tuning"))


if __name__ == "__main__":
    main()
