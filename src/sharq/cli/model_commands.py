"""`sharq quantize | generate | bench`: the commands that take a model, and how they open it.

A MODEL argument is 'smollm2' (the packaged SmolLM2-135M-Instruct GGUF), 'gemma3-270m' (the packaged
Gemma-3-270M GGUF), a .gguf file, a local Hugging Face folder — quantized on the fly with --preset —
or, for generate and bench, a checkpoint folder written by `sharq quantize` (loaded as it was saved;
--preset does not apply).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .args import UsageError, csv_or_empty, paragraphs, positive_int

__all__ = ["add_model_commands", "open_model"]

_EPILOG_QUANTIZE = """\
examples:
  sharq quantize --preset sharq-nvfp4 --out smollm2-sharq        # the packaged SmolLM2-135M
  sharq quantize path/to/hf-folder --preset sharq-nvfp4-w16 --out ckpt --max-shard-size 2GB
  sharq quantize model.gguf --out ckpt --json                     # machine-readable summary
  sharq quantize --lm-head nvfp4-w16 --out smollm2-sharq-lmh      # + weight-only NVFP4-16 lm_head

The folder holds model.safetensors (packed FP4 codes, uint8 block scales, FP32 global scales, every
other tensor in the model dtype), config.json with a "quantization_config", the generation config and
the tokenizer. Load it with `sharq.load_quantized(DIR)`, or run it with `sharq generate DIR`."""

_EPILOG_GENERATE = """\
examples:
  sharq generate smollm2-sharq --prompt "The capital of France is" --max-new-tokens 20
  sharq generate smollm2-sharq --chat --prompt "Write a haiku about rain" --sample --seed 3
  sharq generate smollm2 --preset sharq-hif4 --prompt "Hello" --json   # quantize on the fly
  sharq generate ckpt --tokenizer path/to/original-model              # a folder saved without a tokenizer"""

_EPILOG_BENCH = """\
examples:
  sharq bench                                   # one 2048x2048 linear, 16 tokens: nn.Linear vs SharqLinear
  sharq bench --shape 1,4096,4096 --device cuda --json
  sharq bench smollm2-sharq --tokens 128 --new-tokens 16   # a checkpoint: prefill and decode speed
  sharq bench smollm2 --preset sharq-nvfp4                 # float model first, then quantized

Quick wall-clock medians for a first look (CUDA synchronized around each call); benchmarks/ holds
the careful measurements."""


BENCH_DECODE_CHOICES = (
    "eager",
    "graph",
    "graph-compile",
)  # = sharq.runtime.timing.BENCH_DECODE (no torch at parse time)
DECODE_CHOICES = (
    "auto",
    "eager",
    "compile",
    "graph",
)  # = sharq.runtime.generation.DECODE_MODES (not imported: no torch at parse time)
LM_HEAD_CHOICES = ("model-dtype", "nvfp4-w16")  # = sharq.config.LmHead values (no torch at parse time)


def _quantizing_presets() -> list[str]:
    from ..config import PRESETS

    return [name for name, cfg in PRESETS.items() if cfg.quantizes]


