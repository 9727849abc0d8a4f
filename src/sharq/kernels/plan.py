"""Which kernels run a SharQ linear: one decision for (M, N, K, config, device), in one place.

`plan_linear` returns the `LinearPlan` a call takes; `ops.prepare` and `ops.linear_from_prepared`
execute it and nothing else decides. `python -m sharq.kernels.plan` prints the table for the
Llama-3.1-8B layers. Regimes (NVFP4 on CUDA, `backend="auto"`; M = rows of the flattened call):

  operand   M         preparation                         GEMM
  exact     1-2       int8 codes + FP32 scales/16 (1)     decode GEMV, integer dot products (gemv_nvfp4)
  exact     3-16      bf16 deq(B), deq(R) rows (1)        small-M GEMM, packed weight decode (gemm_fp4;
                                                          K split in 4 where N < 6,144 from 9 rows, and
                                                          up to 8 rows where K >= 8,192)
  any       17-511    operand rows (2)                    medium-M GEMM, packed weight decode (gemm_fp4;
                                                          K split in 4 up to 64 rows where N < 16,384)
  any       512-1023  operand rows (2)                    bf16 GEMM over a scratch weight (gemm_fp4's
                                                          pointer loop + dequant_fp4)
  any       >= 1024   operand rows (2)                    the same scratch weight; one term: the
                                                          persistent TMA GEMM (gemm_bf16_tma, TMA 4)
  (1) prepare_fp4: codes, scales and the operand; (2) prepare_split: the operand alone — bf16(deq(B) +
  deq(R)) for bf16-sum, deq(B) and deq(R) (two MMAs) for exact.

The linears that read one input — q/k/v, gate/up — run as one launch (`LinearPlan.grouping`): one
GEMV over their weights; from SCRATCH_MIN_M rows their weights dequantized side by side into one
scratch and one GEMM, each column with its own s_w; in between one GEMM decoding each column tile
from its own weight, where every member's own call takes the same tiles (Llama's q, k, v do, and
gate, up), else one launch each. The table's "qkv" and "gate_up" rows show the tiles of the
concatenated weight; below SCRATCH_MIN_M a group runs its members' own tiles.

The M > 16 regimes come from benchmarks/tune_medium_m.py's and tune_prefill.py's sweeps (docs/performance.md,
"Kernel plan").
`operand="auto"` is exact up to AUTO_EXACT_MAX_ROWS (16) rows and bf16-sum above (SPEC §7), so its
calls take the exact rows up to 16 rows and the bf16-sum operand above. MXFP4 prepares bf16 rows
and runs `gemm_fp4`'s FP32
decode (a bf16 scratch weight from SCRATCH_MIN_M rows); HiF4 and CPU tensors run the reference.
The weight-only quantized lm_head has its own small plan (`plan_lm_head`: W4A16 GEMV, then gemm_fp4 with
one bf16 term). The GEMM's tile table lives beside its kernel (`gemm_fp4._tiles`) and `tiles` reports it.

Mixture-of-experts layers (`nn.experts.SharqExperts`) take one more decision, `plan_experts`: a layer
call of T tokens, top-k routing over E experts, either
  device routing  the (token, expert) pairs are bucketed by expert on the GPU (`kernels.moe_route`)
                  and one experts-GEMV launch (`kernels.gemv_experts`) runs every (expert, row-block)
                  tile for gate+up, one for down, then one weighted combine: no host synchronisation,
                  a fixed grid sized by the worst case, so the step captures in a CUDA graph;
  host routing    the hit experts are found on the host and each runs on its rows (a Python loop).
Up to EXPERTS_GEMV_MAX_TOKENS tokens with the exact operand (NVFP4 on the Triton backend), both
routings run the experts GEMV on tiles of `tile_rows` rows with one tiling (`ExpertsPlan.tiles`), so
they are bit-identical; "auto" takes device routing there. Elsewhere (longer calls, other formats,
the reference backend, `check_finite`) host routing runs every expert as a plain linear of its rows,
planned by `plan_linear` for its row count. `python -m sharq.kernels.plan` prints the table for
Qwen3-30B-A3B.

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

from ..config import Format, Operand, SharqConfig
from ..options import DEFAULT_OPTIONS, Backend, RuntimeOptions

__all__ = [
    "LinearPlan",
    "plan_linear",
    "plan_table",
    "GEMV_AUTO_MAX_M",
    "ExpertsPlan",
    "plan_experts",
    "experts_input_plan",
    "experts_max_tiles",
    "experts_plan_table",
    "EXPERTS_GEMV_MAX_TOKENS",
    "ROUTINGS",
    "LM_HEAD_GEMV_MAX_M",
    "plan_lm_head",
    "ProducerPlan",
    "plan_producer",
    "fusion_enabled",
]

# the decode GEMV takes exact NVFP4 calls of up to this many rows; beyond them the tensor-core GEMM with
# the packed decode and stacked terms is faster (benchmarks/tune_small_m.py, small-m-tuning-h100.json:
# the four Llama-3.1-8B linears at M = 2 in 90 us on either, at M = 4 in 91 us against the GEMV's 124)
GEMV_AUTO_MAX_M = 2
SCRATCH_MIN_M = 512  # from here on gemm_fp4 multiplies a bf16 scratch weight (gemm_fp4._tiles reads it)
# MoE layers: calls of up to this many tokens run the experts GEMV (decode); it is the exact operand's
# limit under operand="auto" (AUTO_EXACT_MAX_ROWS), and no expert sees more rows than the call has tokens
EXPERTS_GEMV_MAX_TOKENS = 16
ROUTINGS = ("auto", "device", "host")


@dataclasses.dataclass(frozen=True)
class LinearPlan:
    """What one call of `rows` activation rows runs.

    backend:     REFERENCE or TRITON.
    operand:     EXACT or BF16_SUM (config.operand resolved for `rows`).
    preparation: "reference" | "gemv" (int8 codes + FP32 scales) | "rows" (prepare_fp4: codes and bf16
                 (M, K) terms) | "operand-rows" (prepare_split: the bf16 operand alone, (M, K) rows;
                 no codes written).
    gemm:        "reference" | "gemv" | "small-m" / "medium-m" (gemm_fp4, packed decode; 3-16 and
                 17-511 rows) | "fp32-decode" (gemm_fp4, MXFP4) | "bf16-scratch" (gemm_fp4 over
                 dequant_fp4's scratch weight).
    grouping:    (property) how the linears that read one input (q/k/v, gate/up) launch.
    """

    rows: int
    backend: Backend
    operand: Operand
    preparation: str
    gemm: str

    def tiles(self, n: int, k: int) -> dict:
        """The GEMM's launch tiling for an (N, K) weight (empty for the reference and the GEMV)."""
        if self.gemm in ("small-m", "medium-m", "fp32-decode", "bf16-scratch"):
            from .gemm_fp4 import _tiles

            packed = self.gemm in ("small-m", "medium-m")
            return _tiles(self.rows, n, k, packed=packed, two=self.operand is Operand.EXACT)
        return {}

    @property
    def grouping(self) -> str:
        """How the linears that read one input (q/k/v, gate/up) launch (`ops.grouped_linear_from_prepared`):
        "one launch" (the decode GEMV, `gemv_nvfp4.gemv_group_supports`; the scratch GEMM, their weights
        dequantized side by side), "one launch where their tiles agree" (the GEMM decoding the weight in
        the loop: its tiles depend on N, and one launch sums each column in its own call's order only
        where every member's call takes the same tiles, `gemm_fp4.gemm_group_supports`), or "one launch
        per linear" (the reference)."""
        if self.gemm in ("gemv", "bf16-scratch"):
            return "one launch"
        if self.gemm == "reference":
            return "one launch per linear"
        return "one launch where their tiles agree"

    def describe(self) -> str:
        return (
            f"M={self.rows}: {self.backend.value}, operand {self.operand.value}, {self.preparation} -> {self.gemm} "
            f"(q/k/v, gate/up: {self.grouping})"
        )


def plan_linear(
    rows: int, config: SharqConfig, device: torch.device | str, options: RuntimeOptions = DEFAULT_OPTIONS
) -> LinearPlan:
    """The plan of a call of `rows` rows (the flattened (M, K) activation) of `config` on `device`,
    with `options.backend`. Raises what `ops.resolve_backend` raises for a backend that cannot run there."""
    from ..ops import resolve_backend

    backend = resolve_backend(config, torch.device(device), options)
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
            return LinearPlan(rows, backend, operand, "operand-rows", _rows_gemm(rows, packed=True))
        return LinearPlan(rows, backend, operand, "rows", _rows_gemm(rows, packed=True))
    return LinearPlan(rows, backend, operand, "rows", _rows_gemm(rows, packed=False))


# "0": every producer runs in torch, then the preparation; "always": fused even where the plan would
# not fuse a compiled short batch (COMPILED_UNFUSED_MAX_M) — both for benchmarks and debugging
FUSE_ENV = "SHARQ_FUSE"
PRODUCERS = ("rms-norm", "act-mul")
# Traced by torch.compile, up to this many rows the producers run in torch (inductor fuses the norm
# and act·mul with their neighbours) and the preparation after them: faster there than the fused
# norm, whose programs walk a row's chunks one after another for the fixed-order statistic. Eager
# calls and longer batches stay fused. The measurements: docs/performance.md, "Fused producers".
# Bits: inductor compiles that torch chain its own way (FP32 kept between ops, multiply-adds
# contracted, its own division), so there the norm and act·mul may differ from eager in the last
# bit, as the rest of a compiled step's glue (rotary, residual adds) already does; eager calls and
# uncompiled CUDA graphs are bit-exact either way.
COMPILED_UNFUSED_MAX_M = 16


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
    options: RuntimeOptions = DEFAULT_OPTIONS,
    linear: LinearPlan | None = None,
) -> ProducerPlan:
    """The plan of a producer ("rms-norm" or "act-mul", PRODUCERS) of `rows` rows of K values feeding
    a linear of `config` on `device`, its activation in `dtype`. act_table: whether the activation's
    table exists (it is built at the first eager call, `nn.fused_mlp`). options: the consumer's
    `RuntimeOptions` (backend, NaN check). linear: the consumer's plan when it is not `plan_linear`'s
    (a MoE layer's input, `experts_input_plan`); None plans it here. Fused on the Triton backend
    unless SHARQ_FUSE=0, an empty call, or, for act-mul: a dtype other than bf16/fp16 (the table is of
    16-bit values), no table yet, or check_finite (down_proj checks its input, which fusion never
    writes), or a short batch traced by torch.compile (COMPILED_UNFUSED_MAX_M)."""
    if producer not in PRODUCERS:
        raise ValueError(f"unknown producer {producer!r}; expected one of {PRODUCERS}")
    if linear is None:
        linear = plan_linear(rows, config, device, options)
    elif linear.rows != rows:
        raise ValueError(f"a plan of {linear.rows} rows cannot feed a producer of {rows} rows")
    if linear.backend is Backend.REFERENCE:
        return ProducerPlan(producer, linear, False, reason="reference backend")
    reason = ""
    if not fusion_enabled():
        reason = f"{FUSE_ENV}=0"
    elif rows == 0:
        reason = "no rows"
    elif rows <= COMPILED_UNFUSED_MAX_M and torch.compiler.is_compiling() and os.environ.get(FUSE_ENV) != "always":
        reason = f"traced by torch.compile, {rows} <= {COMPILED_UNFUSED_MAX_M} rows (inductor fuses the producer)"
    elif producer == "act-mul" and dtype not in (torch.bfloat16, torch.float16):
        reason = f"act-mul fuses bf16/fp16 activations (a table of 16-bit values), not {dtype}"
    elif producer == "act-mul" and not act_table:
        reason = "no activation table yet (built at the first eager call)"
    elif producer == "act-mul" and options.check_finite:
        reason = "check_finite: down_proj checks its input"
    if reason:
        return ProducerPlan(producer, linear, False, reason=reason)
    if linear.preparation == "operand-rows":
        from .prepare_split import source_launches
    else:
        from .prepare_fp4 import source_launches
    inline, launches = source_launches(rows, k, config, norm=producer == "rms-norm")
    return ProducerPlan(producer, linear, True, "inline" if inline else "kernel", launches)


