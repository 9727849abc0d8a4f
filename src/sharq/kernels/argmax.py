"""Split argmax over the last dimension in Triton: the greedy pick of a decode step.

`split_argmax(logits)` returns what `torch.argmax(logits, dim=-1)` returns — the index of the first
maximum of each row, and the index of the first NaN where a row holds one (torch orders NaN above
every number, whatever its sign) — for logits (rows, vocab) in bfloat16, float16 or float32.

Two launches instead of one program per row:
  1. grid (rows, splits): each program walks one slice of SLICE positions in BLOCK-wide steps and
     stores its slice's best key and the first index holding it;
  2. grid (rows,): one program per row picks the best of its splits, the lowest split on ties.
Each value becomes an int32 key that orders as torch compares: the FP32 bit pattern, negative
values with their magnitude bits flipped, -0.0 as +0.0 (they compare equal) and every NaN as the
largest key. A max of keys with the lowest index on ties is then exactly torch's argmax.

No host synchronisation and static shapes: the launch captures in a CUDA graph (its two small
workspaces are allocated inside the op, from the graph's pool under capture). `argmax_reference`
is the torch twin (torch.argmax itself).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import cdiv, next_pow2
from .direct import direct_call_ok

__all__ = ["argmax_reference", "split_argmax", "argmax_splits"]

BLOCK = 1024  # positions per step of a stage-1 program
MAX_SPLITS = 128  # programs per row; vocab 128k: 126 slices of 1024
_INT32_MIN = tl.constexpr(-(2**31))  # a constexpr: compiled kernels may read no other globals


def argmax_reference(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax(logits, dim=-1): the function `split_argmax` computes."""
    return torch.argmax(logits, dim=-1)


def argmax_splits(vocab: int) -> tuple[int, int]:
    """(splits, slice): programs per row and positions per program (a multiple of BLOCK) for a row
    of `vocab` values."""
    blocks = cdiv(vocab, BLOCK)
    per = cdiv(blocks, min(blocks, MAX_SPLITS))
    slice_ = per * BLOCK
    return cdiv(vocab, slice_), slice_


@triton.jit
def _order_key(v):
    """FP32 values -> int32 keys in torch's order: keys compare as the values do, -0.0 == +0.0,
    and NaN (either sign) above +Inf."""
    bits = v.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where(v == 0.0, 0, key)
    return tl.where(v != v, 0x7FFFFFFF, key)


@triton.jit
def _argmax_partial_kernel(x_ptr, key_ptr, idx_ptr, V, stride_x, SPLITS, SLICE: tl.constexpr, BLOCK: tl.constexpr):
    """Program (row, s): the best key of positions [s·SLICE, (s+1)·SLICE) ∩ [0, V) of the row and
    the first position holding it -> key_ptr / idx_ptr int32 (rows, SPLITS)."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    start = s * SLICE
    offs = tl.arange(0, BLOCK)
    best = tl.full((), _INT32_MIN, dtype=tl.int32)
    best_idx = tl.full((), 0, dtype=tl.int32)
    for k0 in tl.static_range(0, SLICE, BLOCK):
        cols = start + k0 + offs
        ok = cols < V
        v = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        key = tl.where(ok, _order_key(v), _INT32_MIN)  # padding: below every real key (-Inf's is larger)
        top = tl.max(key, axis=0)
        first = tl.min(tl.where(key == top, cols, 2147483647), axis=0)  # first position of the block's best
        better = top > best  # strictly: an earlier block keeps a tie
        best_idx = tl.where(better, first, best_idx)
        best = tl.where(better, top, best)
    tl.store(key_ptr + row * SPLITS + s, best)
    tl.store(idx_ptr + row * SPLITS + s, best_idx)


@triton.jit
def _argmax_combine_kernel(key_ptr, idx_ptr, out_ptr, SPLITS, SPLITS_P2: tl.constexpr):
    """Program row: the first split holding the row's best key -> its index, int64 out_ptr (rows,)."""
    row = tl.program_id(0)
    s = tl.arange(0, SPLITS_P2)
    ok = s < SPLITS
    key = tl.load(key_ptr + row * SPLITS + s, mask=ok, other=_INT32_MIN)
    idx = tl.load(idx_ptr + row * SPLITS + s, mask=ok, other=0)
    top = tl.max(key, axis=0)
    first_split = tl.min(tl.where((key == top) & ok, s, SPLITS_P2), axis=0)
    pick = tl.sum(tl.where(s == first_split, idx, 0), axis=0)
    tl.store(out_ptr + row, pick.to(tl.int64))


def _split_argmax_impl(logits: torch.Tensor) -> torch.Tensor:
    """The op: logits (rows, vocab) bf16/fp16/fp32 with unit stride along vocab -> int64 (rows,)."""
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    splits, slice_ = argmax_splits(vocab)
    keys = torch.empty(rows, splits, dtype=torch.int32, device=logits.device)
    idx = torch.empty(rows, splits, dtype=torch.int32, device=logits.device)
    _argmax_partial_kernel[(rows, splits)](
        logits, keys, idx, vocab, logits.stride(0), splits, SLICE=slice_, BLOCK=BLOCK, num_warps=4
    )
    _argmax_combine_kernel[(rows,)](keys, idx, out, splits, SPLITS_P2=next_pow2(splits), num_warps=4)
    return out


_split_argmax_op = torch.library.custom_op("sharq::split_argmax", mutates_args=())(_split_argmax_impl)


@_split_argmax_op.register_fake
def _(logits):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)


def split_argmax(logits: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
    """torch.argmax(logits, dim=-1[, keepdim]) for logits (..., vocab) in bf16 / fp16 / fp32, by the
    two-stage split kernel: int64 (...) or (..., 1). First index of the maximum on ties; the first
    NaN's index where a row holds NaN. Raises ValueError for an empty last dimension and TypeError
    for other dtypes."""
    if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"split_argmax takes bfloat16, float16 or float32 logits, got {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"split_argmax needs a non-empty last dimension, got shape {tuple(logits.shape)}")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    op = _split_argmax_impl if direct_call_ok(flat) else torch.ops.sharq.split_argmax
    out = op(flat).reshape(lead)
    return out.unsqueeze(-1) if keepdim else out
