"""Wiki perplexity of SmolLM2-135M under presets, through the package (`quantize_` + SharqLinear,
reference backend, CPU float32), with the recovered share of the plain-NVFP4 gap and 95% intervals.

recovered(p) = (ppl(nvfp4) - ppl(p)) / (ppl(nvfp4) - ppl(bf16)); `perplexity()` keeps each window's
NLL and `sharq.eval.bootstrap` resamples the windows, paired (every preset scores the same windows).
The quantized models run inside `kept_dequantized_weights` (each weight decoded once, the same
outputs). The packaged SmolLM2-135M is already a 4-bit Q4_1 GGUF model (its "bf16" is a dequantized
4-bit model): say so next to every number.

usage: python benchmarks/mse_accuracy.py [--model smollm2] [--tokens 16352] [--seq-len 512]
           [--presets bf16,nvfp4,nvfp4-mse,...] [--out results/mse-accuracy-smollm2.json]
--model takes what `sharq eval --model` takes (a packaged name, a .gguf file, an HF folder); the
JSON carries that model's caveat (`sharq.eval.model_caveat`).
A preset written NAME+mse is NAME with weight_scale="mse" (e.g. sharq-mxfp4+mse).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sharq
from sharq.eval.bootstrap import perplexity_interval, recovered_share
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import load_model, model_caveat, model_label
from sharq.eval.perplexity import corpus_tokens, quantized_perplexity

DEFAULT = "bf16,nvfp4,nvfp4-mse,sharq-nvfp4,sharq-nvfp4-mse,sharq-nvfp4-w16,sharq-nvfp4-w16-mse"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", help="packaged name, .gguf file or HF folder")
    ap.add_argument("--tokens", type=int, default=16352)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--presets", default=DEFAULT)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--out", default="results/mse-accuracy-smollm2.json")
    ap.add_argument("--resume", action="store_true", help="reuse the presets already in --out")
    args = ap.parse_args()
    presets = args.presets.split(",")
    for p in presets:  # "NAME+mse": preset NAME with weight_scale="mse" (e.g. sharq-mxfp4+mse)
        sharq.SharqConfig.from_preset(p.removesuffix("+mse"))
    base, tok = load_model(args.model, dtype=torch.float32)
    tokens = corpus_tokens(tok, wiki_texts())
    n = min(args.tokens, len(tokens))
    nll, rows, window_tokens = {}, [], []
    out = Path(args.out)
    if args.resume and out.exists():  # reuse the presets already measured (same tokens and windows)
        old = json.loads(out.read_text())
        if (old["tokens"], old["seq_len"]) != (n, args.seq_len):
            raise SystemExit(f"--resume: {out} holds {old['tokens']} tokens in windows of {old['seq_len']}")
        rows = [r for r in old["rows"] if r["preset"] in presets]
        nll = {r["preset"]: old["window_nll"][r["preset"]] for r in rows}
        window_tokens = old.get("window_tokens", [])

    def write() -> None:
        doc = dict(
            model=model_label(args.model),
            caveat=model_caveat(args.model),
            corpus="wiki",
            seq_len=args.seq_len,
            tokens=n,
            device="cpu",
            dtype="float32",
            torch=torch.__version__,
            sharq=sharq.__version__,
            rows=rows,
            window_nll=nll,
            window_tokens=window_tokens,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))

    for preset in presets:
        if preset in nll:
            continue
        t0 = time.perf_counter()
        config = None
        if preset != "bf16":
            config = sharq.SharqConfig.from_preset(preset.removesuffix("+mse"))
            config = config.replace(weight_scale="mse") if preset.endswith("+mse") else config
        res, tq = quantized_perplexity(base, tok, tokens, config, seq_len=args.seq_len, max_tokens=n)
        nll[preset], window_tokens[:] = list(res.window_nll), list(res.window_tokens)
        ppl = perplexity_interval(res.window_nll, res.window_tokens, resamples=args.boot)
        rows.append(
            dict(
                preset=preset,
                ppl=res.ppl,
                ppl_ci95=[ppl.low, ppl.high],
                tokens=n,
                quantize_s=round(tq, 2),
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
        write()  # after every preset: a long run can be resumed
        print(f"{preset:22s} ppl {res.ppl:8.3f} ({n} tokens, {time.perf_counter() - t0:.0f} s)", flush=True)
    for row in rows:
        p = row["preset"]
        if p in ("bf16", "nvfp4") or not {"bf16", "nvfp4"} <= set(nll):  # the gap needs both
            continue
        share = recovered_share(nll["bf16"], nll["nvfp4"], nll[p], window_tokens, resamples=args.boot)
        row["recovered"], row["recovered_ci95"] = share.value, [share.low, share.high]
        print(
            f"{p:22s} recovered {100 * share.value:5.1f}% "
            f"(95% paired bootstrap over {share.windows} windows: {100 * share.low:.0f}-{100 * share.high:.0f}%)"
        )
    write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
