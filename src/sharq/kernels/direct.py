"""When a sharq kernel op may skip torch's dispatcher and run its implementation directly.

Each kernel is a `torch.library.custom_op` so that torch.compile, fake tensors and CUDA graphs see
one opaque op with a fake implementation. In plain eager execution the dispatcher adds nothing but
host time: ~40 µs per call on the H100 host (autograd wrapper, dynamo-disabled wrapper, aliasing
check), on top of the ~50 µs Triton launch — and an eager prefill of an 8B model makes ~350 such
calls. So the wrappers call the op's implementation themselves when `direct_call_ok` says the op
would do exactly that anyway: not traced by dynamo, no dispatch mode (fake tensors, tracing),
plain tensors, and no input that needs a gradient (the op has no autograd formula and refuses
those; the direct call must not silently drop the error).
"""

from __future__ import annotations

import torch

__all__ = ["direct_call_ok"]


def direct_call_ok(*tensors: torch.Tensor | None) -> bool:
    """True when calling the op's implementation directly computes what the op call would."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor or (grad and t.requires_grad):
            return False
    return True
