"""W4A16 decode GEMV in Triton: y (M, N) = s_w · (x · deq(Wq)ᵀ) + bias for a few bf16 rows.

The weight-only quantized lm_head's kernel for decode rows (SPEC §9; `ops.lm_head_linear`, plan:
`kernels.plan.plan_lm_head`). Its reference twin is `ops.lm_head_reference`.

Operands
  x       bf16 (M, K), M ≤ LM_HEAD_GEMV_MAX_M in the plan (any M works): the hidden state as the
          model holds it, not quantized.
  weight  NVFP4: the packed E2M1 payload (N, Kp/2) uint8, element 2i in the low nibble, E4M3 block
          scales (N, Kp/WB) uint8 (WB 16 or 32), the FP32 s_w.

Each program streams BLOCK_N weight rows once for all M rows. The weight tile is decoded exactly by
`weight_decode._weight_halves` (packed-register asm on the GPU, its per-element twin under the
interpreter): value · scale · 2^-7 in bf16, its even and its odd K positions apart; the input tile is
split the same way. Products of two bf16 values are exact in FP32; they are summed in FP32 (an
elementwise FP32 accumulator over the K steps, reduced along K at the end), multiplied by 2^7
(exact) and then by s_w once — the reference's order, so the result equals `lm_head_reference` up
to FP32 summation order (for products inside FP32's normal range: the 2^-7 moves where underflow
starts by 7 binades).

The tiling (`_tiles`: 16 weight rows a 4-warp program, K steps of up to 512) was chosen without a
measurement (no GPU run of this kernel yet): benchmarks/lm_head_speed.py times it against cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor
from . import cdiv, interpreting, next_pow2
from .direct import direct_call_ok
from .weight_decode import _weight_halves

__all__ = ["w4a16_gemv", "w4a16_supports"]


def w4a16_supports(weight: QuantizedTensor) -> bool:
    """True when the GEMV reads this weight: 2-D NVFP4 with 16- or 32-wide blocks and its s_w."""
    return (
        len(weight.shape) == 2
        and weight.format is Format.NVFP4
        and weight.block in (16, 32)
        and weight.global_scale is not None
    )


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,
    wc_ptr,
    ws_ptr,
    sw_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    KW,
    KS,
    stride_x,
    stride_wc,
    stride_ws,
    stride_y,
    WB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ASM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """x bf16 (M, K); wc uint8 (N, KW = Kp/2); ws uint8 (N, KS = Kp/WB) E4M3; sw FP32 (1,); bias (N,);
    y (M, N). One program: output columns [pid · BLOCK_N, + BLOCK_N) of every row."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.arange(0, BLOCK_M)
    m_ok = rows < M
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K // 2), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w_even, w_odd = _weight_halves(
            wc_ptr, ws_ptr, offs_n, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, ASM
        )  # (BLOCK_N, BLOCK_K / 2) bf16 each
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + offs_k[None, :], mask=m_ok[:, None] & (offs_k[None, :] < K), other=0.0
        ).to(tl.float32)  # (BLOCK_M, BLOCK_K)
        x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
        acc += x_even[:, None, :] * w_even.to(tl.float32)[None, :, :]
        acc += x_odd[:, None, :] * w_odd.to(tl.float32)[None, :, :]
    # the weight tiles were value · 2^-7: times 128 is exact; then s_w, as the reference
    y = (tl.sum(acc, axis=2) * 128.0) * tl.load(sw_ptr)  # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + rows[:, None] * stride_y + offs_n[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )


def _tiles(m: int, k: int) -> dict:
    """Launch tiling (not tuned: see the module docstring). Every thread holds a multiple of 4 payload
    bytes of the weight tile, as the packed decode's asm takes them (pack 4): BLOCK_N · BLOCK_K / 2
    is at least 4 · 32 · num_warps."""
    block_k = min(512, max(64, next_pow2(k)))
    return dict(BLOCK_N=16, BLOCK_K=block_k, num_warps=4)


_TILE_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps")


def w4a16_gemv(
    x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """y (M, N) = s_w · (x · deq(weight)ᵀ) + bias, FP32 accumulation, in `out_dtype`.

    x: bf16 (M, K) contiguous; weight: NVFP4-16/32 (N, K) (`w4a16_supports`); bias (N,) or None.
    `tiles` overrides BLOCK_N, BLOCK_K (a power of two ≥ 32), num_warps (tests, benchmarks); compiled,
    BLOCK_N · BLOCK_K / 2 must be a multiple of 4 · 32 · num_warps (`_tiles`).
    """
    if not w4a16_supports(weight):
        raise ValueError(
            f"the W4A16 GEMV reads 2-D NVFP4-16/32 weights with their s_w, got "
            f"{weight.format.value}-{weight.block} of shape {weight.shape}"
        )
    n, k = weight.shape
    if x.dtype != torch.bfloat16 or x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"the W4A16 GEMV takes a bf16 (M, {k}) input, got {x.dtype} {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("the W4A16 GEMV's input must be contiguous")
    if x.device != weight.device:
        raise ValueError(f"input on {x.device}, weight on {weight.device}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    t = tiles or {}
    block_k = t.get("BLOCK_K", 32)
    if block_k < 32 or block_k & (block_k - 1) or block_k % weight.block:
        raise ValueError(f"BLOCK_K {block_k} must be a power of two, at least 32 and a multiple of the weight block")
    op = _gemv_impl if direct_call_ok(x) else torch.ops.sharq.w4a16_gemv
    return op(
        x,
        weight.codes,
        weight.scales,
        weight.global_scale.reshape(1),
        bias,
        weight.block,
        out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS],
    )


def _gemv_impl(
    x: torch.Tensor,
    w_codes: torch.Tensor,
    w_scales: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None,
    wb: int,
    out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The GEMV as a torch op (torch.compile, CUDA graphs). x bf16 (M, K); w_codes (N, Kp/2),
    w_scales (N, Kp/wb) uint8; s_w FP32 (1,); bias (N,) or None. `tiles`: BLOCK_N, BLOCK_K,
    num_warps; 0 = chosen by shape."""
    m, k = x.shape
    n = w_codes.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    cfg = _tiles(m, k)
    cfg.update({key: v for key, v in zip(_TILE_KEYS, tiles) if v})
    grid = (cdiv(n, cfg["BLOCK_N"]),)
    _w4a16_gemv_kernel[grid](
        x,
        w_codes,
        w_scales,
        s_w,
        bias if bias is not None else s_w,
        y,
        m,
        n,
        k,
        w_codes.shape[1],
        w_scales.shape[1],
        x.stride(0),
        w_codes.stride(0),
        w_scales.stride(0),
        y.stride(0),
        WB=wb,
        HAS_BIAS=bias is not None,
        ASM=not interpreting(),
        BLOCK_M=max(1, next_pow2(m)),
        **cfg,
    )
    return y


_gemv_op = torch.library.custom_op("sharq::w4a16_gemv", mutates_args=())(_gemv_impl)


@_gemv_op.register_fake
def _(x, w_codes, w_scales, s_w, bias, wb, out_dtype, tiles):
    return x.new_empty(x.shape[0], w_codes.shape[0], dtype=out_dtype)
