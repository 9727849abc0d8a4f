"""The producers of the linears' inputs fused into the preparation, against the unfused chains.

For each M and producer of a model's decoder layer, times (CUDA graph replays, `harness.graph_ms`,
median) what produces and prepares one linear input:

  rms-norm   (K = hidden, feeding q/k/v or gate/up)
    torch+prep        transformers' RMSNorm in torch (its own statistic order), then `ops.prepare` —
                      what a layer ran before the fusion
    lanes+prep        the same norm in sharq's "lanes" order in torch, then `ops.prepare` (SHARQ_FUSE=0)
    fused             `ops.prepare_rms_norm`: one preparation kernel computes the norm (y written)
    fused-no-y        the same without writing y (a consumer that only takes the preparation)
    fused-stats-kernel / fused-stats-inline   the row statistics forced to the stats kernel / the
                      preparation's own programs (where a launch allows it)
    torch-norm-alone  the bf16 model's norm alone (what bf16 pays for the same step)
  add+rms-norm  the residual add before the norm: torch (add, norm, prepare) against fused
  act-mul    (K = the MLP width, feeding down_proj)
    torch+prep        silu(gate) * up in torch, then `ops.prepare`
    fused             `ops.prepare_act_mul` (the activation table looked up in the kernel)

Each fused provider's outputs are checked against its unfused chain bit for bit ("bits_equal").
Writes benchmarks/results/fused-prep-<model>-<gpu>.json with the GPU, torch/triton versions and the
baselines of the same run. `--device cpu` runs every provider once under TRITON_INTERPRET=1 at the
shapes given (checks only, no times: "median_ms" null) — the smoke test of this script.

usage: python benchmarks/fused_prep.py [--model llama-3.1-8b] [--m 1,2,8,16,64,256,1024,4096]
                                       [--granularity tensor] [--device cuda] [--k-norm K --k-act K]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

DEFAULT_M = "1,2,8,16,64,256,1024,4096"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="layer shapes from benchmarks/shapes.py")
    ap.add_argument("--m", default=DEFAULT_M, help="rows per call, comma-separated")
    ap.add_argument("--granularity", default="tensor", choices=("tensor", "token"))
    ap.add_argument("--preset", default="sharq-nvfp4")
    ap.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: one unchecked-speed run of every provider under the Triton interpreter",
    )
    ap.add_argument("--k-norm", type=int, default=None, help="override the norm's K (default: the model's hidden)")
    ap.add_argument("--k-act", type=int, default=None, help="override down_proj's K (default: the model's MLP)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    args.rows = [int(v) for v in args.m.split(",") if v]
    if not args.rows or min(args.rows) < 1:
        ap.error("--m needs positive row counts")
    return args


def _shapes(args) -> tuple[int, int]:
    from shapes import layers_of

    layers = layers_of(args.model)
    hidden = layers["qkv"][1]
    mlp = layers["down"][1] if "down" in layers else layers["expert_down"][1]
    return args.k_norm or hidden, args.k_act or mlp


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return (
        a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0).view(view), b.nan_to_num(0.0).view(view))
    )


def _same_prepared(a, b) -> bool:
    return (
        a.layout == b.layout
        and _same(a.global_scale, b.global_scale)
        and all(_same(x, y) for x, y in zip(a.terms, b.terms))
        and torch.equal(a.backbone.codes, b.backbone.codes)
    )


def _providers(m: int, k_norm: int, k_act: int, config, options, device: str) -> dict[str, tuple]:
    """name -> (producer, fn, check) with check() -> bool or None (a baseline); `options`: the
    RuntimeOptions every call runs with (the Triton backend)."""
    from torch import nn

    from sharq import ops
    from sharq.kernels.plan import FUSE_ENV
    from sharq.nn.fused_mlp import act_mul_reference, activation_table
    from sharq.nn.fused_norm import add_rms_norm_reference, rms_norm_reference

    g = torch.Generator(device="cpu").manual_seed(m)
    x = (torch.randn(m, k_norm, generator=g) * 4).to(torch.bfloat16).to(device)
    res = torch.randn(m, k_norm, generator=g).to(torch.bfloat16).to(device)
    w = (1 + 0.1 * torch.randn(k_norm, generator=g)).to(torch.bfloat16).to(device)
    gate_up = torch.randn(m, 2 * k_act, generator=g).to(torch.bfloat16).to(device)
    gate, up = gate_up[:, :k_act], gate_up[:, k_act:]  # the grouped GEMV's output layout
    act = nn.SiLU()
    table = activation_table(act, torch.bfloat16, device)
    eps = 1e-5

    def torch_prep():
        return ops.prepare(rms_norm_reference(x, w, eps, "llama", order="torch"), config, options)

    def lanes_prep():
        return ops.prepare(rms_norm_reference(x, w, eps, "llama", order="lanes"), config, options)

    def fused(write_y=True):
        return ops.prepare_rms_norm(x, w, eps, "llama", config, options, write_y=write_y)

    def check_norm():
        y, _, p = fused()
        want_y = rms_norm_reference(x, w, eps, "llama", order="lanes")
        return _same(y, want_y) and _same_prepared(p, ops.prepare(want_y, config, options))

    def stats_forced(stats: int):
        from sharq.kernels.plan import plan_producer
        from sharq.kernels.sources import SOURCE_NORM, SourceSpec, dtype_code

        plan = plan_producer("rms-norm", m, k_norm, config, device, options=options)
        spec = SourceSpec(x.new_empty(0), w, eps, SOURCE_NORM, False, 0, dtype_code(torch.bfloat16), True, False, stats)
        return lambda: ops._prepare_with_source(x, config, spec, plan.linear)

    def add_torch():
        y, h = add_rms_norm_reference(x, res, w, eps, "llama", order="torch")
        return ops.prepare(y, config, options), h

    def add_fused():
        return ops.prepare_rms_norm(x, w, eps, "llama", config, options, residual=res)

    def check_add():
        y, h, p = add_fused()
        want_y, want_h = add_rms_norm_reference(x, res, w, eps, "llama", order="lanes")
        return _same(y, want_y) and _same(h, want_h) and _same_prepared(p, ops.prepare(want_y, config, options))

    def act_torch():
        return ops.prepare(act_mul_reference(gate, up, act), config, options)

    def act_fused():
        return ops.prepare_act_mul(gate, up, config, options, table=table)

    def check_act():
        got = act_fused()
        return got is not None and _same_prepared(got, act_torch())

    assert os.environ.get(FUSE_ENV, "") != "0", f"unset {FUSE_ENV} to time the fused providers"
    out = {
        "rms-norm/torch+prep": ("rms-norm", torch_prep, None),
        "rms-norm/lanes+prep": ("rms-norm", lanes_prep, None),
        "rms-norm/fused": ("rms-norm", fused, check_norm),
        "rms-norm/fused-no-y": ("rms-norm", lambda: fused(False), check_norm),
        "rms-norm/torch-norm-alone": ("rms-norm", lambda: rms_norm_reference(x, w, eps, "llama", order="torch"), None),
        "add+rms-norm/torch+prep": ("add+rms-norm", add_torch, None),
        "add+rms-norm/fused": ("add+rms-norm", add_fused, check_add),
        "act-mul/torch+prep": ("act-mul", act_torch, None),
        "act-mul/fused": ("act-mul", act_fused, check_act),
    }
    for stats, name in ((0, "kernel"), (1, "inline")):
        fn = stats_forced(stats)
        try:
            fn()
        except ValueError:  # inline statistics need every row of a "tensor" call in one program
            continue
        out[f"rms-norm/fused-stats-{name}"] = ("rms-norm", fn, check_norm)
    return out


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    from harness import environment, graph_ms, write_json
    from sharq import PRESETS, RuntimeOptions
    from sharq.kernels.plan import plan_producer

    config = PRESETS[args.preset].replace(granularity=args.granularity)
    options = RuntimeOptions(backend="triton")
    k_norm, k_act = _shapes(args)
    timed = args.device == "cuda"
    rows = []
    for m in args.rows:
        plans = {
            p: plan_producer(p, m, k, config, args.device, options=options)
            for p, k in (("rms-norm", k_norm), ("act-mul", k_act))
        }
        for name, (producer, fn, check) in _providers(m, k_norm, k_act, config, options, args.device).items():
            plan = plans["act-mul" if producer == "act-mul" else "rms-norm"]
            fn()  # compiles, and builds what it needs
            ms = graph_ms([fn] * 4, reps=args.reps) if timed else None
            row = dict(
                M=m,
                K=k_act if producer == "act-mul" else k_norm,
                producer=producer,
                provider=name.split("/")[1],
                median_ms=ms,
                plan=plan.describe(),
                preparation=plan.linear.preparation,
            )
            if check is not None:
                row["bits_equal"] = bool(check())
            rows.append(row)
            shown = f"{ms * 1e3:8.1f} us" if ms is not None else "   (untimed)"
            print(f"M={m:5d} {name:32s} {shown}  {row.get('bits_equal', '')}", flush=True)
    doc = dict(
        **environment(args.device),
        model=args.model,
        preset=args.preset,
        granularity=args.granularity,
        k_norm=k_norm,
        k_act=k_act,
        rows=rows,
        note="median of CUDA-graph replays, 4 calls a graph; baselines (torch+prep) from the same run"
        if timed
        else "CPU smoke run under the Triton interpreter: outputs checked, nothing timed",
    )
    path = write_json(doc, args.out, f"fused-prep-{args.model}" + ("" if timed else "-smoke"))
    print("wrote", path)
    if not all(r.get("bits_equal", True) for r in rows):
        raise SystemExit("a fused provider's output differs from its unfused chain")
    return path


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
