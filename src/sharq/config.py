"""Configuration of one SharQ quantization scheme, and the named presets of SPEC §5 and §8.

A `SharqConfig` describes how the activation entering a linear layer is split and quantized and
how the weight is quantized. Its fields compose every baseline and ablation of the SPEC:

==================  ========  ===========  ===========  ==============
preset              format    mask         residual     residual_mask
==================  ========  ===========  ===========  ==============
bf16                none      –            none         –
nvfp4/mxfp4/hif4    fmt       – (dense)    none         –
sharq-<fmt>         fmt       pair4of8/2:4 quantized    –
sparse-only         nvfp4     pair4of8     none         –
dense-dense         nvfp4     – (dense)    quantized    –
sparse-sparse       nvfp4     pair4of8     quantized    pair4of8
naive-residual      nvfp4     pair4of8     naive        –
==================  ========  ===========  ===========  ==============

`residual="quantized"` takes the residual relative to the *quantized* first term (SharQ, SPEC §5
step 4); `residual="naive"` relative to the unquantized backbone (the design SharQ argues against).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from typing import Any

__all__ = [
    "Format",
    "Residual",
    "Granularity",
    "Operand",
    "AUTO_EXACT_MAX_ROWS",
    "WeightScale",
    "LmHead",
    "LM_HEAD_WEIGHT_BLOCK",
    "MaskSpec",
    "parse_mask",
    "SharqConfig",
    "PRESETS",
]


class Format(str, enum.Enum):
    """4-bit element/scale format shared by activations and weights (SPEC §2)."""

    NONE = "none"  # no quantization (the bf16 baseline: the model's own dtype)
    NVFP4 = "nvfp4"  # E2M1 elements, E4M3 block scale (16 or 32), FP32 per-tensor scale
    MXFP4 = "mxfp4"  # E2M1 elements, E8M0 block scale per 32
    HIF4 = "hif4"  # S1P2 elements, E6M2 scale per 64 + one-bit exponents per 8 and per 4


class Residual(str, enum.Enum):
    """How the second term is formed (SPEC §5 step 4 and §8)."""

    NONE = "none"  # no second term
    QUANTIZED = "quantized"  # r = xs - deq(B): relative to the quantized first term (SharQ)
    NAIVE = "naive"  # r = xs - b: relative to the unquantized backbone (ablation)


class Granularity(str, enum.Enum):
    """Extent of the FP32 second-level activation scale of NVFP4 (SPEC §3)."""

    TENSOR = "tensor"  # one scale for the whole activation of the call (paper default)
    TOKEN = "token"  # one scale per row of the flattened (M, K) activation: batch invariant


# SPEC §7: `operand="auto"` is exact for calls of at most this many rows (the flattened (M, K)
# activation of one call), bf16-sum above. Change it only with a measurement, everywhere at once.
AUTO_EXACT_MAX_ROWS = 16


class Operand(str, enum.Enum):
    """How the linear consumes the two activation terms (SPEC §7)."""

    EXACT = "exact"  # deq(B) · Wᵀ + deq(R) · Wᵀ with FP32 accumulation: SPEC §7 (two bf16 MMAs on Hopper)
    # One matmul on bf16(deq(B) + deq(R)), the FP32 sum rounded to nearest even (one bf16 MMA on
    # Hopper instead of two).
    BF16_SUM = "bf16-sum"
    AUTO = "auto"  # EXACT for calls of at most AUTO_EXACT_MAX_ROWS rows, BF16_SUM above (the default)

    def for_rows(self, rows: int) -> Operand:
        """The operand a call of `rows` activation rows computes: EXACT or BF16_SUM."""
        if self is Operand.AUTO:
            return Operand.EXACT if rows <= AUTO_EXACT_MAX_ROWS else Operand.BF16_SUM
        return self


class WeightScale(str, enum.Enum):
    """How each weight block's scale is chosen (SPEC §6). Same payload and format either way."""

    AMAX = "amax"  # the format's fixed rule: E4M3(amax/6) (NVFP4), 2^(floor(log2 amax) - 2) (MXFP4)
    # Among a few candidates (formats/scale_search.py), the one with the smallest squared error of
    # the block's dequantized values; ties to the larger. NVFP4 and MXFP4 weights only.
    MSE = "mse"