def _default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _tokenizer_from(path: str):
    """The tokenizer of `--tokenizer PATH` (a folder, or a model's files); a one-line error naming PATH."""
    from transformers import AutoTokenizer

    from ..checkpoint import has_tokenizer

    if not Path(path).exists():
        raise ValueError(f"--tokenizer {path}: no such file or folder")
    if Path(path).is_dir() and not has_tokenizer(path):
        raise ValueError(f"--tokenizer {path}: no tokenizer there (no tokenizer.json or tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many kinds for a path it cannot read
        raise ValueError(
            f"--tokenizer {path}: cannot load a tokenizer from it ({' '.join(str(err).split())})"
        ) from None


def _no_tokenizer(source: str) -> ValueError:
    return ValueError(
        f"{source} has no tokenizer (no tokenizer.json or tokenizer_config.json); give one with "
        "--tokenizer PATH, e.g. the original model's folder"
    )


def open_model(
    source: str,
    *,
    preset: str | None,
    device: str,
    dtype: str | None,
    progress: bool | None,
    granularity: str = "tensor",
    tokenizer: str | None = None,
    require_tokenizer: bool = True,
):
    """(model, tokenizer, description) — a checkpoint as saved, or a model quantized with `preset`.

    tokenizer: a path to load the tokenizer from instead of `source` (which may have none); without
    it, a `source` folder without tokenizer files is refused before the model is loaded — unless
    `require_tokenizer` is False, and the tokenizer is then None.
    """
    import torch

    from ..checkpoint import has_tokenizer, is_sharq_checkpoint, load_quantized, load_tokenizer

    if tokenizer is None and require_tokenizer and Path(source).is_dir() and not has_tokenizer(source):
        raise _no_tokenizer(source)
    given = _tokenizer_from(tokenizer) if tokenizer is not None else None  # a bad PATH fails before the model loads

    torch_dtype = getattr(torch, dtype) if dtype else None
    if is_sharq_checkpoint(source):
        if preset is not None:
            raise UsageError(
                f"{source} is a sharq checkpoint, already quantized; --preset applies to an unquantized MODEL"
            )
        model = load_quantized(source, device=device, dtype=torch_dtype, progress=progress)
        record = model.sharq_checkpoint
        if given is not None:
            loaded = given
        else:
            loaded = load_tokenizer(source) if has_tokenizer(source) else None
        return (
            model,
            loaded,
            {"source": source, "checkpoint": True, "preset": record.preset, "config": record.config.to_dict()},
        )
    from ..config import SharqConfig
    from ..eval.packaged import load_model
    from ..models import quantize_

    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, loaded = load_model(
        source, dtype=torch_dtype, device=device, require_tokenizer=require_tokenizer and tokenizer is None
    )
    if given is not None:
        loaded = given
    config = SharqConfig.from_preset(preset or "sharq-nvfp4", granularity=granularity)
    quantize_(model, config, progress=progress)
    return (
        model,
        loaded,
        {"source": source, "checkpoint": False, "preset": preset or "sharq-nvfp4", "config": config.to_dict()},
    )


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


# --- quantize -------------------------------------------------------------------------------------
def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import is_sharq_checkpoint, save_quantized
    from ..checkpoint.format import parse_size
    from ..checkpoint.save import check_output_folder
    from ..config import SharqConfig
    from ..eval.packaged import load_model
    from ..models import quantize_

    parse_size(args.max_shard_size)  # a bad size fails before the model is loaded
    check_output_folder(args.out, args.force)
    if is_sharq_checkpoint(args.model):
        raise ValueError(f"{args.model} is already a sharq checkpoint; quantize the original model instead")
    config = SharqConfig.from_preset(args.preset, granularity=args.granularity, lm_head=args.lm_head)
    start = time.perf_counter()
    device = _default_device(args.device)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=device, require_tokenizer=False)
    report = quantize_(model, config, modules_to_not_convert=args.exclude, progress=_progress(args))
    saved = save_quantized(
        model,
        args.out,
        tokenizer=tokenizer,
        max_shard_size=args.max_shard_size,
        overwrite=args.force,
        progress=_progress(args),
    )
    seconds = time.perf_counter() - start
    if args.json:
        doc = {
            "path": str(saved.path),
            "files": saved.files,
            "file_bytes": saved.file_bytes,
            "tensors": saved.tensors,
            **{k: v for k, v in saved.record.to_dict().items() if k != "modules"},
            "quantized_modules": len(saved.record.modules),
            "fused_norms": len(report.fused_norms),
            "model": args.model,
            "tokenizer": tokenizer is not None,
            "device": device,
            "dtype": args.dtype,
            "seconds": round(seconds, 2),
        }
        print(json.dumps(doc, indent=1))
    else:
        print(report.summary())
        print(saved.summary())
        run = f"sharq generate {saved.path}"
        if tokenizer is None:
            print(f"{args.model} has no tokenizer files, so the checkpoint has none either")
            run += " --tokenizer PATH"
        print(f"done in {seconds:.1f} s; load it with sharq.load_quantized({str(saved.path)!r}) or run `{run}`")
    return 0


# --- generate -------------------------------------------------------------------------------------
def _cmd_generate(args: argparse.Namespace) -> int:
    from ..runtime.generation import generate_text

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    device = _default_device(args.device)
    model, tokenizer, about = open_model(
        args.model,
        preset=args.preset,
        device=device,
        dtype=args.dtype,
        progress=_progress(args),
        tokenizer=args.tokenizer,
    )
    result = generate_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens=args.max_new_tokens,
        sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        decode=args.decode,
    )
    if args.json:
        print(
            json.dumps(
                {
                    **about,
                    "device": device,
                    "prompt": result.prompt,
                    "completion": result.completion,
                    "prompt_tokens": result.prompt_tokens,
                    "new_token_ids": result.new_token_ids,
                    "seconds": round(result.seconds, 4),
                    "tokens_per_s": round(result.tokens_per_s, 2),
                    "decode": result.decode,
                },
                indent=1,
            )
        )
    else:
        print(result.prompt + result.completion if not args.chat else result.completion)
        print(
            f"[{len(result.new_token_ids)} tokens in {result.seconds:.2f} s, {result.tokens_per_s:.1f} tokens/s, "
            f"{about['preset'] or 'custom'} on {device}, decode {result.decode}]",
            file=sys.stderr,
        )
    return 0


# --- bench ----------------------------------------------------------------------------------------
def _shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M,K,N (three integers), got {text!r}") from None
    if min(m, k, n) <= 0:
        raise argparse.ArgumentTypeError(f"M, K and N must be positive, got {text!r}")
    return m, k, n


