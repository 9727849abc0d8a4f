"""`sharq` command line. Exit codes: 0 success, 1 runtime error, 2 usage error."""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import __version__
    from .demo import format_table, rows_to_json, run_demo

    start = time.perf_counter()
    rows = run_demo(args.tokens, args.k, args.n, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(
        f"sharq {__version__} demo: synthetic outlier-heavy layer, x ({args.tokens}, {args.k}), "
        f"W ({args.n}, {args.k}), seed {args.seed}; reference backend on CPU, {elapsed:.1f} s"
    )
    print(format_table(rows))
    by = {(r.preset, r.granularity): r for r in rows}
    plain, sharq = by[("nvfp4", "tensor")], by[("sharq-nvfp4", "tensor")]
    print(
        f"\nSharQ-NVFP4 activation SQNR {sharq.act_sqnr_db:.2f} dB vs plain NVFP4 {plain.act_sqnr_db:.2f} dB "
        f"(+{sharq.act_sqnr_db - plain.act_sqnr_db:.2f} dB)."
    )
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(rows_to_json(rows, tokens=args.tokens, k=args.k, n=args.n, seed=args.seed, version=__version__))
        print(f"wrote {args.json}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS

    if args.json:
        print(json.dumps({name: cfg.to_dict() for name, cfg in PRESETS.items()}, indent=2))
        return 0
    for name, cfg in PRESETS.items():
        d = cfg.to_dict()
        desc = ", ".join(f"{k}={d[k]}" for k in ("format", "mask", "residual", "residual_mask",
                                                  "backbone_block", "residual_block", "weight_block"))
        print(f"{name:16s} {desc}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharq",
        description="SharQ: sparse FP4 backbone + dense FP4 residual quantization of LLM activations.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="SQNR and bits/value of every preset on a synthetic outlier-heavy layer",
        description="Quantize a synthetic outlier-heavy activation and weight under every preset and "
        "print activation / weight / output SQNR and bits per value.",
        epilog="example: sharq demo --tokens 256 --json demo.json",
    )
    demo.add_argument("--tokens", type=_positive_int, default=512, help="activation rows M (default 512)")
    demo.add_argument("--k", type=_positive_int, default=2048, help="in_features K (default 2048)")
    demo.add_argument("--n", type=_positive_int, default=2048, help="out_features N (default 2048)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    demo.set_defaults(func=_cmd_demo)

    presets = sub.add_parser(
        "presets", help="list the named presets", description="List the named presets and their fields.",
        epilog="example: sharq presets --json",
    )
    presets.add_argument("--json", action="store_true", help="print as JSON")
    presets.set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, NotImplementedError, OSError) as err:
        if args.debug:
            raise
        print(f"sharq {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
