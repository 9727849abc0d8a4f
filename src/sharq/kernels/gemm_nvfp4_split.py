"""NVFP4-weight GEMM for calls of more than 16 rows, in Triton: y = (s_x · s_w) · Σ_t T_t · deq(W)ᵀ + bias.

Operands
  terms   1 or 2 bf16 (M, Kp) activation operands in the pair-split layout `prepare_split.py` writes
          (every 64 positions along K: the 32 even ones, then the 32 odd ones; Kp = K rounded up to
          64, zero padded): bf16(deq(B) + deq(R)) for operand bf16-sum, or deq(B) and deq(R) for exact.
  weight  the packed E2M1 payload (N, Kw/2) uint8 and E4M3 block scales (N, Kw/WB) uint8 (WB 16 or
          32), one FP32 s_w — the stored checkpoint layout, read as it is.
  s_x     FP32, one per tensor or one per row; (s_x · s_w) · acc, then + bias, then the cast: the
          reference's epilogue order.

The weight is the MMA's first operand: the program computes an output tile transposed, yᵀ (BLOCK_N,
BLOCK_M) = W tile · T tileᵀ, so the weight tile decoded in registers (`weight_decode._weight_halves`:
4 payload bytes -> 8 bf16 weights in packed registers, value · scale · 2^-7 exactly) feeds the
tensor cores without a trip through shared memory, and the activation tile — the operand that is
only loaded — is the one the pipeline stages. The decode gives a tile's even and its odd K
positions apart; the pair-split layout holds the activation the same way, so a K step is two MMAs
(even, odd) per term with no shuffle of either operand. The FP32 accumulator is multiplied by 2^7
(exact) in the epilogue. Nothing is rounded before the MMA: the products and their FP32 sums equal
an FP64 matmul of the same operands up to FP32 summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..config import Format
from ..formats.quantized import QuantizedTensor
from . import interpreting
from .direct import direct_call_ok
from .prepare_split import SPLIT, split_padded
from .weight_decode import _weight_halves

__all__ = ["split_gemm_supports", "fp4_weight_gemm_split", "split_gemm_tiles"]


def split_gemm_supports(weight: QuantizedTensor) -> bool:
    """True when the kernel reads this weight: 2-D NVFP4 with 16 or 32 blocks."""
    return len(weight.shape) == 2 and weight.format is Format.NVFP4 and weight.block in (16, 32)


@triton.jit
def _split_tile(t_ptr, offs_m, m_ok, k0, KP, stride_t, BLOCK_K: tl.constexpr):
    """(even, odd) activation tiles (BLOCK_K / 2, BLOCK_M) bf16 of K positions k0 … k0 + BLOCK_K, from
    the pair-split layout: column j of either holds position k0 + 2j (+1 for odd)."""
    j = tl.arange(0, BLOCK_K // 2)
    col = k0 + (j // 32) * 64 + j % 32
    ok = (col[:, None] < KP) & m_ok[None, :]
    ptrs = t_ptr + offs_m[None, :] * stride_t + col[:, None]
    return tl.load(ptrs, mask=ok, other=0.0), tl.load(ptrs + 32, mask=ok, other=0.0)


@triton.jit
def _mma(acc, w, t, DOT_F32: tl.constexpr):
    if DOT_F32:  # the interpreter multiplies bf16 tiles as raw bits; FP32 holds the same values
        return tl.dot(w.to(tl.float32), t.to(tl.float32), acc)
    return tl.dot(w, t, acc)


@triton.jit
def _gemm_split_kernel(
    t_ptr,
    r_ptr,
    wc_ptr,
    ws_ptr,
    sx_ptr,
    sw_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    KP,
    KW,
    KS,
    stride_t,
    stride_wc,
    stride_ws,
    stride_sx,
    stride_y,
    TWO: tl.constexpr,
    WB: tl.constexpr,
    HAS_SW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ASM: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_n = tl.cdiv(N, BLOCK_N)
    grid_m = tl.cdiv(M, BLOCK_M)
    group = GROUP_N * grid_m  # GROUP_N weight tiles walk every row tile together: both stay in L2
    first_n = (pid // group) * GROUP_N
    n_in_group = tl.minimum(grid_n - first_n, GROUP_N)
    pid_n = first_n + (pid % group) % n_in_group
    pid_m = (pid % group) // n_in_group

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    m_ok = offs_m < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, KP, BLOCK_K):
        w_even, w_odd = _weight_halves(
            wc_ptr, ws_ptr, offs_n, n_ok, k0, stride_wc, stride_ws, KW, KS, BLOCK_N, BLOCK_K, WB, ASM
        )
        t_even, t_odd = _split_tile(t_ptr, offs_m, m_ok, k0, KP, stride_t, BLOCK_K)
        acc = _mma(acc, w_even, t_even, DOT_F32)
        acc = _mma(acc, w_odd, t_odd, DOT_F32)
        if TWO:
            r_even, r_odd = _split_tile(r_ptr, offs_m, m_ok, k0, KP, stride_t, BLOCK_K)
            acc = _mma(acc, w_even, r_even, DOT_F32)
            acc = _mma(acc, w_odd, r_odd, DOT_F32)
    acc = acc * 128.0  # exact: the weight tile was value · 2^-7
    sx = tl.load(sx_ptr + offs_m * stride_sx, mask=m_ok, other=1.0)
    if HAS_SW:
        sx = sx * tl.load(sw_ptr)
    y = sx[None, :] * acc  # (BLOCK_N, BLOCK_M): yᵀ
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(
        y_ptr + offs_m[None, :] * stride_y + offs_n[:, None],
        y.to(y_ptr.dtype.element_ty),
        mask=n_ok[:, None] & m_ok[None, :],
    )


_TILE_KEYS = ("BLOCK_N", "BLOCK_M", "BLOCK_K", "GROUP_N", "num_warps", "num_stages")


def split_gemm_tiles(m: int, n: int, k: int) -> dict:
    """The launch tiling by M and N, the fastest of benchmarks/tune_split.py's candidates at the
    Llama-3.1-8B shapes: 128-row weight tiles × 128 activation rows, K steps of 128 (64 for N ≥ 16384);
    small tiles at M ≤ 64. The plan sends this kernel 256-511 rows."""
    if m <= 64:
        return dict(BLOCK_N=128, BLOCK_M=32, BLOCK_K=128, GROUP_N=1, num_warps=4, num_stages=4)
    if n >= 16384:
        return dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=64, GROUP_N=8, num_warps=8, num_stages=4)
    return dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=128, GROUP_N=8, num_warps=8, num_stages=3)


def _gemm_split_impl(
    t: torch.Tensor,
    r: torch.Tensor | None,
    w_codes: torch.Tensor,
    w_scales: torch.Tensor,
    s_x: torch.Tensor,
    s_w: torch.Tensor | None,
    bias: torch.Tensor | None,
    wb: int,
    out_dtype: torch.dtype,
    tiles: list[int],
) -> torch.Tensor:
    """The GEMM as a torch op: t, r bf16 (M, Kp) pair-split; w_codes (N, Kw/2), w_scales (N, Kw/wb)
    uint8; s_x FP32 (1,) or (M,); s_w FP32 or None; bias (N,) or None; tiles: _TILE_KEYS values,
    0 = chosen by shape -> y (M, N) in out_dtype."""
    m, kp = t.shape
    n = w_codes.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=t.device)
    if m == 0 or n == 0:
        return y
    cfg = split_gemm_tiles(m, n, kp)
    cfg.update({key: v for key, v in zip(_TILE_KEYS, tiles) if v})
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    interpret = interpreting()
    rr = r if r is not None else t
    _gemm_split_kernel[grid](
        t,
        rr,
        w_codes,
        w_scales,
        s_x,
        s_w.reshape(1) if s_w is not None else s_x,
        bias if bias is not None else s_x,
        y,
        m,
        n,
        kp,
        w_codes.shape[1],
        w_scales.shape[1],
        t.stride(0),
        w_codes.stride(0),
        w_scales.stride(0),
        0 if s_x.numel() == 1 else 1,
        y.stride(0),
        TWO=r is not None,
        WB=wb,
        HAS_SW=s_w is not None,
        HAS_BIAS=bias is not None,
        ASM=not interpret,
        DOT_F32=interpret,
        **cfg,
    )
    return y


_gemm_split_op = torch.library.custom_op("sharq::fp4_weight_gemm_split", mutates_args=())(_gemm_split_impl)


@_gemm_split_op.register_fake
def _(t, r, w_codes, w_scales, s_x, s_w, bias, wb, out_dtype, tiles):
    return t.new_empty(t.shape[0], w_codes.shape[0], dtype=out_dtype)


def fp4_weight_gemm_split(
    terms: Sequence[torch.Tensor],
    s_x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    tiles: dict | None = None,
) -> torch.Tensor:
    """y (M, N) = (s_x · s_w) · Σ_t terms[t] · deq(weight)ᵀ + bias, FP32 accumulation, in `out_dtype`.

    terms: 1 or 2 bf16 (M, Kp) operands in the pair-split layout (`prepare_split`); s_x: FP32 () or
    (M, 1); weight: NVFP4-16/32 (N, K) with split_padded(K) == Kp. `tiles` overrides the tiling."""
    if not split_gemm_supports(weight):
        raise ValueError(
            f"the pair-split GEMM reads 2-D NVFP4-16/32 weights, got {weight.format.value}-"
            f"{weight.block} of shape {weight.shape}"
        )
    if not 1 <= len(terms) <= 2:
        raise ValueError(f"fp4_weight_gemm_split takes 1 or 2 activation operands, got {len(terms)}")
    n, k = weight.shape
    kp = split_padded(k)
    for t in terms:
        if t.dtype != torch.bfloat16 or t.dim() != 2 or t.shape != terms[0].shape or t.shape[1] != kp:
            raise ValueError(
                f"activation operands must be bf16 (M, {kp}) tensors of one shape (K = {k} padded to "
                f"{SPLIT}), got {[(tuple(x.shape), x.dtype) for x in terms]}"
            )
        if t.device != weight.device or not t.is_contiguous():
            raise ValueError(f"activation operands must be contiguous and on {weight.device}")
    m = terms[0].shape[0]
    sx = s_x.reshape(-1).to(torch.float32).contiguous()
    if sx.numel() not in (1, m):
        raise ValueError(f"s_x must hold one scale or one per row ({m}), got shape {tuple(s_x.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    t = tiles or {}
    if t.get("BLOCK_K", 64) % 64:
        raise ValueError(f"BLOCK_K must be a multiple of {SPLIT}, got {t['BLOCK_K']}")
    op = _gemm_split_impl if direct_call_ok(*terms, s_x) else torch.ops.sharq.fp4_weight_gemm_split
    return op(
        terms[0],
        terms[1] if len(terms) == 2 else None,
        weight.codes,
        weight.scales,
        sx,
        weight.global_scale,
        bias,
        weight.block,
        out_dtype,
        [t.get(key, 0) for key in _TILE_KEYS],
    )
