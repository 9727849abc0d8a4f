"""`quantization_config`: what config.json records about a sharq checkpoint, and its validation.

{
  "quant_method": "sharq",
  "format_version": 1,                      # layout of the files; a loader refuses any other
  "sharq_version": "0.1.0",                 # package that wrote it; another major version is refused
  "preset": "sharq-nvfp4",                  # PRESETS name of `config`, or null for a custom config
  "config": {SharqConfig fields},           # the scheme every quantized module uses (no "operand":
                                             # written before operand modes, loads as "exact")
  "model_class": "LlamaForCausalLM",        # transformers class the skeleton is built from
  "architecture": "Llama",                  # sharq's name for it ("generic": no norm fusion)
  "modules": {qualified name: {"type": "linear", "shape": [N, K], "bias": false,
                               "format": "nvfp4", "weight_block": 32}, ...},
                                             # experts: "type": "experts", "shape": [E, H, I]
                                             # config.lm_head "nvfp4-w16": one {"type": "lm_head",
                                             # "shape": [N, K], "bias", "format": "nvfp4",
                                             # "weight_block": 16, "untied_from": name | null}
  "tied_weights": {alias: tensor},          # names that share one stored tensor (lm_head.weight)
  "quantized_weights": 134217728,           # logical weights of the quantized modules
  "weight_bits": 4.25                       # their packed storage on disk, bits per weight
}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..config import LM_HEAD_WEIGHT_BLOCK, PRESETS, Format, SharqConfig, preset_name
from .format import FORMAT_VERSION, QUANT_METHOD, CheckpointError

__all__ = ["CheckpointRecord", "major_version", "module_entry_weights"]

_KINDS = {"linear": 2, "experts": 3, "lm_head": 2}  # type -> length of its "shape"


def major_version(version: str) -> int | None:
    """The major number of a PEP 440 version string ("0.1.0", "0.2.0.dev3", "0+unknown" for a source
    tree without installed metadata), None when it has none."""
    match = re.match(r"^\s*(\d+)(?:[.+]|$)", version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


def module_entry_weights(entry: dict[str, Any]) -> int:
    """Logical weights of one recorded module: N·K for a linear or lm_head, 3·E·H·I for experts (gate, up, down)."""
    shape = entry["shape"]
    if entry["type"] in ("linear", "lm_head"):
        return shape[0] * shape[1]
    e, h, i = shape
    return 3 * e * h * i


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    config: SharqConfig
    preset: str | None
    model_class: str
    architecture: str
    modules: dict[str, dict[str, Any]]
    tied_weights: dict[str, str]
    quantized_weights: int
    weight_bits: float
    sharq_version: str
    format_version: int = FORMAT_VERSION

    @property
    def targets(self) -> dict[str, str]:
        """{module name: "linear" | "experts" | "lm_head"} — what `convert_empty_` installs."""
        return {fqn: entry["type"] for fqn, entry in self.modules.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": self.format_version,
            "sharq_version": self.sharq_version,
            "preset": self.preset,
            "config": self.config.to_dict(),
            "model_class": self.model_class,
            "architecture": self.architecture,
            "modules": self.modules,
            "tied_weights": self.tied_weights,
            "quantized_weights": self.quantized_weights,
            "weight_bits": self.weight_bits,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> CheckpointRecord:
        """Validate a `quantization_config` read from `where` (the config.json path, for messages).

        Versions are checked first: a checkpoint of another format or package major version is
        refused before any other field is interpreted.
        """
        field = "quantization_config"

        def fail(what: str) -> CheckpointError:
            return CheckpointError(f"{where}: {what}")

        if not isinstance(data, dict):
            raise fail(f"{field} is missing: not a sharq checkpoint (write one with `sharq quantize`)")
        if data.get("quant_method") != QUANT_METHOD:
            raise fail(f"{field}.quant_method is {data.get('quant_method')!r}, not 'sharq': not a sharq checkpoint")
        fmt = data.get("format_version")
        if fmt != FORMAT_VERSION:
            raise fail(f"{field}.format_version is {fmt!r}; this sharq reads checkpoint format {FORMAT_VERSION} only")
        from ..version import __version__

        written = data.get("sharq_version")
        if major_version(written) is None:
            raise fail(f"{field}.sharq_version is {written!r}, not a version like '0.1.0'")
        if major_version(written) != major_version(__version__):
            raise fail(
                f"{field}.sharq_version: written by sharq {written} (major version {major_version(written)}), "
                f"this is sharq {__version__} (major version {major_version(__version__)}); refusing to load it"
            )
        raw = data.get("config")
        if isinstance(raw, dict) and "operand" not in raw:
            # written before SPEC §7 had operand modes: those checkpoints computed the exact operand
            raw = {**raw, "operand": "exact"}
        try:
            config = SharqConfig.from_dict(raw)
        except (TypeError, ValueError) as err:
            raise fail(f"{field}.config: {err}") from None
        if not config.quantizes:
            raise fail(f"{field}.config quantizes nothing (format 'none')")
        preset = data.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise fail(f"{field}.preset: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
            if preset_name(config) != preset:
                raise fail(f"{field}.preset is {preset!r} but {field}.config is not that preset ({config.to_json()})")
        for key in ("model_class", "architecture"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise fail(f"{field}.{key} is missing or not a string")
        modules = data.get("modules")
        if not isinstance(modules, dict) or not modules:
            raise fail(f"{field}.modules is missing or empty")
        for fqn, entry in modules.items():
            _check_module(entry, config, f"{field}.modules[{fqn!r}]", fail)
        heads = [fqn for fqn, entry in modules.items() if entry["type"] == "lm_head"]
        if len(heads) != (1 if config.quantizes_lm_head else 0):
            raise fail(
                f"{field}.config.lm_head is {config.lm_head.value!r} but {field}.modules holds {len(heads)} "
                "lm_head entries"
            )
        tied = data.get("tied_weights", {})
        if not isinstance(tied, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
            raise fail(f"{field}.tied_weights must map tensor names to tensor names")
        weights = sum(module_entry_weights(e) for e in modules.values())
        if data.get("quantized_weights") != weights:
            raise fail(f"{field}.quantized_weights is {data.get('quantized_weights')!r}, the modules hold {weights}")
        bits = data.get("weight_bits")
        if isinstance(bits, bool) or not isinstance(bits, (int, float)):
            raise fail(f"{field}.weight_bits is missing or not a number")
        return cls(
            config=config,
            preset=preset,
            model_class=data["model_class"],
            architecture=data["architecture"],
            modules=modules,
            tied_weights=dict(tied),
            quantized_weights=weights,
            weight_bits=float(bits),
            sharq_version=written,
            format_version=fmt,
        )


def _check_module(entry: Any, config: SharqConfig, label: str, fail) -> None:
    if not isinstance(entry, dict) or entry.get("type") not in _KINDS:
        raise fail(f"{label} must be an object with \"type\" 'linear', 'experts' or 'lm_head', got {entry!r}")
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != _KINDS[entry["type"]]
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise fail(f"{label}.shape is {shape!r}, expected {_KINDS[entry['type']]} positive integers")
    if not isinstance(entry.get("bias"), bool):
        raise fail(f"{label}.bias must be true or false")
    if entry["type"] == "lm_head":  # weight-only, its own format whatever config.format is
        if entry.get("format") != Format.NVFP4.value or entry.get("weight_block") != LM_HEAD_WEIGHT_BLOCK:
            raise fail(
                f"{label} is {entry.get('format')!r}/{entry.get('weight_block')!r}, a quantized lm_head is "
                f"'nvfp4'/{LM_HEAD_WEIGHT_BLOCK}"
            )
        untied = entry.get("untied_from")
        if untied is not None and (not isinstance(untied, str) or not untied):
            raise fail(f"{label}.untied_from must be a tensor name or null, got {untied!r}")
        return
    if entry.get("format") != config.format.value or entry.get("weight_block") != config.weight_block:
        raise fail(
            f"{label} is {entry.get('format')!r}/{entry.get('weight_block')!r}, the config says "
            f"{config.format.value!r}/{config.weight_block} (mixed formats are not supported)"
        )
