"""The entry point: installed under `vllm.general_plugins`, idempotent, and vLLM then knows the
`sharq` method (the config class at module level, so that vLLM can pickle it to its engine)."""

import pickle
from importlib.metadata import entry_points


def test_entry_point_registers_sharq_once():
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "sharq"]
    assert ep.value == "sharq.serving:register"
    register = ep.load()
    register()
    register()  # vLLM calls it in every process, maybe more than once
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    from sharq.serving.vllm_config import SharqVllmConfig

    assert QUANTIZATION_METHODS.count("sharq") == 1
    assert get_quantization_config("sharq") is SharqVllmConfig


def test_config_from_a_record_pickles(tiny_folders):
    import json

    from sharq.serving.vllm_config import SharqVllmConfig

    record = json.loads((tiny_folders("llama") / "config.json").read_text())["quantization_config"]
    config = SharqVllmConfig.from_config(record)
    assert config.get_name() == "sharq" and config.serving_config.granularity.value == "token"
    again = pickle.loads(pickle.dumps(config))
    assert again.record == config.record and again.serving_config == config.serving_config
