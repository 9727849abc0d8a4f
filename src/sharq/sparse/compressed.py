"""Compressed storage of an N:M-sparse quantized tensor: kept codes + in-group positions.

The layout a sparse tensor-core operand takes. For a mask of `keep` units out of every group of
`G` units (a unit is one value, or one pair for `pair4of8`):

  kept_codes  uint8 (..., Kp * keep / G / 2)   packed 4-bit codes of the kept units, K order
  positions   uint8 (..., ⌈n_kept_units · ⌈log2 G⌉ / 8⌉)  each kept unit's index in its group
  + the block scales / global scale of the dense `QuantizedTensor` it came from

pair4of8 with NVFP4 32-blocks: 2 + 0.5 + 0.25 = 2.75 bits per logical value.
Any choice of `keep` units per group that covers every non-zero code decompresses exactly, so
compression needs only the codes, not the mask (a kept value that rounded to code 0 may be
replaced by another zero — same tensor).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..config import MaskSpec, SharqConfig
from ..formats.pack import pack_nibbles, pack_uint_bits, unpack_nibbles, unpack_uint_bits
from ..formats.quantized import QuantizedTensor
from .decompose import PreparedActivation

__all__ = ["SparseQuantizedTensor", "compress_nm", "prepared_nbytes"]


def _layout(spec: MaskSpec) -> tuple[int, int, int]:
    """(unit size, units per group, kept units per group)."""
    return (2, 4, 2) if spec.pairs else (1, spec.m, spec.n)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseQuantizedTensor:
    dense: QuantizedTensor  # codes field replaced by an empty tensor: scales/global scale/shape live here
    kept_codes: torch.Tensor  # uint8 (..., Kp * keep / G / 2)
    positions: torch.Tensor  # uint8 packed position indices
    mask: MaskSpec

    def storage(self) -> dict[str, torch.Tensor]:
        items = {k: v for k, v in self.dense.storage().items() if k != "codes"}
        return {"kept_codes": self.kept_codes, "positions": self.positions, **items}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.storage().values())

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.nbytes / max(self.dense.numel, 1)

    def decompress(self) -> QuantizedTensor:
        """The dense-layout `QuantizedTensor` (zero codes at dropped positions)."""
        unit, group, keep = _layout(self.mask)
        lead = self.kept_codes.shape[:-1]
        kept = unpack_nibbles(self.kept_codes)  # (..., n_kept * unit)
        n_groups = kept.shape[-1] // (keep * unit)
        kept = kept.reshape(*lead, n_groups, keep, unit)
        idx_bits = max(1, math.ceil(math.log2(group)))
        pos = unpack_uint_bits(self.positions, idx_bits, n_groups * keep).reshape(*lead, n_groups, keep)
        codes = torch.zeros(*lead, n_groups, group, unit, dtype=torch.uint8, device=kept.device)
        codes.scatter_(-2, pos.unsqueeze(-1).expand(*lead, n_groups, keep, unit), kept)
        codes = codes.reshape(*lead, n_groups * group * unit)
        return dataclasses.replace(self.dense, codes=pack_nibbles(codes))


def compress_nm(qt: QuantizedTensor, mask: MaskSpec) -> SparseQuantizedTensor:
    """Compress a dense-layout quantized tensor whose non-zero codes follow `mask`'s N:M pattern.

    Raises ValueError if some group holds more non-zero units than the mask keeps, or if the
    padded length is not a multiple of the mask group.
    """
    unit, group, keep = _layout(mask)
    codes = unpack_nibbles(qt.codes)  # (..., Kp)
    kp = codes.shape[-1]
    if kp % (unit * group):
        raise ValueError(f"compress_nm: padded K={kp} is not a multiple of the {mask.name} group ({unit * group})")
    lead = codes.shape[:-1]
    n_groups = kp // (unit * group)
    units = codes.reshape(*lead, n_groups, group, unit)
    nonzero = (units != 0).any(dim=-1)  # (..., ng, G)
    if bool((nonzero.sum(dim=-1) > keep).any()):
        raise ValueError(f"compress_nm: the tensor is not {mask.name}-sparse (a group has more non-zero units)")
    # kept units first (stable: ascending index), then fillers, which are zero codes
    pos = torch.sort((~nonzero).to(torch.uint8), dim=-1, stable=True).indices[..., :keep]  # (..., ng, keep)
    kept = units.gather(-2, pos.unsqueeze(-1).expand(*lead, n_groups, keep, unit))
    idx_bits = max(1, math.ceil(math.log2(group)))
    return SparseQuantizedTensor(
        dense=dataclasses.replace(qt, codes=qt.codes.new_empty(0)),
        kept_codes=pack_nibbles(kept.reshape(*lead, n_groups * keep * unit)),
        positions=pack_uint_bits(pos.reshape(*lead, n_groups * keep), idx_bits),
        mask=mask,
    )


def prepared_nbytes(prepared: PreparedActivation, config: SharqConfig) -> int:
    """Bytes of a prepared activation with each N:M-masked term in compressed storage."""
    total = 0
    for qt, spec in ((prepared.backbone, config.mask_spec), (prepared.residual, config.residual_mask_spec)):
        if qt is None:
            continue
        total += compress_nm(qt, spec).nbytes if spec is not None else qt.nbytes
    shared = prepared.residual is not None and prepared.residual.global_scale is not None
    if shared:  # backbone and residual share one s_x: stored once
        total -= prepared.global_scale.numel() * prepared.global_scale.element_size()
    return total
