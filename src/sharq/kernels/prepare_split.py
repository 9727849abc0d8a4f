"""SharQ preparation for calls of more than 16 rows, in Triton: x (M, K) -> the GEMM operand alone.

Twin of `sparse.decompose.prepare_activation` for NVFP4 (every mask the Triton kernels take, a
quantized or naive residual, an optional residual mask), written for throughput. It writes only what
`gemm_fp4` reads above 16 rows — no E2M1 codes, no block scales:

  SUM  (operand bf16-sum): bf16(deq(B) + deq(R))                     one bf16 (M, K) tensor
  TWO  (operand exact):    deq(B) and deq(R), each exact in bf16     two bf16 (M, K) tensors

as plain rows, plus s_x: FP32 (M,) per row ("token") or (1,) ("tensor").

One program takes BLOCK_M rows and a share of K. "token": each program reads its rows' whole K for
the row amax first (from L2 after the first program), so the preparation is one launch; "tensor":
the amax kernel of `prepare_fp4` runs first. Per element, with the rounding of the reference:

  xs = x / s                 correctly rounded: q0 = x·(1/s), then one FMA correction (Markstein;
                             1/s correctly rounded, once per row); non-finite cases take q0
  b  = xs ⊙ mask(xs)         `prepare_fp4._apply_mask`
  per block: s_b = E4M3(amax/6); q = b / s_b correctly rounded as above (1/s_b once per block)
  e2m1(q)                    RTNE to {0, ±.5, ±1, ±1.5, ±2, ±3, ±4, ±6} by adding and subtracting
                             ±2^(e+22), e = max(floor(log2 |q|), 0): the FP32 sum drops exactly the
                             bits E2M1 has not, ties to even; a zero is +0 (the reference's code 0)
  deq = e2m1(q) · s_b
  r  = xs − deq(B); R likewise (blocks of RB)

The results equal the reference's bit for bit (tests/test_kernels_split.py) — values whose
quotient would be an FP32 subnormal may differ from it in their last bit, and none of them can move
an output: they are below every nonzero block scale's rounding threshold.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import Format, Granularity, Residual, SharqConfig
from . import cdiv, next_pow2, supports
from .direct import direct_call_ok
from .prepare_fp4 import _amax_kernel, _apply_mask, _global_scale, _mask_args, _round_bf16, _round_e4m3
from .sources import (
    SourceSpec,
    kernel_x,
    launch_stats,
    rows_inv_rms,
    source_chunk,
    source_kernel_args,
    source_outputs,
    source_rows_amax,
)

__all__ = [
    "K_ALIGN",
    "prepare_split",
    "prepare_split_source",
    "prepare_split_supports",
]

K_ALIGN = 64  # BLOCK_K is a multiple of it, and every block divides it; the programs' K loop runs to K
# rounded up to it (the tail masked)


def _k_padded(k: int) -> int:
    return -(-k // K_ALIGN) * K_ALIGN


def prepare_split_supports(config: SharqConfig) -> bool:
    """True for the configs this kernel prepares: NVFP4 (a second-level scale), the masks the Triton
    kernels take, blocks dividing K_ALIGN."""
    return (
        config.format is Format.NVFP4
        and supports(config)
        and K_ALIGN % config.backbone_block == 0
        and K_ALIGN % config.residual_block == 0
    )


@triton.jit
def _div_markstein(a, b, inv_b):
    """a / b correctly rounded for normal quotients, given inv_b = RN(1 / b): Markstein's correction
    of q0 = a · inv_b (NaN where a or b is not finite, or the quotient overflows)."""
    q0 = a * inv_b
    return tl.fma(tl.fma(-q0, b, a), inv_b, q0)


@triton.jit
def _div_by(a, b, inv_b):
    """a / b as IEEE division rounds it, special values included: the Markstein quotient, or q0 =
    a · inv_b where that is NaN (a non-finite a or b, an overflow: q0 is then the quotient's own ±Inf,
    NaN, or 0 for a finite a over an infinite b)."""
    q0 = a * inv_b
    q1 = tl.fma(tl.fma(-q0, b, a), inv_b, q0)
    return tl.where(q1 == q1, q1, q0)


@triton.jit
def _e2m1_round(q):
    """FP32 q rounded to the signed E2M1 values, ties to even, saturating at ±6; a zero result is +0.
    Adding and subtracting ±2^(e + 22), e = max(floor(log2 |q|), 0), drops exactly the bits E2M1 has
    not (the sum's ulp is E2M1's step at q); x − x is +0."""
    bits = q.to(tl.int32, bitcast=True)
    e = tl.maximum((bits & 0x7FFFFFFF) >> 23, 127)  # biased exponent, at least 2^0
    magic = (((e + 22) << 23) | (bits & -2147483648)).to(tl.float32, bitcast=True)  # ±2^(e + 22), q's sign
    return tl.minimum(tl.maximum((q + magic) - magic, -6.0), 6.0)


@triton.jit
def _deq_blocks(v, BM: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr):
    """NVFP4 (E4M3 scale = amax/6 per BLOCK) quantize-dequantize of FP32 v (BM, BK), scaled domain.
    A block holding NaN or ±Inf has a NaN scale, so its values are NaN whatever the quotients are."""
    blk = tl.reshape(v, (BM, BK // BLOCK, BLOCK))
    # |v| as bits: an integer max keeps NaN (above +Inf), as the reference's amax does
    amax = tl.max(blk.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2).to(tl.float32, bitcast=True)
    scale = _round_e4m3(tl.math.div_rn(amax, 6.0))  # (BM, BK // BLOCK)
    inv = tl.where(scale == 0.0, 0.0, tl.math.div_rn(1.0, tl.where(scale == 0.0, 1.0, scale)))  # 0: codes 0
    q = _div_markstein(blk, scale[:, :, None], inv[:, :, None])
    return tl.reshape(_e2m1_round(q) * scale[:, :, None], (BM, BK))


@triton.jit
def _store_operand(ptr, v, rows, row_ok, k0, K, stride, BM: tl.constexpr, BK: tl.constexpr):
    """Store bf16 v (BM, BK), K positions k0 … k0 + BK, into (M, K) rows (the tail past K masked)."""
    cols = k0 + tl.arange(0, BK)
    tl.store(ptr + rows[:, None] * stride + cols[None, :], v, mask=row_ok[:, None] & (cols[None, :] < K))


@triton.jit
def _prepare_split_kernel(
    x_ptr,
    amax_ptr,
    s_ptr,
    t_ptr,
    r_ptr,
    M,
    K,
    KP,
    stride_x,
    stride_t,
    stride_s,
    TOKEN: tl.constexpr,
    MASK: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_M: tl.constexpr,
    RESIDUAL: tl.constexpr,
    RMASK: tl.constexpr,
    RMASK_N: tl.constexpr,
    RMASK_M: tl.constexpr,
    BB: tl.constexpr,
    RB: tl.constexpr,
    TWO: tl.constexpr,
    ROUND_ASM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    x2_ptr,
    w_ptr,
    inv_ptr,
    y_ptr,
    h_ptr,
    stride_x2,
    stride_y,
    stride_h,
    eps,
    SOURCE: tl.constexpr,
    ADD: tl.constexpr,
    VARIANT: tl.constexpr,
    DT: tl.constexpr,
    DTY: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_H: tl.constexpr,
    INV_INLINE: tl.constexpr,
    NORM_W: tl.constexpr,
    NORM_LOG2W: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    # SOURCE (sources.py): the activation computed from its producer; its row statistics come from
    # this program (INV_INLINE: it reads its rows whole) or from the stats kernel (1/rms, amax per row)
    if SOURCE == 1:
        if INV_INLINE:
            inv = rows_inv_rms(
                x_ptr, x2_ptr, rows, row_ok, K, stride_x, stride_x2, eps, ADD, DT, BLOCK_M, NORM_W, NORM_LOG2W
            )
        else:
            inv = tl.load(inv_ptr + rows, mask=row_ok, other=1.0)
    else:
        inv = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if TOKEN and SOURCE == 0:  # this program's rows' amax, as FP32 bits (non-negative floats order as their bits)
        best = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for k0 in range(0, K, 1024):
            cols = k0 + tl.arange(0, 1024)
            a = tl.load(
                x_ptr + rows[:, None] * stride_x + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < K), other=0.0
            ).to(tl.float32)
            best = tl.maximum(best, tl.max(a.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1))
        amax = best
    elif TOKEN and INV_INLINE:
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
            NORM_W,
        )
    elif TOKEN:  # from the stats kernel
        amax = tl.load(amax_ptr + rows, mask=row_ok, other=0)
    else:
        amax = tl.load(amax_ptr + rows * 0)
    s = _global_scale(amax.to(tl.float32, bitcast=True))  # (BLOCK_M,)
    inv_s = tl.math.div_rn(1.0, s)
    if tl.program_id(1) == 0:
        tl.store(s_ptr + rows * stride_s, s, mask=row_ok & ((rows == 0) | (rows * stride_s != 0)))
    for k0 in range(tl.program_id(1) * BLOCK_K, KP, tl.num_programs(1) * BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = source_chunk(
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
            SOURCE,
            ADD,
            VARIANT,
            DT,
            DTY,
            WRITE_Y,
            WRITE_H,
        )
        xs = _div_by(x, s[:, None], inv_s[:, None])
        if MASK != 0:
            b = _apply_mask(xs, BLOCK_M, BLOCK_K, MASK, MASK_N, MASK_M)
        else:
            b = xs
        total = _deq_blocks(b, BLOCK_M, BLOCK_K, BB)
        if TWO:
            _store_operand(t_ptr, total.to(tl.bfloat16), rows, row_ok, k0, K, stride_t, BLOCK_M, BLOCK_K)
        if RESIDUAL != 0:
            if RESIDUAL == 1:
                r = xs - total
            else:
                r = xs - b
            if RMASK != 0:
                r = _apply_mask(r, BLOCK_M, BLOCK_K, RMASK, RMASK_N, RMASK_M)
            deq_r = _deq_blocks(r, BLOCK_M, BLOCK_K, RB)
            if TWO:
                _store_operand(r_ptr, deq_r.to(tl.bfloat16), rows, row_ok, k0, K, stride_t, BLOCK_M, BLOCK_K)
            total = total + deq_r
        if not TWO:
            if ROUND_ASM:  # the hardware's round-to-nearest-even cast
                out = total.to(tl.bfloat16)
            else:  # the interpreter's cast truncates
                out = _round_bf16(total).to(tl.bfloat16)
            _store_operand(t_ptr, out, rows, row_ok, k0, K, stride_t, BLOCK_M, BLOCK_K)


def _split_tiles(m: int, kp: int) -> tuple[int, int, int, int]:
    """(block_m, block_k, k_programs, num_warps): 8×256 tiles on 8 warps (8 values a thread), the
    tiling benchmarks/tune_prep_split.py found fastest or within 3% of it at every M and K it swept
    (docs/performance.md, "Medium M"). K is shared among programs only while there are too few row
    tiles to fill the GPU (the row amax is then read once per program)."""
    block_m, block_k = 8, min(256, next_pow2(kp))  # the tail past K is masked
    row_tiles = cdiv(m, block_m)
    k_programs = max(1, min(cdiv(kp, block_k), cdiv(264, row_tiles)))
    return block_m, block_k, k_programs, 8


def _prepare_split_impl(
    x: torch.Tensor,
    token: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    two: bool,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel as a torch op: x (M, K) contiguous -> (s_x FP32 (M,) or (1,), first operand bf16
    (M, Kp) pair-split or (M, K) rows, second operand likewise or empty). tiles: block_m, block_k,
    num_warps (0: chosen by shape)."""
    return _launch(x, None, token, mask, mask_n, mask_m, residual, rmask, rmask_n, rmask_m, bb, rb, two, tiles)[:3]


