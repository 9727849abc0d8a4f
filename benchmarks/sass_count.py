"""Count the sm_90 SASS instructions of the decode GEMV and the preparation, without a GPU.

The triton wheel ships ptxas and nvdisasm, so a kernel compiles for Hopper on any machine. This
prints, per launch tiling, the static SASS instruction count of the kernel and of its main loop
divided by the weights (GEMV) or activation elements (preparation) one thread handles per step, the
layout conversions left in the Triton GPU IR, and the loop's most frequent opcodes. Static counts
include rarely taken paths (the slow path of an IEEE division), so they overstate the executed
count somewhat; the loop body is what a weight costs at large K.

usage: python benchmarks/sass_count.py [--pdl] [--prep] [--fused] [--gemm]   (needs only the CPU; the GEMV alone and
       grouped, 3 weights; --prep: the preparations alone; --fused: only the preparations with a fused
       source — RMSNorm, residual add + RMSNorm, SiLU·mul — and the stats kernel; --gemm: gemm_fp4's packed
       decode at the plan's tiles)
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sharq.kernels import gemv_nvfp4, prepare_fp4, prepare_split


def _compile(fn, consts: dict, ptr_types: dict, num_warps: int, fusion: bool, num_stages: int = 1):
    """Compile for sm_90. Pointers, strides and the integer arguments named below are marked
    divisible by 16, as Triton specializes them at launch when they are."""
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else ptr_types.get(n, "i32") for n in names}
    multiples = ("K", "KS", "KSW", "KW", "N", "K_CHUNK")
    aligned = [n for n in names if sig[n].startswith("*") or n.startswith("stride") or n in multiples]
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    return triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=fusion),
    )


def _report(kernel, tag: str, per_thread: float, loops: int = 1, stats_per_thread: float | None = None) -> None:
    """Print the kernel's SASS count per value; `loops` > 1 also lists that many loop bodies (the
    longest first; the first is the main loop, the others a fused source's statistics passes, whose
    tiles hold `stats_per_thread` values a thread)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    ops = _opcodes(sass)
    total = sum(ops.values())
    bodies = _loops(sass)
    loop = _opcodes(bodies[0] if bodies else "")
    body = sum(loop.values())
    extra = ""
    if loops > 1:
        per = [per_thread] + [stats_per_thread or per_thread] * (loops - 1)
        extra = "; loops per value " + ", ".join(f"{sum(_opcodes(b).values()) / p:.1f}" for b, p in zip(bodies, per))
    print(
        f"{tag}: {total} SASS ({total / per_thread:.1f} per value); loop body {body} ({body / per_thread:.2f} "
        f"per value){extra}, {kernel.asm['ttgir'].count('convert_layout')} layout conversions in the IR; "
        f"loop {dict(loop.most_common(10))}"
    )


def _opcodes(sass: str) -> collections.Counter:
    return collections.Counter(
        m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9.]+)", sass)
    )


