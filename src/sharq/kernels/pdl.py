"""Programmatic dependent launch (PDL) for the decode kernels: Hopper (sm_90) and later.

At decode, a SharQ linear is a chain of short kernels: the preparation of the activation (a few µs,
a few dozen programs), then one weight-streaming GEMV per layer reading it (q, k, v share one
preparation; gate and up another). Launched plainly, each kernel starts only once the previous one
has finished, and its first weight bytes arrive a DRAM latency later: the preparation's whole
duration, and the ramp and tail of every GEMV, leave the memory system idle.

With PDL a kernel is launched with `launch_pdl=True` and may start while its predecessor in the
stream still runs. The protocol every kernel here follows:

  1. before `gdc_wait`: touch nothing a predecessor writes or reads — only constant data (the
     weight payload, its scales), which a weight-streaming program may ask into L2 with
     `prefetch_l2` (`PREFETCH_ROW_BYTES`, 0 by default: measured slower);
  2. `gdc_wait()`: returns once the predecessor grid has completed and its writes are visible (a
     no-op when the kernel was not launched as a dependent);
  3. `gdc_launch_dependents()`: the next kernel may launch once every program of this one has
     passed here (or exited), i.e. during this kernel's tail; its programs then take the slots
     this kernel frees and wait there.

Every output is written after step 2, so a kernel never overwrites memory a still-running
predecessor reads (CUDA-graph memory pools reuse buffers). A kernel that waits completes after its
predecessor, so stream order stays transitive for the plain launches that follow.

Measured on the H100 (benchmarks/tune_pdl.py, pdl-tuning-h100.json, 2026-12-06), the four
Llama-3.1-8B linears summed: at M = 1 79.8 µs plain, 84.0 with PDL, 83.5 with a 512-byte prefetch
per row, 90.1 prefetching whole rows; at M = 8 118.4, 129.7, 130.6, 141.2. PDL saves ~0.5-1 µs on
the small layers (qkv, o) but slows gate_up's 28,672 one-warp GEMV programs (29.7 -> 37.2 µs) and the
8-row preparations. So the weight-streaming kernels launch plainly unless SHARQ_PDL=1; the decode
attention (a split pass then a combining pass, 8.5 µs a call with PDL) uses it unless SHARQ_PDL=0.

The instructions are inline PTX (`griddepcontrol`, `prefetch.global.L2`): the same on every Triton
version and absent under TRITON_INTERPRET=1, where `pdl_enabled` is False and the kernels compile
without them.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["gdc_launch_dependents", "gdc_wait", "pdl_enabled", "prefetch_l2", "prefetch_lines", "weight_stream_start"]

# bytes of each weight row a weight-streaming program asks into L2 before it waits (0: none);
# benchmarks/tune_pdl.py sweeps it
PREFETCH_ROW_BYTES = 0


def _env_on(default: bool) -> bool:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    flag = os.environ.get("SHARQ_PDL", "")
    return default if flag == "" else flag != "0"


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device, *, default: bool = False) -> bool:
    """True when a kernel on `device` launches with PDL: a CUDA device of compute capability >= 9.0,
    not under the interpreter, and SHARQ_PDL "1" (on), "0" (off) or unset (`default`: the kernel's
    measured choice)."""
    if device.type != "cuda" or not _env_on(default):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def prefetch_lines(row_bytes: int) -> int:
    """128-byte lines per weight row to prefetch (a power of two, 0 for none): the first
    PREFETCH_ROW_BYTES of a row of `row_bytes`, rounded up."""
    want = min(row_bytes, PREFETCH_ROW_BYTES)
    return triton.next_power_of_2(triton.cdiv(want, 128)) if want > 0 else 0


@triton.jit
def gdc_wait():
    """Block until the predecessor grid has completed and its memory is visible (PTX
    griddepcontrol.wait; a no-op without a programmatic dependency)."""
    tl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def gdc_launch_dependents():
    """Allow the next kernel in the stream to launch once every program got here (PTX
    griddepcontrol.launch_dependents)."""
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def prefetch_l2(ptrs):
    """Ask the 128-byte lines holding `ptrs` (any shape, any pointer type) into L2 (PTX
    prefetch.global.L2); reads nothing into registers."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def weight_stream_start(codes_ptr, scales_ptr, offs_n, N, stride_c, stride_s, codes_len, scales_len,
                        PER_LINE: tl.constexpr, PF_W: tl.constexpr, PF_S: tl.constexpr):
    """The PDL start of a weight-streaming program (GEMV, small-M GEMM): its weight rows `offs_n`
    (clamped to N - 1) asked into L2 — PF_W lines of the codes rows (`codes_len` elements of
    codes_ptr's type, PER_LINE of them a 128-byte line) and PF_S of the scale rows (bytes) — then
    the wait for the predecessor, then the next kernel let go."""
    if PF_W > 0:
        last_n = tl.minimum(offs_n, N - 1)[:, None]
        prefetch_l2(codes_ptr + last_n * stride_c + tl.minimum(tl.arange(0, PF_W) * PER_LINE, codes_len - 1)[None, :])
        prefetch_l2(scales_ptr + last_n * stride_s + tl.minimum(tl.arange(0, PF_S) * 128, scales_len - 1)[None, :])
    gdc_wait()
    gdc_launch_dependents()
