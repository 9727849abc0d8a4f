"""One prepared activation shared by the linears that read the same input (SPEC §9).

q, k and v read the same normalized hidden state, and so do gate and up: the SharQ preparation
(amax, mask, two quantizations) of that state is computed once and handed to each of them.

`SharedPreparation` is the hand-over point. Whoever produces the input publishes
`(source, prepared)` — the fused norm (`FusedRMSNormPrep`) eagerly, or the first consumer of a
group lazily — and each consumer `take`s it if, and only if, it was called with that very tensor
(the same object, or a contiguous full-size view of it such as `x.view(-1, K)`, not modified in
place since). Any other input
is prepared by the consumer itself, so sharing can change how often the preparation runs, never
what a layer computes. The published tensors are dropped once every consumer has taken them.

Under CUDA-graph capture the hand-over runs once, at capture, and the graph replays the kernels
that read the published buffers, which the replay itself rewrites first (nothing stale). Traced by
torch.compile (dynamo), `Tensor._version` and `_base` are not traceable (each read would break the
graph, and the per-layer graphs would recompile per module), so only the very tensor published is
reused there: a traced transformers layer hands its norm output to q/k/v and gate/up unchanged.
"""

from __future__ import annotations

import torch

from ..config import SharqConfig
from ..ops import prepare
from ..sparse.decompose import PreparedActivation

__all__ = ["SharedPreparation", "prepare_rows"]


def prepare_rows(x: torch.Tensor, config: SharqConfig) -> PreparedActivation:
    """Prepare `x` (..., K) as a 2-D activation (M, K), M = x.numel() // K (the layers' layout)."""
    return prepare(x.reshape(-1, x.shape[-1]), config)


def _same_data(x: torch.Tensor, source: torch.Tensor) -> bool:
    """True when `x` is `source` or a contiguous view of all of it with the same last dimension."""
    if x is source:
        return True
    if x._base is not source and not (source._base is not None and x._base is source._base):
        return False
    return (
        x.shape[-1] == source.shape[-1]
        and x.numel() == source.numel()
        and x.dtype == source.dtype
        and x.storage_offset() == source.storage_offset()
        and x.is_contiguous()
        and source.is_contiguous()
    )


class SharedPreparation:
    """The prepared activation of one input, shared by `consumers` linears of one `config`.

    name:       the group's label, e.g. "model.layers.3.self_attn.qkv" (error messages, reports).
    consumers:  how many linears read the input; after that many `take`s the reference is dropped.
    prepare_count: how many preparations this group ran eagerly (tests and `sharq inspect` read it);
                   compiled calls are not counted (a Python counter read by a traced graph would be
                   a guard, and every call would recompile it).
    """

    def __init__(self, config: SharqConfig, consumers: int, name: str) -> None:
        if consumers <= 0:
            raise ValueError(f"{name}: a shared preparation needs at least one consumer, got {consumers}")
        self.config = config
        self.consumers = consumers
        self.name = name
        self.prepare_count = 0
        self._source: torch.Tensor | None = None
        self._prepared: PreparedActivation | None = None
        self._version = 0
        self._taken = 0

    def prepare(self, x: torch.Tensor) -> PreparedActivation:
        """Prepare `x` and publish it for the group's consumers (called by the producer)."""
        prepared = prepare_rows(x, self.config)
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self.prepare_count += 1
        version = 0 if compiling else x._version
        self._source, self._prepared, self._version, self._taken = x, prepared, version, 0
        return prepared

    def take(self, x: torch.Tensor) -> PreparedActivation:
        """The preparation of `x`: the published one when `x` is its source, else a new one.

        A new one is published in turn, so the group's next consumers reuse it (lazy sharing).
        """
        source = self._source
        if torch.compiler.is_compiling():
            # Traced by torch.compile: `_version` and `_base` are not traceable, and a traced graph
            # has no in-place change of a norm output; only the very tensor published is reused.
            fresh = source is not None and x is source
        else:
            fresh = source is not None and source._version == self._version and _same_data(x, source)
        if fresh:
            prepared = self._prepared
        else:
            prepared = self.prepare(x)
        self._taken += 1
        if self._taken >= self.consumers:
            self.clear()
        return prepared

    def clear(self) -> None:
        """Drop the published tensors (they are never needed after the last consumer)."""
        self._source, self._prepared, self._taken = None, None, 0

    def __repr__(self) -> str:
        return f"SharedPreparation({self.name!r}, consumers={self.consumers})"