# The weight-only quantized lm_head (SPEC §9, `ops.lm_head_linear`) on the Triton backend: its input is
# one bf16 term (the hidden state, s_x = 1), no preparation. Up to this many rows the W4A16 GEMV
# (gemv_w4a16.py); above, gemm_fp4 with that one term: the packed decode below SCRATCH_MIN_M (small-M
# tiles up to 16 rows, medium-M tiles above), the bf16 scratch weight from there. The 2 follows GEMV_AUTO_MAX_M; it
# was not tuned for the W4A16 GEMV (no GPU measurement of it yet).
LM_HEAD_GEMV_MAX_M = 2


def plan_lm_head(rows: int) -> str:
    """The kernel a Triton lm_head call of `rows` rows runs: "w4a16-gemv" | "small-m" | "medium-m" |
    "bf16-scratch" (the names of `LinearPlan.gemm`)."""
    if rows <= LM_HEAD_GEMV_MAX_M:
        return "w4a16-gemv"
    return _rows_gemm(rows, packed=True)


def _rows_gemm(rows: int, packed: bool) -> str:
    """gemm_fp4's regime for a call of `rows` rows, as `gemm_fp4._tiles` picks it: NVFP4 weights
    (`packed`) take the packed decode below SCRATCH_MIN_M rows (small-M tiles up to 16 rows), MXFP4
    the FP32 decode; every format the bf16 scratch weight from there."""
    if rows >= SCRATCH_MIN_M:
        return "bf16-scratch"
    if not packed:
        return "fp32-decode"
    return "small-m" if rows <= 16 else "medium-m"


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