def _vocab(model, tokenizer) -> int:
    """Token ids the bench may draw: the tokenizer's, else the rows of the model's input embedding."""
    return len(tokenizer) if tokenizer is not None else model.get_input_embeddings().num_embeddings


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..config import SharqConfig
    from ..runtime.timing import bench_linear, bench_model

    device = _default_device(args.device)
    if args.model is None:
        config = SharqConfig.from_preset(args.preset or "sharq-nvfp4")
        dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
        m, k, n = args.shape
        doc = {
            "what": "linear",
            "preset": args.preset or "sharq-nvfp4",
            "device": device,
            "dtype": str(dtype)[6:],
            **bench_linear(config, m, k, n, device=torch.device(device), dtype=dtype, repeat=args.repeat),
        }
        lines = [
            f"linear x ({m}, {k}) @ W ({n}, {k})ᵀ, {doc['dtype']} on {device}, {doc['preset']} "
            f"({doc['backend']} backend), median of {args.repeat}:",
            f"  nn.Linear    {doc['dense_us']:10.1f} µs   weight {doc['dense_weight_bytes']:,} bytes",
            f"  SharqLinear  {doc['sharq_us']:10.1f} µs   weight {doc['sharq_weight_bytes']:,} bytes "
            f"({doc['weight_bits']:.3f} bits/weight)",
            f"  SharqLinear is {doc['sharq_vs_dense']:.2f}x the speed of nn.Linear",
        ]
    else:
        from ..checkpoint import is_sharq_checkpoint

        doc = {"what": "model", "model": args.model, "device": device}
        decode = args.decode if args.decode != "auto" else ("graph" if device.startswith("cuda") else "eager")
        doc["decode"] = decode
        timing = dict(tokens=args.tokens, new_tokens=args.new_tokens, repeat=args.repeat, decode=decode)
        if not is_sharq_checkpoint(args.model):  # the float model first, for the ratio
            from ..eval.packaged import load_model

            dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
            model, tokenizer = load_model(args.model, dtype=dtype, device=device, require_tokenizer=False)
            doc["float"] = bench_model(model, vocab=_vocab(model, tokenizer), **timing)
            del model
        model, tokenizer, about = open_model(
            args.model,
            preset=args.preset,
            device=device,
            dtype=args.dtype,
            progress=_progress(args),
            require_tokenizer=False,
        )
        doc.update(preset=about["preset"], sharq=bench_model(model, vocab=_vocab(model, tokenizer), **timing))
        lines = [
            f"{args.model} on {device}, {args.tokens}-token prefill and {args.new_tokens} greedy decode steps "
            f"({decode}), median of {args.repeat}:"
        ]
        for key in ("float", "sharq"):
            if key in doc:
                r = doc[key]
                label = "float" if key == "float" else (about["preset"] or "custom")
                lines.append(
                    f"  {label:16s} prefill {r['prefill_ms']:9.1f} ms ({r['prefill_tokens_per_s']:8.1f} tok/s)"
                    f"   decode {r['decode_ms_per_token']:8.1f} ms/token ({r['decode_tokens_per_s']:6.1f} tok/s)"
                )
    print(json.dumps(doc, indent=1) if args.json else "\n".join(lines))
    return 0


# --- parsers --------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")


