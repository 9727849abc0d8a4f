"""Text generation with a causal LM (quantized or not): what `sharq generate` runs.

`generate_text(model, tokenizer, prompt)` tokenizes the prompt (through the tokenizer's chat template
with `chat=True`), runs transformers' `generate` — greedy by default, or sampling with a seed — and
returns the completion with its token ids and timing.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import torch

__all__ = ["GenerationResult", "generate_text"]


@dataclasses.dataclass
class GenerationResult:
    prompt: str
    completion: str  # the new tokens decoded (special tokens dropped)
    prompt_tokens: int
    new_token_ids: list[int]
    seconds: float  # wall time of `generate` (prefill + every decode step)

    @property
    def tokens_per_s(self) -> float:
        return len(self.new_token_ids) / self.seconds if self.seconds > 0 else float("nan")


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device


def generate_text(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = False,
) -> GenerationResult:
    """Complete `prompt` with up to `max_new_tokens` tokens (greedy unless `sample`)."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    text = prompt
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; drop --chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
    device = _device_of(model)
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty after tokenization")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = dict(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad)
    if sample:
        options.update(temperature=temperature, top_p=top_p)
    else:  # greedy: drop sampling settings a generation_config may carry, so transformers does not warn
        options.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **options)
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:].tolist()
    return GenerationResult(prompt, tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], new, seconds)