def _loops(sass: str) -> list[str]:
    """The SASS of each loop (between a label and the last backward branch to it), longest first.
    The first is the main loop."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    ends: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            ends[m.group(1)] = i
    return sorted(("\n".join(lines[labels[label] : end + 1]) for label, end in ends.items()), key=len, reverse=True)


GEMV_TILINGS = ((1, 1, 1024, 1), (2, 8, 1024, 2))  # as launched (gemv_nvfp4._tiles)


def main(pdl: bool = False, groups: tuple[int, ...] = (1, 3)) -> None:
    ptrs = {
        "bc_ptr": "*i64",
        "rc_ptr": "*i64",
        "bs_ptr": "*fp32",
        "rs_ptr": "*fp32",
        "sx_ptr": "*fp32",
        "y_ptr": "*bf16",
    }
    for g in ("", "1", "2"):  # the members of a grouped launch
        ptrs.update({f"w{g}_ptr": "*i64", f"ws{g}_ptr": "*u8", f"sw{g}_ptr": "*fp32", f"bias{g}_ptr": "*fp32"})
    for group in groups:
        for bm, bn, bk, nw in GEMV_TILINGS if not {"--prep", "--fused"} & set(sys.argv[1:]) else ():
            k = _compile(
                gemv_nvfp4._gemv_kernel,
                dict(
                    TWO=True,
                    WB=32,
                    HAS_BIAS=False,
                    ASM=True,
                    EVEN_N=True,
                    EVEN_M=True,
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                    BLOCK_K=bk,
                    GROUP=group,
                    PDL=pdl,
                ),
                ptrs,
                nw,
                fusion=True,
            )  # as launched
            _report(
                k,
                f"GEMV NVFP4-32, two terms, {group} weight(s), {bm} rows, BLOCK_N {bn} BLOCK_K {bk} warps {nw}",
                bn * bk / (32 * nw),
            )
    if "--fused" not in sys.argv[1:]:
        for bm, bk, nw in ((8, 64, 4), (8, 128, 4), (16, 128, 4)):
            _report(
                _compile_prep(bm, bk, nw, PLAIN, inline=False, pdl=pdl),
                f"preparation sharq-nvfp4, bf16 terms, {bm}x{bk} warps {nw}",
                bm * bk / (32 * nw),
            )
        for two in (False, True):
            for bm, bk, nw in ((4, 128, 4), (8, 128, 4), (4, 256, 4), (8, 256, 8)):
                what = "deq(B), deq(R)" if two else "bf16(deq(B) + deq(R))"
                _report(
                    _compile_split(bm, bk, nw, PLAIN, two=two, inline=True),
                    f"operand-only preparation sharq-nvfp4 -> {what}, {bm}x{bk} warps {nw}",
                    bm * bk / (32 * nw),
                )
    fused_main(pdl)


# the activation sources (kernels/sources.py): x as stored, RMSNorm [+ residual add], act(gate) · up
PLAIN = dict(SOURCE=0, ADD=False, VARIANT=0, DT=1, DTY=1, WRITE_Y=False, WRITE_H=False)
NORM = dict(SOURCE=1, ADD=False, VARIANT=0, DT=1, DTY=1, WRITE_Y=True, WRITE_H=False)
ADD_NORM = dict(SOURCE=1, ADD=True, VARIANT=0, DT=1, DTY=1, WRITE_Y=True, WRITE_H=True)
ACT_MUL = dict(SOURCE=2, ADD=False, VARIANT=0, DT=1, DTY=1, WRITE_Y=False, WRITE_H=False)
SOURCES = {"rmsnorm": NORM, "add+rmsnorm": ADD_NORM, "silu*up": ACT_MUL}
_SOURCE_PTRS = {
    "x2_ptr": "*bf16",
    "w_ptr": "*bf16",
    "inv_ptr": "*fp32",
    "y_ptr": "*bf16",
    "h_ptr": "*bf16",
    "eps": "fp32",
}


def _source_consts(source: dict, inline: bool) -> dict:
    from sharq.nn.fused_norm import NORM_LANES

    return dict(source, INV_INLINE=inline, NORM_W=NORM_LANES, NORM_LOG2W=NORM_LANES.bit_length() - 1)


def _compile_prep(
    bm: int, bk: int, nw: int, source: dict, *, inline: bool, pdl: bool = False, terms: int = 1, kp: int = 4096
):
    ptrs = {
        "x_ptr": "*bf16",
        "amax_ptr": "*i32",
        "s_ptr": "*fp32",
        "tb_ptr": "*bf16",
        "tr_ptr": "*bf16",
        "tbs_ptr": "*fp32",
        "trs_ptr": "*fp32",
        "b_codes": "*u8",
        "b_scales": "*u8",
        "r_codes": "*u8",
        "r_scales": "*u8",
        **_SOURCE_PTRS,
    }
    if source["SOURCE"] == 2:
        ptrs["x_ptr"] = "*i16"
    if terms == 3:
        ptrs.update(tb_ptr="*i8", tr_ptr="*i8")
    consts = dict(
        MX=False,
        HAS_S=True,
        MASK=1,
        MASK_N=2,
        MASK_M=8,
        RESIDUAL=1,
        RMASK=0,
        RMASK_N=1,
        RMASK_M=1,
        BB=32,
        RB=16,
        WRITE_TERMS=terms,
        KP=kp,
        AMAX_INLINE=1 if inline else 0,
        BLOCK_M=bm,
        BLOCK_K=bk,
        PDL=pdl,
        **_source_consts(source, inline),
    )
    return _compile(prepare_fp4._prepare_kernel, consts, ptrs, nw, fusion=False)  # as launched: exact


def _compile_split(bm: int, bk: int, nw: int, source: dict, *, two: bool, inline: bool):
    ptrs = {"x_ptr": "*bf16", "amax_ptr": "*i32", "s_ptr": "*fp32", "t_ptr": "*bf16", "r_ptr": "*bf16", **_SOURCE_PTRS}
    if source["SOURCE"] == 2:
        ptrs["x_ptr"] = "*i16"
    consts = dict(
        TOKEN=True,
        MASK=1,
        MASK_N=2,
        MASK_M=8,
        RESIDUAL=1,
        RMASK=0,
        RMASK_N=1,
        RMASK_M=1,
        BB=32,
        RB=16,
        TWO=two,
        ROUND_ASM=True,
        BLOCK_M=bm,
        BLOCK_K=bk,
        **_source_consts(source, inline),
    )
    return _compile(prepare_split._prepare_split_kernel, consts, ptrs, nw, fusion=False)


def fused_main(pdl: bool = False) -> None:
    """The preparations with a fused source: the loops that compute the source's row statistics
    (1/rms, amax: 'loops' lists every loop body's count per value) and the main loop, per value, next
    to the plain preparation's; and the stats kernel the launches without inline statistics run first."""
    from sharq.kernels import sources
    from sharq.nn.fused_norm import NORM_LANES

    for name, source in SOURCES.items():
        k = _compile_prep(2, 64, 2, source, inline=True, pdl=pdl, terms=3, kp=4096)  # decode: GEMV operand
        _report(
            k,
            f"fused {name} + preparation, GEMV operand, 2x64 warps 2, stats inline",
            2 * 64 / 64,
            loops=3,
            stats_per_thread=2 * NORM_LANES / 64,
        )
        k = _compile_prep(8, 64, 4, source, inline=True, pdl=pdl)  # 3-8 rows: bf16 rows, stats inline
        _report(
            k,
            f"fused {name} + preparation, bf16 terms, 8x64 warps 4, stats inline",
            8 * 64 / 128,
            loops=3,
            stats_per_thread=8 * NORM_LANES / 128,
        )
        k = _compile_prep(8, 128, 4, source, inline=False)  # from the stats kernel
        _report(k, f"fused {name} + preparation, bf16 terms, 8x128 warps 4, stats from the kernel", 8 * 128 / 128)
        for inline in (True, False):
            k = _compile_split(4, 128, 4, source, two=False, inline=inline)
            _report(
                k,
                f"fused {name} + operand-only preparation -> bf16(deq(B) + deq(R)), 4x128 warps 4, stats "
                f"{'inline' if inline else 'from the kernel'}",
                4 * 128 / 128,
                loops=3 if inline else 1,
                stats_per_thread=4 * NORM_LANES / 128,
            )
        ptrs = {
            "x_ptr": "*i16" if source["SOURCE"] == 2 else "*bf16",
            "x2_ptr": "*bf16",
            "w_ptr": "*bf16",
            "inv_ptr": "*fp32",
            "amax_ptr": "*i32",
            "eps": "fp32",
        }
        for bm, nw in sources.stats_tiles():
            consts = dict(
                SOURCE=source["SOURCE"],
                ADD=source["ADD"],
                VARIANT=0,
                DT=1,
                DTY=1,
                AMAX=1,
                BLOCK_M=bm,
                W=NORM_LANES,
                LOG2W=NORM_LANES.bit_length() - 1,
            )
            k = _compile(sources.source_stats_kernel, consts, ptrs, nw, fusion=False)
            per = bm * NORM_LANES / (32 * nw)
            _report(
                k,
                f"stats kernel of {name} (1/rms, amax per row), {bm} row(s), warps {nw}",
                per,
                loops=2,
                stats_per_thread=per,
            )


def gemm_counts() -> None:
    """gemm_fp4's packed-decode kernel at the plan's tiles for Llama-3.1-8B layers (as launched:
    num_stages from the plan; per value = weights a thread decodes per K step)."""
    from sharq.kernels import gemm_fp4

    ptrs = {
        "a_ptr": "*bf16",
        "r_ptr": "*bf16",
        "wc_ptr": "*u8",
        "ws_ptr": "*u8",
        "sx_ptr": "*fp32",
        "sw_ptr": "*fp32",
        "bias_ptr": "*fp32",
        "y_ptr": "*bf16",
        "part_ptr": "*fp32",
        "wc1_ptr": "*u8",
        "ws1_ptr": "*u8",
        "wc2_ptr": "*u8",
        "ws2_ptr": "*u8",
    }
    cases = [(8, "o", 4096, 4096, 1), (16, "gate_up", 28672, 4096, 1), (32, "down", 4096, 14336, 1)]
    cases.append((64, "q/k/v grouped", 4096, 4096, 3))  # the grouped launch: its prologue picks the weight
    for m, layer, n, k, groups in cases:
        t = gemm_fp4._tiles(m, n, k, packed=True, two=m <= 16)
        consts = dict(
            TWO=m <= 16, MX=False, WB=32, HAS_SW=True, HAS_BIAS=False, W_BF16=False, DOT_F32=False, FAST=1, PDL=False,
            STACK=t["STACK"] == 2, SPLIT_K=t.get("SPLIT_K", 1), GROUPS=groups,
            **{key: t[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")},
        )  # fmt: skip
        kern = _compile(gemm_fp4._fp4_weight_gemm_kernel, consts, ptrs, t["num_warps"], True, t["num_stages"])
        per = t["BLOCK_N"] * t["BLOCK_K"] / (32 * t["num_warps"])
        _report(kern, f"gemm_fp4 M={m} {layer} {t}", per)


if __name__ == "__main__":
    if "--gemm" in sys.argv[1:]:
        gemm_counts()
        raise SystemExit
    main(pdl="--pdl" in sys.argv[1:])  # --pdl: with SHARQ_PDL=1 on Hopper (kernels/pdl.py)
