"""`sharq.quantize_`: swap a model's linears for SharQ layers, in place, with RMSNorm fusion.

Supported decoders (see `architectures.py`) are converted layer by layer: q/k/v/o and gate/up/down
(every expert of MoE layers) become `SharqLinear` / `SharqExperts`; the RMSNorm in front of q/k/v
and the one in front of gate/up become `FusedRMSNormPrep`, whose single preparation the layers
share (SPEC §9). Embeddings, `lm_head`, routers and vision towers stay in the model dtype — except
that `SharqConfig(lm_head="nvfp4-w16")` (opt-in, beyond the paper) replaces the output projection by
a weight-only quantized `SharqLMHead`. An lm_head tied to the input embedding is untied: the
embedding keeps its weight (the same Parameter, unchanged), and the model's config then says
`tie_word_embeddings=False`, so that nothing ties them again.

Any other module tree takes the generic path: the `nn.Linear`s that `filter_fn` selects (all of
them when the model is not a transformers model and no filter is given) become `SharqLinear`,
without norm fusion. A transformers decoder of an unsupported type is refused unless `filter_fn`
asks for the generic path explicitly.

Everything is planned and built before the model is touched: an error leaves the model as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from torch import nn

from ..config import SharqConfig, preset_name
from ..nn.experts import SharqExperts, expert_projections
from ..nn.fused_mlp import SharqMLP
from ..nn.fused_norm import FusedRMSNormPrep
from ..nn.linear import SharqLinear
from ..nn.lm_head import SharqLMHead
from ..nn.shared_input import SharedPreparation
from ..options import Backend, RuntimeOptions, set_runtime_options
from ..progress import with_progress
from .architectures import DecoderArchitecture, decoder_layers, find_architecture, model_type_of, supported_names

__all__ = [
    "quantize_",
    "conversion_targets",
    "conversion_groups",
    "convert_empty_",
    "EmptyConversion",
    "ConversionReport",
    "FilterFn",
]

FilterFn = Callable[[nn.Module, str], bool]


@dataclasses.dataclass
class ConversionReport:
    """What `quantize_` did to a model.

    architecture:  the supported architecture's name, or "generic" (no norm fusion).
    converted:     qualified names of the modules now quantized (SharqLinear / SharqExperts).
    fused_norms:   norms replaced by FusedRMSNormPrep, mapped to the group they prepare for.
    fused_mlps:    dense MLPs replaced by SharqMLP (act(gate) · up fused into down_proj's preparation).
    groups:        shared-preparation groups: name -> the layers that read the one preparation.
    kept:          nn.Linear modules left in the model dtype.
    lm_head:       qualified name of the weight-only quantized lm_head (`SharqConfig.lm_head`), or None.
    lm_head_untied_from: the parameter the lm_head's weight was tied to before (the input
                   embedding's, which keeps it), or None when it was not tied.
    """

    architecture: str
    preset: str | None
    config: SharqConfig
    converted: list[str] = dataclasses.field(default_factory=list)
    fused_norms: dict[str, str] = dataclasses.field(default_factory=dict)
    fused_mlps: list[str] = dataclasses.field(default_factory=list)
    groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    kept: list[str] = dataclasses.field(default_factory=list)
    lm_head: str | None = None
    lm_head_untied_from: str | None = None

    def summary(self) -> str:
        what = self.preset or "custom config"
        if not self.config.quantizes:
            return f"sharq: {what} quantizes nothing; the model is unchanged ({len(self.kept)} linears kept)"
        head = ""
        if self.lm_head is not None:
            untied = f", untied from {self.lm_head_untied_from}" if self.lm_head_untied_from else ""
            head = f"; {self.lm_head} weight-only {self.config.lm_head.value}{untied}"
        return (
            f"sharq: {what} on {self.architecture}: {len(self.converted)} modules quantized, "
            f"{len(self.fused_norms)} norms and {len(self.fused_mlps)} MLPs fused, "
            f"{len(self.groups)} shared preparations, "
            f"{len(self.kept)} linears kept in the model dtype{head}"
        )


def _excluded(fqn: str, patterns: Iterable[str]) -> bool:
    """True when a pattern's dotted parts occur as consecutive parts of `fqn` ("lm_head", "visual",
    "layers.0" …)."""
    parts = fqn.split(".")
    for pattern in patterns:
        want = pattern.split(".")
        n = len(want)
        if any(parts[i : i + n] == want for i in range(len(parts) - n + 1)):
            return True
    return False


@dataclasses.dataclass
class _Group:
    name: str
    norm: str | None  # qualified name of the norm to fuse, None = lazy sharing by the consumers
    consumers: list[str]
    mlp: str | None = None  # gate/up of a dense MLP: its qualified name (SharqMLP fuses act·mul into down)
    down: str | None = None  # and its down_proj


@dataclasses.dataclass
class _Plan:
    targets: dict[str, str] = dataclasses.field(default_factory=dict)  # fqn -> "linear" | "experts"
    groups: list[_Group] = dataclasses.field(default_factory=list)


def _check_linear(module: nn.Module, fqn: str) -> None:
    if isinstance(module, (SharqLinear, SharqExperts)):
        raise ValueError(f"{fqn} is already a sharq module; the model was quantized before")
    if type(module) is not nn.Linear:
        raise ValueError(f"{fqn} is a {type(module).__name__}, not a plain nn.Linear; sharq cannot convert it")


def _plan_decoder(model: nn.Module, arch: DecoderArchitecture) -> _Plan:
    plan = _Plan()
    for prefix, layer in decoder_layers(model, arch):
        attn = getattr(layer, arch.attn)
        for proj in (*arch.qkv, arch.o):
            fqn = f"{prefix}.{arch.attn}.{proj}"
            _check_linear(getattr(attn, proj, None), fqn)
            plan.targets[fqn] = "linear"
        plan.groups.append(
            _Group(
                f"{prefix}.{arch.attn}.qkv",
                f"{prefix}.{arch.attn_norm}",
                [f"{prefix}.{arch.attn}.{p}" for p in arch.qkv],
            )
        )
        mlp_attr = next((a for a in arch.mlp if hasattr(layer, a)), None)
        if mlp_attr is None or not hasattr(layer, arch.mlp_norm):
            raise ValueError(
                f"{prefix}: no `{'`/`'.join(arch.mlp)}` or `{arch.mlp_norm}`; not a {arch.name} layer sharq knows"
            )
        mlp, mlp_fqn = getattr(layer, mlp_attr), f"{prefix}.{mlp_attr}"
        experts = getattr(mlp, "experts", None)
        if experts is None:  # dense MLP (also the dense layers of a MoE model)
            names = [f"{mlp_fqn}.{p}" for p in (*arch.gate_up, arch.down)]
            for p, fqn in zip((*arch.gate_up, arch.down), names):
                _check_linear(getattr(mlp, p, None), fqn)
                plan.targets[fqn] = "linear"
            plan.groups.append(_Group(f"{mlp_fqn}.gate_up", f"{prefix}.{arch.mlp_norm}", names[:2], mlp_fqn, names[2]))
        elif isinstance(experts, nn.ModuleList):  # one MLP module per expert (older transformers)
            for e, expert in enumerate(experts):
                names = [f"{mlp_fqn}.experts.{e}.{p}" for p in (*arch.gate_up, arch.down)]
                for p, fqn in zip((*arch.gate_up, arch.down), names):
                    _check_linear(getattr(expert, p, None), fqn)
                    plan.targets[fqn] = "linear"
                plan.groups.append(_Group(f"{mlp_fqn}.experts.{e}.gate_up", None, names[:2]))
        else:  # fused 3-D experts
            fqn = f"{mlp_fqn}.experts"
            if isinstance(experts, SharqExperts):
                raise ValueError(f"{fqn} is already a sharq module; the model was quantized before")
            try:
                expert_projections(experts)
            except ValueError as err:
                raise ValueError(f"{fqn}: {err}") from None
            plan.targets[fqn] = "experts"
            plan.groups.append(_Group(f"{mlp_fqn}.experts.gate_up", f"{prefix}.{arch.mlp_norm}", [fqn]))
    return plan


def _preset_of(config: SharqConfig) -> str | None:
    name = preset_name(config)
    if name is not None and config.granularity.value != "tensor":
        name = f"{name} ({config.granularity.value})"
    if name is not None and config.quantizes_lm_head:
        name = f"{name} + lm_head {config.lm_head.value}"
    return name


def _find_lm_head(model: nn.Module, selected: dict[str, str], config: SharqConfig) -> tuple[str, nn.Linear]:
    """(qualified name, module) of the output projection `config.lm_head` quantizes: the model's
    `get_output_embeddings()`, else the one module named `lm_head`. ValueError naming the field when
    there is none, it is not a plain nn.Linear, or the SharQ conversion selected it too."""
    field = f"SharqConfig.lm_head={config.lm_head.value!r}"
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        found = [(fqn, m) for fqn, m in model.named_modules() if fqn.rsplit(".", 1)[-1] == "lm_head"]
        if len(found) != 1:
            raise ValueError(
                f"{field}: the model has no output projection to quantize (get_output_embeddings() is "
                f"None and {len(found)} modules are named 'lm_head')"
            )
        fqn, head = found[0]
    else:
        fqn = next((name for name, m in model.named_modules() if m is head), None)
        if fqn is None:
            raise ValueError(f"{field}: get_output_embeddings() returned a module that is not inside the model")
    if isinstance(head, SharqLMHead):
        raise ValueError(f"{fqn} is already a sharq module; the model was quantized before")
    if fqn in selected:
        raise ValueError(
            f"{field} asks for a weight-only quantized {fqn}, and the SharQ conversion selected it too "
            "(filter_fn / modules_to_not_convert): choose one"
        )
    if type(head) is not nn.Linear:
        raise ValueError(f"{field}: the output projection {fqn} is a {type(head).__name__}, not a plain nn.Linear")
    return fqn, head


def _tied_to(model: nn.Module, fqn: str, head: nn.Linear) -> str | None:
    """The first other parameter name (module order) that holds `head`'s weight, or None."""
    own = f"{fqn}.weight"
    return next(
        (name for name, p in model.named_parameters(remove_duplicate=False) if p is head.weight and name != own), None
    )


