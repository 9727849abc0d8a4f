"""Mixture-of-experts routing on the device, in Triton: bucketing, per-expert amax, weighted combine.

A MoE layer call of T tokens with top-k routing has P = T·k (token, expert) pairs; pair p is token
p // k, slot p % k, expert top_k_index[token, slot]. Three kernels, none of which reads a value on
the host (static shapes, no synchronisation: they capture in a CUDA graph):

  route_experts    one program sorts the pairs by (expert, slot, token) — the order in which the host
                   loop of `nn.experts.SharqExperts` meets them — by counting comparisons, and writes
                   the sorted tokens and experts, the (expert, first row, rows) of every tile of up to
                   R rows of one expert (a fixed number of tiles, the worst case; unused tiles have 0
                   rows), and for every token its pairs' sorted positions in expert order (the combine).
  segment_amax     per sorted row, the amax of all rows of its expert (FP32 bit patterns): the
                   "tensor" second-level scale of each expert's input, as the host loop computes it
                   for that expert's rows alone.
  combine_experts  out[t] = Σ over t's pairs in ascending expert order of (y · w) — each product
                   rounded to torch's promoted dtype of (y, w), then to the output dtype, each sum
                   rounded to the output dtype, from +0: what `index_add_` of one expert after the
                   other computes in the host loop.

Expert index E (= num_experts) marks a pair routed nowhere (expert parallelism): it gets no tile and
adds nothing. Indices outside [0, E] are clamped into it (the host loop raises on them; the device
cannot without a synchronisation). Torch twins for the tests: `route_reference`, `combine_reference`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import cdiv, next_pow2
from .direct import direct_call_ok
from .prepare_fp4 import _round_bf16

__all__ = ["ExpertsRoute", "route_experts", "route_reference", "segment_amax", "combine_experts", "combine_reference"]


class ExpertsRoute(NamedTuple):
    """The device routing of P = T·k pairs (all int32).

    sorted_token:  (P,) the token of the pair at each sorted position (sorted by expert, slot, token).
    sorted_expert: (P,) its expert (E for a pair routed nowhere; those sort last).
    tiles:         (3, G) per tile: expert, first sorted position, rows (0 for an unused tile).
    order:         (T, k) each token's pairs' sorted positions, ascending (= ascending expert).
    slots:         (T, k) the top-k slot of each of those pairs (where its routing weight is).
    """

    sorted_token: torch.Tensor
    sorted_expert: torch.Tensor
    tiles: torch.Tensor
    order: torch.Tensor
    slots: torch.Tensor


# --- routing -----------------------------------------------------------------------------------------
@triton.jit
def _route_kernel(
    idx_ptr,
    stride_it,
    stride_ik,
    tok_out,
    exp_out,
    tiles_ptr,
    order_ptr,
    slot_ptr,
    T,
    E,
    G,
    K: tl.constexpr,
    R: tl.constexpr,
    PB: tl.constexpr,
    GB: tl.constexpr,
):
    """One program. idx (T, K) integer expert indices; writes the ExpertsRoute fields (G tiles of up
    to R rows). PB, GB: powers of two >= P = T·K and >= G."""
    p = tl.arange(0, PB)
    P = T * K
    valid = p < P
    tok = p // K
    slot = p % K
    e = tl.load(idx_ptr + tok * stride_it + slot * stride_ik, mask=valid, other=0).to(tl.int32)
    e = tl.minimum(tl.maximum(e, 0), E)
    key = e * P + slot * T + tok  # unique: (expert, slot, token)
    vq = valid[None, :]
    before = (key[None, :] < key[:, None]) & vq  # (PB, PB): pair q sorts before pair p
    pos = tl.sum(before.to(tl.int32), axis=1)  # p's sorted position
    same = (e[None, :] == e[:, None]) & vq
    rank = tl.sum((same & before).to(tl.int32), axis=1)  # p's row within its expert
    count = tl.sum(same.to(tl.int32), axis=1)  # rows of p's expert
    lead = valid & (e < E) & (rank % R == 0)  # p opens a tile
    tile = tl.sum(((e[None, :] < e[:, None]) & lead[None, :]).to(tl.int32), axis=1) + rank // R
    tl.store(tok_out + pos, tok, mask=valid)
    tl.store(exp_out + pos, e, mask=valid)
    g = tl.arange(0, GB)
    match = (tile[None, :] == g[:, None]) & lead[None, :]  # (GB, PB): tile g is opened by pair p
    t_expert = tl.sum(tl.where(match, e[None, :], 0), axis=1)
    t_start = tl.sum(tl.where(match, pos[None, :], 0), axis=1)
    t_rows = tl.sum(tl.where(match, tl.minimum(count - rank, R)[None, :], 0), axis=1)
    g_ok = g < G
    tl.store(tiles_ptr + g, t_expert, mask=g_ok)
    tl.store(tiles_ptr + G + g, t_start, mask=g_ok)
    tl.store(tiles_ptr + 2 * G + g, t_rows, mask=g_ok)
    same_token = (tok[None, :] == tok[:, None]) & vq
    j = tl.sum((same_token & (pos[None, :] < pos[:, None])).to(tl.int32), axis=1)  # rank among the token's pairs
    tl.store(order_ptr + tok * K + j, pos, mask=valid)
    tl.store(slot_ptr + tok * K + j, slot, mask=valid)


def _route_impl(
    top_k_index: torch.Tensor, num_experts: int, tile_rows: int, max_tiles: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op: the ExpertsRoute fields of `top_k_index` (T, k) (`route_experts`)."""
    t, k = top_k_index.shape
    dev = dict(dtype=torch.int32, device=top_k_index.device)
    p = t * k
    outs = (
        torch.empty(p, **dev),
        torch.empty(p, **dev),
        torch.empty(3, max_tiles, **dev),
        torch.empty(t, k, **dev),
        torch.empty(t, k, **dev),
    )
    if p == 0:
        outs[2].zero_()
        return outs
    pb = next_pow2(p)
    _route_kernel[(1,)](
        top_k_index,
        top_k_index.stride(0),
        top_k_index.stride(1),
        *outs,
        t,
        num_experts,
        max_tiles,
        K=k,
        R=tile_rows,
        PB=pb,
        GB=next_pow2(max(max_tiles, 1)),
        num_warps=4 if pb <= 64 else 8,
    )
    return outs


