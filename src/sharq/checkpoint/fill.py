"""Fill a model skeleton with a checkpoint's tensors: the loading steps after the skeleton exists.

Shared by `load_quantized` (which builds the skeleton itself) and the transformers quantizer
(where `from_pretrained` builds it):

  convert_skeleton(ckpt, model, config)   replace the recorded modules by empty sharq modules
  fill_skeleton(ckpt, conversion, ...)    check names, shapes and dtypes against the files, then
                                          read each tensor (CRC-32 checked) and put it in place,
                                          tie the recorded aliases, fuse the norms

Every failure is a CheckpointError naming the file and the tensor or field.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..config import SharqConfig
from ..models.convert import EmptyConversion, convert_empty_
from ..progress import with_progress
from .format import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, CheckpointError, dtype_name, tensor_crc32
from .reader import CheckpointFiles
from .tensors import global_scale_names, module_entry, stored_dtype

__all__ = ["convert_skeleton", "fill_skeleton"]


def convert_skeleton(ckpt: CheckpointFiles, model: nn.Module, config: SharqConfig) -> EmptyConversion:
    """`convert_empty_` of the recorded modules on the meta device, its refusal as a CheckpointError.
    A recorded lm_head gets its `untied_from` from the record."""
    try:
        conversion = convert_empty_(model, config, ckpt.record.targets, device="meta")
    except ValueError as err:
        raise CheckpointError(f"{ckpt.root / CONFIG_FILE}: quantization_config.modules: {err}") from None
    for fqn, entry in ckpt.record.modules.items():
        if entry["type"] == "lm_head":
            conversion.modules[fqn].untied_from = entry.get("untied_from")
    return conversion


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer name of `model` (aliases included) -> its tensor."""
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return dict(named)


def _check_layout(
    ckpt: CheckpointFiles, model: nn.Module, modules: dict[str, nn.Module], cast: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """The skeleton tensors to fill, by name, after checking names, shapes and dtypes against the files.

    A floating-point tensor may be stored in another float dtype than the skeleton's outside the
    quantized modules (the dtype it was saved in), and anywhere when a `cast` dtype is asked for
    (the skeleton is then built in that dtype, and the tensor is cast to it)."""
    where = ckpt.root / CONFIG_FILE
    for fqn, entry in ckpt.record.modules.items():
        built = module_entry(modules[fqn])
        for key in ("type", "shape", "bias"):
            if built[key] != entry[key]:
                raise CheckpointError(
                    f"{where}: quantization_config.modules[{fqn!r}] records {key} {entry[key]!r}, the model "
                    f"built from config.json has {built[key]!r} there"
                )
    skeleton = _all_tensors(model)
    for fqn, entry in ckpt.record.modules.items():
        untied = entry.get("untied_from") if entry["type"] == "lm_head" else None
        if untied is not None and (untied not in skeleton or list(skeleton[untied].shape) != entry["shape"]):
            raise CheckpointError(
                f"{where}: quantization_config.modules[{fqn!r}].untied_from names {untied!r}, which the model built "
                f"from config.json does not have with shape {entry['shape']}"
            )
    tied = ckpt.record.tied_weights
    for alias, target in tied.items():
        if alias not in skeleton or target not in skeleton or target in tied:
            raise CheckpointError(
                f"{where}: quantization_config.tied_weights ties {alias!r} to {target!r}, which the model built "
                "from config.json does not have"
            )
        if skeleton[alias].shape != skeleton[target].shape:
            raise CheckpointError(f"{where}: tied tensors {alias!r} and {target!r} have different shapes")
    wanted = {name: t for name, t in skeleton.items() if name not in tied}
    stored = ckpt.tensors
    missing = [name for name in wanted if name not in stored]
    if missing:
        files = ckpt.root / (SINGLE_FILE if len(ckpt.files) == 1 else INDEX_FILE)
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{files}: tensor {missing[0]!r} is missing{more}; the checkpoint does not match the model of config.json"
        )
    for name, (file, _) in stored.items():
        if name not in wanted:
            why = "is tied to another tensor" if name in tied else "is not a tensor of the model built from config.json"
            raise CheckpointError(f"{file}: unexpected tensor {name!r}: it {why}")
    scale_names = global_scale_names(modules)
    quantized = tuple(f"{fqn}." for fqn in modules)
    for name, tensor in wanted.items():
        file, info = stored[name]
        want = dtype_name(stored_dtype(name, tensor, scale_names))
        both_float = (
            info.dtype.startswith(("F", "BF"))
            and tensor.is_floating_point()
            and (cast is not None or not name.startswith(quantized))
        )
        if tuple(info.shape) != tuple(tensor.shape) or (info.dtype != want and not both_float):
            raise CheckpointError(
                f"{file}: tensor {name!r} is {info.dtype} {list(info.shape)}, the model built from config.json "
                f"expects {want} {list(tensor.shape)}"
            )
    return wanted