def _untie_output_embeddings(model: nn.Module, fqn: str) -> None:
    """After `fqn` (the lm_head) became a SharqLMHead: every config of the model says
    `tie_word_embeddings=False`, and transformers' tied-weights maps forget the lm_head, so that
    neither `tie_weights()` nor a later `from_pretrained` ties the embedding to it again."""
    prefix_of = fqn + "."
    for prefix, module in model.named_modules():
        config = getattr(module, "config", None)
        configs = [config] if config is not None else []
        text = getattr(config, "get_text_config", None)
        if callable(text):
            configs.append(text())
        for cfg in configs:
            if getattr(cfg, "tie_word_embeddings", False):
                cfg.tie_word_embeddings = False
        tied = getattr(module, "all_tied_weights_keys", None)
        if isinstance(tied, dict):
            full = lambda name, prefix=prefix: f"{prefix}.{name}" if prefix else name  # noqa: E731
            for key in [k for k, v in tied.items() if full(k).startswith(prefix_of) or full(v).startswith(prefix_of)]:
                del tied[key]


def _select(
    model: nn.Module, patterns: tuple[str, ...], filter_fn: FilterFn | None
) -> tuple[DecoderArchitecture | None, _Plan, dict[str, str], list[str]]:
    """(architecture, plan, selected {fqn: "linear" | "experts"}, kept linears) — touches nothing."""
    arch = find_architecture(model)
    model_type = model_type_of(model)
    if arch is None and model_type is not None and filter_fn is None:
        raise ValueError(
            f"sharq.quantize_: {type(model).__name__} (model_type {model_type!r}) is not a decoder sharq can "
            f"convert with norm fusion. Supported: {supported_names()}. To convert chosen linears without "
            "norm fusion (the generic path), pass filter_fn=lambda module, name: ..."
        )
    plan = _plan_decoder(model, arch) if arch is not None else _Plan()

    modules = dict(model.named_modules())
    selected: dict[str, str] = {}
    kept: list[str] = []
    for fqn, kind in plan.targets.items():
        if _excluded(fqn, patterns) or (filter_fn is not None and not filter_fn(modules[fqn], fqn)):
            kept.append(fqn)
        else:
            selected[fqn] = kind
    inside_experts = {f for f, k in plan.targets.items() if k == "experts"}
    for fqn, module in modules.items():
        if type(module) is not nn.Linear or fqn in plan.targets or any(fqn.startswith(e + ".") for e in inside_experts):
            continue
        if _excluded(fqn, patterns):
            kept.append(fqn)
            continue
        if filter_fn is not None:
            take = bool(filter_fn(module, fqn))
        else:
            take = arch is None  # generic path on a non-transformers module: every linear
        if take:
            selected[fqn] = "linear"
        else:
            kept.append(fqn)

    return arch, plan, selected, kept


