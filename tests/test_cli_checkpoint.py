"""`sharq quantize | generate | inspect | bench` driven as a user would: subprocesses, exit codes,
JSON on stdout, one-line errors. Kept to a few subprocesses (each imports torch and transformers)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import sharq
from sharq.cli import main
from sharq.runtime.generation import generate_text

from .tiny_models import tiny_folder, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _sharq(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sharq", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama (tied embeddings) + byte tokenizer as a local Hugging Face folder."""
    return tiny_folder(tmp_path_factory.mktemp("hf") / "tiny-llama", tie=True)


@pytest.fixture(scope="module")
def checkpoint(folder, tmp_path_factory):
    """`sharq quantize FOLDER --out DIR --json`: the checkpoint and the command's JSON."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny-sharq"
    done = _sharq("quantize", folder, "--preset", "sharq-nvfp4", "--out", out, "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def _in_memory(folder, preset="sharq-nvfp4"):
    """The model the CLI quantized, rebuilt in this process the same way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    sharq.quantize_(model, preset)
    return model, AutoTokenizer.from_pretrained(folder)


def test_quantize_writes_a_checkpoint(checkpoint, folder):
    out, doc = checkpoint
    assert doc["quant_method"] == "sharq" and doc["preset"] == "sharq-nvfp4"
    assert doc["files"] == ["model.safetensors"] and doc["quantized_modules"] == 14
    assert 4.25 <= doc["weight_bits"] < 4.26
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["sharq_version"] == sharq.__version__
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    # what the CLI saved is bit-identical to quantizing in memory
    model, tokenizer = _in_memory(folder)
    loaded = sharq.load_quantized(out)
    ids = tokenizer("a quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_inspect_and_generate_a_checkpoint(checkpoint, folder):
    out, doc = checkpoint
    done = _sharq("inspect", out, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["weight_bits"] == pytest.approx(doc["weight_bits"], abs=1e-6)
    assert info["tied_weights"] == {"lm_head.weight": "model.embed_tokens.weight"}

    done = _sharq("generate", out, "--prompt", "hello world", "--max-new-tokens", 6, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["checkpoint"] is True and got["preset"] == "sharq-nvfp4" and len(got["new_token_ids"]) == 6
    model, tokenizer = _in_memory(folder)  # the model that was saved generates the same tokens
    expected = generate_text(model, tokenizer, "hello world", max_new_tokens=6)
    assert got["new_token_ids"] == expected.new_token_ids and got["completion"] == expected.completion


def test_errors_are_one_line_with_exit_codes(checkpoint, folder, tmp_path):
    out, _ = checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:-64])

    done = _sharq("generate", broken, "--max-new-tokens", 2)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sharq generate: error: ")
    assert "model.safetensors: truncated: tensor '" in done.stderr and "Traceback" not in done.stderr
    done = _sharq("--debug", "inspect", broken)
    assert done.returncode == 1 and "Traceback" in done.stderr and "CheckpointError" in done.stderr

    done = _sharq("quantize", folder, "--out", out, "--no-progress")  # exists: never overwritten silently
    assert done.returncode == 1 and "not empty" in done.stderr and done.stderr.count("\n") == 1


def test_a_folder_without_tokenizer_quantizes_and_generates_with_tokenizer_path(tmp_path):
    """config.json + model.safetensors only (save_pretrained alone): quantize needs no tokenizer;
    generate says in one line that there is none and takes one from --tokenizer."""
    bare = tmp_path / "bare"
    model = tiny_model("llama", seed=3)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(bare)
    assert sorted(p.name for p in bare.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    out = tmp_path / "bare-sharq"
    done = _sharq("quantize", bare, "--out", out, "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokenizer"] is False
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]

    done = _sharq("generate", out, "--max-new-tokens", 2)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"sharq generate: error: {out} has no tokenizer (no tokenizer.json or tokenizer_config.json); "
        "give one with --tokenizer PATH, e.g. the original model's folder\n"
    )

    words = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(words)
    done = _sharq("generate", out, "--tokenizer", words, "--prompt", "hello world", "--max-new-tokens", 5, "--json")
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        sharq.quantize_(model, "sharq-nvfp4")
    expected = generate_text(model, tiny_tokenizer(), "hello world", max_new_tokens=5)
    assert json.loads(done.stdout)["new_token_ids"] == expected.new_token_ids

    done = _sharq("generate", out, "--tokenizer", bare, "--max-new-tokens", 2)  # a folder without one: named
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"sharq generate: error: --tokenizer {bare}: no tokenizer there")
    # bench draws ids from the embedding's rows when there is no tokenizer
    assert main(["bench", str(out), "--tokens", "4", "--new-tokens", "1", "--repeat", "1", "--json"]) == 0


