"""Activation sources of the Triton preparations: the producer of a linear's input, fused into it.

A preparation kernel (`prepare_fp4`, `prepare_split`) quantizes an activation chunk by chunk. With a
*source* it computes that activation itself, in registers, from what produces it (SPEC §9), instead
of reading it from memory:

  SOURCE 0  x                    the activation (M, K) as stored (fp32, bf16 or fp16)
  SOURCE 1  RMSNorm(h)           h = x, or x + residual rounded to x's dtype (the residual add);
                                 y = the "llama" or "gemma" RMSNorm of h (`nn.fused_norm`), in its
                                 output dtype; the kernel may store h and y on the way
  SOURCE 2  act(gate) · up       act(gate) looked up in a 65,536-entry table of the activation's own
                                 16-bit outputs (`nn.fused_mlp.activation_table`), the product
                                 rounded to the dtype, as torch computes `act_fn(gate) * up`

Every value equals the torch computation bit for bit: the adds, products and roundings are single
IEEE operations in the order torch performs them (the kernels compile without FMA contraction), and
the one reduction, the RMSNorm statistic, runs in the fixed order of `nn.fused_norm.mean_square`
(NORM_LANES lanes, each sequential along K, then adjacent pairs), never `tl.sum`, whose order
differs between the compiled kernel and the interpreter.

The per-row statistic (RMSNorm's 1/rms) and the amax of the source are row reductions: a program
that holds whole rows computes them itself (`rows_inv_rms`, `source_rows_amax`), otherwise the
stats kernel (`source_stats_kernel`) writes them first.

Dtype codes (DT, DTY): 0 fp32, 1 bf16, 2 fp16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import cdiv, interpreting

__all__ = [
    "SOURCE_X",
    "SOURCE_NORM",
    "SOURCE_ACT_MUL",
    "SourceSpec",
    "dtype_code",
    "round_bf16",
    "round_to",
    "rows_inv_rms",
    "source_chunk",
    "source_rows_amax",
    "source_stats_kernel",
    "source_outputs",
    "source_kernel_args",
    "launch_stats",
    "kernel_x",
]

SOURCE_X, SOURCE_NORM, SOURCE_ACT_MUL = 0, 1, 2
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def dtype_code(dtype: torch.dtype) -> int:
    """The kernels' code of a float dtype (0 fp32, 1 bf16, 2 fp16)."""
    return _DTYPE_CODES[dtype]


