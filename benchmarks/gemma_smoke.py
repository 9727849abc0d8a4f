"""A small real check of the packaged Gemma-3-270M: wiki perplexity under a few presets, the share
of the plain-NVFP4 gap SharQ recovers, and a greedy completion per preset.

The GGUF's weights were already 4-bit-ish (Q4_K_M: Q4_K / Q5_0 / Q6_K / Q8_0 tensors), so its
"bf16" row is a dequantized 4-to-8-bit model: the JSON carries that caveat next to the numbers.
A 270M base model should land at a perplexity of a few tens on Wikipedia summaries; thousands mean
the tokenizer, BOS or the weights are wrong.

usage: python benchmarks/gemma_smoke.py [--tokens 4096] [--seq-len 1024]
           [--presets bf16,nvfp4,sharq-nvfp4] [--out results/gemma3-270m-cpu-smoke.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import transformers

import sharq
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import GEMMA3, load_model, model_caveat, model_label
from sharq.eval.perplexity import corpus_tokens, perplexity
from sharq.runtime.generation import generate_text

PROMPTS = ("The capital of France is", "Water boils at a temperature of")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--presets", default="bf16,nvfp4,sharq-nvfp4")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="results/gemma3-270m-cpu-smoke.json")
    args = ap.parse_args()
    presets = args.presets.split(",")
    start = time.perf_counter()
    base, tok = load_model(GEMMA3, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - start
    stream = corpus_tokens(tok, wiki_texts())
    doc = {
        "model": model_label(GEMMA3),
        "caveat": model_caveat(GEMMA3),
        "what": "wiki perplexity (sharq.eval.perplexity: windows of seq_len positions, BOS + seq_len-1 tokens, "
        "each token scored once) and greedy completions, per preset, granularity tensor",
        "settings": {
            "tokens": args.tokens,
            "seq_len": args.seq_len,
            "dtype": args.dtype,
            "new_tokens": args.new_tokens,
        },
        "tokenizer": {
            "class": type(tok).__name__,
            "bos_token_id": tok.bos_token_id,
            "adds_bos": tok("a").input_ids[:1] == [tok.bos_token_id],
            "wiki_corpus_tokens": len(stream),
            "first_ids": stream[:12],
        },
        "machine": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sharq": sharq.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "load_seconds": round(load_s, 1),
        "rows": [],
    }
    print(f"loaded in {load_s:.0f} s; {len(stream)} wiki tokens; caveat: {doc['caveat']}")
    for preset in presets:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        report = sharq.quantize_(model, sharq.SharqConfig.from_preset(preset))
        res = perplexity(model, tok, stream, seq_len=args.seq_len, max_tokens=args.tokens)
        completions = {
            p: generate_text(model, tok, p, max_new_tokens=args.new_tokens, decode="eager").completion for p in PROMPTS
        }
        seconds = time.perf_counter() - t0
        print(f"{preset}: {res.describe()}; {len(report.converted)} modules quantized; {seconds:.0f} s")
        for p, c in completions.items():
            print(f"   {p!r} -> {c!r}")
        doc["rows"].append(
            {
                "preset": preset,
                "ppl_wiki": res.ppl,
                "n": res.tokens,
                "windows": res.windows,
                "quantized_modules": len(report.converted),
                "completions": completions,
                "seconds": round(seconds, 1),
            }
        )
        del model
    ppl = {r["preset"]: r["ppl_wiki"] for r in doc["rows"]}
    if {"bf16", "nvfp4"} <= set(ppl) and ppl["nvfp4"] != ppl["bf16"]:
        gap = ppl["nvfp4"] - ppl["bf16"]
        doc["gap_recovered"] = {p: (ppl["nvfp4"] - v) / gap for p, v in ppl.items() if p not in ("bf16", "nvfp4")}
        print("share of the NVFP4 -> bf16 gap recovered:", {p: f"{v:.0%}" for p, v in doc["gap_recovered"].items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
