"""`sharq` command line. Exit codes: 0 success, 1 runtime error, 2 usage error.

Commands: quantize, generate, bench (cli_model.py), eval, demo, inspect, layer-demo, presets. An
error is one line on stderr (`sharq COMMAND: error: ...`); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .args import UsageError, csv_list, paragraphs, positive_int
from .demo_command import add_demo_command
from .model_commands import add_model_commands

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..version import __version__
    from .layer_demo import format_table, rows_to_json, run_demo

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


def _eval_settings(args: argparse.Namespace):
    from ..eval import DEFAULT_PRESETS, TASKS, EvalSettings

    presets = DEFAULT_PRESETS if args.presets == ("all",) else args.presets
    tasks = TASKS if args.tasks == ("all",) else (() if args.tasks == ("none",) else args.tasks)
    return EvalSettings(
        model=args.model,
        presets=tuple(presets),
        granularities=args.granularity,
        tasks=tuple(tasks),
        limit=args.limit,
        ppl_tokens=args.ppl_tokens,
        seq_len=args.seq_len,
        device=args.device,
        dtype=args.dtype,
        batch_tokens=args.batch_tokens,
        ppl_batch=args.ppl_batch,
        backend=args.backend,
        operand=getattr(args, "operand", None),
        lm_head=getattr(args, "lm_head", "model-dtype"),
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..eval import evaluate
    from ..eval.packaged import model_stem
    from ..eval.report import markdown

    args.name = args.name or f"{args.name_prefix}-{model_stem(args.model)}"
    start = time.perf_counter()
    # with --json, stdout carries the JSON document only; the running log goes to stderr
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    doc = evaluate(
        _eval_settings(args),
        out_dir=args.out,
        name=args.name,
        resume=args.resume,
        progress=not args.no_progress,
        log=log,
    )
    log("")
    log(markdown(doc))
    log(f"\nwrote {args.out}/{args.name}.json, .md and .png in {time.perf_counter() - start:.0f} s")
    if args.json:
        print(json.dumps(doc, indent=1))
    return 0


def _add_eval_arguments(
    p: argparse.ArgumentParser,
    *,
    presets: str,
    granularity: str,
    tasks: str,
    limit: int | None,
    ppl_tokens: int | None,
    seq_len: int,
    name_prefix: str,
) -> None:
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (the packaged SmolLM2-135M-Instruct, default), 'gemma3-270m' (the packaged "
        "Gemma-3-270M), a .gguf file or a local HF folder",
    )
    p.add_argument(
        "--presets",
        type=csv_list,
        default=csv_list(presets),
        help=f"comma-separated presets, or 'all' (default {presets})",
    )
    p.add_argument(
        "--granularity",
        type=csv_list,
        default=csv_list(granularity),
        help=f"tensor and/or token; token runs only for NVFP4 presets (default {granularity})",
    )
    p.add_argument(
        "--tasks", type=csv_list, default=csv_list(tasks), help=f"zero-shot tasks, 'all' or 'none' (default {tasks})"
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=limit,
        help=f"documents per task (default {'all' if limit is None else limit})",
    )
    p.add_argument(
        "--ppl-tokens",
        type=positive_int,
        default=ppl_tokens,
        help=f"tokens per perplexity corpus (default {'all' if ppl_tokens is None else ppl_tokens})",
    )
    p.add_argument("--seq-len", type=positive_int, default=seq_len, help=f"window / max length (default {seq_len})")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="model dtype (default: bfloat16 on cuda, float32 on cpu)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "reference", "triton"),
        default="auto",
        help="activation preparation: reference (auto) or the fused Triton kernel (CUDA)",
    )
    p.add_argument(
        "--operand",
        choices=("auto", "exact", "bf16-sum"),
        help="what the linears multiply (SPEC §7; default: the preset's own, auto)",
    )
    p.add_argument(
        "--lm-head",
        choices=("model-dtype", "nvfp4-w16"),
        default="model-dtype",
        help="SharqConfig.lm_head of the quantizing presets: model-dtype (default) or nvfp4-w16 "
        "(weight-only NVFP4-16 lm_head, opt-in)",
    )
    p.add_argument("--batch-tokens", type=positive_int, help="padded tokens per scoring batch")
    p.add_argument("--ppl-batch", type=positive_int, help="windows per perplexity batch")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    p.add_argument("--name", help=f"results file stem (default {name_prefix}-MODEL, e.g. {name_prefix}-smollm2)")
    p.set_defaults(name_prefix=name_prefix)
    p.add_argument("--resume", action="store_true", help="skip runs already in the results JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the results document as JSON on stdout (the table and the log go to stderr)",
    )


def _cmd_inspect_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoint import checkpoint_info, format_info

    given = [flag for flag, value in (("--model", args.model), ("--preset", args.preset)) if value is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} apply to the per-layer report, not to a checkpoint folder")
    info = checkpoint_info(args.checkpoint)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..eval.inspection import format_inspect_table, inspect_model

    if args.checkpoint is not None:
        return _cmd_inspect_checkpoint(args)
    args.model = args.model or "smollm2"
    args.preset = args.preset or "sharq-nvfp4"
    reports, doc = inspect_model(
        args.model,
        args.preset,
        granularity=args.granularity,
        tokens=args.tokens,
        seq_len=args.seq_len,
        device=args.device,
        dtype=args.dtype,
        out_dir=args.out,
        name=args.name,
    )
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(
        f"{args.model}: {args.preset} ({args.granularity}), {doc['tokens']} Wikipedia tokens, "
        f"{doc['device']} {doc['dtype']}; each layer fed the float model's own input"
    )
    if doc.get("caveat"):
        print(f"caveat: {doc['caveat']}")
    print(format_inspect_table(reports))
    print(f"\nwrote {', '.join(doc['paths'])}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from ..config import PRESETS

    if args.json:
        print(json.dumps({name: cfg.to_dict() for name, cfg in PRESETS.items()}, indent=2))
        return 0
    for name, cfg in PRESETS.items():
        d = cfg.to_dict()
        desc = ", ".join(
            f"{k}={d[k]}"
            for k in (
                "format",
                "mask",
                "residual",
                "residual_mask",
                "backbone_block",
                "residual_block",
                "weight_block",
                "weight_scale",
            )
        )
        print(f"{name:20s} {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharq",
        description="SharQ: sparse FP4 backbone + dense FP4 residual quantization of LLM activations.",
        epilog="exit codes: 0 success, 1 the command failed (one line on stderr; --debug shows the traceback), "
        "2 usage error. `sharq COMMAND --help` explains each command with examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    # --debug after the command as well; SUPPRESS keeps a subcommand from resetting the global flag
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    common = [debug]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_model_commands(sub, common)

    add_demo_command(sub, common)

    demo = sub.add_parser(
        "layer-demo",
        parents=common,
        help="SQNR and bits/value of every preset on a synthetic outlier-heavy layer",
        description="Quantize a synthetic outlier-heavy activation and weight under every preset and "
        "print activation / weight / output SQNR and bits per value.",
        epilog="example: sharq layer-demo --tokens 256 --json demo.json",
    )
    demo.add_argument("--tokens", type=positive_int, default=512, help="activation rows M (default 512)")
    demo.add_argument("--k", type=positive_int, default=2048, help="in_features K (default 2048)")
    demo.add_argument("--n", type=positive_int, default=2048, help="out_features N (default 2048)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    demo.set_defaults(func=_cmd_demo)

    ev = sub.add_parser(
        "eval",
        parents=common,
        help="perplexity + zero-shot accuracy of a model under a list of presets",
        description="Quantize a model under each preset (and granularity) and measure perplexity over the "
        "Wikipedia summaries and the LAMBADA passages plus zero-shot ARC-e/ARC-c/HellaSwag/PIQA/WinoGrande/"
        "BoolQ/LAMBADA through lm-evaluation-harness, all from packaged data, offline. Writes JSON, a "
        "Markdown table and a PNG plot.",
        epilog="example: sharq eval --presets bf16,nvfp4,sharq-nvfp4 --limit 100 --ppl-tokens 20000",
    )
    _add_eval_arguments(
        ev,
        presets="all",
        granularity="tensor,token",
        tasks="all",
        limit=None,
        ppl_tokens=None,
        seq_len=2048,
        name_prefix="accuracy",
    )
    ev.set_defaults(func=_cmd_eval)

    ins = sub.add_parser(
        "inspect",
        parents=common,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="per-layer error report of one preset, or what a checkpoint folder holds",
        description=paragraphs(
            "Without DIR: feed real text through the float model and, for every linear sharq would "
            "convert, measure the preset's activation, weight and layer-output SQNR, the energy share the sparse "
            "backbone keeps, and the activation's outlier statistics (crest factor, kurtosis, top-1% channel "
            "energy); prints a table, writes JSON and a PNG plot.\n\nWith a checkpoint folder DIR: print its "
            "quantization_config, files and the bits each quantized weight takes on disk (headers only, fast)."
        ),
        epilog="examples:\n  sharq inspect --preset sharq-nvfp4 --tokens 4096\n  sharq inspect smollm2-sharq --json",
    )
    ins.add_argument("checkpoint", nargs="?", metavar="DIR", help="a checkpoint folder written by `sharq quantize`")
    ins.add_argument("--model", help="'smollm2' (default), 'gemma3-270m', a .gguf file or a local HF folder")
    ins.add_argument("--preset", help="the preset to inspect (default sharq-nvfp4)")
    ins.add_argument("--granularity", choices=("tensor", "token"), default="tensor")
    ins.add_argument("--tokens", type=positive_int, default=2048, help="Wikipedia tokens fed (default 2048)")
    ins.add_argument("--seq-len", type=positive_int, default=512, help="sequence length (default 512)")
    ins.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ins.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="model dtype")
    ins.add_argument("--out", default="results", help="results folder (default results/)")
    ins.add_argument("--name", help="file stem (default inspect-<model>-<preset>-<granularity>)")
    ins.add_argument("--json", action="store_true", help="print the report (or the checkpoint's summary) as JSON")
    ins.set_defaults(func=_cmd_inspect)

    presets = sub.add_parser(
        "presets",
        parents=common,
        help="list the named presets",
        description="List the named presets and their fields.",
        epilog="example: sharq presets --json",
    )
    presets.add_argument("--json", action="store_true", help="print as JSON")
    presets.set_defaults(func=_cmd_presets)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (ValueError, TypeError, OSError, NotImplementedError, UsageError)):
        return text
    return f"{type(err).__name__}: {text} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    # Nothing is ever downloaded: models and data are local files or installed packages.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # transformers' advice, not our errors
    if getattr(args, "no_progress", False) or not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars too
    try:
        return args.func(args)
    except UsageError as err:
        if args.debug:
            raise
        print(f"sharq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sharq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        print(f"sharq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