def test_bench_linear_json():
    done = _sharq("bench", "--shape", "4,256,128", "--repeat", 2, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["what"] == "linear" and doc["shape"] == {"m": 4, "k": 256, "n": 128}
    assert doc["dense_us"] > 0 and doc["sharq_us"] > 0 and doc["weight_bits"] == pytest.approx(4.25 + 32 / (128 * 256))
    assert doc["sharq_weight_bytes"] == 128 * 256 // 2 + 128 * 256 // 32 + 4


def test_bench_model_and_generate_in_process(checkpoint, capsys):
    out, _ = checkpoint
    assert main(["bench", str(out), "--tokens", "8", "--new-tokens", "2", "--repeat", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["what"] == "model" and doc["preset"] == "sharq-nvfp4" and "float" not in doc
    assert doc["sharq"]["prefill_ms"] > 0 and doc["sharq"]["decode_tokens_per_s"] > 0
    assert doc["decode"] == "eager" == doc["sharq"]["decode"]  # auto on the CPU
    assert (
        main(["bench", str(out), "--tokens", "8", "--new-tokens", "3", "--repeat", "1", "--json", "--decode", "graph"])
        == 0
    )  # StaticDecoder, its step uncaptured on the CPU
    doc = json.loads(capsys.readouterr().out)
    assert doc["decode"] == "graph" and doc["sharq"]["decode_ms_per_token"] > 0
    assert main(["generate", str(out), "--prompt", "abc", "--max-new-tokens", "3", "--sample", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("abc") and "3 tokens in" in captured.err


@pytest.mark.parametrize("command", ["quantize", "generate", "bench", "inspect", "eval", "demo", "presets"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and f"usage: sharq {command}" in text
    assert "--debug" in text  # accepted after the command as well


def test_usage_errors_in_process(checkpoint, folder, tmp_path, capsys):
    out, _ = checkpoint
    assert main(["generate", str(out), "--preset", "sharq-hif4"]) == 2  # a checkpoint is quantized already
    assert "already quantized" in capsys.readouterr().err
    for argv in (
        ["quantize", str(folder), "--preset", "fp3", "--out", str(tmp_path / "x")],
        ["quantize", str(folder)],  # --out is required
        ["bench", "--shape", "1,2"],
        ["generate", "--max-new-tokens", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
    assert not (tmp_path / "x").exists()


def test_checkpoint_inspect_takes_no_preset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "some-dir", "--preset", "nvfp4", "--tokens", "x"])
    assert exit_info.value.code == 2
    assert main(["inspect", "some-dir", "--preset", "nvfp4"]) == 2  # a checkpoint takes no preset
    assert "--preset apply to the per-layer report" in capsys.readouterr().err
    assert main(["inspect", "no-such-dir"]) == 1
    assert "no-such-dir: no such checkpoint folder" in capsys.readouterr().err


def test_eval_json_keeps_stdout_for_the_document(monkeypatch, capsys, tmp_path):
    """`sharq eval --json`: stdout is the JSON document alone; the log and the table go to stderr."""
    import sharq.eval
    import sharq.eval.report

    def fake_evaluate(settings, *, out_dir, name, resume, progress, log):
        log("loading …")
        return {"rows": [{"preset": p, "metric": "ppl_wiki", "value": 1.0} for p in settings.presets]}

    monkeypatch.setattr(sharq.eval, "evaluate", fake_evaluate)
    monkeypatch.setattr(sharq.eval.report, "markdown", lambda doc: "| table |")
    assert main(["eval", "--presets", "bf16,nvfp4", "--tasks", "none", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["preset"] for r in json.loads(captured.out)["rows"]] == ["bf16", "nvfp4"]
    assert "loading …" in captured.err and "| table |" in captured.err
