"""Count the sm_90 SASS instructions of the decode GEMV and the preparation, without a GPU.

The triton wheel ships ptxas and nvdisasm, so a kernel compiles for Hopper on any machine. This
prints, per launch tiling, the static SASS instruction count of the kernel and of its main loop
divided by the weights (GEMV) or activation elements (preparation) one thread handles per step, the
layout conversions left in the Triton GPU IR, and the loop's most frequent opcodes. Static counts
include rarely taken paths (the slow path of an IEEE division), so they overstate the executed
count somewhat; the loop body is what a weight costs at large K.

usage: python benchmarks/sass_count.py [--pdl] [--prep]   (needs only the CPU; the GEMV alone and grouped, 3
       weights; --prep: the preparations alone)
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


def _compile(fn, consts: dict, ptr_types: dict, num_warps: int, fusion: bool):
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else ptr_types.get(n, "i32") for n in names}
    aligned = [n for n in names if sig[n].startswith("*") or n.startswith("stride") or n in ("K", "KS", "KSW", "N")]
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=1, enable_fp_fusion=fusion)
    )


def _report(kernel, tag: str, per_thread: float) -> None:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    ops = _opcodes(sass)
    total = sum(ops.values())
    loop = _opcodes(_longest_loop(sass))
    body = sum(loop.values())
    print(
        f"{tag}: {total} SASS ({total / per_thread:.1f} per value); loop body {body} ({body / per_thread:.2f} "
        f"per value), {kernel.asm['ttgir'].count('convert_layout')} layout conversions in the IR; "
        f"loop {dict(loop.most_common(10))}"
    )


def _opcodes(sass: str) -> collections.Counter:
    return collections.Counter(
        m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9.]+)", sass)
    )


def _longest_loop(sass: str) -> str:
    """The SASS between a label and the longest backward branch to it (the main loop), or ''."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    best = ""
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = "\n".join(lines[labels[m.group(1)] : i + 1])
            best = max(best, body, key=len)
    return best


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
        for bm, bn, bk, nw in GEMV_TILINGS if "--prep" not in sys.argv[1:] else ():
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
    prep = {
        "x_ptr": "*bf16",
        "amax_ptr": "*i32",
        "s_ptr": "*fp32",
        "sum_ptr": "*fp32",
        "tb_ptr": "*bf16",
        "tr_ptr": "*bf16",
        "b_codes": "*u8",
        "b_scales": "*u8",
        "r_codes": "*u8",
        "r_scales": "*u8",
    }
    for bm, bk, nw in ((8, 64, 4), (8, 128, 4), (16, 128, 4)):
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
            WRITE_SUM=False,
            WRITE_TERMS=1,
            KP=4096,
            AMAX_INLINE=0,
            BLOCK_M=bm,
            BLOCK_K=bk,
            PDL=pdl,
        )
        k = _compile(prepare_fp4._prepare_kernel, consts, prep, nw, fusion=False)  # as launched: exact
        _report(k, f"preparation sharq-nvfp4, bf16 terms, {bm}x{bk} warps {nw}", bm * bk / (32 * nw))
    split = {"x_ptr": "*bf16", "amax_ptr": "*i32", "s_ptr": "*fp32", "t_ptr": "*bf16", "r_ptr": "*bf16"}
    for two in (False, True):
        for bm, bk, nw in ((4, 128, 4), (8, 128, 4), (4, 64, 2)):
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
                SPLIT_LAYOUT=True,
                BLOCK_M=bm,
                BLOCK_K=bk,
            )
            k = _compile(prepare_split._prepare_split_kernel, consts, split, nw, fusion=False)
            what = "deq(B), deq(R)" if two else "bf16(deq(B) + deq(R))"
            _report(k, f"pair-split preparation sharq-nvfp4 -> {what}, {bm}x{bk} warps {nw}", bm * bk / (32 * nw))


if __name__ == "__main__":
    main(pdl="--pdl" in sys.argv[1:])  # --pdl: with SHARQ_PDL=1 on Hopper (kernels/pdl.py)
