"""Runtime options: how a quantized model computes, never what it computes.

A `SharqConfig` is the quantization scheme — what a checkpoint records and what decides every
output value. `RuntimeOptions` are choices of the machine running it: which implementation runs
the numerics, whether inputs are checked for NaN/Inf. They are not written into checkpoints;
`sharq.quantize_`, `sharq.load_quantized` and `sharq.set_runtime_options` take them as keyword
arguments (`backend=`, `check_finite=`) and store one `RuntimeOptions` on every SharQ module.

Every backend computes the same function (the Triton kernels are bit-exact with the reference
where they write the same tensors; SPEC §7's one-GEMM sum differs only in FP32 summation order).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = ["Backend", "RuntimeOptions", "DEFAULT_OPTIONS", "set_runtime_options"]


class Backend(str, enum.Enum):
    """Which implementation computes the numerics."""

    AUTO = "auto"  # Triton on CUDA for the formats the kernels implement, the reference otherwise
    REFERENCE = "reference"  # pure torch, the executable SPEC
    TRITON = "triton"  # Triton kernels (CUDA, or the interpreter with TRITON_INTERPRET=1)


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """backend:      "auto" | "reference" | "triton" (`Backend`); an unavailable one is an error
                     when a layer runs, never a silent substitute.
    check_finite: raise `ValueError` naming the layer on NaN/Inf input instead of NaN output rows
                  (one device-to-host sync per layer call)."""

    backend: Backend = Backend.AUTO
    check_finite: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.backend, Backend):
            try:
                object.__setattr__(self, "backend", Backend(self.backend))
            except ValueError:
                allowed = ", ".join(repr(b.value) for b in Backend)
                raise ValueError(f"backend={self.backend!r} is not one of {allowed}") from None
        if not isinstance(self.check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {self.check_finite!r}")

    def replace(self, **changes: Any) -> RuntimeOptions:
        return dataclasses.replace(self, **changes)


DEFAULT_OPTIONS = RuntimeOptions()


def set_runtime_options(
    model: Any, *, backend: Backend | str | None = None, check_finite: bool | None = None, strict: bool = True
) -> int:
    """Set the runtime options of every SharQ module of `model` (an `nn.Module`) and of the input
    preparations they share; a None argument keeps each module's current value. Returns how many
    modules were changed; with `strict`, a model with no SharQ module is an error (nothing would
    change)."""
    from torch import nn

    from .nn.experts import SharqExperts
    from .nn.linear import SharqLinear
    from .nn.lm_head import SharqLMHead

    if not isinstance(model, nn.Module):
        raise TypeError(f"set_runtime_options needs a torch.nn.Module, got {type(model).__name__}")
    changes = {k: v for k, v in (("backend", backend), ("check_finite", check_finite)) if v is not None}
    RuntimeOptions(**changes)  # validates before any module changes
    count = 0
    for module in model.modules():
        if isinstance(module, (SharqLinear, SharqExperts, SharqLMHead)):
            module.options = module.options.replace(**changes)
            if getattr(module, "shared_input", None) is not None:
                module.shared_input.options = module.options
            count += 1
    if count == 0 and strict:
        raise ValueError(f"{type(model).__name__} has no SharQ module (quantize it with sharq.quantize_ first)")
    return count
