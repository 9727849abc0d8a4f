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
calls take the exact rows up to 16 rows and the bf16-sum operand above. MXFP4 prepares bf16 rows and runs `gemm_fp4`'s FP32
decode (a bf16 scratch weight from SCRATCH_MIN_M rows); HiF4 and CPU tensors run the reference.
The weight-only quantized lm_head has its own small plan (`plan_lm_head`: W4A16 GEMV, then gemm_fp4 with
one bf16 term). The GEMMs' tile tables live beside their kernels (`gemm_fp4._tiles`, `gemm_nvfp4_split.split_gemm_tiles`)
and `tiles` reports them.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import Backend, Format, Operand, SharqConfig

__all__ = ["LinearPlan", "plan_linear", "plan_table", "GEMV_AUTO_MAX_M", "LM_HEAD_GEMV_MAX_M", "plan_lm_head"]

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


# The weight-only quantized lm_head (SPEC §9, `ops.lm_head_linear`) on the Triton backend: its input is
# one bf16 term (the hidden state, s_x = 1), no preparation. Up to this many rows the W4A16 GEMV
# (gemv_w4a16.py); above, gemm_fp4 with that one term: the packed decode up to 16 rows, the FP32
# decode below SCRATCH_MIN_M, the bf16 scratch weight from there. The 2 follows GEMV_AUTO_MAX_M; it
# was not tuned for the W4A16 GEMV (no GPU measurement of it yet).
LM_HEAD_GEMV_MAX_M = 2


def plan_lm_head(rows: int) -> str:
    """The kernel a Triton lm_head call of `rows` rows runs: "w4a16-gemv" | "small-m" | "fp32-decode" |
    "bf16-scratch" (the names of `LinearPlan.gemm`)."""
    if rows <= LM_HEAD_GEMV_MAX_M:
        return "w4a16-gemv"
    return "small-m" if rows <= 16 else _rows_gemm(rows)


def _rows_gemm(rows: int) -> str:
    return "bf16-scratch" if rows >= SCRATCH_MIN_M else "fp32-decode"


def plan_table(config: SharqConfig, shapes: dict[str, tuple[int, int]], rows: list[int],
               device: str = "cuda") -> str:
    """A printable table: for each M, the plan and each layer's GEMM tiles. `shapes`: name -> (N, K).
    Planning for "cuda" needs no GPU (the plan looks at the device type only)."""
    lines = []
    for m in rows:
        plan = plan_linear(m, config, device)
        lines.append(plan.describe())
        for name, (n, k) in shapes.items():
            tiles = plan.tiles(n, k)
            if tiles:
                lines.append(f"    {name:8s} N={n:6d} K={k:6d}  " + " ".join(f"{a}={b}" for a, b in tiles.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    from ..config import PRESETS

    llama = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        print(f"== {preset} (operand auto)")
        print(plan_table(PRESETS[preset], llama, [1, 2, 8, 16, 17, 64, 256, 1024, 4096]))
