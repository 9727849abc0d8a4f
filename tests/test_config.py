"""SharqConfig validation, JSON round trip, presets."""

import dataclasses
import json

import pytest

from sharq import PRESETS, Backend, Format, Granularity, Residual, SharqConfig, parse_mask
from sharq.config import preset_name

EXPECTED_PRESETS = {
    "bf16", "nvfp4", "mxfp4", "hif4", "sharq-nvfp4", "sharq-mxfp4", "sharq-hif4",
    "sparse-only", "dense-dense", "sparse-sparse", "naive-residual", "sharq-nvfp4-w16",
    "nvfp4-mse", "sharq-nvfp4-mse", "sharq-nvfp4-w16-mse",
}


def test_preset_keys():
    assert set(PRESETS) == EXPECTED_PRESETS


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name]
    text = cfg.to_json()
    json.loads(text)  # plain JSON
    assert SharqConfig.from_json(text) == cfg
    assert SharqConfig.from_dict(cfg.to_dict()) == cfg
    token = cfg.replace(granularity="token", backend="reference", check_finite=True)
    assert SharqConfig.from_json(token.to_json()) == token


def test_presets_follow_the_spec_tables():
    s = PRESETS["sharq-nvfp4"]
    assert (s.format, s.mask, s.residual, s.backbone_block, s.residual_block, s.weight_block) == (
        Format.NVFP4, "pair4of8", Residual.QUANTIZED, 32, 16, 32)
    assert PRESETS["sharq-nvfp4-w16"] == s.replace(weight_block=16)
    m = PRESETS["sharq-mxfp4"]
    assert (m.format, m.mask, m.backbone_block, m.residual_block, m.weight_block) == (Format.MXFP4, "pair4of8", 32, 32, 32)
    h = PRESETS["sharq-hif4"]
    assert (h.format, h.mask, h.backbone_block, h.residual_block, h.weight_block) == (Format.HIF4, "2:4", 64, 64, 64)
    n = PRESETS["nvfp4"]
    assert (n.mask, n.residual, n.backbone_block, n.weight_block) == (None, Residual.NONE, 16, 16)
    # each ablation changes SharQ-NVFP4 in exactly one respect
    assert PRESETS["sparse-only"] == s.replace(residual="none")
    assert PRESETS["naive-residual"] == s.replace(residual="naive")
    assert PRESETS["sparse-sparse"] == s.replace(residual_mask="pair4of8")
    assert PRESETS["dense-dense"] == s.replace(mask=None, backbone_block=16)
    assert not PRESETS["bf16"].quantizes


def test_strings_coerced_and_frozen():
    cfg = SharqConfig(format="mxfp4", backbone_block=32, residual_block=32, weight_block=32, granularity="token", backend="reference")
    assert cfg.format is Format.MXFP4 and cfg.granularity is Granularity.TOKEN and cfg.backend is Backend.REFERENCE
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.format = Format.NVFP4  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"format": "fp3"}, "format"),
        ({"granularity": "row"}, "granularity"),
        ({"backend": "cuda"}, "backend"),
        ({"mask": "3:3"}, "0 < N < M"),
        ({"mask": "half"}, "pair4of8"),
        ({"backbone_block": 64}, "backbone_block=64"),
        ({"format": "mxfp4"}, "residual_block=16"),
        ({"format": "hif4", "backbone_block": 64, "residual_block": 64}, "weight_block=32"),
        ({"mask": None, "residual": "naive"}, "naive"),
        ({"residual": "none", "residual_mask": "2:4"}, "residual_mask"),
        ({"format": "none"}, "quantizes nothing"),
        ({"weight_block": 32.0}, "int"),
        ({"check_finite": 1}, "bool"),
    ],
)
def test_validation_errors_name_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SharqConfig(**kwargs)


def test_from_dict_rejects_unknown_fields_and_presets():
    with pytest.raises(ValueError, match="unknown SharqConfig field"):
        SharqConfig.from_dict({"format": "nvfp4", "bits": 4})
    with pytest.raises(ValueError, match="unknown preset"):
        SharqConfig.from_preset("int4")
    assert SharqConfig.from_preset("sharq-nvfp4", granularity="token").granularity is Granularity.TOKEN


def test_parse_mask():
    assert parse_mask("pair4of8").pairs and parse_mask("pair4of8").density == 0.5
    spec = parse_mask(" 8:16 ")
    assert (spec.n, spec.m, spec.name) == (8, 16, "8:16")


def test_operand_option_round_trips_and_is_validated():
    from sharq.config import Operand

    config = SharqConfig.from_preset("sharq-nvfp4", operand="bf16-sum")
    assert config.operand is Operand.BF16_SUM
    assert SharqConfig.from_json(config.to_json()) == config
    assert preset_name(config) == "sharq-nvfp4"  # an execution option, like backend
    with pytest.raises(ValueError, match="operand"):
        SharqConfig(operand="fp8")