class LmHead(str, enum.Enum):
    """What `quantize_` does with the model's `lm_head` (SPEC §9). Its activations stay in the model dtype."""

    MODEL_DTYPE = "model-dtype"  # left as it is (the paper's choice and the default)
    # Beyond the paper, opt-in: weight-only NVFP4 in LM_HEAD_WEIGHT_BLOCK-blocks (E4M3 block scales, one
    # FP32 s_w), the hidden state multiplied in the model dtype with FP32 accumulation (nn/lm_head.py).
    NVFP4_W16 = "nvfp4-w16"


# Block along K of the weight-only quantized lm_head's E4M3 scales (LmHead.NVFP4_W16).
LM_HEAD_WEIGHT_BLOCK = 16


# Block sizes each format allows (SPEC §2).
_ALLOWED_BLOCKS = {
    Format.NVFP4: (16, 32),
    Format.MXFP4: (32,),
    Format.HIF4: (64,),
}


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """An N:M activation mask (SPEC §4): keep `n` of every `m` values along K.

    `pairs=True` is the `pair4of8` layout: groups of 8 are scored as 4 pairs (max |a|, |b|) and the
    2 best pairs are kept (n=4, m=8 counted in values).
    """

    n: int
    m: int
    pairs: bool = False

    @property
    def name(self) -> str:
        return "pair4of8" if self.pairs else f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        return self.n / self.m


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_mask(spec: str) -> MaskSpec:
    """Parse `"pair4of8"`, `"2:4"` or a general `"N:M"` (0 < N < M) into a `MaskSpec`."""
    if not isinstance(spec, str):
        raise TypeError(f"mask must be a string like 'pair4of8' or '2:4', got {type(spec).__name__}")
    if spec.strip().lower() == "pair4of8":
        return MaskSpec(4, 8, pairs=True)
    match = _NM_RE.match(spec)
    if not match:
        raise ValueError(f"mask {spec!r} is not 'pair4of8' or 'N:M' (e.g. '2:4', '8:16')")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"mask {spec!r}: need 0 < N < M")
    return MaskSpec(n, m)


# fields of records written before runtime options left the scheme (dropped by `from_dict`)
_LEGACY_RUNTIME_FIELDS = ("backend", "check_finite")


def _coerce_enum(cls: type[enum.Enum], value: Any, field: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(v.value) for v in cls)
        raise ValueError(f"SharqConfig.{field}={value!r} is not one of {allowed}") from None


