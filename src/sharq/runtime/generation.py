"""Text generation with a causal LM (quantized or not): what `sharq generate` runs.

`generate_text(model, tokenizer, prompt)` tokenizes the prompt (through the tokenizer's chat template
with `chat=True`), generates — greedy by default, or sampling with a seed — and returns the
completion with its token ids and timing. How the decode steps run (`decode=`):

  "eager"    transformers' `generate` with its dynamic cache: every step a plain forward.
  "compile"  transformers' `generate` with `cache_implementation="static"` and a `CompileConfig`:
             transformers compiles the decode forward (torch.compile; inductor + CUDA graphs by
             default, `compile_backend` to change it) and reuses it for every step. The first call
             pays the compilation (about a minute for a 30-layer model).
  "graph"    `StaticDecoder`: transformers' `StaticCache` and forward, the decode step captured in a
             plain CUDA graph (no compilation); greedy only.
  "auto"     on CUDA: "graph" for greedy decoding, "compile" for sampling; elsewhere "eager".

All of them produce the tokens of "eager" for greedy decoding (tested on the CPU, where "graph"
runs its step uncaptured and "compile" traces with the given backend).
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import torch

__all__ = ["GenerationResult", "generate_text", "DECODE_MODES", "resolve_decode"]

DECODE_MODES = ("auto", "eager", "compile", "graph")


@dataclasses.dataclass
class GenerationResult:
    prompt: str
    completion: str  # the new tokens decoded (special tokens dropped)
    prompt_tokens: int
    new_token_ids: list[int]
    seconds: float  # wall time of `generate` (prefill + every decode step)
    decode: str = "eager"  # how the decode steps ran (see the module docstring)

    @property
    def tokens_per_s(self) -> float:
        return len(self.new_token_ids) / self.seconds if self.seconds > 0 else float("nan")


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device


def resolve_decode(decode: str, device: torch.device, sample: bool) -> str:
    """The decode mode "auto" stands for on `device`; other modes are checked and returned."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode == "auto":
        if device.type != "cuda":
            return "eager"
        return "compile" if sample else "graph"
    if decode == "graph" and sample:
        raise ValueError("decode='graph' is greedy only; use decode='compile' (or 'eager') to sample")
    return decode


def _compile_options(device: torch.device, backend: str) -> dict:
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, backend=backend, mode="reduce-overhead" if backend == "inductor" else None)
    if device.type != "cuda":  # transformers compiles on CUDA only unless asked (tests, other backends)
        config._compile_all_devices = True
    return dict(cache_implementation="static", compile_config=config)


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
    decode: str = "auto",
    compile_backend: str = "inductor",
) -> GenerationResult:
    """Complete `prompt` with up to `max_new_tokens` tokens (greedy unless `sample`).

    decode: "auto" | "eager" | "compile" | "graph" (module docstring); compile_backend: the
    torch.compile backend of "compile" ("inductor"; "eager" / "aot_eager" trace without compiling).
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    text = prompt
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; drop --chat")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
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
    mode = resolve_decode(decode, device, sample)
    if mode == "compile":
        options.update(_compile_options(device, compile_backend))
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "graph":
            from .static_decode import StaticDecoder

            out = StaticDecoder(model, 1, ids.shape[1] + max_new_tokens).generate(ids, max_new_tokens)
            out = _cut_at_eos(out, ids.shape[1], model)
        else:
            out = model.generate(ids, attention_mask=mask, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1] :].tolist()
    return GenerationResult(prompt, tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], new, seconds, mode)


def _cut_at_eos(out: torch.Tensor, prompt_len: int, model) -> torch.Tensor:
    """Drop what follows the first end-of-sequence token of the model's generation config, where
    transformers' `generate` stops (batch of one)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return out
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    new = out[0, prompt_len:].tolist()
    for i, token in enumerate(new):
        if token in eos:
            return out[:, : prompt_len + i + 1]
    return out
