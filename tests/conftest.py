"""Shared test set-up. Without a GPU, Triton kernels run in Triton's CPU interpreter: the variable
must be set before any sharq kernel module is imported (triton.jit reads it when it decorates)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")

try:
    from hypothesis import settings

    settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# many small ops: one thread is faster and steadier than two on the 2-core CI machine
torch.set_num_threads(1)


def outlier_activations(m: int = 128, k: int = 512, *, seed: int = 0) -> torch.Tensor:
    """Gaussian activations with a few large outlier channels (the shape of LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    channels = torch.randperm(k, generator=g)[: max(1, k // 64)]
    x[:, channels] *= 40.0 + 40.0 * torch.rand(len(channels), generator=g)
    return x