def conversion_targets(
    model: nn.Module, *, modules_to_not_convert: Iterable[str] = ("lm_head",), filter_fn: FilterFn | None = None
) -> dict[str, str]:
    """What `quantize_` would convert, {qualified name: "linear" | "experts"}, without converting."""
    patterns = (modules_to_not_convert,) if isinstance(modules_to_not_convert, str) else tuple(modules_to_not_convert)
    return _select(model, patterns, filter_fn)[2]


def conversion_groups(
    model: nn.Module, *, modules_to_not_convert: Iterable[str] = ("lm_head",), filter_fn: FilterFn | None = None
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(targets, groups) without converting: `conversion_targets`, and the linears among them that read
    one input ({"model.layers.0.self_attn.qkv": [q, k, v fqns], ...}; groups with no target left out).

    Other module swaps (the fp8 baseline) use it to replace exactly the linears `quantize_` would.
    """
    patterns = (modules_to_not_convert,) if isinstance(modules_to_not_convert, str) else tuple(modules_to_not_convert)
    _, plan, selected, _ = _select(model, patterns, filter_fn)
    groups = {}
    for group in plan.groups:
        consumers = [c for c in group.consumers if c in selected]
        if consumers:
            groups[group.name] = consumers
    return selected, groups


def quantize_(
    model: nn.Module,
    config: SharqConfig | str,
    *,
    modules_to_not_convert: Iterable[str] = ("lm_head",),
    filter_fn: FilterFn | None = None,
    progress: bool | None = False,
    backend: str | Backend = "auto",
    check_finite: bool = False,
) -> ConversionReport:
    """Quantize `model` in place with SharQ (no calibration data); return what was done.

    config:                  a `SharqConfig` or a preset name ("sharq-nvfp4", "nvfp4", "bf16", …).
                             `config.lm_head="nvfp4-w16"` also makes the output projection a
                             weight-only quantized `SharqLMHead` (untied from the input embedding
                             when they shared a weight; see the module docstring).
    modules_to_not_convert:  names whose dotted parts, found in a module's qualified name, keep them
                             out of the SharQ conversion ("lm_head", "visual", "layers.0", …); the
                             weight-only lm_head is `config.lm_head`'s alone.
    filter_fn(module, fqn):  decides for each candidate (`nn.Linear`, or a fused-experts module of a
                             supported decoder). With it, linears outside the decoder (a vision
                             tower, say) can be selected too; without it, a supported decoder gets
                             its decoder linears and any non-transformers module all its linears.
    progress:                a progress bar over the modules (None: only on a terminal).
    backend, check_finite:   runtime options of the new modules (`sharq.options.RuntimeOptions`;
                             not part of the scheme, changeable later with `set_runtime_options`).

    The "bf16" preset (format='none') changes nothing. Raises ValueError / TypeError (and leaves the
    model untouched) for an unsupported decoder, an already-quantized model, or a module it cannot
    convert.
    """
    if isinstance(config, str):
        config = SharqConfig.from_preset(config)
    if not isinstance(config, SharqConfig):
        raise TypeError(f"config must be a SharqConfig or a preset name, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ needs a torch.nn.Module, got {type(model).__name__}")
    options = RuntimeOptions(backend=backend, check_finite=check_finite)
    patterns = (modules_to_not_convert,) if isinstance(modules_to_not_convert, str) else tuple(modules_to_not_convert)
    for name, module in model.named_modules():
        if isinstance(module, (SharqLinear, SharqExperts, SharqLMHead, FusedRMSNormPrep, SharqMLP)):
            raise ValueError(f"{name} is already a sharq module; the model was quantized before")

    arch, plan, selected, kept = _select(model, patterns, filter_fn)
    modules = dict(model.named_modules())
    report = ConversionReport(arch.name if arch else "generic", _preset_of(config), config, kept=sorted(kept))
    if not config.quantizes:
        return report
    lm_fqn, lm_head = _find_lm_head(model, selected, config) if config.quantizes_lm_head else (None, None)

    # Build everything first (quantizes the weights); the model is not touched until all succeeded.
    new_modules: dict[str, nn.Module] = {}
    for fqn, kind in with_progress(selected.items(), enabled=progress, desc="quantizing", total=len(selected)):
        if kind == "experts":
            new_modules[fqn] = SharqExperts.from_experts(modules[fqn], config, name=fqn)
        else:
            new_modules[fqn] = SharqLinear.from_float(modules[fqn], config, name=fqn)
    new_modules.update(_share_inputs(plan, arch, new_modules, modules, config, report))
    if lm_fqn is not None:
        head = SharqLMHead.from_float(lm_head, config, name=lm_fqn)
        head.untied_from = _tied_to(model, lm_fqn, lm_head)
        new_modules[lm_fqn] = head

    for fqn, module in new_modules.items():
        model.set_submodule(fqn, module)
    set_runtime_options(model, backend=options.backend, check_finite=options.check_finite, strict=False)
    report.converted = list(selected)
    if lm_fqn is not None:
        _untie_output_embeddings(model, lm_fqn)
        report.lm_head, report.lm_head_untied_from = lm_fqn, new_modules[lm_fqn].untied_from
        report.kept = [k for k in report.kept if k != lm_fqn]
    model.sharq_report = report
    return report


def _share_inputs(
    plan: _Plan,
    arch: DecoderArchitecture | None,
    quantized: dict[str, nn.Module],
    modules: dict[str, nn.Module],
    config: SharqConfig,
    report: ConversionReport,
) -> dict[str, nn.Module]:
    """Give the `quantized` layers of each group one SharedPreparation; return the fused norms and
    the SharqMLPs of dense MLPs whose gate, up and down are all quantized (built from the modules in
    `modules`, not yet installed) by qualified name. An MLP whose forward is not the gated dataflow
    stays as it is (its layers still quantized, act·mul unfused)."""
    fused: dict[str, nn.Module] = {}
    for group in plan.groups:
        consumers = [c for c in group.consumers if c in quantized]
        if not consumers:
            continue
        shared = SharedPreparation(config, len(consumers), group.name)
        for c in consumers:
            quantized[c].shared_input = shared
        if all(isinstance(quantized[c], SharqLinear) for c in consumers):
            shared.set_members([quantized[c] for c in consumers])  # one decode GEMV launch for the group
        report.groups[group.name] = consumers
        if group.norm is not None:
            fused[group.norm] = FusedRMSNormPrep.from_norm(
                modules[group.norm], arch.norm_variant, shared, name=group.norm
            )
            report.fused_norms[group.norm] = group.name
        parts = [quantized.get(c) for c in (*group.consumers, group.down)] if group.mlp else []
        if parts and all(isinstance(p, SharqLinear) for p in parts):
            try:
                fused[group.mlp] = SharqMLP.from_mlp(modules[group.mlp], *parts, name=group.mlp)
            except ValueError:
                continue
            report.fused_mlps.append(group.mlp)
    return fused


@dataclasses.dataclass
class EmptyConversion:
    """Empty sharq modules installed in a model (see `convert_empty_`); `finish()` fuses the norms."""

    model: nn.Module
    arch: DecoderArchitecture | None
    plan: _Plan
    modules: dict[str, nn.Module]  # qualified name -> the installed SharqLinear / SharqExperts / SharqLMHead
    report: ConversionReport

    def finish(self) -> ConversionReport:
        """Share the preparations and fuse the norms, once the model holds its real weights (the
        fused norm is checked bit for bit against the norm it replaces, on the norm's device)."""
        current = dict(self.model.named_modules())
        for fqn, module in _share_inputs(
            self.plan, self.arch, self.modules, current, self.report.config, self.report
        ).items():
            self.model.set_submodule(fqn, module)
        if self.report.lm_head is not None:
            self.report.lm_head_untied_from = self.modules[self.report.lm_head].untied_from
        self.model.sharq_report = self.report
        return self.report


def convert_empty_(
    model: nn.Module, config: SharqConfig, targets: dict[str, str], *, device: str = "meta"
) -> EmptyConversion:
    """Replace exactly `targets` ({qualified name: "linear" | "experts" | "lm_head"}) by sharq modules
    with zero storage on `device`, reading no weight: the skeleton a checkpoint is loaded into. An
    "lm_head" target (at most one, and only when `config.lm_head` quantizes it) must be the model's
    output projection; it becomes an empty `SharqLMHead` and is untied as `quantize_` unties it.

    Modules that `targets` leaves out stay as they are (as `modules_to_not_convert` keeps them).
    Raises ValueError naming the first target the model lacks, or has with another kind; the model
    is untouched when anything fails.
    """
    if not config.quantizes:
        raise ValueError("convert_empty_ needs a quantizing config")
    heads = [fqn for fqn, kind in targets.items() if kind == "lm_head"]
    wanted = {fqn: kind for fqn, kind in targets.items() if kind != "lm_head"}
    if len(heads) > 1 or bool(heads) != config.quantizes_lm_head:
        raise ValueError(
            f"SharqConfig.lm_head is {config.lm_head.value!r} but the targets hold {len(heads)} lm_head modules"
        )
    arch, plan, selected, kept = _select(model, (), lambda module, fqn: fqn in wanted)
    head_fqn = None
    if heads:
        head_fqn, head = _find_lm_head(model, selected, config)
        if head_fqn != heads[0]:
            raise ValueError(f"{heads[0]}: not the model's output projection ({head_fqn} is)")
    for fqn, kind in wanted.items():
        if fqn not in selected:
            raise ValueError(f"{fqn}: the model has no convertible module of that name")
        if selected[fqn] != kind:
            raise ValueError(f"{fqn}: expected a {kind} module, the model has a {selected[fqn]} module there")
    modules = dict(model.named_modules())
    built: dict[str, nn.Module] = {}
    for fqn, kind in wanted.items():
        cls = SharqExperts if kind == "experts" else SharqLinear
        built[fqn] = cls.empty_like(modules[fqn], config, name=fqn, device=device)
    if head_fqn is not None:
        built[head_fqn] = SharqLMHead.empty_like(head, config, name=head_fqn, device=device)
    for fqn, module in built.items():
        model.set_submodule(fqn, module)
    report = ConversionReport(
        arch.name if arch else "generic",
        _preset_of(config),
        config,
        converted=list(wanted),
        kept=sorted(k for k in kept if k != head_fqn),
        lm_head=head_fqn,
    )
    if head_fqn is not None:
        _untie_output_embeddings(model, head_fqn)
    return EmptyConversion(model, arch, plan, built, report)
