"""Checkpoints of "-mse" presets: recorded, round trip bit-identical; records written before the
`weight_scale` field existed load as "amax"."""

import json

import pytest
import torch

import sharq
from sharq.checkpoint.record import CheckpointRecord
from sharq.config import WeightScale

from .tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "kind,preset", [("llama", "sharq-nvfp4-mse"), ("qwen2", "sharq-nvfp4-w16-mse"), ("llama", "nvfp4-mse")]
)
def test_mse_checkpoint_round_trip_is_bit_identical_and_recorded(tmp_path, kind, preset):
    model = tiny_model(kind, seed=0)
    sharq.quantize_(model, preset)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    expected = _logits(model, ids)
    sharq.save_quantized(model, tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert record["preset"] == preset and record["config"]["weight_scale"] == "mse"
    loaded = sharq.load_quantized(tmp_path / "ckpt")
    assert loaded.sharq_checkpoint.config.weight_scale is WeightScale.MSE
    assert torch.equal(_logits(loaded, ids), expected)
    saved = dict(model.named_buffers()) | dict(model.named_parameters())
    got = dict(loaded.named_buffers()) | dict(loaded.named_parameters())
    assert set(got) == set(saved)
    for name, t in saved.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_record_without_weight_scale_loads_as_amax(tmp_path):
    model = tiny_model("llama", seed=0)
    sharq.quantize_(model, "sharq-nvfp4")
    sharq.save_quantized(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    data = json.loads(path.read_text())
    del data["quantization_config"]["config"]["weight_scale"]  # as written before the field existed
    path.write_text(json.dumps(data))
    record = CheckpointRecord.from_dict(data["quantization_config"], str(path))
    assert record.config.weight_scale is WeightScale.AMAX and record.preset == "sharq-nvfp4"
    loaded = sharq.load_quantized(tmp_path / "ckpt")
    assert loaded.sharq_checkpoint.config == sharq.PRESETS["sharq-nvfp4"]
    # a record whose preset contradicts its rule is refused
    data["quantization_config"]["preset"] = "sharq-nvfp4-mse"
    with pytest.raises(sharq.CheckpointError, match="preset is 'sharq-nvfp4-mse' but"):
        CheckpointRecord.from_dict(data["quantization_config"], str(path))