_route_op = torch.library.custom_op("sharq::route_experts", mutates_args=())(_route_impl)


@_route_op.register_fake
def _(top_k_index, num_experts, tile_rows, max_tiles):
    t, k = top_k_index.shape
    new = top_k_index.new_empty
    i32 = torch.int32
    return (
        new(t * k, dtype=i32),
        new(t * k, dtype=i32),
        new(3, max_tiles, dtype=i32),
        new(t, k, dtype=i32),
        new(t, k, dtype=i32),
    )


def route_experts(top_k_index: torch.Tensor, num_experts: int, tile_rows: int, max_tiles: int) -> ExpertsRoute:
    """The device routing of `top_k_index` (T, k) integer experts in [0, num_experts] into tiles of up
    to `tile_rows` rows of one expert, `max_tiles` of them (enough for the worst case:
    `kernels.plan.plan_experts`). One launch, no host synchronisation."""
    if top_k_index.dim() != 2 or top_k_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"top_k_index must be (T, k) int64 or int32, got {top_k_index.dtype} {tuple(top_k_index.shape)}"
        )
    op = _route_impl if direct_call_ok(top_k_index) else torch.ops.sharq.route_experts
    return ExpertsRoute(*op(top_k_index, num_experts, tile_rows, max_tiles))


def route_reference(top_k_index: torch.Tensor, num_experts: int, tile_rows: int, max_tiles: int) -> ExpertsRoute:
    """`route_experts` in torch, on the host (tests): the same tensors."""
    t, k = top_k_index.shape
    e = top_k_index.reshape(-1).long().clamp(0, num_experts).cpu()
    p = t * k
    tok, slot = torch.arange(p) // k, torch.arange(p) % k
    perm = torch.argsort(e * p + slot * t + tok)
    pos = torch.empty(p, dtype=torch.long)
    pos[perm] = torch.arange(p)
    tiles = torch.zeros(3, max_tiles, dtype=torch.long)
    g = 0
    for expert in range(num_experts):
        rows = perm[e[perm] == expert]
        for start in range(0, len(rows), tile_rows):
            tiles[:, g] = torch.tensor([expert, int(pos[rows[start]]), min(tile_rows, len(rows) - start)])
            g += 1
    order, slots = torch.sort(pos.view(t, k), dim=1)
    return ExpertsRoute(*(x.int().to(top_k_index.device) for x in (tok[perm], e[perm], tiles, order, slots)))


# --- the "tensor" scale of each expert's rows ---------------------------------------------------------
@triton.jit
def _segment_amax_kernel(x_ptr, seg_ptr, out_ptr, P, K, stride_x, PB: tl.constexpr, CHUNK: tl.constexpr):
    """Program p: max |x| over the rows of p's segment (the rows with p's segment id; rows are sorted
    by it), as int32 FP32 bit patterns (the amax kernel's order: NaN above +Inf) -> out[p]."""
    p = tl.program_id(0)
    q = tl.arange(0, PB)
    q_ok = q < P
    seg = tl.load(seg_ptr + q, mask=q_ok, other=0)
    mine = tl.load(seg_ptr + p)
    lo = tl.sum((q_ok & (seg < mine)).to(tl.int32), axis=0)
    hi = tl.sum((q_ok & (seg <= mine)).to(tl.int32), axis=0)
    best = tl.zeros((CHUNK,), dtype=tl.int32)
    for r in range(lo, hi):
        for k0 in range(0, K, CHUNK):
            cols = k0 + tl.arange(0, CHUNK)
            a = tl.abs(tl.load(x_ptr + r * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32))
            best = tl.maximum(best, a.to(tl.int32, bitcast=True))
    tl.store(out_ptr + p, tl.max(best, axis=0))


