"""Accuracy evaluation: perplexity and zero-shot tasks on packaged real data, per preset.

evaluate(EvalSettings(...), out_dir=..., name=...)   the whole table, written as JSON/MD/PNG
load_model(source)                                    a packaged model (smollm2, gemma3-270m), a GGUF or HF folder
model_caveat(source)                                  the caveat a report carries (packaged model, quantized GGUF)
perplexity(model, tokenizer, tokens, ...)             non-overlapping-window perplexity
run_tasks(model, tokenizer, tasks, ...)               zero-shot through lm-evaluation-harness
"""

from .packaged import GEMMA3_CAVEAT, PRETRAINED_CAVEAT, load_model, model_caveat
from .perplexity import PerplexityResult, corpus_tokens, perplexity
from .runner import DEFAULT_PRESETS, METRICS, EvalSettings, evaluate, plan_runs
from .tasks import TASKS, run_tasks

__all__ = [
    "PRETRAINED_CAVEAT",
    "GEMMA3_CAVEAT",
    "load_model",
    "model_caveat",
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
