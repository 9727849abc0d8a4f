"""operand="auto" (SPEC §7): exact for calls of at most 16 rows, bf16-sum above, on both backends;
the default of every preset; old checkpoints load as exact; each planned kernel actually runs; a
tiny model's logits on the Triton backend equal the reference's up to FP32 summation order.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sharq import PRESETS, SharqConfig, SharqLinear  # noqa: E402
from sharq.config import AUTO_EXACT_MAX_ROWS, Operand  # noqa: E402
from sharq.options import RuntimeOptions  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

from .kernel_launches import RecordingKernel  # noqa: E402
from .tiny_models import tiny_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_auto_is_the_default_and_switches_after_16_rows():
    assert AUTO_EXACT_MAX_ROWS == 16
    assert SharqConfig().operand is Operand.AUTO
    assert all(cfg.operand is Operand.AUTO for cfg in PRESETS.values())
    assert [Operand.AUTO.for_rows(m) for m in (0, 1, 16, 17, 4096)] == [Operand.EXACT] * 3 + [Operand.BF16_SUM] * 2
    assert Operand.EXACT.for_rows(10**6) is Operand.EXACT and Operand.BF16_SUM.for_rows(1) is Operand.BF16_SUM
    assert SharqConfig.from_json(SharqConfig().to_json()).operand is Operand.AUTO
    with pytest.raises(ValueError, match="operand"):
        SharqConfig(operand="fast")


def test_reference_preparation_follows_the_rule():
    config = PRESETS["sharq-nvfp4"]
    x = torch.randn(17, 64)
    assert prepare_activation(x[:16], config).dense is None  # exact: the two terms
    dense = prepare_activation(x, config).dense  # 17 rows: bf16(deq(B) + deq(R))
    assert torch.equal(dense, prepare_activation(x, config.replace(operand="bf16-sum")).dense)
    # the rule counts the rows of the flattened call
    assert prepare_activation(x[:16].reshape(2, 8, 64), config).dense is None
    assert prepare_activation(torch.randn(3, 6, 64), config).dense is not None


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_auto_equals_exact_up_to_16_rows_and_bf16_sum_from_17(backend, granularity):
    pytest.importorskip("triton") if backend == "triton" else None
    torch.manual_seed(3)
    linear = torch.nn.Linear(128, 48, dtype=torch.bfloat16)
    x = (torch.randn(17, 128) * torch.exp(torch.randn(1, 128))).to(torch.bfloat16).to(DEVICE)
    layers = {
        op: SharqLinear.from_float(
            linear,
            PRESETS["sharq-nvfp4"].replace(operand=op, granularity=granularity),
            options=RuntimeOptions(backend=backend),
        ).to(DEVICE)
        for op in ("auto", "exact", "bf16-sum")
    }
    with torch.no_grad():
        for m in (1, 2, 8, 16):
            assert torch.equal(layers["auto"](x[:m]), layers["exact"](x[:m])), m
        assert torch.equal(layers["auto"](x), layers["bf16-sum"](x))
        assert not torch.equal(layers["auto"](x), layers["exact"](x))  # the switch is real on this input


def test_checkpoint_without_operand_loads_as_exact():
    from sharq.checkpoint.record import CheckpointRecord

    record = CheckpointRecord(
        config=PRESETS["sharq-nvfp4"],
        preset="sharq-nvfp4",
        model_class="LlamaForCausalLM",
        architecture="Llama",
        tied_weights={},
        quantized_weights=64 * 128,
        weight_bits=4.25,
        modules={
            "model.layers.0.mlp.down_proj": {
                "type": "linear",
                "shape": [64, 128],
                "bias": False,
                "format": "nvfp4",
                "weight_block": 32,
            }
        },
        sharq_version="0.1.0",
    )
    data = record.to_dict()
    assert data["config"]["operand"] == "auto"
    assert CheckpointRecord.from_dict(data, "config.json").config.operand is Operand.AUTO
    old = copy.deepcopy(data)
    del old["config"]["operand"]  # written before SPEC §7 had operand modes
    loaded = CheckpointRecord.from_dict(old, "config.json")
    assert loaded.config.operand is Operand.EXACT and loaded.preset == "sharq-nvfp4"


def _record_launches(monkeypatch) -> dict[str, list]:
    import sharq.kernels.dequant_fp4 as dequant
    import sharq.kernels.gemm_bf16_tma as gemm_tma
    import sharq.kernels.gemm_fp4 as gemm_fp4
    import sharq.kernels.gemv_nvfp4 as gemv
    import sharq.kernels.prepare_fp4 as prep
    import sharq.kernels.prepare_split as prep_split

    log = {name: [] for name in ("prep", "prep_split", "gemv", "gemm_fp4", "dequant", "gemm_tma")}
    for module, attr, key in (
        (prep, "_prepare_kernel", "prep"),
        (prep_split, "_prepare_split_kernel", "prep_split"),
        (gemv, "_gemv_kernel", "gemv"),
        (gemm_fp4, "_fp4_weight_gemm_kernel", "gemm_fp4"),
        (dequant, "_dequant_kernel", "dequant"),
        (gemm_tma, "_bf16_gemm_tma_kernel", "gemm_tma"),
    ):
        monkeypatch.setattr(module, attr, RecordingKernel(getattr(module, attr), log[key]))
    return log


@pytest.mark.parametrize("operand", ["auto", "exact"])
def test_each_planned_kernel_runs(monkeypatch, operand):
    """The plan's regimes, counted at the kernels: 1-2 rows the GEMV, 3-16 the small-M GEMM (packed
    decode), 17-511 the operand-only preparation and the medium-M GEMM (packed decode), from 512 the
    scratch weight and its GEMM (two terms for exact, one for auto above 16 rows), from 1,024 rows
    the persistent TMA GEMM for one term (auto) and the pointer loop for two (exact)."""
    pytest.importorskip("triton")
    from sharq.kernels.plan import plan_linear

    config = PRESETS["sharq-nvfp4"].replace(operand=operand)
    layer = SharqLinear.from_float(
        torch.nn.Linear(64, 32, dtype=torch.bfloat16), config, options=RuntimeOptions(backend="triton")
    ).to(DEVICE)
    expect = {
        1: ("prep", "gemv"),
        2: ("prep", "gemv"),
        3: ("prep", "gemm_fp4"),
        16: ("prep", "gemm_fp4"),
        17: ("prep_split", "gemm_fp4"),
        255: ("prep_split", "gemm_fp4"),
        256: ("prep_split", "gemm_fp4"),
        511: ("prep_split", "gemm_fp4"),
        512: ("prep_split", "dequant", "gemm_fp4"),
        1024: ("prep_split", "dequant", "gemm_fp4" if operand == "exact" else "gemm_tma"),
    }
    for m, kernels in expect.items():
        log = _record_launches(monkeypatch)
        with torch.no_grad():
            layer(torch.randn(m, 64, dtype=torch.bfloat16, device=DEVICE))
        ran = {name for name, calls in log.items() if calls}
        assert ran == set(kernels), (m, ran)
        plan = plan_linear(m, config, DEVICE, layer.options)
        assert plan.operand is Operand(operand).for_rows(m)
        two = operand == "exact"
        if m > 16:
            assert log["prep_split"][0]["TWO"] == two
            gemm = log["gemm_fp4"] or log["gemm_tma"]
            assert gemm[0]["TWO"] == two
            if log["gemm_fp4"]:
                # the packed decode below 512 rows (FAST: 1 on a GPU, 2 under the interpreter), the scratch from 512
                assert (gemm[0]["FAST"] != 0) == (m < 512) == (plan.gemm == "medium-m")
                assert gemm[0]["W_BF16"] == (m >= 512)
            else:
                assert gemm[0]["FLATTEN"] and plan.tiles(32, 64)["TMA"] == 4
        monkeypatch.undo()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize(
    "operand,rows",
    [
        ("exact", (16, 17)),
        ("auto", (16, 17)),
        # under the interpreter the one-row GEMV takes minutes, 600 exact rows ~70 s and 600 auto rows
        # (the scratch-weight GEMM) ~3 min: -m slow (test_each_planned_kernel_runs covers each kernel)
        pytest.param("exact", (1, 600), marks=pytest.mark.slow),
        pytest.param("auto", (1, 600, 1024), marks=pytest.mark.slow),
    ],
)
def test_tiny_model_triton_logits_equal_reference(operand, rows):
    """Logits of a tiny Llama on the Triton backend = the reference backend's up to FP32 summation
    order, at 1, 16, 17, 600 and 1,024 rows a call (the GEMV, the small-M GEMM, the medium-M GEMM on
    the operand-only preparation, the scratch-weight GEMM, its TMA loop)."""
    pytest.importorskip("triton")
    from sharq import quantize_

    base = tiny_model("llama", dtype=torch.float32)
    models = {}
    for backend in ("reference", "triton"):
        model = copy.deepcopy(base).to(DEVICE)
        quantize_(model, PRESETS["sharq-nvfp4"].replace(operand=operand, granularity="token"), backend=backend)
        models[backend] = model
    g = torch.Generator().manual_seed(5)
    shapes = {1: (1, 1), 16: (1, 16), 17: (1, 17), 600: (2, 300), 1024: (2, 512)}
    for m in rows:
        ids = torch.randint(0, 256, shapes[m], generator=g).to(DEVICE)
        ref, got = _logits(models["reference"], ids), _logits(models["triton"], ids)
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err < 1e-4, (m, err)  # FP32 summation order (a flipped FP4 rounding is ~1e-2)
