"""SharqConfig.weight_scale: presets, JSON round trip, validation, preset_name."""

import pytest

from sharq import PRESETS, SharqConfig
from sharq.config import WeightScale, preset_name

MSE_PRESETS = {"nvfp4-mse": "nvfp4", "sharq-nvfp4-mse": "sharq-nvfp4", "sharq-nvfp4-w16-mse": "sharq-nvfp4-w16"}


@pytest.mark.parametrize("name,base", sorted(MSE_PRESETS.items()))
def test_mse_presets_change_only_the_weight_scale_rule(name, base):
    cfg = PRESETS[name]
    assert cfg.weight_scale is WeightScale.MSE
    assert cfg == PRESETS[base].replace(weight_scale="mse")
    assert SharqConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["weight_scale"] == "mse"
    assert preset_name(cfg) == name
    assert preset_name(cfg.replace(granularity="token", operand="exact")) == name
    assert preset_name(cfg.replace(weight_scale="amax")) == base


def test_default_is_amax_and_old_dicts_load_as_amax():
    assert SharqConfig().weight_scale is WeightScale.AMAX
    old = PRESETS["sharq-nvfp4"].to_dict()
    del old["weight_scale"]  # a config written before the field existed
    assert SharqConfig.from_dict(old) == PRESETS["sharq-nvfp4"]
    assert all(cfg.weight_scale is WeightScale.AMAX for name, cfg in PRESETS.items() if not name.endswith("-mse"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight_scale": "l2"}, r"weight_scale='l2' is not one of 'amax', 'mse'"),
        (
            {
                "format": "hif4",
                "mask": "2:4",
                "backbone_block": 64,
                "residual_block": 64,
                "weight_block": 64,
                "weight_scale": "mse",
            },
            r"weight_scale='mse' needs format 'nvfp4' or 'mxfp4'.*'hif4'",
        ),
        (
            {"format": "none", "mask": None, "residual": "none", "weight_scale": "mse"},
            r"weight_scale='mse' needs format 'nvfp4' or 'mxfp4'.*'none'",
        ),
    ],
)
def test_weight_scale_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SharqConfig(**kwargs)


def test_mxfp4_accepts_mse():
    cfg = PRESETS["sharq-mxfp4"].replace(weight_scale="mse")
    assert SharqConfig.from_json(cfg.to_json()) == cfg and preset_name(cfg) is None
