"""q/k/v and gate/up of a quantized model share one decode GEMV launch — and compute what their
own launches compute.

At one or two rows on the Triton backend (the decode GEMV), the first linear of a group called on
the published input runs one GEMV over the group's weights; the others take their columns. The
model's logits are bit-identical with the grouping switched off (one launch per linear), the launch
count drops from 7 to 4 per decoder layer, and anything else than the published input (another
tensor, three rows, Qwen2's q/k/v biases) still gives each layer's own result.

Without a GPU the kernels run under TRITON_INTERPRET=1 (a one-layer model, two rows; one row is
Qwen2 and one row marked slow there); with one, on CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("transformers")

import sharq  # noqa: E402
import sharq.kernels.gemv_nvfp4 as gemv_module  # noqa: E402
from sharq.nn.linear import SharqLinear  # noqa: E402

from .kernel_launches import RecordingKernel  # noqa: E402
from .tiny_models import COMMON, VOCAB  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# one small layer: the one-row GEMV runs a program per output row, slow under the interpreter
SMALL = dict(
    COMMON,
    hidden_size=64,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    num_hidden_layers=1,
)


def _quantized(arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    model = cls(config(**SMALL)).to(torch.bfloat16).to(DEVICE).eval()
    with torch.no_grad():  # non-trivial norms
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p.float()).to(p.dtype))
    sharq.quantize_(model, sharq.PRESETS["sharq-nvfp4"], backend="triton")
    return model


def _groups(model):
    return {m.shared_input for m in model.modules() if isinstance(m, SharqLinear) and m.shared_input is not None}


@pytest.fixture
def launches(monkeypatch):
    """The GEMV launches' keyword arguments, in launch order."""
    log = []
    monkeypatch.setattr(gemv_module, "_gemv_kernel", RecordingKernel(gemv_module._gemv_kernel, log))
    return log


def _logits_and_groups(model, ids, launches):
    """The model's logits for `ids` and the GROUP (weights per launch) of each GEMV it launched."""
    launches.clear()
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    return logits, [k["GROUP"] for k in launches]


# Qwen2: q/k/v biases. One row (a program per output row) takes minutes under the interpreter: slow
# ~1 min each under the interpreter: Qwen2 (q/k/v biases) and one row run in -m slow
@pytest.mark.parametrize(
    "arch,rows",
    [("llama", 2), pytest.param("qwen2", 2, marks=pytest.mark.slow), pytest.param("llama", 1, marks=pytest.mark.slow)],
)
def test_grouped_launches_give_the_ungrouped_logits(arch, rows, launches):
    model = _quantized(arch)
    layers = model.config.num_hidden_layers
    groups = _groups(model)
    assert sorted(len(g.members) for g in groups) == [2] * layers + [3] * layers  # gate/up, q/k/v
    ids = torch.randint(0, VOCAB, (rows, 1), generator=torch.Generator().manual_seed(rows)).to(DEVICE)
    grouped, launched = _logits_and_groups(model, ids, launches)
    assert launched == [3, 1, 2, 1] * layers  # q/k/v, o, gate/up, down
    assert all(g._group_out is None and g._source is None for g in groups)  # released after the last member
    for g in groups:
        g.set_members(())  # one launch per linear
    alone, launched = _logits_and_groups(model, ids, launches)
    assert launched == [1] * 7 * layers
    assert torch.equal(grouped, alone)


def test_a_member_called_on_another_tensor_computes_its_own_output():
    model = _quantized("llama")
    attn = model.model.layers[0].self_attn
    norm = model.model.layers[0].input_layernorm
    g = torch.Generator().manual_seed(3)
    x, other = (torch.randn(1, 2, model.config.hidden_size, generator=g).to(torch.bfloat16).to(DEVICE) for _ in "ab")
    with torch.no_grad():
        y = norm(x)  # publishes norm(x)
        q = attn.q_proj(y)  # runs the group's launch
        k_other = attn.k_proj(other)  # not the published input: k_proj's own output for `other`
        group = attn.q_proj.shared_input
        group.set_members(())
        want_q, want_k = attn.q_proj(y), attn.k_proj(other)
    assert torch.equal(q, want_q) and torch.equal(k_other, want_k)


def test_three_rows_take_the_gemm_not_the_gemv(launches):
    model = _quantized("llama")
    ids = torch.randint(0, VOCAB, (3, 1), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    _, launched = _logits_and_groups(model, ids, launches)
    assert launched == []  # three rows: the tensor-core GEMM (grouped there by gemm_fp4), no GEMV


def test_members_must_consume_the_group():
    model = _quantized("llama")
    attn = model.model.layers[0].self_attn
    with pytest.raises(ValueError, match="consume this shared preparation"):
        attn.q_proj.shared_input.set_members([attn.q_proj, attn.o_proj])


def test_grouped_launches_compile_to_one_graph(launches):
    """Traced by torch.compile (fullgraph), the grouped hand-over stays in one graph: 4 GEMV ops per
    layer, the eager logits bit for bit, no recompilation on the next call."""
    torch._dynamo.reset()
    model = _quantized("llama")
    ids = torch.randint(0, VOCAB, (2, 1), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    eager, _ = _logits_and_groups(model, ids, launches)
    graphs = []

    def backend(gm, example_inputs):  # one entry per (re)compilation
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(compiled(ids, use_cache=False).logits, eager)
    assert len(graphs) == 1
    gemvs = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "fp4_weight_gemv" in str(n.target)]
    assert len(gemvs) == 4 * model.config.num_hidden_layers


@pytest.mark.slow  # ~2 min under the interpreter
def test_static_decoder_steps_with_grouped_launches_give_the_ungrouped_tokens():
    """The decode steps over transformers' StaticCache, compiled (aot_eager: traced, not fused) and
    eager, hand the grouped outputs over as the plain model does: the same greedy tokens as one
    launch per linear."""
    from sharq.runtime import StaticDecoder

    torch._dynamo.reset()
    model = _quantized("llama")
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    compiled = StaticDecoder(model, 2, 12, graph=False, compile="aot_eager").generate(ids, 3)
    grouped = StaticDecoder(model, 2, 12, graph=False).generate(ids, 3)
    for g in _groups(model):
        g.set_members(())
    alone = StaticDecoder(model, 2, 12, graph=False).generate(ids, 3)
    assert torch.equal(grouped, alone) and torch.equal(compiled, alone)