def _prepare_split_source_impl(
    x: torch.Tensor,
    x2: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    kind: int,
    add: bool,
    variant: int,
    dty: int,
    write_y: bool,
    write_h: bool,
    stats: int,
    token: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    two: bool,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_prepare_split_impl` of the activation a source computes (`sources.SourceSpec`: x2 … stats)
    from x (M, K), then y and h (M, K) where stored, else empty. The row statistics: this kernel's
    programs compute them when each holds whole rows ("token" with one program along K), else
    `sources.source_stats_kernel` runs first (`stats` 1 / 0 force either; 1 needs "token")."""
    spec = SourceSpec(x2, w, eps, kind, add, variant, dty, write_y, write_h, stats)
    return _launch(x, spec, token, mask, mask_n, mask_m, residual, rmask, rmask_n, rmask_m, bb, rb, two, tiles)


def _launch(
    x: torch.Tensor,
    spec: SourceSpec | None,
    token: bool,
    mask: int,
    mask_n: int,
    mask_m: int,
    residual: int,
    rmask: int,
    rmask_n: int,
    rmask_m: int,
    bb: int,
    rb: int,
    two: bool,
    tiles: list[int],
) -> tuple[torch.Tensor, ...]:
    """Allocate and launch: s, the operands, then the source's y and h."""
    from . import interpreting

    m, k = x.shape
    s = torch.empty(m if token else 1, dtype=torch.float32, device=x.device)
    t = torch.empty(m, k, dtype=torch.bfloat16, device=x.device)
    r = torch.empty(m, k, dtype=torch.bfloat16, device=x.device) if two else t.new_empty(0)
    y, h = source_outputs(x, spec) if spec is not None else (x.new_empty(0), x.new_empty(0))
    if m == 0:
        if not token:
            s.fill_(1e-9)  # amax of nothing is 0: the floor
        return s, t, r, y, h
    kp = _k_padded(k)
    block_m, block_k, k_programs, warps = _split_tiles(m, kp)
    if any(tiles):
        block_m, block_k, warps = tiles[0] or block_m, tiles[1] or block_k, tiles[2] or warps
        k_programs = max(1, min(cdiv(kp, block_k), cdiv(264, cdiv(m, block_m))))
    inline, amax, inv = token, s, None
    if spec is not None:
        if spec.stats == 1 and not token:
            raise ValueError("stats=1 (in the preparation) needs 'token' granularity")
        inline = token and (k_programs == 1 if spec.stats == -1 else bool(spec.stats))
        if not inline:
            inv, amax_bits = launch_stats(x, spec, 1 if token else 2)
            amax = amax_bits
    elif not token:  # one amax over the tensor: a grid-wide atomic max into a zeroed word
        amax = torch.zeros(1, dtype=torch.int32, device=x.device)
        bm = min(8, next_pow2(m))
        _amax_kernel[(cdiv(m, bm), min(cdiv(k, 512), 65535))](
            x, amax, m, k, x.stride(0), PER_ROW=False, BLOCK_M=bm, BLOCK_K=512
        )
    _prepare_split_kernel[(cdiv(m, block_m), k_programs)](
        kernel_x(x, spec),
        amax,
        s,
        t,
        r if two else t,
        m,
        k,
        kp,
        x.stride(0),
        t.stride(0),
        1 if token else 0,
        TOKEN=token,
        MASK=mask,
        MASK_N=mask_n,
        MASK_M=mask_m,
        RESIDUAL=residual,
        RMASK=rmask,
        RMASK_N=rmask_n,
        RMASK_M=rmask_m,
        BB=bb,
        RB=rb,
        TWO=two,
        ROUND_ASM=not interpreting(),
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        num_warps=warps,
        enable_fp_fusion=False,
        **source_kernel_args(x, spec, y, h, inv, inline),
    )
    return s, t, r, y, h


def source_launches(m: int, k: int, config: SharqConfig, *, norm: bool) -> tuple[bool, int]:
    """(inline, launches) of this preparation with a source (`_prepare_split_source_impl`, default
    tiles) for m rows of K: one launch when "token" programs hold whole rows (one program along K),
    else the stats kernel first (and a zeroed amax word for one scale over the tensor)."""
    token = config.granularity is Granularity.TOKEN
    if token and _split_tiles(m, _k_padded(k))[2] == 1:
        return True, 1
    return False, 2 if token or m == 1 else 3


_prepare_split_op = torch.library.custom_op("sharq::prepare_split", mutates_args=())(_prepare_split_impl)


@_prepare_split_op.register_fake
def _(x, token, mask, mask_n, mask_m, residual, rmask, rmask_n, rmask_m, bb, rb, two, tiles):
    return _fake_outputs(x, token, two)


def _fake_outputs(x: torch.Tensor, token: bool, two: bool) -> tuple[torch.Tensor, ...]:
    m, k = x.shape
    s = x.new_empty(m if token else 1, dtype=torch.float32)
    t = x.new_empty(m, k, dtype=torch.bfloat16)
    return s, t, (x.new_empty(m, k, dtype=torch.bfloat16) if two else t.new_empty(0))


_prepare_split_source_op = torch.library.custom_op("sharq::prepare_split_source", mutates_args=())(
    _prepare_split_source_impl
)


@_prepare_split_source_op.register_fake
def _(
    x,
    x2,
    w,
    eps,
    kind,
    add,
    variant,
    dty,
    write_y,
    write_h,
    stats,
    token,
    mask,
    mask_n,
    mask_m,
    residual,
    rmask,
    rmask_n,
    rmask_m,
    bb,
    rb,
    two,
    tiles,
):
    spec = SourceSpec(x2, w, eps, kind, add, variant, dty, write_y, write_h, stats)
    return (*_fake_outputs(x, token, two), *source_outputs(x, spec))


def prepare_split(
    x: torch.Tensor,
    config: SharqConfig,
    *,
    two: bool,
    tiles: dict | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(s_x, operands) of x (M, K) for `config` (NVFP4): s_x FP32 (M, 1) ("token") or (); operands:
    `two` — (deq(B), deq(R)) — or (bf16(deq(B) + deq(R)),), bf16 (M, K) rows. A config without a
    residual gives (deq(B),) either way. `tiles` (BLOCK_M, BLOCK_K, num_warps) overrides the launch
    tiling (benchmarks)."""
    if x.dim() != 2:
        raise ValueError(f"prepare_split expects a 2-D (M, K) activation, got shape {tuple(x.shape)}")
    s, operands, _, _ = _prepare_split(x.contiguous(), config, None, two, tiles)
    return s, operands


def prepare_split_source(
    x: torch.Tensor,
    config: SharqConfig,
    source: SourceSpec,
    *,
    two: bool,
    tiles: dict | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor | None]:
    """`prepare_split` of the activation `source` computes from x (M, K) (`sources.SourceSpec`), in
    the same kernel(s): (s_x, operands, y, h), y and h (M, K) where the source stores them, else
    None. Equal bit for bit to the torch computation of the activation followed by `prepare_split`."""
    if x.dim() != 2:
        raise ValueError(f"prepare_split_source expects a 2-D (M, K) input, got shape {tuple(x.shape)}")
    return _prepare_split(x, config, source, two, tiles)


def _prepare_split(
    x: torch.Tensor,
    config: SharqConfig,
    source: SourceSpec | None,
    two: bool,
    tiles: dict | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor | None]:
    if not prepare_split_supports(config):
        raise ValueError(
            f"prepare_split prepares NVFP4 with blocks dividing {K_ALIGN} and the Triton masks, "
            f"got {config.format.value}, mask {config.mask}, blocks {config.backbone_block}/"
            f"{config.residual_block}"
        )
    t = tiles or {}
    if t.get("BLOCK_K", K_ALIGN) % K_ALIGN:
        raise ValueError(f"BLOCK_K must be a multiple of {K_ALIGN}, got {t['BLOCK_K']}")
    token = config.granularity is Granularity.TOKEN
    mask, mask_n, mask_m = _mask_args(config.mask_spec)
    rmask, rmask_n, rmask_m = _mask_args(config.residual_mask_spec)
    residual = {Residual.NONE: 0, Residual.QUANTIZED: 1, Residual.NAIVE: 2}[config.residual]
    two = two and residual != 0
    args = (
        token,
        mask,
        mask_n,
        mask_m,
        residual,
        rmask,
        rmask_n,
        rmask_m,
        config.backbone_block,
        config.residual_block,
        two,
        [t.get(key, 0) for key in ("BLOCK_M", "BLOCK_K", "num_warps")],
    )
    y = h = None
    if source is None:
        op = _prepare_split_impl if direct_call_ok(x) else torch.ops.sharq.prepare_split
        s, a, b = op(x, *args)
    else:
        op = _prepare_split_source_impl if direct_call_ok(x, *source[:2]) else torch.ops.sharq.prepare_split_source
        s, a, b, y, h = op(x, *source, *args)
        y, h = (y if source.write_y else None), (h if source.write_h else None)
    s = s.reshape(-1, 1) if token else s.reshape(())
    return s, ((a, b) if two else (a,)), y, h
