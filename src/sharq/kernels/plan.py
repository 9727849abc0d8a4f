"""Which kernels run a SharQ linear: one decision for (M, N, K, config, device), in one place.

`plan_linear` returns the `LinearPlan` a call takes; `ops.prepare` and `ops.linear_from_prepared`
execute it and nothing else decides. `python -m sharq.kernels.plan` prints the table for the
Llama-3.1-8B layers. Regimes (NVFP4 on CUDA, `backend="auto"`; M = rows of the flattened call):

  operand   M         preparation                         GEMM
  exact     1-2       int8 codes + FP32 scales/16 (1)     decode GEMV, integer dot products (gemv_nvfp4)
  exact     3-16      bf16 deq(B), deq(R) rows (1)        small-M GEMM, packed weight decode (gemm_fp4)
  any       17-255    operand rows (2)                    FP32-decode GEMM (gemm_fp4)
  any       256-511   operand, pair-split layout (2)      weight-as-A GEMM (gemm_nvfp4_split)
  any       >= 512    operand rows (2)                    bf16 GEMM over a scratch weight (gemm_fp4 +
                                                          dequant_fp4)
  (1) prepare_fp4: codes, scales and the operand; (2) prepare_split: the operand alone — bf16(deq(B) +
  deq(R)) for bf16-sum, deq(B) and deq(R) (two MMAs) for exact.

The M > 16 boundaries are from benchmarks/tune_split.py (split-tuning-llama-3.1-8b-h100.json, the four
Llama-3.1-8B linears summed, H100): the weight-as-A GEMM is the fastest at M = 256 (509 us against
779 for the FP32 decode), the FP32 decode at M = 64 (270 against 378), the scratch GEMM from M = 1024.
`operand="auto"` is exact up to AUTO_EXACT_MAX_ROWS (16) rows and bf16-sum above (SPEC §7), so its
calls take the exact rows up to 16 rows and the bf16-sum operand above. MXFP4 prepares bf16 rows
and runs `gemm_fp4`'s FP32
decode (a bf16 scratch weight from SCRATCH_MIN_M rows); HiF4 and CPU tensors run the reference.
The GEMMs' tile tables live beside their kernels (`gemm_fp4._tiles`, `gemm_nvfp4_split.split_gemm_tiles`)
and `tiles` reports them.

The producer of a linear's input is planned here too (`plan_producer`, `ProducerPlan`): the RMSNorm in
front of q/k/v and gate/up (optionally with the residual add before it) and act(gate) · up in front
of down_proj. On the Triton backend the preparation's kernel computes them itself (kernels/sources.py:
one launch where its programs hold whole rows, else a stats kernel first and, for one scale over a
tensor of several rows, a zeroed amax word); SHARQ_FUSE=0 runs them in torch before the
preparation instead, with the same bits. `python -m sharq.kernels.plan` prints each producer's plan
under each M. The statistics' placement (inline for the short batches whose amax is inline, and for
"token" calls with one program along K) follows the preparation's existing rule and is not tuned on a
GPU yet (benchmarks/fused_prep.py times it).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ..config import Backend, Format, Operand, SharqConfig

__all__ = [
    "LinearPlan",
    "ProducerPlan",
    "plan_linear",
    "plan_producer",
    "plan_table",
    "fusion_enabled",
    "GEMV_AUTO_MAX_M",
]

# the decode GEMV takes exact NVFP4 calls of up to this many rows; beyond them the tensor-core GEMM with
# the packed decode and stacked terms is faster (benchmarks/tune_small_m.py, small-m-tuning-h100.json:
# the four Llama-3.1-8B linears at M = 2 in 90 us on either, at M = 4 in 91 us against the GEMV's 124)
GEMV_AUTO_MAX_M = 2
SPLIT_MIN_M = 256  # from here to SCRATCH_MIN_M - 1 rows: the pair-split operand and weight-as-A GEMM
SCRATCH_MIN_M = 512  # from here on gemm_fp4 multiplies a bf16 scratch weight (gemm_fp4._tiles reads it)


@dataclasses.dataclass(frozen=True)
class LinearPlan:
    """What one call of `rows` activation rows runs.

    backend:     REFERENCE or TRITON.
    operand:     EXACT or BF16_SUM (config.operand resolved for `rows`).
    preparation: "reference" | "gemv" (int8 codes + FP32 scales) | "rows" (prepare_fp4: codes and bf16
                 (M, K) terms) | "operand-rows" / "operand-split" (prepare_split: the bf16 operand
                 alone, (M, K) rows or (M, Kp) in the pair-split layout; no codes written).
    gemm:        "reference" | "gemv" | "small-m" (gemm_fp4, packed decode) | "fp32-decode" (gemm_fp4)
                 | "bf16-scratch" (gemm_fp4 over dequant_fp4's scratch weight) | "pair-split"
                 (gemm_nvfp4_split).
    """

    rows: int
    backend: Backend
    operand: Operand
    preparation: str
    gemm: str

    def tiles(self, n: int, k: int) -> dict:
        """The GEMM's launch tiling for an (N, K) weight (empty for the reference and the GEMV)."""
        if self.gemm == "pair-split":
            from .gemm_nvfp4_split import split_gemm_tiles

            return split_gemm_tiles(self.rows, n, k)
        if self.gemm in ("small-m", "fp32-decode", "bf16-scratch"):
            from .gemm_fp4 import _tiles

            return _tiles(self.rows, n, k, packed=self.gemm == "small-m", two=self.operand is Operand.EXACT)
        return {}

    def describe(self) -> str:
        return f"M={self.rows}: {self.backend.value}, operand {self.operand.value}, {self.preparation} -> {self.gemm}"


def plan_linear(rows: int, config: SharqConfig, device: torch.device | str) -> LinearPlan:
    """The plan of a call of `rows` rows (the flattened (M, K) activation) of `config` on `device`.
    Raises what `ops.resolve_backend` raises for a backend that cannot run there."""
    from ..ops import resolve_backend

    backend = resolve_backend(config, torch.device(device))
    operand = config.operand.for_rows(rows)
    if backend is Backend.REFERENCE:
        return LinearPlan(rows, backend, operand, "reference", "reference")
    if config.format is Format.NVFP4:
        from .prepare_split import prepare_split_supports

        exact = operand is Operand.EXACT
        blocks16 = config.backbone_block % 16 == 0 and config.residual_block % 16 == 0
        if exact and 1 <= rows <= GEMV_AUTO_MAX_M and blocks16:
            return LinearPlan(rows, backend, operand, "gemv", "gemv")
        if exact and rows <= 16:
            return LinearPlan(rows, backend, operand, "rows", "small-m")
        if prepare_split_supports(config):
            if SPLIT_MIN_M <= rows < SCRATCH_MIN_M:
                return LinearPlan(rows, backend, operand, "operand-split", "pair-split")
            return LinearPlan(rows, backend, operand, "operand-rows", _rows_gemm(rows))
    return LinearPlan(rows, backend, operand, "rows", _rows_gemm(rows))


FUSE_ENV = "SHARQ_FUSE"  # "0": every producer runs in torch, then the preparation (benchmarks, debugging)
PRODUCERS = ("rms-norm", "act-mul")


def fusion_enabled() -> bool:
    """False when SHARQ_FUSE=0: the producers of the linears' inputs are not fused into the
    preparation (the same bits, more launches). Read at every eager call; a torch.compile graph keeps
    the value it was traced with."""
    return os.environ.get(FUSE_ENV, "") != "0"


@dataclasses.dataclass(frozen=True)
class ProducerPlan:
    """How the producer of a linear's input and the input's preparation run, for one call.

    producer:   "rms-norm" (a decoder's RMSNorm, optionally after the residual add, read by q/k/v or
                gate/up) or "act-mul" (act(gate) · up, read by down_proj).
    linear:     the consumer's LinearPlan (which preparation its operand takes).
    fused:      True: the preparation kernel computes the producer itself (kernels/sources.py); False:
                the producer runs in torch, then `ops.prepare`. The same bits either way (the RMSNorm
                statistic in its fixed "lanes" order on every backend, nn/fused_norm.py).
    stats:      fused: "inline" (the preparation's programs compute 1/rms and the amax of the rows
                they hold) or "kernel" (`sources.source_stats_kernel` runs first); else "".
    launches:   fused: the kernel launches of the call, a zeroed amax word included; else 0.
    reason:     why it is not fused ("" when fused).
    """

    producer: str
    linear: LinearPlan
    fused: bool
    stats: str = ""
    launches: int = 0
    reason: str = ""

    def describe(self) -> str:
        if self.fused:
            what = f"fused, stats {self.stats}, {self.launches} launch{'es' if self.launches != 1 else ''}"
        else:
            what = f"torch then the preparation ({self.reason})"
        return f"{self.producer}: {what}"


def plan_producer(
    producer: str,
    rows: int,
    k: int,
    config: SharqConfig,
    device: torch.device | str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    act_table: bool = True,
) -> ProducerPlan:
    """The plan of a producer ("rms-norm" or "act-mul", PRODUCERS) of `rows` rows of K values feeding
    a linear of `config` on `device`, its activation in `dtype`. act_table: whether the activation's
    table exists (it is built at the first eager call, `nn.fused_mlp`). Fused on the Triton backend
    unless SHARQ_FUSE=0, an empty call, or, for act-mul: a dtype other than bf16/fp16 (the table is of
    16-bit values), no table yet, or check_finite (down_proj checks its input, which fusion never
    writes)."""
    if producer not in PRODUCERS:
        raise ValueError(f"unknown producer {producer!r}; expected one of {PRODUCERS}")
    linear = plan_linear(rows, config, device)
    if linear.backend is Backend.REFERENCE:
        return ProducerPlan(producer, linear, False, reason="reference backend")
    reason = ""
    if not fusion_enabled():
        reason = f"{FUSE_ENV}=0"
    elif rows == 0:
        reason = "no rows"
    elif producer == "act-mul" and dtype not in (torch.bfloat16, torch.float16):
        reason = f"act-mul fuses bf16/fp16 activations (a table of 16-bit values), not {dtype}"
    elif producer == "act-mul" and not act_table:
        reason = "no activation table yet (built at the first eager call)"
    elif producer == "act-mul" and config.check_finite:
        reason = "check_finite: down_proj checks its input"
    if reason:
        return ProducerPlan(producer, linear, False, reason=reason)
    if linear.preparation in ("operand-rows", "operand-split"):
        from .prepare_split import source_launches
    else:
        from .prepare_fp4 import source_launches
    inline, launches = source_launches(rows, k, config, norm=producer == "rms-norm")
    return ProducerPlan(producer, linear, True, "inline" if inline else "kernel", launches)


def _rows_gemm(rows: int) -> str:
    return "bf16-scratch" if rows >= SCRATCH_MIN_M else "fp32-decode"


def plan_table(
    config: SharqConfig,
    shapes: dict[str, tuple[int, int]],
    rows: list[int],
    device: str = "cuda",
    producers: dict[str, str] | None = None,
) -> str:
    """A printable table: for each M, the plan and each layer's GEMM tiles. `shapes`: name -> (N, K).
    `producers`: producer -> the layer of `shapes` it feeds ({"rms-norm": "qkv", "act-mul": "down"}),
    each printed with its plan (`plan_producer`, bf16 activations). Planning for "cuda" needs no GPU
    (the plan looks at the device type only)."""
    lines = []
    for m in rows:
        plan = plan_linear(m, config, device)
        lines.append(plan.describe())
        for name, (n, k) in shapes.items():
            tiles = plan.tiles(n, k)
            if tiles:
                lines.append(f"    {name:8s} N={n:6d} K={k:6d}  " + " ".join(f"{a}={b}" for a, b in tiles.items()))
        for producer, layer in (producers or {}).items():
            k = shapes[layer][1]
            lines.append(f"    -> {layer:5s} K={k:6d}  " + plan_producer(producer, m, k, config, device).describe())
    return "\n".join(lines)


if __name__ == "__main__":
    from ..config import PRESETS

    llama = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    feeds = {"rms-norm": "qkv", "act-mul": "down"}
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        print(f"== {preset} (operand auto)")
        print(plan_table(PRESETS[preset], llama, [1, 2, 8, 16, 17, 64, 256, 1024, 4096], producers=feeds))
