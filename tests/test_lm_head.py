"""The opt-in weight-only quantized lm_head (`SharqConfig.lm_head="nvfp4-w16"`, SPEC §9): the config
field, `SharqLMHead` against the shared weight quantizer and its reference, `quantize_` on a tied
model (the embedding keeps its weight), checkpoints (round trip, old records, refusals),
transformers' `from_pretrained`, the CLI flag. The Triton kernels: test_lm_head_kernels.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import sharq
from sharq import SharqConfig
from sharq.checkpoint import CheckpointError
from sharq.checkpoint.reader import open_checkpoint
from sharq.config import Format, preset_name
from sharq.formats import quantize_tensor
from sharq.nn import SharqLMHead
from sharq.ops import lm_head_reference

from .tiny_models import VOCAB, tiny_folder, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HEAD = SharqConfig(lm_head="nvfp4-w16")  # sharq-nvfp4 + the quantized lm_head


def _tied(dtype=torch.bfloat16, seed=0):
    """A tiny Llama whose lm_head shares the input embedding's weight, as SmolLM2's does."""
    model = tiny_model("llama", seed=seed, dtype=dtype)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.get_input_embeddings().weight
    return model


def _ids(seed=1):
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# --- the config field ---------------------------------------------------------------------------
def test_config_field_default_values_and_errors_name_it():
    assert SharqConfig().lm_head.value == "model-dtype" and not SharqConfig().quantizes_lm_head
    assert HEAD.quantizes_lm_head and HEAD.to_dict()["lm_head"] == "nvfp4-w16"
    assert SharqConfig.from_dict(HEAD.to_dict()) == HEAD
    old = {k: v for k, v in SharqConfig().to_dict().items() if k != "lm_head"}  # a record before the field
    assert SharqConfig.from_dict(old) == SharqConfig()
    with pytest.raises(ValueError, match=r"SharqConfig\.lm_head='nvfp4' is not one of 'model-dtype', 'nvfp4-w16'"):
        SharqConfig(lm_head="nvfp4")
    with pytest.raises(ValueError, match=r"SharqConfig\.lm_head='nvfp4-w16' needs a quantizing format"):
        SharqConfig.from_preset("bf16", lm_head="nvfp4-w16")
    # the presets name the decoder's scheme: the lm_head is an add-on, like granularity
    assert preset_name(SharqConfig.from_preset("sharq-hif4", lm_head="nvfp4-w16")) == "sharq-hif4"


# --- the module ---------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_scale", ["amax", "mse"])
def test_module_holds_the_shared_quantizers_payload_and_computes_the_reference(weight_scale):
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(72, 40, bias=False)  # K = 72: padded to 80 in 16-blocks
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 72, generator=g) * torch.exp(torch.randn(40, 1, generator=g)))
    head = SharqLMHead.from_float(linear, HEAD.replace(weight_scale=weight_scale))
    want = quantize_tensor(linear.weight.detach(), Format.NVFP4, 16, scale_rule=weight_scale)
    qt = head.quantized_weight
    assert (qt.format, qt.block, qt.shape) == (Format.NVFP4, 16, (40, 72))
    assert torch.equal(qt.codes, want.codes) and torch.equal(qt.scales, want.scales)
    assert torch.equal(qt.global_scale, want.global_scale)
    assert head.weight_codes.dtype == torch.uint8 and head.weight_global_scale.dtype == torch.int32
    assert 4.5 <= head.weight_bits_per_value < 4.5 + 8 * 4 * 8 / (40 * 72) + 0.5  # + padding, one FP32 s_w
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 72, generator=g).to(dtype)
        y = head(x)
        assert y.dtype == dtype and y.shape == (3, 5, 40)
        assert torch.equal(y, lm_head_reference(x.reshape(-1, 72), qt, None).reshape(3, 5, 40))
        w64 = qt.global_scale.double() * qt.dequantize(apply_global_scale=False).double()
        exact, magnitude = x.double() @ w64.T, x.double().abs() @ w64.abs().T
        rounding = 2**-8 if dtype == torch.bfloat16 else 2**-24  # of the output's cast
        assert ((y.double() - exact).abs() <= 1e-5 * magnitude + rounding * exact.abs()).all()
    assert head(torch.zeros(0, 72)).shape == (0, 40)


def test_mse_scales_reach_the_lm_head():
    """weight_scale="mse" picks other block scales than the amax rule for some blocks, and never a
    larger squared error of the dequantized weight."""
    linear = nn.Linear(64, 48, bias=False)
    amax = SharqLMHead.from_float(linear, HEAD).dequantized_weight()
    mse = SharqLMHead.from_float(linear, HEAD.replace(weight_scale="mse")).dequantized_weight()
    w = linear.weight.detach()
    assert not torch.equal(amax, mse)
    assert ((mse - w) ** 2).sum() < ((amax - w) ** 2).sum()


# --- quantize_ ----------------------------------------------------------------------------------
def test_quantize_unties_and_the_embedding_keeps_its_weight():
    model = _tied(torch.float32)
    embedding = model.get_input_embeddings().weight
    before = embedding.detach().clone()
    reference = tiny_model("llama", dtype=torch.float32)  # the same weights, quantized without the lm_head
    reference.config.tie_word_embeddings = True
    reference.lm_head.weight = reference.get_input_embeddings().weight
    sharq.quantize_(reference, "sharq-nvfp4")

    report = sharq.quantize_(model, HEAD)
    assert isinstance(model.lm_head, SharqLMHead) and "weight" not in dict(model.lm_head.named_parameters())
    assert model.get_input_embeddings().weight is embedding and torch.equal(embedding, before)
    assert report.lm_head == "lm_head" and report.lm_head_untied_from == "model.embed_tokens.weight"
    assert "lm_head" not in report.kept and "lm_head weight-only nvfp4-w16" in report.summary()
    assert model.config.tie_word_embeddings is False
    model.tie_weights()  # transformers' own tying finds nothing to tie any more
    assert "weight" not in dict(model.lm_head.named_parameters())

    ids = _ids()
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        assert torch.equal(hidden, reference.model(ids).last_hidden_state)  # the decoder is the same
        head = model.lm_head.quantized_weight
        want = lm_head_reference(hidden.reshape(-1, hidden.shape[-1]), head, None).reshape(2, 11, VOCAB)
        assert torch.equal(model(ids).logits, want)
        # the float head of the untied weight is the embedding's: it was quantized from it
        assert torch.equal(head.codes, quantize_tensor(before, Format.NVFP4, 16).codes)


def test_untied_model_records_no_untying_and_errors_name_the_field():
    model = tiny_model("qwen2")  # untied lm_head
    report = sharq.quantize_(model, HEAD.replace(granularity="token"))
    assert report.lm_head == "lm_head" and report.lm_head_untied_from is None
    with pytest.raises(ValueError, match="already a sharq module"):
        sharq.quantize_(model, HEAD)

    with pytest.raises(ValueError, match=r"SharqConfig\.lm_head='nvfp4-w16' asks for .*lm_head.* selected it too"):
        sharq.quantize_(tiny_model("llama"), HEAD, modules_to_not_convert=(), filter_fn=lambda m, fqn: fqn == "lm_head")
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    with pytest.raises(ValueError, match=r"SharqConfig\.lm_head='nvfp4-w16': the model has no output projection"):
        sharq.quantize_(net, HEAD)
    assert type(net[0]) is nn.Linear  # refused before anything changed


# --- checkpoints --------------------------------------------------------------------------------
def test_round_trip_of_a_tied_model_is_bit_identical(tmp_path):
    model = _tied()
    embedding = model.get_input_embeddings().weight.detach().clone()
    sharq.quantize_(model, HEAD)
    saved = sharq.save_quantized(model, tmp_path / "ckpt")
    assert "lm_head nvfp4-w16" in saved.summary()
    doc = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    record = doc["quantization_config"]
    assert doc["tie_word_embeddings"] is False and record["tied_weights"] == {}
    assert record["preset"] == "sharq-nvfp4" and record["config"]["lm_head"] == "nvfp4-w16"
    assert record["modules"]["lm_head"] == {
        "type": "lm_head",
        "shape": [VOCAB, 128],
        "bias": False,
        "format": "nvfp4",
        "weight_block": 16,
        "untied_from": "model.embed_tokens.weight",
    }
    stored = open_checkpoint(tmp_path / "ckpt").tensors
    assert {
        "model.embed_tokens.weight",
        "lm_head.weight_codes",
        "lm_head.weight_scales",
        "lm_head.weight_global_scale",
    } <= set(stored) and "lm_head.weight" not in stored

    loaded = sharq.load_quantized(tmp_path / "ckpt")
    ids = _ids()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    assert isinstance(loaded.lm_head, SharqLMHead) and loaded.lm_head.untied_from == "model.embed_tokens.weight"
    assert torch.equal(loaded.get_input_embeddings().weight, embedding)
    for name, t in model.lm_head.named_buffers():
        assert torch.equal(getattr(loaded.lm_head, name), t), name
    assert loaded.sharq_report.lm_head_untied_from == "model.embed_tokens.weight"
    sharq.save_quantized(loaded, tmp_path / "again")  # re-saving keeps the record
    again = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    assert again["modules"] == record["modules"]


def test_checkpoints_without_the_field_load_as_before(tmp_path):
    """A record written before `lm_head` existed (no config.lm_head): the same model, lm_head tied."""
    model = _tied()
    sharq.quantize_(model, "sharq-nvfp4")
    sharq.save_quantized(model, tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    doc = json.loads(path.read_text())
    assert doc["quantization_config"]["config"].pop("lm_head") == "model-dtype"
    path.write_text(json.dumps(doc))
    loaded = sharq.load_quantized(tmp_path / "old")
    assert loaded.sharq_checkpoint.config.lm_head.value == "model-dtype"
    assert type(loaded.lm_head) is nn.Linear and loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids = _ids()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def _edit(path, change):
    doc = json.loads((path / "config.json").read_text())
    change(doc["quantization_config"])
    (path / "config.json").write_text(json.dumps(doc))


def test_inconsistent_records_are_refused_naming_the_field(tmp_path):
    model = tiny_model("llama")
    sharq.quantize_(model, HEAD)
    sharq.save_quantized(model, tmp_path / "ckpt")
    cases = [
        (lambda r: r["modules"].pop("lm_head"), r"config\.lm_head is 'nvfp4-w16' but .*modules holds 0 lm_head"),
        (lambda r: r["config"].update(lm_head="model-dtype"), r"config\.lm_head is 'model-dtype' but .* holds 1"),
        (lambda r: r["modules"]["lm_head"].update(weight_block=32), r"modules\['lm_head'\] is 'nvfp4'/32, a quantized"),
        (
            lambda r: r["modules"]["lm_head"].update(untied_from="model.nope.weight"),
            r"modules\['lm_head'\]\.untied_from names 'model\.nope\.weight'",
        ),
        (lambda r: r["modules"]["lm_head"].update(type="lmhead"), r"'linear', 'experts' or 'lm_head'"),
    ]
    for i, (change, message) in enumerate(cases):
        broken = tmp_path / f"broken{i}"
        broken.mkdir()
        for f in (tmp_path / "ckpt").iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        if i == 0:  # keep quantized_weights consistent, so the lm_head count is what fails
            change = lambda r: (
                r["modules"].pop("lm_head"),
                r.update(quantized_weights=r["quantized_weights"] - VOCAB * 128),
            )
        _edit(broken, change)
        with pytest.raises(CheckpointError, match=message):
            sharq.load_quantized(broken)


def test_vllm_method_refuses_it_by_name(tmp_path):
    from sharq.serving.verify import check_record_for_serving

    model = tiny_model("llama")
    sharq.quantize_(model, HEAD)
    record = sharq.save_quantized(model, tmp_path / "ckpt").record
    with pytest.raises(CheckpointError, match=r"weight-only quantized lm_head \(config\.lm_head='nvfp4-w16'\)"):
        check_record_for_serving(record, "config.json")


def test_from_pretrained_equals_load_quantized(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tied()
    sharq.quantize_(model, HEAD.replace(weight_scale="mse"))
    sharq.save_quantized(model, tmp_path / "ckpt")
    expected = sharq.load_quantized(tmp_path / "ckpt")
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert isinstance(got.lm_head, SharqLMHead)
    ids = _ids()
    assert torch.equal(_logits(got, ids), _logits(expected, ids))
    assert torch.equal(_logits(got, ids), _logits(model, ids))
    want = dict(expected.named_buffers()) | dict(expected.named_parameters())
    have = dict(got.named_buffers()) | dict(got.named_parameters())
    assert set(have) == set(want)
    for name, t in want.items():
        assert have[name].dtype == t.dtype and torch.equal(have[name], t), name
    assert got.get_input_embeddings().weight is not None and got.config.tie_word_embeddings is False


@pytest.mark.parametrize("kind", ["gemma3", "qwen3_vl"])  # a scaled embedding; a composite config (text_config)
def test_other_architectures_tied_round_trip_and_from_pretrained(tmp_path, kind):
    import transformers

    model = tiny_model(kind)
    for config in (model.config, model.config.get_text_config()):
        config.tie_word_embeddings = True
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    report = sharq.quantize_(model, HEAD)
    assert report.lm_head_untied_from == next(
        n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight
    )
    assert not model.config.tie_word_embeddings and not model.config.get_text_config().tie_word_embeddings
    sharq.save_quantized(model, tmp_path / "ckpt")
    name = sharq.load_quantized(tmp_path / "ckpt").sharq_checkpoint.model_class
    cls = transformers.AutoModelForCausalLM if name.endswith("ForCausalLM") else getattr(transformers, name)
    ids = _ids()
    for loaded in (sharq.load_quantized(tmp_path / "ckpt"), cls.from_pretrained(tmp_path / "ckpt")):
        assert isinstance(loaded.get_output_embeddings(), SharqLMHead)
        assert torch.equal(_logits(loaded, ids), _logits(model, ids))


# --- CLI ----------------------------------------------------------------------------------------
def _sharq(*args):
    return subprocess.run([sys.executable, "-m", "sharq", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_quantize_flag(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "hf", tie=True)
    out = tmp_path / "ckpt"
    done = _sharq("quantize", folder, "--lm-head", "nvfp4-w16", "--out", out, "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["config"]["lm_head"] == "nvfp4-w16" and doc["quantized_modules"] == 15
    record = open_checkpoint(out).record
    assert record.modules["lm_head"]["untied_from"] == "model.embed_tokens.weight"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    sharq.quantize_(model, HEAD)
    ids = _ids()
    assert torch.equal(_logits(sharq.load_quantized(out), ids), _logits(model, ids))

    from sharq.cli import main

    for argv in (["quantize", str(folder), "--out", str(tmp_path / "bad")], ["eval", "--out", str(tmp_path / "bad")]):
        with pytest.raises(SystemExit) as exit_info:  # a bad value: a usage error naming the option, nothing written
            main([*argv, "--lm-head", "fp8"])
        assert exit_info.value.code == 2 and "--lm-head: invalid choice: 'fp8'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
