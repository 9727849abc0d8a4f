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

The group's linears (q/k/v, gate/up: `members`, registered by `sharq.quantize_`) can also share
their launch: for a short decode batch on the Triton backend, whose preparation is the decode
GEMV's operand, the first member called runs one GEMV over every member's weight (one K, one
launch instead of two or three, `kernels.gemv_nvfp4.fp4_weight_gemv_group`) and the others take
their columns of its output — the same values their own launches compute, under the same rule of
the same input tensor.

Under CUDA-graph capture the hand-over runs once, at capture, and the graph replays the kernels
that read the published buffers, which the replay itself rewrites first (nothing stale). Traced by
torch.compile (dynamo), `Tensor._version` and `_base` are not traceable (each read would break the
graph, and the per-layer graphs would recompile per module), so only the very tensor published is
reused there: a traced transformers layer hands its norm output to q/k/v and gate/up unchanged.
"""

from __future__ import annotations

import torch

from ..config import SharqConfig
from ..ops import group_launch_possible, grouped_linear_from_prepared, prepare
from ..options import DEFAULT_OPTIONS, RuntimeOptions
from ..sparse.decompose import PreparedActivation

__all__ = ["SharedPreparation", "prepare_rows"]


def prepare_rows(
    x: torch.Tensor, config: SharqConfig, options: RuntimeOptions = DEFAULT_OPTIONS, planner=None
) -> PreparedActivation:
    """Prepare `x` (..., K) as a 2-D activation (M, K), M = x.numel() // K (the layers' layout).
    planner: None (`plan_linear`) or a function (rows, device) -> LinearPlan (a MoE layer's input)."""
    rows = x.reshape(-1, x.shape[-1])
    return prepare(rows, config, options, plan=None if planner is None else planner(rows.shape[0], rows.device))


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
    options:    `RuntimeOptions` (backend, NaN check), set with the consumers' by `sharq.set_runtime_options`.
    """

    options: RuntimeOptions = DEFAULT_OPTIONS

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
        self.members: tuple = ()  # the group's SharqLinear layers, in column order (`set_members`)
        # how the input is prepared: None (`plan_linear`), or a function (rows, device) -> LinearPlan
        # that the consumer sets (a MoE layer's experts GEMV reads the GEMV operand up to 16 rows)
        self.planner = None
        self._group_out: torch.Tensor | None = None  # (M, Σ out_features): every member's output
        self._group_tried = False  # whether a member asked for the group's launch on this input

    def set_members(self, members) -> None:
        """Let the group's layers share one decode GEMV launch (`linear`): `members` are SharqLinear
        layers of this group reading one input, in the order their outputs sit side by side."""
        members = tuple(members)
        if any(getattr(m, "shared_input", None) is not self for m in members):
            raise ValueError(f"{self.name}: the members of a shared launch must consume this shared preparation")
        self.members = members

    def prepare(self, x: torch.Tensor) -> PreparedActivation:
        """Prepare `x` and publish it for the group's consumers (called by the producer)."""
        return self.publish(x, prepare_rows(x, self.config, self.options, self.planner))

    def publish(self, x: torch.Tensor, prepared: PreparedActivation) -> PreparedActivation:
        """Publish `prepared`, the preparation of `x` as (M, K) rows computed by the producer (the fused
        norm's kernel), for the group's consumers; returns it."""
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self.prepare_count += 1
        version = 0 if compiling else x._version
        self._source, self._prepared, self._version, self._taken = x, prepared, version, 0
        self._group_out, self._group_tried = None, False
        return prepared

    def _is_fresh(self, x: torch.Tensor) -> bool:
        """True when `x` is the published source (unchanged since)."""
        source = self._source
        if torch.compiler.is_compiling():
            # Traced by torch.compile: `_version` and `_base` are not traceable, and a traced graph
            # has no in-place change of a norm output; only the very tensor published is reused.
            return source is not None and x is source
        return source is not None and source._version == self._version and _same_data(x, source)

    def _count_take(self) -> None:
        self._taken += 1
        if self._taken >= self.consumers:
            self.clear()

    def take(self, x: torch.Tensor) -> PreparedActivation:
        """The preparation of `x`: the published one when `x` is its source, else a new one.

        A new one is published in turn, so the group's next consumers reuse it (lazy sharing).
        """
        prepared = self._prepared if self._is_fresh(x) else self.prepare(x)
        self._count_take()
        return prepared

    def linear(self, x: torch.Tensor, member) -> torch.Tensor:
        """`member`'s output for `x` (..., K) -> (..., member.out_features): its columns of one GEMV
        launch over every member's weight when one launch serves them (computed by the first member
        called on the published input), else `member.linear_prepared` of the shared preparation."""
        prepared = self._prepared if self._is_fresh(x) else self.prepare(x)
        out, start = self._group_out, None
        offset = 0
        for m in self.members:
            if m is member:
                start = offset
            offset += m.out_features
        if start is not None and out is None and not self._group_tried and len(self.members) > 1:
            self._group_tried = True  # once per published input: a refusal is not asked again
            if group_launch_possible(prepared):
                out = grouped_linear_from_prepared(
                    prepared, [m.quantized_weight for m in self.members], [m.bias for m in self.members], x.dtype
                )
            self._group_out = out
        self._count_take()
        if start is None or out is None:
            return member.linear_prepared(x, prepared)
        return out[:, start : start + member.out_features].reshape(*x.shape[:-1], member.out_features)

    def clear(self) -> None:
        """Drop the published tensors (they are never needed after the last consumer)."""
        self._source, self._prepared, self._taken, self._group_out, self._group_tried = None, None, 0, None, False

    def __repr__(self) -> str:
        return f"SharedPreparation({self.name!r}, consumers={self.consumers})"
