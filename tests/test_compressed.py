"""Compressed N:M storage of sparse quantized terms: exact round trip, real bit counts."""

import pytest
import torch

from sharq import PRESETS, prepare_activation
from sharq.config import parse_mask
from sharq.formats import quantize_nvfp4
from sharq.formats.pack import pack_uint_bits, unpack_uint_bits
from sharq.sparse.compressed import compress_nm, prepared_nbytes
from sharq.sparse.masks import apply_mask

from .conftest import outlier_activations


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_uint_bit_packing_round_trip(bits):
    values = torch.randint(0, 2**bits, (3, 13))
    packed = pack_uint_bits(values, bits)
    assert packed.shape == (3, -(-13 * bits // 8))
    assert torch.equal(unpack_uint_bits(packed, bits, 13), values)


def test_uint_bit_packing_layout():
    # two 2-bit values 0b01, 0b10 -> stream 1,0,0,1 -> byte 0b1001
    assert pack_uint_bits(torch.tensor([1, 2]), 2).tolist() == [0b1001]


@pytest.mark.parametrize("mask", ["pair4of8", "2:4", "8:16", "16:32", "1:4"])
@pytest.mark.parametrize("shape", [(64,), (5, 96), (2, 3, 40)])
def test_compress_round_trip_is_exact(mask, shape):
    spec = parse_mask(mask)
    x = torch.randn(shape) * 3
    qt = quantize_nvfp4(apply_mask(x, spec), 32)
    sparse = compress_nm(qt, spec)
    back = sparse.decompress()
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.scales, qt.scales)
    assert torch.equal(back.dequantize(), qt.dequantize())


def test_pair4of8_backbone_bits():
    x = outlier_activations(64, 1024)
    prepared = prepare_activation(x, PRESETS["sharq-nvfp4"])
    sparse = compress_nm(prepared.backbone, parse_mask("pair4of8"))
    # 2 bits of kept codes + 0.5 bit of pair positions + 0.25 bit of E4M3 per-32 scales (+ s_x)
    assert sparse.bits_per_value == pytest.approx(2.75 + 32 / x.numel())
    total = prepared_nbytes(prepared, PRESETS["sharq-nvfp4"]) * 8 / x.numel()
    assert total == pytest.approx(2.75 + 4.5 + 32 / x.numel())  # + dense NVFP4-16 residual, one s_x


def test_compress_rejects_dense_tensors():
    qt = quantize_nvfp4(torch.randn(4, 64) + 5, 16)
    with pytest.raises(ValueError, match="not 2:4-sparse"):
        compress_nm(qt, parse_mask("2:4"))
    with pytest.raises(ValueError, match="multiple"):
        compress_nm(quantize_nvfp4(torch.zeros(2, 16), 16), parse_mask("16:32"))
