"""Host time per call of one SharQ linear (Llama-3.1-8B gate_up, 28672 × 4096) at several M.

For each M: `--calls` forward calls issued back to back without synchronizing, host time per call
(wall time of the issuing loop / calls) against GPU time per call (CUDA events around the same loop
after a synchronize). Host time that grows with M although the host does the same work means the
host waits for the GPU somewhere (an implicit synchronization). Also the host time per call of the
pieces: the preparation op, the GEMM/GEMV op, a bare Triton launch of the preparation kernel.

usage: python benchmarks/launch_overhead.py [--m 1,64,1024,4096] [--out DIR]
Writes <out>/launch-overhead-<gpu>.json.
"""

from __future__ import annotations

import argparse
import time

import torch

import sharq
from harness import environment, write_json
from sharq.kernels.prepare_fp4 import prepare_activation_triton
from sharq.ops import linear_from_prepared


def _host_and_gpu_ms(fn, calls: int) -> tuple[float, float]:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t = time.perf_counter()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    host = (time.perf_counter() - t) * 1e3 / calls
    end.synchronize()
    return host, start.elapsed_time(end) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,64,1024,4096")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    n, k = 28672, 4096
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = sharq.SharqLinear.from_float(linear, sharq.PRESETS["sharq-nvfp4"])
    config = layer.config
    doc = dict(**environment(), n=n, k=k, rows=[])
    for m in [int(v) for v in args.m.split(",")]:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        prepared = prepare_activation_triton(x, config, with_terms=True, terms_layout="auto")
        pieces = {
            "linear": lambda: layer(x),
            "prepare": lambda: prepare_activation_triton(x, config, with_terms=True, terms_layout="auto"),
            "gemm": lambda: linear_from_prepared(prepared, layer.quantized_weight, None, torch.bfloat16, one_gemm=True),
            "empty": lambda: torch.empty(m, n, device="cuda", dtype=torch.bfloat16),
        }
        with torch.no_grad():
            for name, fn in pieces.items():
                host, gpu = _host_and_gpu_ms(fn, args.calls)
                doc["rows"].append(dict(M=m, piece=name, host_ms=host, gpu_ms=gpu))
                print(f"M={m:5d} {name:8s} host {host * 1e3:8.1f} us/call   gpu {gpu * 1e3:8.1f} us/call")
    print(f"wrote {write_json(doc, args.out, 'launch-overhead')}")


if __name__ == "__main__":
    main()
