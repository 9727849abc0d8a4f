"""The shared preparation (q/k/v, gate/up) under torch.compile: one graph, no break, shared once.

`SharedPreparation` is Python-side state. Traced by dynamo, it must neither break the graph (the
model would fall apart into per-linear graphs and recompile per layer) nor replay a stale tensor:
the compiled model returns the eager logits bit for bit, every group prepares once per call, and
repeated calls reuse the one compiled graph (no Python counter the graph reads as a guard).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import sharq  # noqa: E402
from sharq.nn.fused_norm import FusedRMSNormPrep  # noqa: E402

from .tiny_models import COMMON, VOCAB  # noqa: E402


def _one_layer_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**dict(COMMON, num_hidden_layers=1))).to(torch.bfloat16).eval()


def test_quantized_model_compiles_to_one_graph_and_shares_each_preparation_once():
    torch._dynamo.reset()
    model = _one_layer_llama()
    sharq.quantize_(model, sharq.PRESETS["sharq-nvfp4"], backend="reference")
    groups = [m.shared for m in model.modules() if isinstance(m, FusedRMSNormPrep)]
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    graphs = []

    def backend(gm, example_inputs):  # counts the graphs dynamo hands over: one per (re)compilation
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        counts = [g.prepare_count for g in groups]
        assert counts == [1] * len(groups)  # eagerly: one preparation per group
        compiled = torch.compile(model, fullgraph=True, backend=backend)  # a graph break would raise
        for _ in range(3):
            assert torch.equal(compiled(ids, use_cache=False).logits, eager)
    assert len(graphs) == 1  # compiled once, reused: no recompilation per call
    # every preparation sorts its N:M groups once (sparse.masks): q/k/v and gate/up one each, o and down
    # their own — 4 per layer; unshared, q/k/v and gate/up would add 3
    sorts = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "sort" in str(n.target)]
    assert len(sorts) == 4
    assert [g.prepare_count for g in groups] == counts  # compiled calls are not counted
    assert all(g._source is None and g._prepared is None for g in groups)  # nothing published is kept
