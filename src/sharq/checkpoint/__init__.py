"""Quantized checkpoints: save a SharQ model once, load it anywhere without the original weights.

save_quantized(model, dir, tokenizer=...)   safetensors with the packed FP4 payload + config.json
load_quantized(dir, device=..., dtype=...)  the model again, bit-identical, tensors streamed
load_tokenizer(dir)                         the tokenizer saved with it
has_tokenizer(dir)                          whether a folder holds tokenizer files
checkpoint_info(dir)                        record, files, bits per weight — from headers only
CheckpointError                             every refusal, naming the file and tensor / field
"""

from .format import CheckpointError
from .info import checkpoint_info, format_info
from .load import has_tokenizer, load_quantized, load_tokenizer
from .reader import is_sharq_checkpoint
from .save import SavedCheckpoint, save_quantized

__all__ = [
    "CheckpointError",
    "SavedCheckpoint",
    "checkpoint_info",
    "format_info",
    "has_tokenizer",
    "is_sharq_checkpoint",
    "load_quantized",
    "load_tokenizer",
    "save_quantized",
]
