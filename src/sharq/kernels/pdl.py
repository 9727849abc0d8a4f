"""Programmatic dependent launch (PDL) for the decode kernels: Hopper (sm_90) and later.

At decode, a SharQ linear is a chain of short kernels: the preparation of the activation (a few µs,
a few dozen programs), then one weight-streaming GEMV per layer reading it (q, k, v share one
preparation; gate and up another). Launched plainly, each kernel starts only once the previous one
has finished, and its first weight bytes arrive a DRAM latency later: the preparation's whole
duration, and the ramp and tail of every GEMV, leave the memory system idle.

With PDL a kernel is launched with `launch_pdl=True` and may start while its predecessor in the
stream still runs. The protocol every kernel here follows:

  1. before `gdc_wait`: touch nothing a predecessor writes or reads (the kernels here wait first);
  2. `gdc_wait()`: returns once the predecessor grid has completed and its writes are visible (a
     no-op when the kernel was not launched as a dependent);
  3. `gdc_launch_dependents()`: the next kernel may launch once every program of this one has
     passed here (or exited), i.e. during this kernel's tail; its programs then take the slots
     this kernel frees and wait there.

Every output is written after step 2, so a kernel never overwrites memory a still-running
predecessor reads (CUDA-graph memory pools reuse buffers). A kernel that waits completes after its
predecessor, so stream order stays transitive for the plain launches that follow.

Policy (SHARQ_PDL unset; the measurements behind it: docs/performance.md, "Programmatic dependent
launch"): PDL launches the decode attention, the preparation of the GEMV's 1-2 rows and GEMV
launches of up to 8,192 programs (not gate_up's wider ones); the small-M GEMM and longer
preparations launch plainly. SHARQ_PDL=1 / 0 forces it on / off for every kernel.

The instructions are inline PTX (`griddepcontrol`): the same on every Triton
version and absent under TRITON_INTERPRET=1, where `pdl_enabled` is False and the kernels compile
without them.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import interpreting

__all__ = ["gdc_launch_dependents", "gdc_wait", "pdl_enabled", "wait_then_release"]


def _env_on(default: bool) -> bool:
    if interpreting():
        return False
    flag = os.environ.get("SHARQ_PDL", "")
    return default if flag == "" else flag != "0"


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device, *, default: bool = False) -> bool:
    """True when a kernel on `device` launches with PDL: a CUDA device of compute capability >= 9.0,
    not under the interpreter, and SHARQ_PDL "1" (on), "0" (off) or unset (`default`: the kernel's
    choice in the module docstring)."""
    if device.type != "cuda" or not _env_on(default):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def gdc_wait():
    """Block until the predecessor grid has completed and its memory is visible (PTX
    griddepcontrol.wait; a no-op without a programmatic dependency)."""
    tl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def gdc_launch_dependents():
    """Allow the next kernel in the stream to launch once every program got here (PTX
    griddepcontrol.launch_dependents)."""
    tl.inline_asm_elementwise(
        "griddepcontrol.launch_dependents; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def wait_then_release():
    """The PDL start of a kernel that reads what its predecessor wrote: wait for it, then let the
    next kernel launch (steps 2 and 3 above)."""
    gdc_wait()
    gdc_launch_dependents()