@dataclasses.dataclass(frozen=True)
class ExpertsPlan:
    """What one call of a mixture-of-experts layer runs (`plan_experts`).

    tokens, top_k, num_experts: T, k, E of the call; pairs = T·k (token, expert) assignments.
    backend, operand:  as `plan_linear` resolves them for T rows.
    routing:     "device" (GPU bucketing, one experts-GEMV launch per projection pair, capturable) or
                 "host" (hit experts found on the host, one call per expert).
    expert_gemm: "experts-gemv" (the routed decode GEMV on (expert, row-block) tiles, both routings) or
                 "per-call" (each expert's rows as a plain linear, `plan_linear` of its row count).
    input:       the plan of the layer input's preparation (T rows; "gemv" for the experts GEMV).
    tile_rows:   rows of one tile (1 or 2; 0 for per-call).
    tiles:       the experts GEMV's launch tiling: BLOCK_M (= tile_rows), BLOCK_N, BLOCK_K, num_warps.
    max_tiles:   the tile axis of the launch grid: the most tiles any routing of `pairs` assignments
                 over E experts needs (programs past the routed tiles return at once).
    reason:      why the call routes on the host (empty for device routing).
    """

    tokens: int
    top_k: int
    num_experts: int
    backend: Backend
    operand: Operand
    routing: str
    expert_gemm: str
    input: LinearPlan
    tile_rows: int = 0
    tiles: dict = dataclasses.field(default_factory=dict)
    max_tiles: int = 0
    reason: str = ""

    @property
    def pairs(self) -> int:
        return self.tokens * self.top_k

    def describe(self) -> str:
        head = (
            f"T={self.tokens} top-{self.top_k}/{self.num_experts}: {self.backend.value}, operand "
            f"{self.operand.value}, input {self.input.preparation}, {self.routing} routing"
        )
        if self.expert_gemm == "experts-gemv":
            tiles = " ".join(f"{k}={v}" for k, v in self.tiles.items())
            return (
                f"{head} -> experts GEMV, {self.tile_rows}-row tiles, grid {self.max_tiles} tiles "
                f"for {self.pairs} pairs ({tiles})" + (f" [{self.reason}]" if self.reason else "")
            )
        return f"{head} -> per-expert linears (plan_linear of each expert's rows) [{self.reason}]"


