"""`fp8_quantize_`: swap a model's linears for the FP8 baseline, in place.

It replaces exactly the linears `sharq.quantize_` would (the same architecture planning,
`conversion_groups`): q/k/v/o and gate/up/down of every decoder layer of a supported transformers
decoder, `lm_head` and embeddings kept. q/k/v and gate/up share one per-token quantization of their
input (`Fp8SharedInput`). Mixture-of-experts layers (fused 3-D experts) are refused: the baseline
covers dense linears only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch import nn

from ..models.convert import FilterFn, conversion_groups
from .fp8_layer import Fp8Linear, Fp8SharedInput

__all__ = ["Fp8Report", "fp8_quantize_"]


@dataclasses.dataclass
class Fp8Report:
    """converted: qualified names now `Fp8Linear`; groups: shared-quantization groups → their layers."""

    converted: list[str]
    groups: dict[str, list[str]]

    def summary(self) -> str:
        return (
            f"fp8: {len(self.converted)} linears → E4M3 weights + per-token E4M3 activations, "
            f"{len(self.groups)} shared activation quantizations"
        )


def fp8_quantize_(
    model: nn.Module, *, modules_to_not_convert: Iterable[str] = ("lm_head",), filter_fn: FilterFn | None = None
) -> Fp8Report:
    """Quantize `model`'s decoder linears to the FP8 baseline in place; return what was done.

    Same selection arguments as `sharq.quantize_`. Raises ValueError (model untouched) for an
    unsupported decoder, a model that holds quantized modules already, or a fused-experts module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fp8_quantize_ needs a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, Fp8Linear):
            raise ValueError(f"{name} is already an Fp8Linear; the model was quantized before")
    targets, groups = conversion_groups(model, modules_to_not_convert=modules_to_not_convert, filter_fn=filter_fn)
    experts = [fqn for fqn, kind in targets.items() if kind != "linear"]
    if experts:
        raise ValueError(
            f"fp8_quantize_: {experts[0]} is a fused mixture-of-experts module; the fp8 baseline "
            "converts dense linears only (exclude it with modules_to_not_convert)"
        )
    modules = dict(model.named_modules())
    new = {fqn: Fp8Linear.from_float(modules[fqn], name=fqn) for fqn in targets}  # all built before any swap
    for group, consumers in groups.items():
        shared = Fp8SharedInput(len(consumers), group)
        for fqn in consumers:
            new[fqn].shared_input = shared
    for fqn, module in new.items():
        model.set_submodule(fqn, module)
    report = Fp8Report(list(targets), dict(groups))
    model.fp8_report = report
    return report
