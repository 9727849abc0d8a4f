"""One-token grouped-query attention in Triton, the keys split across programs (decode).

For one query token per sequence, attention reads the whole K/V cache once and does almost no
arithmetic: at Llama-3.1-8B shapes (8 K/V heads × 128, 1 k context) a layer's cache is ~4.5 MB,
1.5 µs at the H100's bandwidth, yet SDPA's kernels (cuDNN, flash, efficient) take ~33 µs
(benchmarks/decode_attention.py): they give one program per (sequence, head), 8 programs on 132
SMs, each walking all keys.

Here the G query heads that share a K/V head are the G rows of one small MMA tile (padded to 16),
and the keys are cut into splits, one program per (sequence, K/V head, split):

  pass 1  per split: s = q kᵀ · scale over BLOCK_S keys at a time, the mask applied, an online
          softmax (running max m and sum l, base 2) and acc = Σ p v; writes acc (G, D), m, l
          in FP32
  pass 2  per (sequence, K/V head): the splits combined by their maxima,
          o = Σ_i 2^(m_i − M) acc_i / Σ_i 2^(m_i − M) l_i, written as (B, 1, H, D)

q kᵀ and p v run on the tensor cores with FP32 accumulation (p rounded to the cache dtype for
the second product, as flash attention does); the softmax is FP32. The result differs from SDPA's
by rounding (a few bf16 ulps), not by what is computed.

Masks: none, boolean (True = attend) or additive, broadcastable as (B or 1, 1, 1, S) — the form
transformers builds for one query token. Keys at masked positions get probability 0; a split with
every key masked contributes nothing. Under TRITON_INTERPRET=1 (CPU tests) the products run in FP32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import cdiv, interpreting, next_pow2
from .direct import direct_call_ok
from .pdl import gdc_wait, pdl_enabled, wait_then_release

__all__ = ["decode_attention_supports", "decode_attention_triton"]

_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x · log2 e), seen by the kernel
_MASK_NONE, _MASK_BOOL, _MASK_ADD = 0, 1, 2
BLOCK_S = 64  # keys per step of a program
TARGET_PROGRAMS = 512  # pass-1 programs aimed at (a few per SM on the H100's 132)


@triton.jit
def _attention_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    po_ptr,
    pm_ptr,
    pl_ptr,
    S,
    HKV,
    NSPLIT,
    CHUNK,
    scale,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_mb,
    stride_ms,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    MASK: tl.constexpr,
    DOT_F32: tl.constexpr,
    PDL: tl.constexpr,
):
    """q (B, H, 1, D) with H = HKV · G; k, v (B, HKV, S, D); mask (B or 1, S) bool as uint8 or
    additive float, stride_mb 0 when shared; partial outputs po (B·HKV·NSPLIT, GP, D), pm / pl
    (B·HKV·NSPLIT, GP) FP32. Program (b·HKV + h, split) covers keys [split·CHUNK, +CHUNK). PDL
    (`pdl.py`): wait for the cache update before reading, then let the combining pass launch."""
    if PDL:
        wait_then_release()
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    rows = tl.arange(0, GP)
    dims = tl.arange(0, D)
    q = tl.load(
        q_ptr + b * stride_qb + (h * G + rows)[:, None] * stride_qh + dims[None, :], mask=(rows < G)[:, None], other=0.0
    )
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    m_i = tl.full((GP,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GP,), dtype=tl.float32)
    acc = tl.zeros((GP, D), dtype=tl.float32)
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, S)
    for s0 in range(start, stop, BLOCK_S):
        cols = s0 + tl.arange(0, BLOCK_S)
        ok = cols < stop
        k = tl.load(k_base + cols[:, None] * stride_ks + dims[None, :], mask=ok[:, None], other=0.0)  # (BS, D)
        v = tl.load(v_base + cols[:, None] * stride_vs + dims[None, :], mask=ok[:, None], other=0.0)
        if DOT_F32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))  # (GP, BS) FP32
        s = s * (scale * _LOG2E)  # log2 domain: exp2 below
        if MASK == 1:
            keep = tl.load(mask_ptr + b * stride_mb + cols * stride_ms, mask=ok, other=0) != 0
            ok = ok & keep
        if MASK == 2:
            add = tl.load(mask_ptr + b * stride_mb + cols * stride_ms, mask=ok, other=0.0).to(tl.float32)
            s = s + tl.where(add > -1e30, add * _LOG2E, float("-inf"))[None, :]  # "min" masks: -inf
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # every key so far masked: nothing to scale
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DOT_F32:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    part = bh * NSPLIT + split
    tl.store(po_ptr + (part * GP + rows)[:, None] * D + dims[None, :], acc)
    tl.store(pm_ptr + part * GP + rows, m_i)
    tl.store(pl_ptr + part * GP + rows, l_i)


@triton.jit
def _attention_combine_kernel(
    po_ptr,
    pm_ptr,
    pl_ptr,
    out_ptr,
    HKV,
    NSPLIT,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    NSP: tl.constexpr,
    PDL: tl.constexpr,
):
    """out (B, 1, HKV·G, D) contiguous, from pass 1's NSPLIT partials of program row b·HKV + h."""
    if PDL:
        gdc_wait()
    bh = tl.program_id(0)
    rows = tl.arange(0, GP)
    dims = tl.arange(0, D)
    sp = tl.arange(0, NSP)
    at = (bh * NSPLIT + sp)[:, None] * GP + rows[None, :]
    m = tl.load(pm_ptr + at, mask=(sp < NSPLIT)[:, None], other=float("-inf"))  # (NSP, GP)
    l = tl.load(pl_ptr + at, mask=(sp < NSPLIT)[:, None], other=0.0)
    top = tl.max(m, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.math.exp2(m - top[None, :]) * l, axis=0)  # (GP,)
    acc = tl.zeros((GP, D), dtype=tl.float32)
    for i in range(0, NSPLIT):
        part = bh * NSPLIT + i
        w = tl.math.exp2(tl.load(pm_ptr + part * GP + rows) - top)
        acc += tl.load(po_ptr + (part * GP + rows)[:, None] * D + dims[None, :]) * w[:, None]
    out = acc / total[:, None]
    b = bh // HKV
    h = bh % HKV
    heads = HKV * G
    tl.store(
        out_ptr + (b * heads + h * G + rows)[:, None] * D + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=(rows < G)[:, None],
    )