def _put(model: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=like.requires_grad and value.is_floating_point())
    else:
        module._buffers[attr] = value


def fill_skeleton(
    ckpt: CheckpointFiles,
    conversion: EmptyConversion,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    verify: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """Load every tensor of `ckpt` into `conversion.model` (from `convert_skeleton`), on `device`.

    The skeleton's tensor names must be exactly the stored ones (tied aliases aside), each with the
    stored shape and dtype — all checked before a byte of tensor data is read. Tensors are then
    read one at a time, their CRC-32 checked (`verify`), floating-point ones cast to `dtype` (None:
    kept as stored), and put in place; the recorded aliases are tied, no tensor may be left on the
    meta device, and the norms are fused. Sets `model.sharq_checkpoint` (the record) and
    `model.sharq_report`; returns the model.
    """
    model = conversion.model
    wanted = _check_layout(ckpt, model, conversion.modules, dtype)
    scale_names = global_scale_names(conversion.modules)

    from safetensors import SafetensorError, safe_open

    bar = with_progress(range(len(wanted)), enabled=progress, desc="loading", unit="tensor")
    counter = iter(bar)
    for file in ckpt.files:
        name = None
        try:
            with safe_open(str(file), framework="pt", device="cpu") as reader:
                for name in ckpt.names_in(file):
                    value = reader.get_tensor(name)
                    if verify and (got := tensor_crc32(value)) != ckpt.crc32[name]:
                        raise CheckpointError(
                            f"{file}: tensor {name!r} fails its checksum (CRC-32 {got}, recorded "
                            f"{ckpt.crc32[name]}); the file is corrupt"
                        )
                    if name in scale_names:
                        value = value.view(torch.int32)  # the module keeps the FP32 bits as int32
                    elif dtype is not None and value.is_floating_point():
                        value = value.to(dtype)
                    _put(model, name, value.to(device), wanted[name])
                    next(counter, None)
        except SafetensorError as err:
            at = f" at tensor {name!r}" if name else ""
            raise CheckpointError(f"{file}: cannot be read{at} ({err})") from None
    for _ in counter:  # closes the bar
        pass
    for alias, target in ckpt.record.tied_weights.items():
        owner, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        source = model.get_submodule(t_owner)
        value = source._parameters.get(t_attr, source._buffers.get(t_attr))
        module = model.get_submodule(owner)
        (module._parameters if attr in module._parameters else module._buffers)[attr] = value
    left = [name for name, t in _all_tensors(model).items() if t.is_meta]
    # a tensor a module keeps as a plain attribute (not registered) is not in any checkpoint
    left += [
        f"{fqn}.{attr}"
        for fqn, m in model.named_modules()
        for attr, v in vars(m).items()
        if isinstance(v, torch.Tensor) and v.is_meta
    ]
    if left:
        raise CheckpointError(
            f"{ckpt.root}: tensor {left[0]!r} of {ckpt.record.model_class} was not loaded (not a registered "
            "parameter or buffer); sharq cannot rebuild this model from a checkpoint"
        )
    try:
        conversion.finish()
    except ValueError as err:
        raise CheckpointError(f"{ckpt.root / CONFIG_FILE}: {err}") from None
    model.sharq_checkpoint = ckpt.record
    return model
