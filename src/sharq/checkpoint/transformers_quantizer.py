"""transformers' `from_pretrained` for sharq checkpoint folders (`quant_method: "sharq"`).

Registered with transformers on `import sharq` (transformers_hook.py); without it transformers
does not know the method. The quantizer hands the whole load to sharq's own checked loader:

1. `_process_model_before_weight_loading` (the model transformers built from config.json, on the
   meta device): `open_checkpoint` checks the record, the files and every header; the recorded
   modules become empty SharqLinear / SharqExperts (`convert_skeleton`, as `load_quantized` does).
2. transformers' own loading pass is given nothing to do: while it runs the model's `state_dict()`
   is empty (a state-dict post-hook), and the checkpoint's tensor names are listed in the model's
   `_keys_to_ignore_on_load_unexpected`, so it reads no tensor data and reports nothing. Its packed
   tensors are not floats and not nn.Linear weights: transformers could not load them correctly
   (it would cast the FP32 global scales into the int32 buffers that hold their bits).
3. `_process_model_after_weight_loading`: `fill_skeleton` checks names, shapes and dtypes against
   the files, reads every tensor with its CRC-32 checked, puts it in place (non-persistent buffers
   too, over the ones transformers recomputed), ties the recorded aliases and fuses the norms.

The result is the model `sharq.load_quantized` returns, bit for bit. `dtype`: the checkpoint's own
dtype (or "auto") keeps every tensor as stored; another floating-point dtype casts the floating-point
tensors as `load_quantized(dir, dtype=...)` does. `device_map`: one device ("cpu", "cuda:0", 0,
{"": device}); several devices, "auto" and disk offload are refused. Quantizing on the fly
(a sharq `quantization_config` for a float model) is refused: use `sharq.quantize_`. Saving the
loaded model with `save_pretrained` is refused (the packed layout needs `sharq.save_quantized`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils import logging
from transformers.utils.quantization_config import QuantizationConfigMixin

from .fill import convert_skeleton, fill_skeleton
from .format import CONFIG_FILE, QUANT_METHOD, CheckpointError
from .reader import open_checkpoint

__all__ = ["SharqQuantizationConfig", "SharqHfQuantizer"]

logger = logging.get_logger(__name__)

_NOT_ONE_DEVICE = ("auto", "balanced", "balanced_low_0", "sequential")


class SharqQuantizationConfig(QuantizationConfigMixin):
    """The `quantization_config` of a sharq checkpoint as transformers holds it: the record's fields as
    they are in config.json, untouched (`to_dict()` gives them back). sharq validates them
    (`CheckpointRecord.from_dict`) when the model is loaded, naming the config.json."""

    def __init__(self, **record: Any):
        self.__dict__.update(record)
        self.quant_method = QUANT_METHOD


def _one_device(device_map: Any) -> torch.device:
    """The one device of a `from_pretrained` device_map (after transformers normalised it), or a ValueError."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, str) and device_map in _NOT_ONE_DEVICE:
        raise ValueError(
            f"sharq checkpoints load onto one device: device_map={device_map!r} is not supported; pass "
            "device_map='cpu' or 'cuda:0' (or use sharq.load_quantized(dir, device=...))"
        )
    values = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if len(values) != 1:
        raise ValueError(
            f"sharq checkpoints load onto one device; the device_map spreads the model over {sorted(map(str, values))}"
        )
    (value,) = values
    if value == "disk":
        raise ValueError("sharq checkpoints load onto one device; disk offload (device_map 'disk') is not supported")
    device = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device_map asks for {str(device)!r}, but CUDA is not available")
    if device.type == "meta":
        raise ValueError("sharq checkpoints load real tensors; device 'meta' is not a place to load them")
    return device


def _stored_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The model dtype config.json records ("dtype", older "torch_dtype"), None when it names none."""
    name = config.get("dtype", config.get("torch_dtype"))
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


class SharqHfQuantizer(HfQuantizer):
    """Loads a sharq checkpoint folder inside `from_pretrained` through sharq's checked loader."""

    requires_calibration = False

    def __init__(self, quantization_config: QuantizationConfigMixin, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)
        if not self.pre_quantized:
            raise ValueError(
                "sharq's from_pretrained integration loads sharq checkpoint folders only; to quantize a model, "
                "load it in float and run sharq.quantize_(model, preset), then sharq.save_quantized(model, dir)"
            )
        self._device = torch.device("cpu")
        self._dtype: torch.dtype | None = None
        self._state: tuple | None = None

    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        self._device = _one_device(device_map)

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Remember the dtype transformers resolved (the checkpoint's own for "auto"); nothing changes it."""
        self._dtype = dtype
        return dtype

    def update_device_map(self, device_map: Any) -> dict[str, torch.device]:
        """The one device, always as a map: transformers then places what it creates itself (the
        non-persistent buffers it recomputes) there, and never asks the meta skeleton for a device."""
        return {"": self._device}

    def _process_model_before_weight_loading(self, model, **kwargs: Any):
        files = kwargs.get("checkpoint_files") or []
        if not files or not all(str(f).endswith(".safetensors") for f in files):
            raise CheckpointError(f"a sharq checkpoint is stored in safetensors files; transformers found {files!r}")
        ckpt = open_checkpoint(Path(files[0]).parent)
        where = ckpt.root / CONFIG_FILE
        if type(model).__name__ != ckpt.record.model_class:
            raise CheckpointError(
                f"{where}: the checkpoint holds a {ckpt.record.model_class}, from_pretrained built a "
                f"{type(model).__name__}; load it with transformers.{ckpt.record.model_class}.from_pretrained "
                "(or sharq.load_quantized)"
            )
        dtype = self._dtype
        cast = None if dtype is None or dtype == _stored_dtype(ckpt.config) else dtype
        if cast is not None and not (isinstance(cast, torch.dtype) and cast.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {cast!r}")
        conversion = convert_skeleton(ckpt, model, ckpt.record.config)

        def load_nothing(module, state_dict, prefix, local_metadata):  # transformers' pass: see step 2
            state_dict.clear()

        hook = model.register_state_dict_post_hook(load_nothing)
        previous = model._keys_to_ignore_on_load_unexpected
        names = "|".join(re.escape(name) for name in ckpt.tensors)
        model._keys_to_ignore_on_load_unexpected = set(previous or ()) | {f"^(?:{names})$"}
        self._state = (ckpt, conversion, cast, hook, previous)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        if self._state is None:
            raise RuntimeError("the sharq quantizer loads after _process_model_before_weight_loading only")
        ckpt, conversion, cast, hook, previous = self._state
        self._state = None
        hook.remove()
        model._keys_to_ignore_on_load_unexpected = previous
        if conversion.model is not model:
            raise RuntimeError("from_pretrained replaced the model between the sharq quantizer's two steps")
        fill_skeleton(ckpt, conversion, device=self._device, dtype=cast)
        return model.eval()

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        """False: `save_pretrained` would write the packed buffers without sharq's format (int32 global
        scale bits, no checksums); `sharq.save_quantized(model, dir)` writes a checkpoint."""
        logger.warning("sharq: save_pretrained cannot write a sharq model; use sharq.save_quantized(model, dir)")
        return False

    @property
    def is_trainable(self) -> bool:
        return False
