"""Where SmolLM2's FP4 perplexity gap comes from: weights only, activations only, or both.

Each decoder linear that `quantize_` would convert is replaced by a fake-quantized linear computing
y = x̃ · W̃ᵀ in FP32 (rounded to the model dtype), where
  W̃ = s_w · deq(Wq) when the weight is quantized (as the preset quantizes it), else W,
  x̃ = s_x · (deq(B) + deq(R)) when the activation is quantized (the preset's decomposition), else x.
"both" is the SharqLinear numerics up to FP32 rounding order. Perplexity over the first
`--tokens` Wikipedia tokens in `--seq-len` windows, on the packaged SmolLM2-135M (already-4-bit
Q4_1 weights!). Writes results/error-budget-smollm2.json.

usage: python benchmarks/error_budget.py [--tokens 8176] [--seq-len 512] [--device cpu]
           [--presets nvfp4,sharq-nvfp4,sharq-nvfp4-w16] [--parts weights,activations,both]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from fake_quant import FakeQuantLinear, sharq_activation
from sharq import SharqConfig, quantize_weight
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, perplexity
from sharq.models.convert import conversion_targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8176)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="results/error-budget-smollm2.json")
    ap.add_argument(
        "--presets",
        default="nvfp4,sharq-nvfp4,sharq-nvfp4-w16",
        help="comma-separated presets (e.g. the -mse ones: nvfp4-mse,sharq-nvfp4-mse,...)",
    )
    ap.add_argument("--parts", default="weights,activations,both", help="which of weights,activations,both")
    args = ap.parse_args()
    base, tok = load_model("smollm2", dtype=getattr(torch, args.dtype))
    tokens = corpus_tokens(tok, wiki_texts())
    targets = [n for n, kind in conversion_targets(base).items() if kind == "linear"]
    runs = [("bf16", None, False, False)]
    parts = {"weights": (True, False), "activations": (False, True), "both": (True, True)}
    chosen = args.parts.split(",")
    unknown = sorted(set(chosen) - set(parts))
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(unknown)}; choose from weights, activations, both")
    for preset in args.presets.split(","):
        runs += [(preset, part, *parts[part]) for part in chosen]
    rows = []
    for preset, part, w, a in runs:
        model = copy.deepcopy(base).to(args.device)
        if preset != "bf16":
            cfg = SharqConfig.from_preset(preset)
            for name in targets:
                linear = model.get_submodule(name)
                weight = quantize_weight(linear.weight.detach(), cfg).dequantize() if w else linear.weight.detach()
                bias = None if linear.bias is None else linear.bias.detach()
                model.set_submodule(name, FakeQuantLinear(weight, bias, sharq_activation(cfg) if a else None))
        start = time.perf_counter()
        res = perplexity(model, tok, tokens, seq_len=args.seq_len, max_tokens=args.tokens)
        rows.append(
            dict(
                preset=preset,
                quantized=part or "nothing",
                ppl=res.ppl,
                tokens=res.tokens,
                seconds=round(time.perf_counter() - start, 1),
            )
        )
        print(f"{preset:16s} {part or 'nothing':12s} ppl {res.ppl:8.3f}  ({res.describe()})", flush=True)
    doc = dict(
        model="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        caveat=PRETRAINED_CAVEAT,
        device=args.device,
        dtype=args.dtype,
        torch=torch.__version__,
        seq_len=args.seq_len,
        rows=rows,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