@dataclasses.dataclass(frozen=True)
class SharqConfig:
    """One quantization scheme: activation split + formats + weight format — what a checkpoint
    records and what decides every output value. How it runs (backend, NaN checks) is not part of
    it: see `sharq.options.RuntimeOptions`.

    Fields (enum fields also accept their string values):
      format:          element/scale format of every quantized tensor (`Format`).
      mask:            N:M mask of the first term ("pair4of8", "2:4", "N:M"), or None for a dense
                       first term (plain W4A4, dense-dense).
      residual:        second term: "none", "quantized" (SharQ) or "naive" (ablation).
      residual_mask:   N:M mask applied to the residual too (sparse-sparse ablation), or None.
      backbone_block:  block size along K of the first term's scales (logical positions).
      residual_block:  block size of the residual's scales.
      weight_block:    block size of the weight's scales.
      granularity:     "tensor" or "token" FP32 second-level activation scale (NVFP4 only; the
                       other formats have no second level and are batch invariant either way).
      operand:         what the linear multiplies (SPEC §7): "exact" (deq(B) and deq(R), two
                       products), "bf16-sum" (bf16(deq(B) + deq(R)), one product: half the MMA
                       work on Hopper) or "auto" (the default: exact for calls of at most
                       AUTO_EXACT_MAX_ROWS = 16 rows, bf16-sum above; `Operand.for_rows`).
      weight_scale:    "amax" (the format's fixed block-scale rule) or "mse" (each weight block's
                       scale chosen among candidates by squared error; NVFP4 / MXFP4, SPEC §6).
                       Applies to a quantized lm_head too.
      lm_head:         "model-dtype" (default: the lm_head stays as it is) or "nvfp4-w16" (opt-in,
                       beyond the paper: its weight in NVFP4-16, its input in the model dtype;
                       `LmHead`, SPEC §9). The same with every quantizing `format`; refused
                       with format 'none'.
    """

    format: Format = Format.NVFP4
    mask: str | None = "pair4of8"
    residual: Residual = Residual.QUANTIZED
    residual_mask: str | None = None
    backbone_block: int = 32
    residual_block: int = 16
    weight_block: int = 32
    granularity: Granularity = Granularity.TENSOR
    operand: Operand = Operand.AUTO
    weight_scale: WeightScale = WeightScale.AMAX
    lm_head: LmHead = LmHead.MODEL_DTYPE
    # Runtime options are not scheme fields; given here they are refused with a pointer (below).
    backend: dataclasses.InitVar[Any] = None
    check_finite: dataclasses.InitVar[Any] = None

    def __post_init__(self, backend: Any = None, check_finite: Any = None) -> None:
        for name, value in (("backend", backend), ("check_finite", check_finite)):
            if value is not None:
                raise TypeError(
                    f"SharqConfig({name}=...): {name} is a runtime option, not part of the quantization "
                    f"scheme; pass {name}= to sharq.quantize_, sharq.load_quantized or "
                    "sharq.set_runtime_options"
                )
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("format", _coerce_enum(Format, self.format, "format"))
        set_("residual", _coerce_enum(Residual, self.residual, "residual"))
        set_("granularity", _coerce_enum(Granularity, self.granularity, "granularity"))
        set_("operand", _coerce_enum(Operand, self.operand, "operand"))
        set_("weight_scale", _coerce_enum(WeightScale, self.weight_scale, "weight_scale"))
        set_("lm_head", _coerce_enum(LmHead, self.lm_head, "lm_head"))
        for name in ("mask", "residual_mask"):
            value = getattr(self, name)
            spec = None if value is None else parse_mask(value)  # raises on bad input
            if spec is not None:
                set_(name, spec.name)  # canonical spelling
            set_(f"_{name}_spec", spec)  # parsed once: the layers read it on every call (not a field)
        for name in ("backbone_block", "residual_block", "weight_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"SharqConfig.{name} must be an int, got {value!r}")

        if self.weight_scale is WeightScale.MSE and self.format not in (Format.NVFP4, Format.MXFP4):
            raise ValueError(
                f"SharqConfig.weight_scale='mse' needs format 'nvfp4' or 'mxfp4' (a weight block-scale "
                f"search is defined for E4M3 and E8M0 scales), got format={self.format.value!r}"
            )
        if self.format is Format.NONE:
            if self.lm_head is not LmHead.MODEL_DTYPE:
                raise ValueError(
                    f"SharqConfig.lm_head={self.lm_head.value!r} needs a quantizing format; format='none' "
                    "quantizes nothing, so the lm_head stays 'model-dtype'"
                )
            if self.mask is not None or self.residual is not Residual.NONE or self.residual_mask:
                raise ValueError(
                    "SharqConfig(format='none') quantizes nothing: it needs mask=None, "
                    "residual='none' and residual_mask=None"
                )
            return
        allowed = _ALLOWED_BLOCKS[self.format]
        for name in ("backbone_block", "residual_block", "weight_block"):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"SharqConfig.{name}={value} is not a {self.format.value} block size "
                    f"(allowed: {', '.join(map(str, allowed))})"
                )
        if self.residual is Residual.NAIVE and self.mask is None:
            raise ValueError("residual='naive' needs a sparse first term (mask=None gives r = 0)")
        if self.residual_mask is not None and self.residual is Residual.NONE:
            raise ValueError("residual_mask is set but residual='none': there is no residual to mask")

    # --- derived -----------------------------------------------------------------------------
    @property
    def quantizes(self) -> bool:
        """False for the unquantized baseline (format 'none')."""
        return self.format is not Format.NONE

    @property
    def mask_spec(self) -> MaskSpec | None:
        return self._mask_spec

    @property
    def residual_mask_spec(self) -> MaskSpec | None:
        return self._residual_mask_spec

    @property
    def quantizes_lm_head(self) -> bool:
        """True when `quantize_` replaces the lm_head by a weight-only quantized one (`LmHead`)."""
        return self.lm_head is not LmHead.MODEL_DTYPE

    @property
    def has_global_scale(self) -> bool:
        """Whether the format has the FP32 second-level scale of SPEC §3 (NVFP4 only)."""
        return self.format is Format.NVFP4

    def replace(self, **changes: Any) -> SharqConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SharqConfig:
        """The scheme of `data` (`to_dict`'s output). Records written before the scheme / runtime split
        also hold `backend` and `check_finite`: they are runtime options and are ignored here."""
        if not isinstance(data, dict):
            raise TypeError(f"SharqConfig.from_dict needs a dict, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in _LEGACY_RUNTIME_FIELDS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SharqConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SharqConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> SharqConfig:
        """The preset `name` (a key of `PRESETS`), with optional field changes."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**changes) if changes else PRESETS[name]


def _plain(fmt: Format, block: int) -> SharqConfig:
    return SharqConfig(
        format=fmt,
        mask=None,
        residual=Residual.NONE,
        backbone_block=block,
        residual_block=block,
        weight_block=block,
    )


_SHARQ_NVFP4 = SharqConfig()  # pair4of8, NVFP4 backbone/32, NVFP4-16 residual, NVFP4-32 weight

PRESETS: dict[str, SharqConfig] = {
    "bf16": SharqConfig(format=Format.NONE, mask=None, residual=Residual.NONE),
    "nvfp4": _plain(Format.NVFP4, 16),
    "mxfp4": _plain(Format.MXFP4, 32),
    "hif4": _plain(Format.HIF4, 64),
    "sharq-nvfp4": _SHARQ_NVFP4,
    "sharq-nvfp4-w16": _SHARQ_NVFP4.replace(weight_block=16),
    "sharq-mxfp4": SharqConfig(
        format=Format.MXFP4, mask="pair4of8", backbone_block=32, residual_block=32, weight_block=32
    ),
    "sharq-hif4": SharqConfig(format=Format.HIF4, mask="2:4", backbone_block=64, residual_block=64, weight_block=64),
    # Ablations of SharQ-NVFP4 (SPEC §8): each changes exactly one thing.
    "sparse-only": _SHARQ_NVFP4.replace(residual=Residual.NONE),
    "dense-dense": _SHARQ_NVFP4.replace(mask=None, backbone_block=16),
    "sparse-sparse": _SHARQ_NVFP4.replace(residual_mask="pair4of8"),
    "naive-residual": _SHARQ_NVFP4.replace(residual=Residual.NAIVE),
    # Beyond the paper (SPEC §6): weight block scales chosen by squared error, same payload.
    "nvfp4-mse": _plain(Format.NVFP4, 16).replace(weight_scale=WeightScale.MSE),
    "sharq-nvfp4-mse": _SHARQ_NVFP4.replace(weight_scale=WeightScale.MSE),
    "sharq-nvfp4-w16-mse": _SHARQ_NVFP4.replace(weight_block=16, weight_scale=WeightScale.MSE),
}


def preset_name(config: SharqConfig) -> str | None:
    """The PRESETS key `config` is, ignoring granularity, operand and lm_head (the presets name the
    decoder linears' scheme); None if custom."""
    base = config.replace(granularity="tensor", operand="auto", lm_head=LmHead.MODEL_DTYPE)
    return next((name for name, preset in PRESETS.items() if preset == base), None)
