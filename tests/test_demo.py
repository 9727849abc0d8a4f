"""`sharq demo` (sharq.eval.demo, demo_report, cli/demo_command): argument checks, the report's parts,
and whole runs on a tiny random Llama (fast) and on the packaged SmolLM2 (slow)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from sharq.cli import main  # noqa: E402
from sharq.cli.main import build_parser  # noqa: E402
from sharq.eval.demo import DEMO_PRESETS, check_demo_presets, free_core_threads, wiki_prefix_tokens  # noqa: E402
from sharq.eval.demo_report import side_by_side  # noqa: E402

from .tiny_models import tiny_folder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_defaults_are_the_demo_of_the_issue():
    args = build_parser().parse_args(["demo"])
    assert args.presets == DEMO_PRESETS == ("bf16", "nvfp4", "sharq-nvfp4", "sharq-nvfp4-w16-mse")
    assert (args.tokens, args.seq_len, args.new_tokens, args.resamples) == (2040, 256, 32, 1000)
    assert args.tokens % (args.seq_len - 1) == 0  # whole windows only
    assert not args.no_chat and args.out == "results" and args.name is None  # demo-MODEL


def test_help_reads_as_written(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% intervals" in text and "%%" not in text and "sharq eval" in text


def test_check_demo_presets():
    assert check_demo_presets(["bf16", "nvfp4", "bf16", "sharq-nvfp4"]) == ("bf16", "nvfp4", "sharq-nvfp4")
    with pytest.raises(ValueError, match="unknown preset 'fp3'; available: bf16"):
        check_demo_presets(["bf16", "fp3"])
    with pytest.raises(ValueError, match="keep 'bf16'"):
        check_demo_presets(["nvfp4", "sharq-nvfp4"])
    with pytest.raises(ValueError, match="at least one quantizing preset"):
        check_demo_presets(["bf16"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--presets", "bf16,nvfp4,fp3"], "unknown preset 'fp3'"),
        (["demo", "--presets", "nvfp4,sharq-nvfp4"], "keep 'bf16'"),
        (["demo", "--inspect-tokens", "1"], "--inspect-tokens must be at least 2"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sharq demo: error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # refused before loading anything


@pytest.mark.parametrize("argv", [["demo", "--tokens", "0"], ["demo", "--presets", ""], ["demo", "--threads", "x"]])
def test_argparse_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_free_core_threads():
    assert free_core_threads(2, 2, 0.2) == 2  # an idle machine: torch's own count
    assert free_core_threads(2, 2, 1.2) == 1  # one core busy elsewhere
    assert free_core_threads(2, 2, 4.9) == 1  # never below one
    assert free_core_threads(8, 16, 3.0) == 8  # never above torch's count
    assert free_core_threads(4, None, 1.0) == 4 and free_core_threads(4, 4, None) == 4  # nothing known


def test_wiki_prefix_tokens_are_the_corpus_prefix():
    from transformers import AutoTokenizer

    from sharq.eval.data import wiki_texts
    from sharq.eval.packaged import smollm2_gguf
    from sharq.eval.perplexity import corpus_tokens

    path = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    longer = corpus_tokens(tokenizer, wiki_texts()[:300])  # far more than 4,080 tokens
    for n in (1, 500, 4080):
        assert wiki_prefix_tokens(tokenizer, n) == longer[:n]


def test_side_by_side_wraps_two_columns():
    left = ("bf16", "The sky is blue because of Rayleigh scattering of sunlight by the molecules of the air.")
    right = ("sharq-nvfp4", "The sky is blue because the atmosphere scatters blue light more than red light.")
    lines = side_by_side(left, right, 60)
    assert lines[0].startswith("bf16") and "| sharq-nvfp4" in lines[0]
    assert all(len(line) <= 60 for line in lines) and len(lines) > 3
    col = (60 - 3) // 2
    assert " ".join(line[:col].strip() for line in lines[2:]).split() == left[1].split()
    assert " ".join(line[col + 3 :].strip() for line in lines[2:] if len(line) > col).split() == right[1].split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("hf") / "tiny-llama", tie=True)


def test_demo_end_to_end_on_a_tiny_model(tiny, tmp_path, capsys):
    argv = ["demo", "--model", str(tiny), "--tokens", "300", "--seq-len", "64", "--inspect-tokens", "32"]
    argv += ["--new-tokens", "6", "--no-chat", "--resamples", "200", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*argv, "--name", "tiny", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert json.loads((tmp_path / "tiny.json").read_text())["perplexity"] == doc["perplexity"]
    assert (tmp_path / "tiny.png").stat().st_size > 10_000
    assert doc["caveat"] is None  # not the packaged SmolLM2
    ppl = doc["perplexity"]
    assert [r["preset"] for r in ppl["rows"]] == list(DEMO_PRESETS)
    assert ppl["tokens"] == 300 and ppl["windows"] == math.ceil(300 / 63) == len(ppl["window_tokens"])
    by = {r["preset"]: r for r in ppl["rows"]}
    for preset, row in by.items():
        nll = ppl["window_nll"][preset]
        assert row["value"] == pytest.approx(math.exp(sum(nll) / 300), rel=1e-9)
        assert row["low"] <= row["value"] <= row["high"] and row["resamples"] == 200
    # one share per SharQ preset, against nvfp4, consistent with the perplexities
    shares = {s["preset"]: s for s in ppl["recovered"]}
    assert set(shares) == {"sharq-nvfp4", "sharq-nvfp4-w16-mse"}
    for preset, share in shares.items():
        plain, ref = by["nvfp4"]["value"], by["bf16"]["value"]
        assert share["against"] == "nvfp4" and share["reference"] == "bf16"
        assert share["value"] == pytest.approx((plain - by[preset]["value"]) / (plain - ref), rel=1e-9)
    # per-layer SQNR of the plain preset and of the SharQ one; the SharQ activation is the cleaner
    layers = doc["layers"]["presets"]
    assert list(layers) == ["nvfp4", "sharq-nvfp4"] and doc["layers"]["tokens"] == 32
    assert len(layers["nvfp4"]) == 14  # 2 decoder layers × q k v o gate up down
    mean = {p: sum(r["act_sqnr_db"] for r in rows) / len(rows) for p, rows in layers.items()}
    assert mean["sharq-nvfp4"] > mean["nvfp4"] + 5
    gen = doc["generation"]
    assert set(gen["completions"]) == {"bf16", "sharq-nvfp4"} and not gen["chat_template"]
    assert all(1 <= len(ids) <= 6 for ids in gen["new_token_ids"].values())
    # the human report went to stderr
    report = captured.err
    assert "recovered share" in report and "sharq-nvfp4-w16-mse" in report and "done in" in report
    assert "0% by definition (plain FP4)" in report and "| sharq-nvfp4" in report and "sharq eval" in report


@pytest.mark.slow
def test_demo_on_the_packaged_smollm2(tmp_path, capsys):
    argv = ["demo", "--tokens", "510", "--seq-len", "256", "--inspect-tokens", "32", "--new-tokens", "8"]
    assert main([*argv, "--resamples", "200", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    doc = json.loads((tmp_path / "demo-smollm2.json").read_text())
    assert "already 4-bit" in doc["caveat"] and "weights already 4-bit" in report
    by = {r["preset"]: r["value"] for r in doc["perplexity"]["rows"]}
    # the ordering every measurement of this model has shown: bf16 < SharQ < plain NVFP4
    assert by["bf16"] < by["sharq-nvfp4-w16-mse"] < by["nvfp4"] and by["sharq-nvfp4"] < by["nvfp4"]
    assert doc["generation"]["completions"]["bf16"].strip()
