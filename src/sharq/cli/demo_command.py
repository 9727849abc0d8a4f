"""`sharq demo` (= `make demo`): the few-minute tour of SharQ on SmolLM2-135M (sharq.eval.demo)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .args import UsageError, csv_list, positive_int

__all__ = ["add_demo_command"]

_DEFAULT_PRESETS = "bf16,nvfp4,sharq-nvfp4,sharq-nvfp4-w16-mse"


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..eval.demo import DemoSettings, check_demo_presets, free_core_threads, run_demo
    from ..eval.demo_report import format_demo
    from ..eval.packaged import model_stem

    start = time.perf_counter()
    args.name = args.name or f"demo-{model_stem(args.model)}"
    try:
        presets = check_demo_presets(args.presets)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.inspect_tokens < 2:
        raise UsageError("--inspect-tokens must be at least 2")
    if args.seq_len < 2:
        raise UsageError("--seq-len must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif hasattr(os, "getloadavg") and (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        torch.set_num_threads(free_core_threads(torch.get_num_threads(), os.cpu_count(), os.getloadavg()[0]))
    settings = DemoSettings(
        model=args.model,
        presets=presets,
        tokens=args.tokens,
        seq_len=args.seq_len,
        inspect_tokens=args.inspect_tokens,
        prompt=args.prompt,
        chat=not args.no_chat,
        new_tokens=args.new_tokens,
        resamples=args.resamples,
        device=args.device,
    )
    # with --json, stdout carries the JSON document only; the running log and the report go to stderr
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    log(f"sharq demo: {', '.join(presets)} on {args.tokens:,} Wikipedia tokens (sharq eval is the full evaluation)")
    doc = run_demo(settings, out_dir=args.out, name=args.name, log=log)
    log("")
    log(format_demo(doc, elapsed=time.perf_counter() - start))
    if args.json:
        print(json.dumps(doc, indent=1))
    return 0


def add_demo_command(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Register `sharq demo` on the subparsers `sub`."""
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="a few-minute tour of SmolLM2-135M: perplexity with intervals, per-layer SQNR, a completion (`make demo`)",
        description="Quantize the packaged SmolLM2-135M-Instruct (a Q4_1 GGUF: its weights were already 4-bit) "
        "with each preset; print its perplexity on the first Wikipedia tokens with 95% intervals, the share "
        "of the NVFP4 -> bf16 gap each SharQ preset recovers (paired bootstrap over windows), the per-layer "
        "activation / weight SQNR (a PNG) and one greedy completion from bf16 and from SharQ side by side. "
        "About 2-3 minutes on 2 CPU cores. The full evaluation is `sharq eval`.",
        epilog="example: sharq demo --presets bf16,nvfp4,sharq-nvfp4,sharq-nvfp4-w16 --tokens 4080",
    )
    p.add_argument(
        "--presets",
        type=csv_list,
        default=csv_list(_DEFAULT_PRESETS),
        help=f"comma-separated presets, bf16 included (default {_DEFAULT_PRESETS})",
    )
    p.add_argument("--model", default="smollm2", help="'smollm2' (default), a .gguf file or a local HF folder")
    p.add_argument("--tokens", type=positive_int, default=2040, help="Wikipedia tokens scored (default 2040)")
    p.add_argument(
        "--seq-len", type=positive_int, default=256, help="perplexity window, seq_len - 1 tokens scored (default 256)"
    )
    p.add_argument(
        "--inspect-tokens", type=positive_int, default=128, help="tokens fed to the per-layer SQNR (default 128)"
    )
    p.add_argument("--prompt", default="Explain why the sky is blue in two sentences.", help="the prompt completed")
    p.add_argument("--no-chat", action="store_true", help="complete the prompt as plain text (no chat template)")
    p.add_argument("--new-tokens", type=positive_int, default=32, help="greedy tokens generated (default 32)")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads (default: torch's own, lowered to the cores the load average leaves free)",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    p.add_argument("--name", help="file stem of the JSON and PNG (default demo-MODEL, e.g. demo-smollm2)")
    p.add_argument("--json", action="store_true", help="print the results document as JSON on stdout")
    p.set_defaults(func=_cmd_demo)
