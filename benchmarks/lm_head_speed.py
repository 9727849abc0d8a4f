"""Speed of the weight-only quantized lm_head (`SharqLMHead`, SPEC §9) against the model-dtype one
(`nn.Linear`), per call, at decode and prefill row counts, in the same run.

On CUDA (bf16, `backend="auto"`: the Triton W4A16 GEMV up to 2 rows, gemm_fp4 with one bf16 term
above; `kernels.plan.plan_lm_head`) against cuBLAS bf16, timed with `triton.testing.do_bench`
(median). On the CPU (float32) it times the torch reference (dequantize + FP32 matmul on every
call) against the float matmul: not a deployment number, only what the reference costs there.

usage: python benchmarks/lm_head_speed.py [--rows 1,2,16,512,2048] [--shapes smollm2,llama3-8b] [--repeat 5]
writes benchmarks/results/lm-head-speed-<device tag>.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from torch import nn

import sharq
from sharq.config import SharqConfig
from sharq.kernels.plan import plan_lm_head
from sharq.nn import SharqLMHead
from sharq.ops import resolve_lm_head_backend
from sharq.runtime.timing import median_seconds

sys.path.insert(0, str(Path(__file__).parent))
from harness import write_json  # noqa: E402

SHAPES = {"smollm2": (49152, 576), "llama3-8b": (128256, 4096)}  # (vocabulary N, hidden K)


def _time(fn, device: torch.device, repeat: int) -> float:
    """Median seconds of fn()."""
    if device.type == "cuda":
        import triton

        return triton.testing.do_bench(fn, return_mode="median") * 1e-3
    return median_seconds(fn, repeat=repeat, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,2,16,512,2048")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=5, help="CPU: timed calls per point (median)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = SharqConfig(lm_head="nvfp4-w16")
    rows = []
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        gen = torch.Generator().manual_seed(0)
        dense = nn.Linear(k, n, bias=False, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
        dense = dense.to(device)
        head = SharqLMHead.from_float(dense, config, name=shape)
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k, generator=gen).to(device, dtype)
            with torch.no_grad():
                dense_s = _time(lambda: dense(x), device, args.repeat)
                head_s = _time(lambda: head(x), device, args.repeat)
            backend = resolve_lm_head_backend("auto", x).value
            row = dict(
                shape=shape,
                n=n,
                k=k,
                m=m,
                backend=backend,
                kernel=plan_lm_head(m) if backend == "triton" else "reference",
                dense_us=dense_s * 1e6,
                lm_head_us=head_s * 1e6,
                speedup=dense_s / head_s,
                dense_weight_bytes=dense.weight.numel() * dense.weight.element_size(),
                lm_head_weight_bytes=head.quantized_weight.nbytes,
            )
            rows.append(row)
            print(
                f"{shape} M={m}: {row['kernel']} {row['lm_head_us']:.0f} us vs dense {row['dense_us']:.0f} us "
                f"({row['speedup']:.2f}x)",
                flush=True,
            )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    doc = {
        "what": "weight-only NVFP4-16 lm_head (SharqLMHead) vs the model-dtype nn.Linear, per call",
        "gpu": gpu,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "sharq": sharq.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "timing": "triton.testing.do_bench median" if device.type == "cuda" else f"median of {args.repeat} calls",
        "rows": rows,
    }
    if device.type == "cuda":
        import triton

        doc["triton"] = triton.__version__
    print(f"wrote {write_json(doc, args.out, 'lm-head-speed')}")


if __name__ == "__main__":
    main()