def decode_attention_supports(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """True when `decode_attention_triton` takes these operands: one query token, K/V heads dividing
    the query heads, a power-of-two head dim of 16-256, last dims contiguous, one float dtype, and a
    mask that is None, boolean or floating, broadcastable as (B or 1, 1, 1, S)."""
    if query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
        return False
    b, heads, t, d = query.shape
    if t != 1 or key.shape[0] != b or key.shape[3] != d or heads % key.shape[1]:
        return False
    if d < 16 or d > 256 or d & (d - 1):
        return False
    if (
        query.dtype not in (torch.bfloat16, torch.float16, torch.float32)
        or key.dtype != query.dtype
        or value.dtype != query.dtype
    ):
        return False
    if min(query.stride(-1), key.stride(-1), value.stride(-1)) != 1:
        return False
    if len({query.device, key.device, value.device}) != 1:
        return False
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[0] not in (1, b) or mask.shape[3] != key.shape[2]:
            return False
        if mask.device != query.device or not (mask.dtype == torch.bool or mask.is_floating_point()):
            return False
    return True


def decode_attention_triton(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """Softmax(q kᵀ · scale + mask) v for one query token: query (B, H, 1, D), key/value (B, Hkv, S, D)
    (query head i reads K/V head i // (H / Hkv)), mask None / bool (True = attend) / additive,
    (B or 1, 1, 1, S). Returns (B, 1, H, D) in query's dtype (transformers' attention-output layout).
    scale: None = 1/sqrt(D)."""
    if not decode_attention_supports(query, key, value, mask):
        raise ValueError(
            f"decode_attention_triton takes query (B, H, 1, D), key/value (B, Hkv, S, D) with Hkv dividing H, D a "
            f"power of two in 16..256, one float dtype, contiguous last dims and a (B|1, 1, 1, S) mask; got query "
            f"{tuple(query.shape)} {query.dtype}, key {tuple(key.shape)} {key.dtype}, value {tuple(value.shape)}, "
            f"mask {None if mask is None else (tuple(mask.shape), mask.dtype)}"
        )
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    op = _attention_impl if direct_call_ok(query, key, value, mask) else torch.ops.sharq.decode_attention
    return op(query, key, value, mask, scale)


def _attention_impl(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """The two passes as a torch op (torch.compile, CUDA graphs); operands as checked by
    `decode_attention_supports`."""
    b, heads, _, d = query.shape
    hkv, s = key.shape[1], key.shape[2]
    g = heads // hkv
    gp = max(16, next_pow2(g))
    out = torch.empty(b, 1, heads, d, dtype=query.dtype, device=query.device)
    if b == 0:
        return out
    blocks = max(1, cdiv(s, BLOCK_S))
    per_split = cdiv(blocks, min(blocks, max(1, cdiv(TARGET_PROGRAMS, b * hkv))))
    nsplit = cdiv(blocks, per_split)
    f32 = dict(dtype=torch.float32, device=query.device)
    po = torch.empty(b * hkv * nsplit, gp, d, **f32)
    pm = torch.empty(b * hkv * nsplit, gp, **f32)
    pl = torch.empty(b * hkv * nsplit, gp, **f32)
    if mask is None:
        kind, m2, smb, sms = _MASK_NONE, query, 0, 0
    else:
        m2 = mask[:, 0, 0, :]  # (B or 1, S), a view
        if m2.dtype == torch.bool:
            m2 = m2.view(torch.uint8)
        kind = _MASK_BOOL if mask.dtype == torch.bool else _MASK_ADD
        smb, sms = (m2.stride(0) if m2.shape[0] > 1 else 0), m2.stride(1)
    interpret = interpreting()
    pdl = pdl_enabled(query.device, default=True)  # measured with it: 8.5 µs a call (decode_attention.py)
    launch = {"launch_pdl": True} if pdl else {}
    _attention_split_kernel[(b * hkv, nsplit)](
        query,
        key,
        value,
        m2,
        po,
        pm,
        pl,
        s,
        hkv,
        nsplit,
        per_split * BLOCK_S,
        scale,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        smb,
        sms,
        G=g,
        GP=gp,
        D=d,
        BLOCK_S=BLOCK_S,
        MASK=kind,
        DOT_F32=interpret or query.dtype == torch.float32,
        PDL=pdl,
        num_warps=4,
        **launch,
    )
    _attention_combine_kernel[(b * hkv,)](
        po,
        pm,
        pl,
        out,
        hkv,
        nsplit,
        G=g,
        GP=gp,
        D=d,
        NSP=next_pow2(nsplit),
        PDL=pdl,
        num_warps=4,
        **launch,
    )
    return out


_attention_op = torch.library.custom_op("sharq::decode_attention", mutates_args=())(_attention_impl)


@_attention_op.register_fake
def _(query, key, value, mask, scale):
    b, heads, _, d = query.shape
    return query.new_empty(b, 1, heads, d)
