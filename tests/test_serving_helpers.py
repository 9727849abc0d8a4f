"""The vLLM method's pure helpers (no vLLM needed): tensor-parallel K slices and the row scale, the
checkpoint/vLLM names, the checks run before serving. The vLLM tests are in tests_vllm/."""

import json

import pytest
import torch

import sharq
from sharq import PRESETS
from sharq.checkpoint import CheckpointError
from sharq.formats.nvfp4 import nvfp4_global_scale
from sharq.serving.names import logical_modules
from sharq.serving.tensor_parallel import k_alignment, row_parallel_global_scale, row_parallel_k_slice
from sharq.serving.verify import check_for_serving
from sharq.sparse.decompose import prepare_activation

from .tiny_models import tiny_model

TOKEN = PRESETS["sharq-nvfp4"].replace(granularity="token")


def test_k_alignment_of_the_presets():
    assert k_alignment(PRESETS["sharq-nvfp4"]) == 32  # 32-blocks (weight, backbone), 16 residual, groups of 8
    assert k_alignment(PRESETS["nvfp4"]) == 16
    assert k_alignment(PRESETS["sharq-nvfp4"].replace(mask="8:16", backbone_block=16)) == 32  # the weight's 32


def test_row_parallel_k_slice():
    cfg = PRESETS["sharq-nvfp4"]
    assert row_parallel_k_slice(1536, 1, cfg) == 1536
    assert row_parallel_k_slice(1536, 2, cfg) == 768
    assert row_parallel_k_slice(1536, 3, cfg) == 512
    assert row_parallel_k_slice(576, 2, cfg) == 288  # SmolLM2's o_proj: 9 blocks each
    with pytest.raises(
        ValueError,
        match=r"tensor-parallel size 4 splits the input K=576 of row-parallel layer "
        r"model.o .*144 columns, not a multiple of 32.*work here: \[1, 2, 3, 6, 9\]",
    ):
        row_parallel_k_slice(576, 4, cfg, "model.o")
    with pytest.raises(ValueError, match=r"slices of 168 columns.*sizes that work here: \[1\]$"):
        row_parallel_k_slice(336, 2, cfg)
    with pytest.raises(ValueError, match="positive integer"):
        row_parallel_k_slice(256, 0, cfg)


