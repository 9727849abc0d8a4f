"""Greedy decoding with transformers' `StaticCache`, one decode step captured in a CUDA graph.

`StaticDecoder(model, batch_size, max_cache_len)` holds a transformers `StaticCache` and static input
buffers. `prefill(input_ids)` runs the model's own forward eagerly (transformers builds the causal
mask); every decode step then calls the same forward on one token per sequence, which on CUDA is
captured once in a `torch.cuda.CUDAGraph` and replayed: the step reads its token and position from
device buffers, writes the next greedy token and advances the position itself, so `decode(n)` is n
graph replays with no host work in between. On the CPU (or with `graph=False`) the same step runs
eagerly, which is how the tests check it against transformers' `generate`.

The step passes a ready 4-D attention mask (batch, 1, 1, max_cache_len), which transformers uses as
given: its own mask construction reads tensor values on the host, which a CUDA graph cannot capture.
A model on "sdpa" attention runs its decode steps on `sharq.runtime.decode_attention` (grouped-query heads
stacked onto their key/value head instead of transformers' per-head K/V copies).

The greedy pick is `kernels.argmax.split_argmax` on CUDA (a two-stage split argmax: many programs
each reduce a slice of the vocabulary, one small pass combines; torch.argmax's indices exactly,
first maximum on ties, first NaN), torch.argmax elsewhere (`split_argmax=` forces either).

compile=True (or a torch.compile backend name) compiles the decode step — forward, mask and greedy
pick — with torch.compile (fullgraph, static shapes; inductor by default, which fuses the
elementwise glue around the linears: norms, rotary, residual adds, SiLU·mul) before the CUDA graph
captures it. The compilation runs at the first `decode` (about a minute for an 8B model on the H100
host, once per decoder).
Works with any decoder whose forward takes `position_ids`, `attention_mask`, `past_key_values` and
`logits_to_keep` (Llama, Qwen2/3, Mistral, Gemma 3 …), attention "sdpa" or "eager".
"""

from __future__ import annotations

import itertools
import types

import torch
from torch import nn

from .decode_attention import decode_attention

__all__ = ["StaticDecoder"]


