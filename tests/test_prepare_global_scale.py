"""`prepare_activation(..., global_scale=)`: a precomputed s_x (tensor parallelism, SPEC §3).

The property that row-parallel serving relies on: a block-aligned K slice prepared with the scale
of the whole row gives exactly that slice of the whole row's preparation (codes and scales).
"""

import pytest
import torch

from sharq import PRESETS
from sharq.formats.nvfp4 import nvfp4_global_scale
from sharq.sparse.decompose import prepare_activation

TOKEN = PRESETS["sharq-nvfp4"].replace(granularity="token")


def _x(m=5, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, 7] *= 40.0  # an outlier column: the row amax sits in the first slice
    return x.to(torch.bfloat16)


def _same(a, b):
    return torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_data_scale_given_explicitly_changes_nothing():
    x = _x()
    ref = prepare_activation(x, TOKEN)
    got = prepare_activation(x, TOKEN, global_scale=nvfp4_global_scale(x, "token"))
    assert _same(got.backbone, ref.backbone) and _same(got.residual, ref.residual)
    assert torch.equal(got.global_scale, ref.global_scale)


@pytest.mark.parametrize("parts", [2, 4])
def test_k_slice_with_the_row_scale_is_the_slice_of_the_row(parts):
    x = _x()
    full = prepare_activation(x, TOKEN)
    s = nvfp4_global_scale(x, "token")  # (M, 1): what the MAX all-reduce of the slices' amax gives
    width = x.shape[1] // parts  # 128 or 64: whole 32-blocks, 16-blocks and groups of 8
    for p in range(parts):
        cols = slice(p * width, (p + 1) * width)
        part = prepare_activation(x[:, cols].contiguous(), TOKEN, global_scale=s)
        assert torch.equal(part.backbone.codes, full.backbone.codes[:, p * width // 2 : (p + 1) * width // 2])
        assert torch.equal(part.backbone.scales, full.backbone.scales[:, p * width // 32 : (p + 1) * width // 32])
        assert torch.equal(part.residual.codes, full.residual.codes[:, p * width // 2 : (p + 1) * width // 2])
        assert torch.equal(part.residual.scales, full.residual.scales[:, p * width // 16 : (p + 1) * width // 16])
        assert torch.equal(part.global_scale, s)


def test_k_slice_with_its_own_scale_differs():
    """Without the row scale the slice quantizes differently (why the all-reduce is needed)."""
    x = _x()
    full = prepare_activation(x, TOKEN)
    part = prepare_activation(x[:, 128:].contiguous(), TOKEN)
    assert not torch.equal(part.backbone.scales, full.backbone.scales[:, 4:])


def test_global_scale_shape_and_format_are_checked():
    x = _x()
    with pytest.raises(ValueError, match=r"needs \(5, 1\)"):
        prepare_activation(x, TOKEN, global_scale=torch.ones(()))
    with pytest.raises(ValueError, match=r"needs \(\)"):
        prepare_activation(x, PRESETS["sharq-nvfp4"], global_scale=torch.ones(5, 1))
    with pytest.raises(TypeError, match="floating-point"):
        prepare_activation(x, TOKEN, global_scale=torch.ones(5, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="no second-level scale"):
        prepare_activation(x, PRESETS["sharq-mxfp4"], global_scale=torch.ones(()))