@pytest.mark.parametrize("tp", [2, 3, 4])
def test_row_parallel_scale_and_codes_equal_one_device(tp):
    """The MAX all-reduce of the slices' amax gives each rank the whole row's s_x; each rank's codes
    are then its slice of the one-device codes (ranks simulated in one process)."""
    g = torch.Generator().manual_seed(tp)
    x = (torch.randn(6, 384, generator=g) * torch.rand(6, 1, generator=g) * 10).to(torch.bfloat16)
    x[2, 300] = 500.0  # this row's amax sits in the last rank's slice
    width = row_parallel_k_slice(384, tp, TOKEN)
    slices = [x[:, r * width : (r + 1) * width].contiguous() for r in range(tp)]
    amaxes = [s.float().abs().amax(-1) for s in slices]

    def all_reduce_max(t):  # what torch.distributed.all_reduce(op=MAX) leaves in every rank
        t.copy_(torch.stack(amaxes).amax(0))

    full = prepare_activation(x, TOKEN)
    for r, part in enumerate(slices):
        scale = row_parallel_global_scale(part, all_reduce_max)
        assert torch.equal(scale, nvfp4_global_scale(x, "token"))
        prepared = prepare_activation(part, TOKEN, global_scale=scale)
        cols = slice(r * width // 2, (r + 1) * width // 2)
        assert torch.equal(prepared.backbone.codes, full.backbone.codes[:, cols])
        assert torch.equal(prepared.residual.codes, full.residual.codes[:, cols])


def test_logical_modules():
    mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    assert logical_modules("model.layers.3.self_attn.qkv_proj", mapping) == [
        "model.layers.3.self_attn.q_proj",
        "model.layers.3.self_attn.k_proj",
        "model.layers.3.self_attn.v_proj",
    ]
    assert logical_modules("model.layers.0.mlp.gate_up_proj", mapping) == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
    ]
    assert logical_modules("model.layers.0.mlp.down_proj", mapping) == ["model.layers.0.mlp.down_proj"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "llama"
    model = tiny_model("llama")
    sharq.quantize_(model, "sharq-nvfp4")
    sharq.save_quantized(model, out)
    return out


def test_check_for_serving_accepts_a_good_folder(tiny_checkpoint):
    record = check_for_serving(tiny_checkpoint)
    assert record.architecture == "Llama" and len(record.modules) == 14


def test_check_for_serving_refuses_a_bit_flip(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-7] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        check_for_serving(folder)
    check_for_serving(folder, verify=False)  # the headers alone are fine: only the CRC-32 sees it


def test_check_for_serving_refuses_architectures_and_formats(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "arch"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["architecture"] = "Gemma3"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not serve architecture 'Gemma3'.*served: Llama, Qwen2/2.5, Qwen3"):
        check_for_serving(folder)


def test_check_for_serving_refuses_non_nvfp4(tmp_path):
    model = tiny_model("qwen3")
    sharq.quantize_(model, "sharq-mxfp4")
    sharq.save_quantized(model, tmp_path / "mx")
    with pytest.raises(CheckpointError, match="serves NVFP4 checkpoints; this one is mxfp4"):
        check_for_serving(tmp_path / "mx")


@pytest.mark.parametrize("rows", [1, 5, 20])  # the GEMV operand, the exact rows operand, the bf16-sum one (auto)
def test_row_parallel_prepare_triton_equals_reference_and_one_device(rows):
    """A row-parallel rank's preparation on the Triton backend (the kernel given the whole rows' amax)
    equals the reference's bit for bit (s_x, codes, block scales), and the ranks' partial products
    sum to the one-device layer."""
    from sharq.ops import linear_from_prepared, prepare, quantize_weight
    from sharq.options import RuntimeOptions
    from sharq.serving.tensor_parallel import row_parallel_prepare

    triton, reference = RuntimeOptions(backend="triton"), RuntimeOptions(backend="reference")
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 256, generator=g) * torch.rand(rows, 1, generator=g) * 10).to(torch.bfloat16)
    x[0, 200] = -300.0  # row 0's amax sits in the second rank's slice
    w = (torch.randn(48, 256, generator=g) * 0.05).to(torch.bfloat16)
    w[0, 0] = w[0, 128] = 1.0  # both halves hold the whole weight's amax: one s_w, as a checkpoint's slices
    whole = x.float().abs().amax(-1)

    def all_reduce_max(t):
        t.copy_(torch.maximum(t, whole))

    total = None
    for r in range(2):
        part = x[:, r * 128 : (r + 1) * 128].contiguous()
        got = row_parallel_prepare(part, TOKEN, all_reduce_max, triton)
        want = row_parallel_prepare(part, TOKEN, all_reduce_max, reference)
        assert torch.equal(got.global_scale.view(torch.int32), want.global_scale.view(torch.int32))
        assert torch.equal(got.global_scale, nvfp4_global_scale(x, "token"))
        for a, b in ((got.backbone, want.backbone), (got.residual, want.residual)):
            assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
        wq = quantize_weight(w[:, r * 128 : (r + 1) * 128].contiguous(), TOKEN)
        y = linear_from_prepared(got, wq, None, torch.float32)
        torch.testing.assert_close(y, linear_from_prepared(want, wq, None, torch.float32), rtol=1e-5, atol=1e-4)
        total = y if total is None else total + y
    one = linear_from_prepared(prepare(x, TOKEN, reference), quantize_weight(w, TOKEN), None, torch.float32)
    torch.testing.assert_close(total, one, rtol=1e-5, atol=1e-4)  # FP32 summation order apart


def test_prepare_with_a_given_row_amax_refuses_what_it_cannot_mean():
    from sharq.ops import prepare

    x = torch.randn(3, 64).to(torch.bfloat16)
    with pytest.raises(ValueError, match="granularity 'token'"):
        prepare(x, PRESETS["sharq-nvfp4"], row_amax=torch.ones(3))  # "tensor": one scale, not per row
    with pytest.raises(ValueError, match=r"float32 of shape \(3,\)"):
        prepare(x, TOKEN, row_amax=torch.ones(3, 1))
    with pytest.raises(ValueError, match="float32"):
        prepare(x, TOKEN, row_amax=torch.ones(3, dtype=torch.float64))