def _own_code(method):
    """`method` bound to a copy of its function with a code object of its own. torch.compile keeps
    its compiled graphs and its recompilation count (limit 8) per code object: each decoder gets
    its own instead of sharing — and exhausting — one for every decoder of the process."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def _device_of(model: nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device


class StaticDecoder:
    """Prefill + greedy decode of `batch_size` sequences of at most `max_cache_len` tokens.

    graph: capture the decode step in a CUDA graph (default: on CUDA). The graph is captured at the
    first `decode` and reused for every later prefill of the same batch size.
    compile: False, True (torch.compile with inductor) or a torch.compile backend name, for the step.
    split_argmax: pick greedy tokens with the split-argmax kernel (default: on CUDA with triton
    installed; True on the CPU needs TRITON_INTERPRET=1) instead of torch.argmax. Same indices.
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        max_cache_len: int,
        *,
        graph: bool | None = None,
        compile: bool | str = False,
        split_argmax: bool | None = None,
    ) -> None:
        from transformers import StaticCache

        if batch_size <= 0 or max_cache_len <= 1:
            raise ValueError(
                f"StaticDecoder needs batch_size >= 1 and max_cache_len >= 2, got {batch_size}, {max_cache_len}"
            )
        self.model = model
        self.device = _device_of(model)
        self.graph_enabled = self.device.type == "cuda" if graph is None else graph
        if self.graph_enabled and self.device.type != "cuda":
            raise ValueError(f"StaticDecoder: CUDA-graph capture needs a CUDA model, this one is on {self.device}")
        self.batch_size, self.max_cache_len = batch_size, max_cache_len
        if split_argmax is None:
            from ..ops import _triton_installed

            split_argmax = self.device.type == "cuda" and _triton_installed()
        self.split_argmax = bool(split_argmax)
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        dev = dict(device=self.device)
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, **dev)  # next input token per sequence
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, **dev)  # its position
        self._slots = torch.arange(max_cache_len, **dev).view(1, 1, 1, -1)  # (1, 1, 1, L)
        self.logits: torch.Tensor | None = None  # (B, vocab) logits of the last step
        self.length = 0  # tokens in the cache
        self._graph: torch.cuda.CUDAGraph | None = None
        if compile is True:
            compile = "inductor"
        if compile is not False and not isinstance(compile, str):
            raise TypeError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
        self.compile_backend = compile or None
        self._forward = (
            self._decode_forward
            if self.compile_backend is None
            else torch.compile(
                _own_code(self._decode_forward), backend=self.compile_backend, fullgraph=True, dynamic=False
            )
        )
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            raise ValueError(f"StaticDecoder supports attention 'sdpa' or 'eager', the model uses {attn!r}")
        self._additive_mask = attn == "eager"
        self._mask_dtype = next(model.parameters()).dtype
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
            raise ValueError(
                "StaticDecoder supports full-attention decoders only; this model has "
                f"{sorted(set(text.layer_types))} layers (sliding windows need their own mask)"
            )

    # --- the decode step ---------------------------------------------------------------------------
    def _mask(self, position: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, L): slot j is visible to the current token iff j <= its position."""
        visible = self._slots <= position.view(-1, 1, 1, 1)
        if not self._additive_mask:
            return visible
        dtype = self._mask_dtype
        return torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill(~visible, torch.finfo(dtype).min)

    def _decode_forward(self, ids: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ids, position (B, 1) int64 -> logits (B, vocab), greedy next ids (B, 1)."""
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask(position),
            position_ids=position,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
        return logits, self._pick(logits)

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy tokens of logits (B, vocab): int64 (B, 1)."""
        if self.split_argmax:
            from ..kernels.argmax import split_argmax

            return split_argmax(logits, keepdim=True)
        return logits.argmax(dim=-1, keepdim=True)

    def _step(self) -> None:
        with decode_attention(self.model):
            logits, next_ids = self._forward(self.ids, self.position)
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        self.logits.copy_(logits)
        self.ids.copy_(next_ids)
        self.position.add_(1)

    def _capture(self) -> None:
        """Capture `_step` (warm-up runs first on a side stream, then the state is restored)."""
        saved = self.ids.clone(), self.position.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # Triton compiles, cuBLAS picks its kernels, allocations settle
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self._graph = graph
        # the warm-up advanced the cache by two tokens: roll back to where the prefill left it
        self.ids.copy_(saved[0])
        self.position.copy_(saved[1])
        self._set_cache_length(self.length)

    def _set_cache_length(self, length: int) -> None:
        for layer in self.cache.layers:
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(length)

    # --- public ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the model on `input_ids` (B, T) and return the first greedy tokens (B,)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch_size:
            raise ValueError(f"prefill expects input_ids of shape ({self.batch_size}, T), got {tuple(input_ids.shape)}")
        t = input_ids.shape[1]
        if not 0 < t < self.max_cache_len:
            raise ValueError(f"prefill of {t} tokens does not fit a cache of {self.max_cache_len} (room for decoding)")
        self.cache.reset()
        positions = torch.arange(t, device=self.device).unsqueeze(0).expand(self.batch_size, -1)
        out = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
        self.length = t
        self.ids.copy_(self._pick(logits))
        self.position.fill_(t)
        return self.ids[:, 0].clone()

    def rewind(self, length: int) -> None:
        """Go back to `length` cached tokens (0 < length <= the current length), e.g. to time the same
        decode steps again; the next step reads the token in `ids` at position `length`."""
        if not 0 < length <= self.length:
            raise ValueError(f"rewind to {length} tokens: the cache holds {self.length}")
        self.length = length
        self.position.fill_(length)
        self._set_cache_length(length)

    @torch.no_grad()
    def decode(self, steps: int, *, keep: bool = True) -> torch.Tensor | None:
        """Run `steps` greedy decode steps after a prefill; return the tokens they produced (B, steps),
        or None with keep=False (the steps alone, nothing copied out: for timing)."""
        if self.length == 0:
            raise RuntimeError("decode needs a prefill first")
        if self.length + steps > self.max_cache_len:
            raise ValueError(f"{self.length} cached + {steps} new tokens exceed max_cache_len={self.max_cache_len}")
        if self.graph_enabled and self._graph is None:
            self._capture()
        tokens = torch.empty(self.batch_size, steps, dtype=torch.long, device=self.device) if keep else None
        for i in range(steps):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            if keep:
                tokens[:, i] = self.ids[:, 0]
        self.length += steps
        return tokens

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy: the prompt (B, T) followed by `max_new_tokens` new tokens, (B, T + max_new_tokens)."""
        first = self.prefill(input_ids)
        rest = self.decode(max_new_tokens - 1) if max_new_tokens > 1 else first.new_zeros(self.batch_size, 0)
        return torch.cat([input_ids.to(self.device), first.unsqueeze(1), rest], dim=1)
