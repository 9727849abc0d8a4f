"""A gated MLP whose act(gate) · up is fused into down_proj's preparation (SPEC §9, DESIGN: Hopper).

The supported decoders compute their dense MLP as `down_proj(act_fn(gate_proj(x)) * up_proj(x))`.
`SharqMLP` takes the MLP module's place with the same children (`gate_proj`, `up_proj`, `down_proj`,
`act_fn`: the state_dict keys do not change) and runs that dataflow; on the Triton backend
(`kernels.plan.plan_producer("act-mul", ...)`) down_proj's preparation kernel computes
act(gate) · up itself, so the product is never written to memory.

Bit-identical to torch: for bf16 and fp16 the activation is a function of a 16-bit input, so
`activation_table` evaluates the model's own `act_fn` once on all 65,536 values, on the device that
runs it; the kernel looks act(gate) up by the gate's bits and rounds the product with `up` to the
dtype as torch's multiplication does. Whatever the activation's implementation (SiLU's exp,
GELU's tanh) the kernel reproduces it exactly. FP32 activations stay unfused.

`from_mlp` refuses a module whose forward is not that dataflow: it runs the module's own forward
with stand-in projections on a probe and checks what reaches down_proj. The experts of a MoE layer
(`SharqExperts`) fuse each expert's act(gate) · up the same way, with `ActivationTables`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops import prepare_act_mul
from .linear import SharqLinear

__all__ = ["SharqMLP", "ActivationTables", "activation_table", "act_mul_reference"]

_TABLE_DTYPES = (torch.bfloat16, torch.float16)


def act_mul_reference(gate: torch.Tensor, up: torch.Tensor, act_fn: nn.Module) -> torch.Tensor:
    """act_fn(gate) · up in the model dtype, as the decoders' MLPs compute down_proj's input."""
    return act_fn(gate) * up


def _all_values(dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(65,536,) every 16-bit value of `dtype`, the value of bits b at index b (uint16 order)."""
    bits = torch.arange(65536, dtype=torch.int32, device=device)
    return (bits - (bits >= 32768).to(torch.int32) * 65536).to(torch.int16).view(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def activation_table(act_fn: nn.Module, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor | None:
    """act_fn of every `dtype` (bf16 or fp16) value on `device`: (65,536,) `dtype`, indexed by the
    input's bits as an unsigned 16-bit integer. None when act_fn is not an elementwise function of
    its input: the same values in another order and shape ((256, 256), reversed) must give the same
    outputs bit for bit, in `dtype`."""
    if dtype not in _TABLE_DTYPES:
        raise ValueError(f"activation tables are for bf16 and fp16, got {dtype}")
    values = _all_values(dtype, device)
    with torch.no_grad():
        table = act_fn(values)
        if not isinstance(table, torch.Tensor) or table.shape != (65536,) or table.dtype != dtype:
            return None
        again = act_fn(values.flip(0).view(256, 256)).reshape(-1).flip(0)
    return table.contiguous() if _same_bits(table, again) else None


class ActivationTables:
    """The activation tables of one `act_fn`, by (dtype, device): built at the first eager call that
    needs one — never while traced by torch.compile or captured in a CUDA graph, where a missing table
    leaves the call unfused (the same bits)."""

    def __init__(self, act_fn: nn.Module) -> None:
        self.act_fn = act_fn
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor | None] = {}

    def get(self, gate: torch.Tensor) -> torch.Tensor | None:
        """The table for gate's dtype and device, or None (fp32, not elementwise, not buildable now)."""
        key = (gate.dtype, gate.device)
        if key in self._tables or gate.dtype not in _TABLE_DTYPES:
            return self._tables.get(key)
        if torch.compiler.is_compiling() or (gate.is_cuda and torch.cuda.is_current_stream_capturing()):
            return None
        table = activation_table(self.act_fn, gate.dtype, gate.device)
        self._tables[key] = table
        return table


class _Const(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class _Capture(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return self.out


def _computes_gated_mlp(mlp: nn.Module, hidden: int, inner: int) -> bool:
    """True when `mlp`'s own forward feeds down_proj exactly act_fn(gate_proj(x)) * up_proj(x), once:
    checked on a shallow copy whose three projections are stand-ins (fixed random outputs, FP32)."""
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(2, inner, generator=gen), torch.randn(2, inner, generator=gen)
    capture = _Capture(torch.zeros(2, hidden))
    probe = copy.copy(mlp)
    probe._modules = dict(mlp._modules, gate_proj=_Const(gate), up_proj=_Const(up), down_proj=capture)
    with torch.no_grad():
        try:
            probe(torch.zeros(2, hidden))
        except Exception:  # a forward this probe cannot run is not the dataflow sharq knows
            return False
        want = act_mul_reference(gate, up, mlp.act_fn)
    return len(capture.seen) == 1 and torch.equal(capture.seen[0], want)


class SharqMLP(nn.Module):
    """down_proj(act_fn(gate_proj(x)) · up_proj(x)) with the product fused into down_proj's
    preparation where the plan fuses it.

    x: (..., H); returns (..., H) in x's dtype. gate_proj, up_proj: SharqLinear H -> I (they may share
    one preparation of x, `SharedPreparation`); down_proj: SharqLinear I -> H; act_fn: the MLP's own
    activation module. Where the plan does not fuse (reference backend, fp32, SHARQ_FUSE=0, …) it
    runs the dataflow above as written. It holds no runtime options of its own: the fused product is
    planned with down_proj's `options` (the module whose input it is), so `sharq.set_runtime_options`
    reaches it through its three SharqLinear children.
    """

    def __init__(
        self,
        gate_proj: SharqLinear,
        up_proj: SharqLinear,
        down_proj: SharqLinear,
        act_fn: nn.Module,
        name: str,
        original_class: str = "MLP",
    ) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act_fn = act_fn
        self.name = name
        self.original_class = original_class
        self.act_tables = ActivationTables(act_fn)

    @classmethod
    def from_mlp(
        cls, mlp: nn.Module, gate_proj: SharqLinear, up_proj: SharqLinear, down_proj: SharqLinear, *, name: str
    ) -> SharqMLP:
        """The SharqMLP replacing `mlp` (whose `act_fn` it keeps) with its quantized projections.
        ValueError, naming `name`, when `mlp` has no activation module, the sizes do not chain
        (H -> I -> H), or its forward is not down_proj(act_fn(gate_proj(x)) * up_proj(x)) (checked on
        a probe)."""
        act_fn = getattr(mlp, "act_fn", None)
        if not isinstance(act_fn, nn.Module):
            raise ValueError(f"{name}: {type(mlp).__name__} has no `act_fn` module")
        gate, up, down = gate_proj, up_proj, down_proj
        if not (
            gate.in_features == up.in_features == down.out_features
            and gate.out_features == up.out_features == down.in_features
        ):
            raise ValueError(f"{name}: gate/up/down sizes do not chain (H -> I -> H)")
        if not _computes_gated_mlp(mlp, down.out_features, down.in_features):
            raise ValueError(
                f"{name}: {type(mlp).__name__}.forward is not down_proj(act_fn(gate_proj(x)) * up_proj(x))"
            )
        return cls(gate, up, down, act_fn, name, type(mlp).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        up = self.up_proj(x)
        down = self.down_proj
        table = self.act_tables.get(gate) if gate.numel() else None
        # down_proj's runtime options (backend, NaN check) decide, as they would for its own input
        prepared = prepare_act_mul(gate, up, down.config, down.options, table=table) if gate.numel() else None
        if prepared is None:
            return down(act_mul_reference(gate, up, self.act_fn))
        # gate stands in for down_proj's input (…, I): its shape, dtype and device; the values are
        # not read when the preparation is given
        return down.linear_prepared(gate, prepared)

    def extra_repr(self) -> str:
        return f"act_mul_fused_into=down_proj, replaces={self.original_class}"
