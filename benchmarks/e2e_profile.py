"""Where a forward's time goes: torch.profiler kernel time by category (for `e2e.py --profile`).

Categories, by kernel name (device time on CUDA, CPU op self time elsewhere):
  preparation  activation quantization: sharq's `_amax_kernel` / `_prepare_kernel`, the fp8
               baseline's compiled per-token quantization (inductor `triton_*` kernels with an
               `amax`; in a compiled decode step inductor fuses it with the glue around it)
  gemm         GEMMs and GEMVs: cuBLAS / CUTLASS / nvjet kernels, `_scaled_mm`, sharq's
               `_fp4_weight_gemm_kernel` and `_gemv_kernel`
  attention    flash / memory-efficient / math SDPA kernels, sharq's `_attention_split_kernel` /
               `_attention_combine_kernel` (one-token decode)
  other        everything else (norms, rotary, elementwise, copies, embedding, reductions),
               including inductor's other fused `triton_*` kernels (their names list every op they
               hold, e.g. `…_scaled_dot_product_cudnn_attention…` for glue next to attention)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CATEGORIES = ("preparation", "gemm", "attention", "other")
_RULES = (
    ("preparation", ("_amax_kernel", "_prepare_kernel")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "_efficient_attention", "softmax")),
    (
        "gemm",
        (
            "gemm",
            "gemv",
            "_dequant_kernel",
            "cutlass",
            "cublas",
            "nvjet",
            "scaled_mm",
            "sm90_xmma",
            "xmma_",
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::matmul",
            "aten::linear",
        ),
    ),
)


def category(name: str) -> str:
    """The category of a kernel (or CPU op) name."""
    low = name.lower()
    if low.startswith("triton_"):  # inductor-generated: fp8 quantization (amax) or fused glue
        return "preparation" if "amax" in low else "other"
    for cat, keys in _RULES:
        if any(k.lower() in low for k in keys):
            return cat
    return "other"


def profile_forward(fn: Callable[[], object], device: torch.device, top: int = 12) -> dict:
    """Profile one call of `fn` (after the caller's warm-up): time per category and the top kernels.

    Returns {"unit": "ms", "total", "by_category": {cat: ms}, "share": {cat: fraction},
             "top": [{"name", "category", "ms", "calls"}], "wall_ms"}.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    times: dict[str, list] = {}
    for evt in prof.events():
        if cuda:
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = evt.time_range.elapsed_us()  # a kernel event: its own duration on the device
        else:
            us = evt.self_cpu_time_total  # self time: nothing is counted twice
        entry = times.setdefault(evt.name, [0.0, 0])
        entry[0] += us / 1e3
        entry[1] += 1
    by_cat = {c: 0.0 for c in CATEGORIES}
    for name, (ms, _) in times.items():
        by_cat[category(name)] += ms
    total = sum(by_cat.values())
    ranked = sorted(times.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "unit": "ms",
        "source": "CUDA kernel time" if cuda else "CPU op self time",
        "total": total,
        "by_category": by_cat,
        "share": {c: (v / total if total else 0.0) for c, v in by_cat.items()},
        "top": [{"name": n[:120], "category": category(n), "ms": ms, "calls": calls} for n, (ms, calls) in ranked],
    }
