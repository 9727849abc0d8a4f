"""The experts GEMV: the decode GEMV (gemv_nvfp4) over routed (expert, row-block) tiles, one launch.

A MoE layer's experts are stored stacked: per projection codes uint8 (E, N, Kp/2), E4M3 scales uint8
(E, N, Kp/WB), s_w FP32 (E,) (bits of `{p}_global_scale`), bias (E, N) or none. A tile is up to
BLOCK_M rows of one expert (`moe_route.route_experts` writes them: expert, first row, rows); the
launch grid is (N / BLOCK_N, tiles), fixed by the worst case, and a program whose tile has no rows
returns at once, so the launch reads no routing on the host and captures in a CUDA graph.

Program (n block, tile g): rows pos = first .. first + rows - 1 of the tile; it reads the activation
operand's rows src[pos] (the layer input's tokens for gate/up; the rows themselves for down), the
expert's weight rows of its n block, and writes y[pos] — with `gemv_nvfp4._gemv_rows` and
`_gemv_epilogue`, the decode GEMV's own accumulation: each row's value is what `fp4_weight_gemv`
computes for that row with that expert's weight (FP32 lanes per sub-block, the same K steps). Gate
and up run as one launch of two members (`gemv_nvfp4._member`), their outputs side by side.

Both routings of `nn.experts.SharqExperts` call this kernel with the plan's one tiling
(`kernels.plan.plan_experts`): the device routing with every tile of the call, the host loop with the
tiles of one expert at a time, so the two are bit-identical.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import cdiv, interpreting
from .direct import direct_call_ok
from .gemv_nvfp4 import _gemv_epilogue, _gemv_rows, _member, gemv_padded

__all__ = ["experts_gemv", "host_tiles"]


@triton.jit
def _experts_gemv_kernel(
    bc_ptr,
    bs_ptr,
    rc_ptr,
    rs_ptr,
    src_ptr,
    sx_ptr,
    tiles_ptr,
    y_ptr,
    w_ptr,
    ws_ptr,
    sw_ptr,
    bias_ptr,
    w1_ptr,
    ws1_ptr,
    sw1_ptr,
    bias1_ptr,
    N,
    N0,
    G,
    KS,
    KSW,
    stride_x,
    stride_xs,
    stride_we,
    stride_w,
    stride_wse,
    stride_ws,
    stride_be,
    stride_sx,
    stride_y,
    TWO: tl.constexpr,
    WB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SRC: tl.constexpr,
    ASM: tl.constexpr,
    EVEN_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
):
    """bc/rc int8 (rows, Kg) viewed as int64, bs/rs FP32 (rows, Kg/16): the GEMV operand (1 or 2
    terms); src int32 (P,): operand row of each output row (HAS_SRC; else the row itself); sx FP32:
    s_x, one (stride_sx 0) or one per operand row; tiles int32 (3, G): expert, first row, rows; per
    member (GROUP 1 or 2): w int64 (E, N_g, KS), ws uint8 (E, N_g, KSW), sw FP32 (E,), bias (E, N_g);
    y (P, N), N = Σ N_g, member 1 from column N0 (N0 a multiple of BLOCK_N)."""
    SPB: tl.constexpr = WB // 16
    NS: tl.constexpr = BLOCK_K // 16
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    count = tl.load(tiles_ptr + 2 * G + g)
    if count > 0:
        expert = tl.load(tiles_ptr + g).to(tl.int64)
        start = tl.load(tiles_ptr + G + g)
        row0 = pid_n * BLOCK_N
        w_ptr, ws_ptr, sw_ptr, bias_ptr, base = _member(
            row0,
            N0,
            0,
            w_ptr,
            ws_ptr,
            sw_ptr,
            bias_ptr,
            w1_ptr,
            ws1_ptr,
            sw1_ptr,
            bias1_ptr,
            w1_ptr,
            ws1_ptr,
            sw1_ptr,
            bias1_ptr,
            GROUP,
        )
        w_ptr = w_ptr + expert * stride_we
        ws_ptr = ws_ptr + expert * stride_wse
        bias_ptr = bias_ptr + expert * stride_be
        rows = tl.arange(0, BLOCK_M)
        m_ok = rows < count
        pos = start + rows
        if HAS_SRC:
            src = tl.load(src_ptr + pos, mask=m_ok, other=0)
        else:
            src = pos
        cols = row0 + tl.arange(0, BLOCK_N)
        n_ok = cols < N
        offs_n = cols - base
        zero3 = 0 * offs_n[None, :, None] + 0 * tl.arange(0, NS)[None, None, :]
        m3 = src[:, None, None] + zero3
        ok3 = (rows[:, None, None] + zero3) < count
        total = _gemv_rows(
            bc_ptr,
            bs_ptr,
            rc_ptr,
            rs_ptr,
            w_ptr,
            ws_ptr,
            offs_n,
            n_ok,
            m3,
            ok3,
            KS,
            KSW,
            stride_x,
            stride_xs,
            stride_w,
            stride_ws,
            TWO,
            SPB,
            ASM,
            EVEN_N,
            BLOCK_M == 1,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            NS,
        )
        s_x = tl.load(sx_ptr + src * stride_sx, mask=m_ok, other=0.0)
        y = _gemv_epilogue(total, s_x, tl.load(sw_ptr + expert), bias_ptr, offs_n, n_ok, HAS_BIAS)
        tl.store(
            y_ptr + pos[:, None] * stride_y + cols[None, :],
            y.to(y_ptr.dtype.element_ty),
            mask=m_ok[:, None] & n_ok[None, :],
        )


def _experts_gemv_impl(
    b_codes: torch.Tensor,
    b_scales: torch.Tensor,
    r_codes: torch.Tensor | None,
    r_scales: torch.Tensor | None,
    src: torch.Tensor | None,
    s_x: torch.Tensor,
    tiles: torch.Tensor,
    w_codes: list[torch.Tensor],
    w_scales: list[torch.Tensor],
    s_w: list[torch.Tensor],
    biases: list[torch.Tensor],
    wb: int,
    rows: int,
    out_dtype: torch.dtype,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
) -> torch.Tensor:
    """The launch as a torch op (torch.compile, CUDA graphs): see `experts_gemv`. Returns y (rows, Σ N_g)
    with the routed rows written (the others are left as allocated)."""
    sizes = [c.shape[1] for c in w_codes]
    n = sum(sizes)
    y = torch.empty(rows, n, dtype=out_dtype, device=b_codes.device)
    g = tiles.shape[1]
    if rows == 0 or n == 0 or g == 0:
        return y
    words = [c.view(torch.int64) for c in w_codes]  # (E, N_g, Kp/16)
    two = r_codes is not None
    group = len(w_codes)
    second = 1 if group > 1 else 0
    bias = list(biases) if biases else [s_x, s_x]  # without biases: any valid pointer, never read
    _experts_gemv_kernel[(cdiv(n, block_n), g)](
        b_codes.view(torch.int64),
        b_scales,
        r_codes.view(torch.int64) if two else b_codes.view(torch.int64),
        r_scales if two else b_scales,
        src if src is not None else tiles,
        s_x,
        tiles,
        y,
        words[0],
        w_scales[0],
        s_w[0],
        bias[0],
        words[second],
        w_scales[second],
        s_w[second],
        bias[second],
        n,
        sizes[0],
        g,
        words[0].shape[2],
        w_scales[0].shape[2],
        b_codes.shape[1] // 8,
        b_scales.shape[1],
        words[0].stride(0),
        words[0].stride(1),
        w_scales[0].stride(0),
        w_scales[0].stride(1),
        biases[0].stride(0) if biases else 0,
        1 if s_x.numel() > 1 else 0,
        y.stride(0),
        TWO=two,
        WB=wb,
        HAS_BIAS=bool(biases),
        HAS_SRC=src is not None,
        ASM=not interpreting(),
        EVEN_N=n % block_n == 0,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP=group,
        num_warps=num_warps,
        num_stages=1,
    )
    return y


_experts_gemv_op = torch.library.custom_op("sharq::experts_gemv", mutates_args=())(_experts_gemv_impl)


@_experts_gemv_op.register_fake
def _(
    b_codes,
    b_scales,
    r_codes,
    r_scales,
    src,
    s_x,
    tiles,
    w_codes,
    w_scales,
    s_w,
    biases,
    wb,
    rows,
    out_dtype,
    block_m,
    block_n,
    block_k,
    num_warps,
):
    return b_codes.new_empty(rows, sum(c.shape[1] for c in w_codes), dtype=out_dtype)


def experts_gemv(
    terms,
    s_x: torch.Tensor,
    src: torch.Tensor | None,
    tiles: torch.Tensor,
    weights: list[dict],
    rows: int,
    out_dtype: torch.dtype,
    plan_tiles: dict,
) -> torch.Tensor:
    """y (rows, Σ N_g) in `out_dtype`: for every row of every tile, s_x · s_w · Σ_t t · deq(W_e)ᵀ + b_e
    of its operand row against its tile's expert e, for each member weight (gate and up side by side,
    or down alone). Rows no tile covers are not written.

    terms: the GEMV operand (codes int8 (R, Kg), scales FP32 (R, Kg/16) per term, 1 or 2 terms);
    s_x: FP32 () / (1,) or one per operand row (R, 1); src: int32 (rows,) operand row of each output
    row, or None (row i reads operand row i); tiles: int32 (3, G) expert, first row, rows per tile;
    weights: 1 or 2 members {"codes": uint8 (E, N, Kp/2), "scales": uint8 (E, N, Kp/WB), "global_scale":
    FP32 (E,), "bias": (E, N) or None, "block": WB} of one E, K and block (member 0's N a multiple of
    BLOCK_N when there are two); plan_tiles: BLOCK_M, BLOCK_N, BLOCK_K, num_warps (`plan_experts`).
    """
    if len(terms) not in (2, 4):
        raise ValueError(f"GEMV terms must be (codes, scales) of 1 or 2 terms, got {len(terms)} tensors")
    if not 1 <= len(weights) <= 2:
        raise ValueError(f"the experts GEMV serves 1 or 2 member weights, got {len(weights)}")
    first = weights[0]
    half = first["codes"].shape[2]
    kg = terms[0].shape[1]
    if kg != gemv_padded(half * 2):
        raise ValueError(
            f"GEMV operand of width {kg} does not match weights of {half * 2} positions "
            f"(expected {gemv_padded(half * 2)})"
        )
    for w in weights:
        if (
            w["codes"].shape != first["codes"].shape
            or w["scales"].shape != first["scales"].shape
            or w["block"] != first["block"]
        ):
            raise ValueError("the experts GEMV's members need one shape (experts, N, K) and block")
    if len(weights) == 2 and first["codes"].shape[1] % plan_tiles["BLOCK_N"]:
        raise ValueError(f"a two-member launch needs member 0's N a multiple of BLOCK_N {plan_tiles['BLOCK_N']}")
    biases = [w["bias"] for w in weights]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        raise ValueError("the experts GEMV takes a bias for every member or for none")
    biases = [] if biases[0] is None else biases
    two = len(terms) == 4
    args = (
        terms[0],
        terms[1],
        terms[2] if two else None,
        terms[3] if two else None,
        src,
        s_x.reshape(-1).to(torch.float32),
        tiles,
        [w["codes"] for w in weights],
        [w["scales"] for w in weights],
        [w["global_scale"] for w in weights],
        biases,
        first["block"],
        rows,
        out_dtype,
        plan_tiles["BLOCK_M"],
        plan_tiles["BLOCK_N"],
        plan_tiles["BLOCK_K"],
        plan_tiles["num_warps"],
    )
    op = _experts_gemv_impl if direct_call_ok(*terms, s_x, tiles) else torch.ops.sharq.experts_gemv
    return op(*args)


def host_tiles(expert: int, rows: int, tile_rows: int, device: torch.device) -> torch.Tensor:
    """The tiles (3, G) int32 of one expert's `rows` rows (0 .. rows - 1), `tile_rows` per tile: what
    the host loop hands the experts GEMV for one expert."""
    starts = torch.arange(0, rows, tile_rows)
    counts = torch.clamp(rows - starts, max=tile_rows)
    return torch.stack([torch.full_like(starts, expert), starts, counts]).to(torch.int32).to(device)