def _experts_gemv_reason(
    tokens: int, config: SharqConfig, backend: Backend, operand: Operand, intermediate: int | None
) -> str:
    """Why the experts GEMV does not serve a call ("" when it does)."""
    if backend is not Backend.TRITON:
        return "reference backend"
    if config.format is not Format.NVFP4:
        return f"{config.format.value}: the experts GEMV reads NVFP4"
    if not 1 <= tokens <= EXPERTS_GEMV_MAX_TOKENS:
        return f"{tokens} tokens > {EXPERTS_GEMV_MAX_TOKENS}"
    if operand is not Operand.EXACT:
        return f"operand {operand.value}"
    if config.backbone_block % 16 or config.residual_block % 16 or config.weight_block not in (16, 32):
        return "blocks the GEMV does not read"
    if intermediate is not None and intermediate % _experts_tiles(tokens)["BLOCK_N"]:
        return f"intermediate size {intermediate} not a multiple of BLOCK_N"
    return ""


def _experts_tiles(tokens: int) -> dict:
    """The experts GEMV's tiling: the decode GEMV's tuned tiling of tile_rows rows (1 row per tile at
    T = 1, where every hit expert has one row; 2 rows from T = 2)."""
    from .gemv_nvfp4 import _tiles

    rows = 1 if tokens <= 1 else 2
    return {"BLOCK_M": rows, **_tiles(rows, 0, 0)}


