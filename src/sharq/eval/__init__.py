"""Accuracy evaluation: perplexity and zero-shot tasks on packaged real data, per preset.

evaluate(EvalSettings(...), out_dir=..., name=...)   the whole table, written as JSON/MD/PNG
load_model(source)                                    the packaged SmolLM2-135M (or a GGUF / HF folder)
perplexity(model, tokenizer, tokens, ...)             non-overlapping-window perplexity
run_tasks(model, tokenizer, tasks, ...)               zero-shot through lm-evaluation-harness
"""

from .packaged import PRETRAINED_CAVEAT, load_model
from .perplexity import PerplexityResult, corpus_tokens, perplexity
from .runner import DEFAULT_PRESETS, METRICS, EvalSettings, evaluate, plan_runs
from .tasks import TASKS, run_tasks

__all__ = [
    "PRETRAINED_CAVEAT",
    "load_model",
    "PerplexityResult",
    "corpus_tokens",
    "perplexity",
    "DEFAULT_PRESETS",
    "METRICS",
    "EvalSettings",
    "evaluate",
    "plan_runs",
    "TASKS",
    "run_tasks",
]
