"""SharqConfig validation, JSON round trip, presets."""

import dataclasses
import json

import pytest
import torch

import sharq
from sharq import PRESETS, Backend, Format, Granularity, Operand, Residual, RuntimeOptions, SharqConfig
from sharq.config import parse_mask, preset_name

EXPECTED_PRESETS = {
    "bf16",
    "nvfp4",
    "mxfp4",
    "hif4",
    "sharq-nvfp4",
    "sharq-mxfp4",
    "sharq-hif4",
    "sparse-only",
    "dense-dense",
    "sparse-sparse",
    "naive-residual",
    "sharq-nvfp4-w16",
    "nvfp4-mse",
    "sharq-nvfp4-mse",
    "sharq-nvfp4-w16-mse",
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
    token = cfg.replace(granularity="token", operand="exact")
    assert SharqConfig.from_json(token.to_json()) == token


def test_presets_follow_the_spec_tables():
    s = PRESETS["sharq-nvfp4"]
    assert (s.format, s.mask, s.residual, s.backbone_block, s.residual_block, s.weight_block) == (
        Format.NVFP4,
        "pair4of8",
        Residual.QUANTIZED,
        32,
        16,
        32,
    )
    assert PRESETS["sharq-nvfp4-w16"] == s.replace(weight_block=16)
    m = PRESETS["sharq-mxfp4"]
    assert (m.format, m.mask, m.backbone_block, m.residual_block, m.weight_block) == (
        Format.MXFP4,
        "pair4of8",
        32,
        32,
        32,
    )
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
    cfg = SharqConfig(
        format="mxfp4", backbone_block=32, residual_block=32, weight_block=32, granularity="token", operand="bf16-sum"
    )
    assert cfg.format is Format.MXFP4 and cfg.granularity is Granularity.TOKEN and cfg.operand is Operand.BF16_SUM
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.format = Format.NVFP4  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"format": "fp3"}, "format"),
        ({"granularity": "row"}, "granularity"),
        ({"operand": "fp8"}, "operand"),
        ({"mask": "3:3"}, "0 < N < M"),
        ({"mask": "half"}, "pair4of8"),
        ({"backbone_block": 64}, "backbone_block=64"),
        ({"format": "mxfp4"}, "residual_block=16"),
        ({"format": "hif4", "backbone_block": 64, "residual_block": 64}, "weight_block=32"),
        ({"mask": None, "residual": "naive"}, "naive"),
        ({"residual": "none", "residual_mask": "2:4"}, "residual_mask"),
        ({"format": "none"}, "quantizes nothing"),
        ({"weight_block": 32.0}, "int"),
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


# --------------------------------------------------------------------------------------------------
# the scheme (SharqConfig, recorded) vs runtime options (RuntimeOptions, never recorded)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("backend", "reference"), ("check_finite", True)])
def test_runtime_options_are_not_scheme_fields(field, value):
    """A runtime option given to SharqConfig is refused with a pointer to where it goes, and no
    scheme field, serialization or equality involves it."""
    with pytest.raises(TypeError, match=rf"{field} is a runtime option.*sharq.quantize_"):
        SharqConfig(**{field: value})
    with pytest.raises(TypeError, match=rf"{field} is a runtime option"):
        PRESETS["sharq-nvfp4"].replace(**{field: value})
    assert field not in {f.name for f in dataclasses.fields(SharqConfig)}
    assert field not in PRESETS["sharq-nvfp4"].to_dict()


def test_old_records_with_runtime_fields_load_as_the_scheme():
    """Records written before the split carry backend and check_finite: they load, and are dropped."""
    old = {**PRESETS["sharq-nvfp4-w16"].to_dict(), "backend": "triton", "check_finite": True}
    assert SharqConfig.from_dict(old) == PRESETS["sharq-nvfp4-w16"]
    with pytest.raises(ValueError, match="unknown SharqConfig field"):
        SharqConfig.from_dict({**old, "colour": "red"})


@pytest.mark.parametrize(
    "kwargs,match",
    [({"backend": "cuda"}, "backend='cuda' is not one of"), ({"check_finite": 1}, "check_finite must be a bool")],
)
def test_runtime_options_validate(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RuntimeOptions(**kwargs)
    assert RuntimeOptions(backend="reference").backend is Backend.REFERENCE


def test_set_runtime_options_reaches_every_module_and_shared_preparation():
    from .tiny_models import tiny_model

    model = tiny_model("llama")
    sharq.quantize_(model, "sharq-nvfp4", check_finite=True)
    mods = [m for m in model.modules() if isinstance(m, sharq.SharqLinear)]
    assert mods and all(m.options == RuntimeOptions(check_finite=True) for m in mods)
    shared = {id(m.shared_input): m.shared_input for m in mods if m.shared_input is not None}
    assert shared and all(s.options.check_finite for s in shared.values())
    assert sharq.set_runtime_options(model, backend="reference") == len(mods)
    assert all(m.options == RuntimeOptions(backend="reference", check_finite=True) for m in mods)
    assert all(s.options.backend is Backend.REFERENCE for s in shared.values())
    with pytest.raises(ValueError, match="not one of"):
        sharq.set_runtime_options(model, backend="gpu")
    assert all(m.options.backend is Backend.REFERENCE for m in mods)  # nothing changed by the refusal
    with pytest.raises(ValueError, match="has no SharQ module"):
        sharq.set_runtime_options(torch.nn.Linear(4, 4), backend="reference")