def experts_max_tiles(pairs: int, num_experts: int, tile_rows: int) -> int:
    """The most tiles of up to `tile_rows` rows of one expert that `pairs` (token, expert) pairs over
    `num_experts` experts can need: Σ_e ceil(c_e / R) <= (pairs + hit · (R - 1)) / R with at most
    min(E, pairs) experts hit, and never more than one tile per pair."""
    return min(pairs, (pairs + min(num_experts, pairs) * (tile_rows - 1)) // tile_rows)


def experts_input_plan(
    tokens: int,
    config: SharqConfig,
    device: torch.device | str,
    intermediate: int | None = None,
    options: RuntimeOptions = DEFAULT_OPTIONS,
) -> LinearPlan:
    """The preparation plan of a MoE layer's input of `tokens` rows: the GEMV operand where the
    experts GEMV serves the call, else `plan_linear`'s."""
    from ..ops import resolve_backend

    backend = resolve_backend(config, torch.device(device), options)
    operand = config.operand.for_rows(tokens)
    if _experts_gemv_reason(tokens, config, backend, operand, intermediate):
        return plan_linear(tokens, config, device, options)
    return LinearPlan(tokens, backend, operand, "gemv", "experts-gemv")


def plan_experts(
    tokens: int,
    top_k: int,
    num_experts: int,
    config: SharqConfig,
    device: torch.device | str,
    *,
    intermediate: int | None = None,
    routing: str = "auto",
    weights_dtype: torch.dtype | None = None,
    options: RuntimeOptions = DEFAULT_OPTIONS,
) -> ExpertsPlan:
    """The plan of a MoE layer call: `tokens` rows, `top_k` experts each out of `num_experts`.

    routing: "auto" (device routing wherever the experts GEMV serves the call), "device" (a
    ValueError naming the reason where it cannot), or "host". intermediate: the experts' MLP width
    (the gate/up launch needs it a multiple of BLOCK_N); weights_dtype: the routing weights' dtype
    (the device combine takes float32, bfloat16 and float16).
    """
    from ..ops import resolve_backend

    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    backend = resolve_backend(config, torch.device(device), options)
    operand = config.operand.for_rows(tokens)
    input_plan = experts_input_plan(tokens, config, device, intermediate, options)
    reason = _experts_gemv_reason(tokens, config, backend, operand, intermediate)
    common = dict(
        tokens=tokens, top_k=top_k, num_experts=num_experts, backend=backend, operand=operand, input=input_plan
    )
    if reason:
        if routing == "device":
            raise ValueError(f"device routing needs the experts GEMV, which does not serve this call: {reason}")
        return ExpertsPlan(routing="host", expert_gemm="per-call", reason=reason, **common)
    tiles = _experts_tiles(tokens)
    rows = tiles["BLOCK_M"]
    max_tiles = experts_max_tiles(tokens * top_k, num_experts, rows)
    device_reason = ""
    if options.check_finite:
        device_reason = "check_finite reads values on the host"
    elif weights_dtype is not None and weights_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        device_reason = f"routing weights of dtype {weights_dtype}"
    if routing == "device" and device_reason:
        raise ValueError(f"device routing cannot run this call: {device_reason}")
    chosen = "host" if routing == "host" or device_reason else "device"
    if routing == "host":
        device_reason = "routing='host'"
    return ExpertsPlan(
        routing=chosen,
        expert_gemm="experts-gemv",
        tile_rows=rows,
        tiles=tiles,
        max_tiles=max_tiles,
        reason=device_reason if chosen == "host" else "",
        **common,
    )


def experts_plan_table(
    config: SharqConfig, num_experts: int, top_k: int, intermediate: int, tokens: list[int], device: str = "cuda"
) -> str:
    """A printable table of `plan_experts` for each token count (no GPU needed for "cuda")."""
    return "\n".join(
        plan_experts(t, top_k, num_experts, config, device, intermediate=intermediate).describe() for t in tokens
    )


if __name__ == "__main__":
    from ..config import PRESETS

    llama = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    feeds = {"rms-norm": "qkv", "act-mul": "down"}
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        print(f"== {preset} (operand auto)")
        print(plan_table(PRESETS[preset], llama, [1, 2, 8, 16, 17, 64, 256, 1024, 4096], producers=feeds))
    print("== sharq-nvfp4, Qwen3-30B-A3B experts (128 experts, top 8, MLP 768)")
    print(experts_plan_table(PRESETS["sharq-nvfp4"], 128, 8, 768, [1, 2, 8, 16, 17, 64, 1024]))