def add_model_commands(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add quantize, generate and bench to the `sharq` subparsers."""
    presets = _quantizing_presets()
    fmt = argparse.RawDescriptionHelpFormatter

    q = sub.add_parser(
        "quantize",
        parents=parents,
        formatter_class=fmt,
        epilog=_EPILOG_QUANTIZE,
        help="quantize a model once and write it as a checkpoint folder (safetensors + config.json)",
        description=paragraphs(
            "Quantize MODEL with a SharQ preset (no calibration data) and write a checkpoint folder "
            "that loads without the original weights, on CPU or GPU, bit-identical to the model that was saved."
        ),
    )
    q.add_argument(
        "model",
        nargs="?",
        default="smollm2",
        metavar="MODEL",
        help="'smollm2' (the packaged SmolLM2-135M-Instruct, default), 'gemma3-270m' (the packaged "
        "Gemma-3-270M), a .gguf file or a local HF folder",
    )
    q.add_argument(
        "--preset",
        choices=presets,
        default="sharq-nvfp4",
        metavar="PRESET",
        help=f"the SharQ preset (default sharq-nvfp4): {', '.join(presets)}",
    )
    q.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write (new or empty)")
    q.add_argument(
        "--granularity",
        choices=("tensor", "token"),
        default="tensor",
        help="NVFP4 activation scale: one per call (tensor, default) or per token (batch invariant)",
    )
    q.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default="bfloat16",
        help="dtype of the model's unquantized tensors (default bfloat16)",
    )
    q.add_argument(
        "--exclude",
        type=csv_or_empty,
        default=("lm_head",),
        metavar="NAMES",
        help="comma-separated module names kept out of the SharQ conversion (default lm_head)",
    )
    q.add_argument(
        "--lm-head",
        choices=LM_HEAD_CHOICES,
        default="model-dtype",
        help="SharqConfig.lm_head: model-dtype (default: the lm_head stays as it is) or nvfp4-w16 "
        "(opt-in, beyond the paper: weight-only NVFP4 with 16-blocks, input in the model dtype; "
        "a tied embedding is untied and keeps its weight)",
    )
    q.add_argument(
        "--max-shard-size",
        default="4GB",
        metavar="SIZE",
        help="bytes per safetensors file, e.g. 500MB, 2GB (default 4GB)",
    )
    q.add_argument("--force", action="store_true", help="overwrite DIR when it holds a sharq checkpoint already")
    _common(q)
    q.set_defaults(func=_cmd_quantize)

    g = sub.add_parser(
        "generate",
        parents=parents,
        formatter_class=fmt,
        epilog=_EPILOG_GENERATE,
        help="generate text with a checkpoint folder, or with a model quantized on the fly",
        description=paragraphs(
            "Complete a prompt with a SharQ-quantized model: a checkpoint folder from `sharq quantize` "
            "(loaded without the original weights), or MODEL quantized now with --preset. Greedy unless --sample. "
            "The text goes to stdout, the speed to stderr."
        ),
    )
    g.add_argument(
        "model",
        nargs="?",
        default="smollm2",
        metavar="DIR_OR_MODEL",
        help="a checkpoint folder, or 'smollm2' (default), 'gemma3-270m', a .gguf file, a local HF folder",
    )
    g.add_argument(
        "--preset",
        choices=presets,
        metavar="PRESET",
        help="preset for a MODEL that is not a checkpoint (default sharq-nvfp4)",
    )
    g.add_argument("--prompt", default="Once upon a time", help="the prompt; '-' reads it from stdin")
    g.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="load the tokenizer from PATH (a folder with tokenizer.json, e.g. the original model's) "
        "instead of DIR_OR_MODEL, for a folder saved without one",
    )
    g.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default 32)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    g.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    g.add_argument(
        "--decode",
        choices=DECODE_CHOICES,
        default="auto",
        help="how decode steps run: graph (static cache, CUDA graph; greedy), compile (transformers' "
        "static cache + torch.compile), eager (no static cache: turns the fast path off); "
        "auto = graph for greedy / compile for sampling on CUDA, eager on CPU",
    )
    g.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="dtype (default: a checkpoint's own; bfloat16 on cuda and float32 on cpu otherwise)",
    )
    _common(g)
    g.set_defaults(func=_cmd_generate)

    b = sub.add_parser(
        "bench",
        parents=parents,
        formatter_class=fmt,
        epilog=_EPILOG_BENCH,
        help="time a SharQ linear against nn.Linear, or a model's prefill and decode",
        description=paragraphs(
            "Without a model: time one linear layer y = x Wᵀ as nn.Linear and as SharqLinear (--shape M,K,N). "
            "With a checkpoint folder or a model: time a prefill of --tokens tokens and --new-tokens greedy decode "
            "steps (an unquantized MODEL is timed in float first, then quantized with --preset)."
        ),
    )
    b.add_argument(
        "model",
        nargs="?",
        metavar="DIR_OR_MODEL",
        help="a checkpoint folder, 'smollm2', 'gemma3-270m', .gguf or HF folder",
    )
    b.add_argument(
        "--preset", choices=presets, metavar="PRESET", help="preset (default sharq-nvfp4; not for a checkpoint)"
    )
    b.add_argument(
        "--shape",
        type=_shape,
        default=(16, 2048, 2048),
        metavar="M,K,N",
        help="linear shape: M tokens, K in, N out (default 16,2048,2048)",
    )
    b.add_argument("--tokens", type=positive_int, default=64, help="prefill tokens for a model (default 64)")
    b.add_argument("--new-tokens", type=positive_int, default=8, help="decode steps for a model (default 8)")
    b.add_argument("--repeat", type=positive_int, default=5, help="timed repetitions, median reported (default 5)")
    b.add_argument(
        "--decode",
        choices=("auto",) + BENCH_DECODE_CHOICES,
        default="auto",
        help="how a model's decode steps run: eager (transformers' generate), graph (static cache, "
        "CUDA graph), graph-compile (the same, the step compiled by torch.compile first); "
        "auto = graph on CUDA, eager elsewhere",
    )
    b.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="dtype (default: a checkpoint's own; bfloat16 on cuda and float32 on cpu otherwise)",
    )
    _common(b)
    b.set_defaults(func=_cmd_bench)
