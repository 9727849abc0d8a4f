"""Wiki perplexity of SmolLM2-135M under presets, through the package (`quantize_` + SharqLinear),
with per-window NLLs so the recovered share of the plain-NVFP4 gap gets a bootstrap interval.

recovered(p) = (ppl(nvfp4) - ppl(p)) / (ppl(nvfp4) - ppl(bf16)); the interval resamples the
windows (paired: every preset scored on the same windows). The packaged SmolLM2-135M is already a
4-bit Q4_1 GGUF model (its "bf16" is a dequantized 4-bit model): say so next to every number.

usage: python benchmarks/mse_accuracy.py [--tokens 8176] [--seq-len 512]
           [--presets bf16,nvfp4,nvfp4-mse,...] [--out results/mse-accuracy-smollm2.json]
A preset written NAME+mse is NAME with weight_scale="mse" (e.g. sharq-mxfp4+mse).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

import sharq
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, perplexity

DEFAULT = "bf16,nvfp4,nvfp4-mse,sharq-nvfp4,sharq-nvfp4-mse,sharq-nvfp4-w16,sharq-nvfp4-w16-mse"


def window_nlls(model, tok, tokens, seq_len: int, n: int) -> list[float]:
    """Summed NLL of each window [s, s + seq_len - 1) of tokens[:n] (the windows `perplexity` uses)."""
    step = seq_len - 1
    return [perplexity(model, tok, tokens[s : min(s + step, n)], seq_len=seq_len).nll for s in range(0, n, step)]


def recovered(nll: dict[str, list[float]], preset: str, idx: list[int], tokens: int) -> float:
    ppl = {p: math.exp(sum(v[i] for i in idx) / tokens) for p, v in nll.items()}
    return (ppl["nvfp4"] - ppl[preset]) / (ppl["nvfp4"] - ppl["bf16"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8176)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--presets", default=DEFAULT)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", default="results/mse-accuracy-smollm2.json")
    ap.add_argument("--resume", action="store_true", help="reuse the presets already in --out")
    args = ap.parse_args()
    presets = args.presets.split(",")
    for p in presets:  # "NAME+mse": preset NAME with weight_scale="mse" (e.g. sharq-mxfp4+mse)
        sharq.SharqConfig.from_preset(p.removesuffix("+mse"))
    base, tok = load_model("smollm2", dtype=torch.float32)
    tokens = corpus_tokens(tok, wiki_texts())
    n = min(args.tokens, len(tokens))
    nll, rows = {}, []
    out = Path(args.out)
    if args.resume and out.exists():  # reuse the presets already measured (same tokens and windows)
        old = json.loads(out.read_text())
        if (old["tokens"], old["seq_len"]) != (n, args.seq_len):
            raise SystemExit(f"--resume: {out} holds {old['tokens']} tokens in windows of {old['seq_len']}")
        rows = [r for r in old["rows"] if r["preset"] in presets]
        nll = {r["preset"]: old["window_nll"][r["preset"]] for r in rows}

    def write() -> None:
        doc = dict(
            model="SmolLM2-135M-Instruct (Q4_1 GGUF: already 4-bit weights)",
            caveat=PRETRAINED_CAVEAT,
            corpus="wiki",
            seq_len=args.seq_len,
            tokens=n,
            device="cpu",
            dtype="float32",
            torch=torch.__version__,
            sharq=sharq.__version__,
            rows=rows,
            window_nll=nll,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))

    for preset in presets:
        if preset in nll:
            continue
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        if preset != "bf16":
            config = sharq.SharqConfig.from_preset(preset.removesuffix("+mse"))
            sharq.quantize_(model, config.replace(weight_scale="mse") if preset.endswith("+mse") else config)
        tq = time.perf_counter() - t0
        nll[preset] = window_nlls(model, tok, tokens, args.seq_len, n)
        ppl = math.exp(sum(nll[preset]) / n)
        rows.append(
            dict(preset=preset, ppl=ppl, tokens=n, quantize_s=round(tq, 2), seconds=round(time.perf_counter() - t0, 1))
        )
        write()  # after every preset: a long run can be resumed
        print(f"{preset:22s} ppl {ppl:8.3f} ({n} tokens, {time.perf_counter() - t0:.0f} s)", flush=True)
    g = torch.Generator().manual_seed(0)
    windows = len(next(iter(nll.values())))
    for row in rows:
        p = row["preset"]
        if p in ("bf16", "nvfp4") or not {"bf16", "nvfp4"} <= set(nll):  # the gap needs both
            continue
        row["recovered"] = recovered(nll, p, list(range(windows)), n)
        boots = sorted(
            recovered(nll, p, torch.randint(0, windows, (windows,), generator=g).tolist(), n) for _ in range(args.boot)
        )
        row["recovered_ci90"] = [boots[int(0.05 * args.boot)], boots[int(0.95 * args.boot)]]
        print(
            f"{p:22s} recovered {100 * row['recovered']:5.1f}% "
            f"(90% bootstrap over {windows} windows: {100 * row['recovered_ci90'][0]:.0f}-"
            f"{100 * row['recovered_ci90'][1]:.0f}%)"
        )
    write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