@triton.jit
def round_bf16(v):
    """FP32 v rounded to the nearest bf16 (ties to even), returned as FP32 (exactly representable in
    bf16, so any later cast is exact); NaN stays NaN, overflow gives ±Inf, as torch's cast does.
    Spelled out because the interpreter's cast truncates."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000
    return tl.where(v == v, bits.to(tl.float32, bitcast=True), v)


_NATIVE_BF16 = tl.constexpr(not interpreting())  # compiled: the hardware's RNE cast (cvt.rn.bf16.f32)


@triton.jit
def round_to(v, DT: tl.constexpr):
    """FP32 v rounded (RNE) to dtype code DT, returned as FP32 (a later cast to DT is exact)."""
    if DT == 1:
        if _NATIVE_BF16:
            out = v.to(tl.bfloat16).to(tl.float32)
        else:  # the interpreter's cast truncates
            out = round_bf16(v)
    elif DT == 2:
        out = v.to(tl.float16).to(tl.float32)  # cvt.rn on the GPU, numpy's RNE cast in the interpreter
    else:
        out = v
    return out


@triton.jit
def _load_h(x_ptr, r_ptr, rows, cols, ok, stride_x, stride_r, ADD: tl.constexpr, DT: tl.constexpr):
    """h (BM, BK) as FP32: x, or x + residual rounded to DT (torch's add in the model dtype)."""
    h = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if ADD:
        r = tl.load(r_ptr + rows[:, None] * stride_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        h = round_to(h + r, DT)
    return h


@triton.jit
def _lane_tree(v, BM: tl.constexpr, W: tl.constexpr, LOG2W: tl.constexpr):
    """(BM, W) FP32 -> (BM,): adjacent lanes added pairwise, level by level (W = 2^LOG2W)."""
    for i in tl.static_range(LOG2W):
        a, b = tl.split(tl.reshape(v, (BM, (W >> i) // 2, 2)))
        v = a + b
    return tl.reshape(v, (BM,))


@triton.jit
def rows_inv_rms(
    x_ptr,
    r_ptr,
    rows,
    row_ok,
    K,
    stride_x,
    stride_r,
    eps,
    ADD: tl.constexpr,
    DT: tl.constexpr,
    BM: tl.constexpr,
    W: tl.constexpr,
    LOG2W: tl.constexpr,
):
    """1 / sqrt(mean(h²) + eps) of each row (BM,), FP32, in the order of `nn.fused_norm.rms_inverse`:
    lane j sums h[j]², h[W + j]², … in turn (zero past K), the W lanes are added in adjacent pairs,
    then mean = sum / K, sqrt and 1 / sqrt correctly rounded."""
    acc = tl.zeros((BM, W), dtype=tl.float32)
    for k0 in range(0, K, W):
        cols = k0 + tl.arange(0, W)
        h = _load_h(x_ptr, r_ptr, rows, cols, row_ok[:, None] & (cols[None, :] < K), stride_x, stride_r, ADD, DT)
        acc = acc + h * h
    var = tl.math.div_rn(_lane_tree(acc, BM, W, LOG2W), K.to(tl.float32))
    return tl.math.div_rn(tl.full((BM,), 1.0, dtype=tl.float32), tl.sqrt_rn(var + eps))


@triton.jit
def source_chunk(
    x_ptr,
    x2_ptr,
    w_ptr,
    y_ptr,
    h_ptr,
    inv,
    rows,
    row_ok,
    cols,
    K,
    stride_x,
    stride_x2,
    stride_y,
    stride_h,
    SOURCE: tl.constexpr,
    ADD: tl.constexpr,
    VARIANT: tl.constexpr,
    DT: tl.constexpr,
    DTY: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_H: tl.constexpr,
):
    """The activation at rows × cols (BM, BK) as FP32, zero outside the (M, K) tensor.

    SOURCE 0: x as stored. SOURCE 1: RMSNorm of h = x [+ x2] with weight w (K,) and the rows'
    1/rms `inv` (BM,) — VARIANT 0 "llama": round_DTY(w · round_DT(h · inv)), 1 "gemma":
    round_DT((h · inv) · (1 + w)); stores h (WRITE_H) and y (WRITE_Y, dtype of y_ptr). SOURCE 2:
    round_DT(table[gate bits] · up), x_ptr the gate as int16 bits, x2_ptr up, w_ptr the table."""
    col_ok = cols < K
    ok = row_ok[:, None] & col_ok[None, :]
    if SOURCE == 1:
        h = _load_h(x_ptr, x2_ptr, rows, cols, ok, stride_x, stride_x2, ADD, DT)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        t = h * inv[:, None]
        if VARIANT == 0:
            v = round_to(w[None, :] * round_to(t, DT), DTY)
        else:
            v = round_to(t * (1.0 + w[None, :]), DT)
        v = tl.where(ok, v, 0.0)  # the padding is zero even where 1/rms is NaN or Inf
        if WRITE_H:
            tl.store(h_ptr + rows[:, None] * stride_h + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=ok)
        if WRITE_Y:
            tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], v.to(y_ptr.dtype.element_ty), mask=ok)
    elif SOURCE == 2:
        g = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0)
        a = tl.load(w_ptr + (g.to(tl.int32) & 0xFFFF), mask=ok, other=0.0).to(tl.float32)
        u = tl.load(x2_ptr + rows[:, None] * stride_x2 + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        v = round_to(a * u, DT)
    else:
        v = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    return v


@triton.jit
def source_rows_amax(
    x_ptr,
    x2_ptr,
    w_ptr,
    inv,
    rows,
    row_ok,
    K,
    stride_x,
    stride_x2,
    SOURCE: tl.constexpr,
    ADD: tl.constexpr,
    VARIANT: tl.constexpr,
    DT: tl.constexpr,
    DTY: tl.constexpr,
    BM: tl.constexpr,
    CHUNK: tl.constexpr,
    k_start=0,
    k_step=0,
):
    """max |source| of each row (BM,) as int32 FP32 bit patterns (NaN above +Inf, as the amax kernel),
    over the CHUNK-wide column chunks from k_start every k_step columns (k_step 0: CHUNK, every chunk)."""
    best = tl.zeros((BM,), dtype=tl.int32)
    step = CHUNK if k_step == 0 else k_step
    for k0 in range(k_start, K, step):
        cols = k0 + tl.arange(0, CHUNK)
        v = source_chunk(
            x_ptr,
            x2_ptr,
            w_ptr,
            x_ptr,
            x_ptr,
            inv,
            rows,
            row_ok,
            cols,
            K,
            stride_x,
            stride_x2,
            0,
            0,
            SOURCE,
            ADD,
            VARIANT,
            DT,
            DTY,
            False,
            False,
        )
        best = tl.maximum(best, tl.max(tl.abs(v).to(tl.int32, bitcast=True), axis=1))
    return best


@triton.jit
def source_stats_kernel(
    x_ptr,
    x2_ptr,
    w_ptr,
    inv_ptr,
    amax_ptr,
    M,
    K,
    stride_x,
    stride_x2,
    eps,
    SOURCE: tl.constexpr,
    ADD: tl.constexpr,
    VARIANT: tl.constexpr,
    DT: tl.constexpr,
    DTY: tl.constexpr,
    AMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    W: tl.constexpr,
    LOG2W: tl.constexpr,
    SPLIT: tl.constexpr = False,
):
    """The row statistics a preparation needs before it quantizes, for programs that do not hold
    whole rows: SOURCE 1 stores 1/rms per row (inv_ptr, FP32 (M,)); AMAX 1 stores the source's amax
    per row (amax_ptr, int32 bits (M,)), AMAX 2 folds it into amax_ptr[0] (zeroed) with an atomic
    max (a max is exact in any order), AMAX 0 none.

    SPLIT (not with SOURCE 1, whose sum has a fixed order): the grid's second axis splits each row's
    W-wide chunks among its programs (program j takes chunks j, j + P, …), which fold their maxima
    into amax_ptr with an atomic max — per row (AMAX 1, zeroed (M,)) or over the tensor (AMAX 2)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    inv = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if SOURCE == 1:
        inv = rows_inv_rms(x_ptr, x2_ptr, rows, row_ok, K, stride_x, stride_x2, eps, ADD, DT, BLOCK_M, W, LOG2W)
        tl.store(inv_ptr + rows, inv, mask=row_ok)
    if AMAX != 0:
        k_start, k_step = 0, 0
        if SPLIT:
            k_start, k_step = tl.program_id(1) * W, tl.num_programs(1) * W
        amax = source_rows_amax(
            x_ptr,
            x2_ptr,
            w_ptr,
            inv,
            rows,
            row_ok,
            K,
            stride_x,
            stride_x2,
            SOURCE,
            ADD,
            VARIANT,
            DT,
            DTY,
            BLOCK_M,
            W,
            k_start,
            k_step,
        )
        if AMAX == 1 and SPLIT:
            tl.atomic_max(amax_ptr + rows, amax, mask=row_ok)
        elif AMAX == 1:
            tl.store(amax_ptr + rows, amax, mask=row_ok)
        else:
            tl.atomic_max(amax_ptr, tl.max(tl.where(row_ok, amax, 0), axis=0))


# --- host side --------------------------------------------------------------------------------------
class SourceSpec(NamedTuple):
    """A fused source as the launchers take it — flat, as the custom ops' arguments.

    x2:      the residual (SOURCE_NORM with `add`) or `up` (SOURCE_ACT_MUL), (M, K) with unit inner
             stride, x's dtype; an empty tensor otherwise.
    w:       the norm weight (K,) (SOURCE_NORM) or the activation table (65,536,) of x's dtype
             (SOURCE_ACT_MUL).
    eps:     the norm's epsilon (rounded to FP32 by the launch, as torch adds it to an FP32 tensor).
    kind:    SOURCE_NORM or SOURCE_ACT_MUL.
    add:     SOURCE_NORM: h = x + x2 (the residual add) instead of h = x.
    variant: SOURCE_NORM: 0 "llama", 1 "gemma" (`nn.fused_norm`).
    dty:     dtype code of the activation the source yields (the norm's output dtype; ACT_MUL: x's).
    write_y: store the normalized activation y (M, K) (SOURCE_NORM).
    write_h: store h = x + x2 (M, K), the updated residual stream (SOURCE_NORM with `add`).
    stats:   -1 the launcher's choice, 0 the stats kernel first, 1 the preparation's programs compute
             the row statistics themselves.
    """

    x2: torch.Tensor
    w: torch.Tensor
    eps: float
    kind: int
    add: bool
    variant: int
    dty: int
    write_y: bool
    write_h: bool
    stats: int


_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def source_outputs(x: torch.Tensor, spec: SourceSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): the (M, K) tensors the source stores (y in dtype `dty`, h in x's dtype), empty (0,)
    where not stored."""
    m, k = x.shape
    y = x.new_empty((m, k) if spec.write_y else (0,), dtype=_DTYPES[spec.dty])
    h = x.new_empty((m, k) if spec.write_h else (0,))
    return y, h


def kernel_x(x: torch.Tensor, spec: SourceSpec | None) -> torch.Tensor:
    """The tensor a kernel reads as x_ptr: the gate's bits (int16) for SOURCE_ACT_MUL, else x."""
    return x.view(torch.int16) if spec is not None and spec.kind == SOURCE_ACT_MUL else x


def source_kernel_args(
    x: torch.Tensor,
    spec: SourceSpec | None,
    y: torch.Tensor | None,
    h: torch.Tensor | None,
    inv: torch.Tensor | None,
    inline: bool,
) -> dict:
    """The preparation kernels' source arguments (x_ptr excluded); for no source, SOURCE 0 with
    unused pointers."""
    from ..nn.fused_norm import NORM_LANES

    if spec is None:
        return dict(
            x2_ptr=x,
            w_ptr=x,
            inv_ptr=x,
            y_ptr=x,
            h_ptr=x,
            stride_x2=0,
            stride_y=0,
            stride_h=0,
            eps=0.0,
            SOURCE=SOURCE_X,
            ADD=False,
            VARIANT=0,
            DT=0,
            DTY=0,
            WRITE_Y=False,
            WRITE_H=False,
            INV_INLINE=False,
            NORM_W=NORM_LANES,
            NORM_LOG2W=NORM_LANES.bit_length() - 1,
        )
    x2 = spec.x2 if spec.x2.numel() else x
    return dict(
        x2_ptr=x2,
        w_ptr=spec.w,
        inv_ptr=inv if inv is not None else x,
        y_ptr=y if spec.write_y else x,
        h_ptr=h if spec.write_h else x,
        stride_x2=x2.stride(0),
        stride_y=y.stride(0) if spec.write_y else 0,
        stride_h=h.stride(0) if spec.write_h else 0,
        eps=_fp32(spec.eps),
        SOURCE=spec.kind,
        ADD=spec.add,
        VARIANT=spec.variant,
        DT=dtype_code(x.dtype),
        DTY=spec.dty,
        WRITE_Y=spec.write_y,
        WRITE_H=spec.write_h,
        INV_INLINE=inline,
        NORM_W=NORM_LANES,
        NORM_LOG2W=NORM_LANES.bit_length() - 1,
    )


def _fp32(v: float) -> float:
    """v rounded to FP32 (the value the kernel's FP32 argument holds on every launcher)."""
    return float(torch.tensor(v, dtype=torch.float32))


def launch_stats(x: torch.Tensor, spec: SourceSpec, amax_mode: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run `source_stats_kernel` for x (M, K): (1/rms FP32 (M,) for SOURCE_NORM else None, the amax
    bits: int32 (M,) for amax_mode 1 (per row), (1,) for 2 (the tensor; a zeroed word unless M = 1),
    None for 0)."""
    from ..nn.fused_norm import NORM_LANES

    m, k = x.shape
    norm = spec.kind == SOURCE_NORM
    if not norm and amax_mode == 0:
        return None, None
    if amax_mode == 2 and m == 1:  # one row: its amax is the tensor's, stored without a zeroed word
        amax_mode = 1
    inv = torch.empty(m, dtype=torch.float32, device=x.device) if norm else None
    block_m, num_warps = stats_tiles()[0 if m <= 1024 else 1]  # whole rows per program; enough programs at medium M
    splits = 1 if norm else stats_splits(m, k, block_m, NORM_LANES)
    amax = None
    if amax_mode == 1:
        amax = (torch.zeros if splits > 1 else torch.empty)(m, dtype=torch.int32, device=x.device)
    elif amax_mode == 2:
        amax = torch.zeros(1, dtype=torch.int32, device=x.device)
    x2 = spec.x2 if spec.x2.numel() else x
    spare = inv if inv is not None else amax
    source_stats_kernel[(cdiv(m, block_m), splits)](
        kernel_x(x, spec),
        x2,
        spec.w,
        inv if norm else spare,
        amax if amax is not None else spare,
        m,
        k,
        x.stride(0),
        x2.stride(0),
        _fp32(spec.eps),
        SOURCE=spec.kind,
        ADD=spec.add,
        VARIANT=spec.variant,
        DT=dtype_code(x.dtype),
        DTY=spec.dty,
        AMAX=amax_mode,
        BLOCK_M=block_m,
        W=NORM_LANES,
        LOG2W=NORM_LANES.bit_length() - 1,
        SPLIT=splits > 1,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return inv, amax


STATS_PROGRAMS = 1024  # the split stats grid aims at this many programs (8 a streaming multiprocessor)


def stats_splits(m: int, k: int, block_m: int, chunk: int) -> int:
    """How many programs share each row block's chunks in the stats kernel of an amax-only source
    (act·mul): enough for about STATS_PROGRAMS programs, at most one chunk each (a decode row of
    down_proj's K = 14,336: 112 programs of one chunk; what that saves: docs/performance.md, "Fused
    producers")."""
    rows = cdiv(m, block_m)
    return max(1, min(cdiv(k, chunk), STATS_PROGRAMS // rows))


def stats_tiles() -> tuple[tuple[int, int], ...]:
    """(BLOCK_M, num_warps) of the stats kernel: one row a program up to 1,024 rows, else 4; each
    thread holds 4 values of a NORM_LANES-wide chunk (a 64-bit bf16 load). Not tuned on a GPU yet."""
    return (1, 1), (4, 4)