def _segment_amax_impl(x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    p, k = x.shape
    out = torch.empty(p, dtype=torch.int32, device=x.device)
    if p:
        _segment_amax_kernel[(p,)](x, segments, out, p, k, x.stride(0), PB=next_pow2(p), CHUNK=256, num_warps=2)
    return out


_segment_op = torch.library.custom_op("sharq::segment_amax", mutates_args=())(_segment_amax_impl)


@_segment_op.register_fake
def _(x, segments):
    return x.new_empty(x.shape[0], dtype=torch.int32)


def segment_amax(x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """x (P, K) float rows sorted by `segments` (P,) int32 -> int32 (P,): for each row, the FP32 bit
    pattern of max |x| over every row of its segment (the `row_amax` of
    `prepare_fp4.prepare_activation_triton`)."""
    x = x.contiguous()
    op = _segment_amax_impl if direct_call_ok(x, segments) else torch.ops.sharq.segment_amax
    return op(x, segments)


# --- weighted combine ---------------------------------------------------------------------------------
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _round_to(v, KIND: tl.constexpr):
    """FP32 v rounded to float32 (0), bfloat16 (1) or float16 (2), round to nearest even, as FP32."""
    if KIND == 1:
        return _round_bf16(v)
    elif KIND == 2:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def _combine_kernel(
    y_ptr,
    w_ptr,
    order_ptr,
    slot_ptr,
    exp_ptr,
    out_ptr,
    H,
    E,
    stride_y,
    stride_wt,
    stride_wk,
    stride_o,
    K: tl.constexpr,
    PROD: tl.constexpr,
    OUT: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Program (t, column block): out[t] = Σ_j round_OUT(round_PROD(y[order[t, j]] · w[t, slots[t, j]])),
    each sum rounded to OUT, j ascending, pairs of expert E skipped."""
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = cols < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(K):
        pos = tl.load(order_ptr + t * K + j)
        slot = tl.load(slot_ptr + t * K + j)
        real = (cols * 0 + tl.load(exp_ptr + pos)) < E  # (BLOCK_H,): the pair has an expert
        w = tl.load(w_ptr + t * stride_wt + slot * stride_wk).to(tl.float32)
        y = tl.load(y_ptr + pos.to(tl.int64) * stride_y + cols, mask=ok & real, other=0.0).to(tl.float32)
        term = _round_to(_round_to(y * w, PROD), OUT)
        acc = tl.where(real, _round_to(acc + term, OUT), acc)
    tl.store(out_ptr + t.to(tl.int64) * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _combine_impl(
    y: torch.Tensor,
    weights: torch.Tensor,
    order: torch.Tensor,
    slots: torch.Tensor,
    sorted_expert: torch.Tensor,
    num_experts: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    t, k = order.shape
    h = y.shape[1]
    out = torch.empty(t, h, dtype=out_dtype, device=y.device)
    if t == 0 or h == 0:
        return out
    block_h = min(1024, next_pow2(h))
    prod = torch.promote_types(y.dtype, weights.dtype)
    _combine_kernel[(t, cdiv(h, block_h))](
        y,
        weights,
        order,
        slots,
        sorted_expert,
        out,
        h,
        num_experts,
        y.stride(0),
        weights.stride(0),
        weights.stride(1),
        out.stride(0),
        K=k,
        PROD=_KIND[prod],
        OUT=_KIND[out_dtype],
        BLOCK_H=block_h,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return out


_combine_op = torch.library.custom_op("sharq::combine_experts", mutates_args=())(_combine_impl)


@_combine_op.register_fake
def _(y, weights, order, slots, sorted_expert, num_experts, out_dtype):
    return y.new_empty(order.shape[0], y.shape[1], dtype=out_dtype)


def combine_experts(
    y: torch.Tensor, weights: torch.Tensor, route: ExpertsRoute, num_experts: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """The weighted sum of each token's expert outputs: y (P, H) in sorted order (float32 / bf16 /
    fp16), weights (T, k) the routing weights (same dtypes) -> (T, H) in `out_dtype` (module docstring)."""
    for what, dtype in (("expert outputs", y.dtype), ("routing weights", weights.dtype), ("output", out_dtype)):
        if dtype not in _KIND:
            raise TypeError(f"combine_experts: {what} of dtype {dtype}; expected float32, bfloat16 or float16")
    if y.stride(1) != 1:
        y = y.contiguous()
    op = _combine_impl if direct_call_ok(y, weights) else torch.ops.sharq.combine_experts
    return op(y, weights, route.order, route.slots, route.sorted_expert, num_experts, out_dtype)


def combine_reference(
    y: torch.Tensor,
    weights: torch.Tensor,
    top_k_index: torch.Tensor,
    pos: torch.Tensor,
    num_experts: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The host loop's combine (tests): for each expert in ascending order, index_add_ of its rows'
    y (sorted positions `pos` (T, k) of each pair) times their weights, into zeros of `out_dtype`."""
    t, k = top_k_index.shape
    out = torch.zeros(t, y.shape[1], dtype=out_dtype, device=y.device)
    for expert in range(num_experts):
        slot, token = torch.where(top_k_index.T == expert)
        if token.numel():
            out.index_add_(0, token, (y[pos[token, slot].long()] * weights[token, slot, None]).to(out_dtype))
    return out
