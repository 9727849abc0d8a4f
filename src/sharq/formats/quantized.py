"""`QuantizedTensor`: real packed storage of a block-quantized tensor, and its dequantization.

A tensor of logical shape (..., K) quantized in blocks of `block` values along K is stored as

  codes         uint8 (..., Kp // 2)       two 4-bit element codes per byte, low nibble first
  scales        uint8 (..., Kp // block)   block-scale bit patterns (E4M3 | E8M0 | E6M2)
  global_scale  fp32 () or (..., 1) | None the NVFP4 second-level scale (SPEC §3); None = 1
  exponents8    uint8 (..., nb)            HiF4 only: bit j = one-bit exponent of group-of-8 j
  exponents4    uint8 (..., nb, 2)         HiF4 only: 16 bits, bit i = exponent of group-of-4 i

where Kp is K padded with zeros to a multiple of `block`. Nothing else is kept: ~4.25–4.5 bits a
value. The decoding of each format lives in its own module (nvfp4.py, mxfp4.py, hif4.py).
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import Format

__all__ = ["QuantizedTensor"]


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedTensor:
    format: Format
    codes: torch.Tensor  # uint8 (..., Kp // 2)
    scales: torch.Tensor  # uint8 (..., Kp // block)
    shape: tuple[int, ...]  # logical (..., K)
    block: int
    global_scale: torch.Tensor | None = None  # fp32, () or (..., 1)
    exponents8: torch.Tensor | None = None  # uint8 (..., nb)      HiF4
    exponents4: torch.Tensor | None = None  # uint8 (..., nb, 2)   HiF4

    # --- storage ---------------------------------------------------------------------------------
    def storage(self) -> dict[str, torch.Tensor]:
        """Every stored tensor by name (what a checkpoint would hold)."""
        items = {"codes": self.codes, "scales": self.scales}
        for name in ("global_scale", "exponents8", "exponents4"):
            value = getattr(self, name)
            if value is not None:
                items[name] = value
        return items

    @property
    def nbytes(self) -> int:
        """Bytes actually stored (payload + every scale)."""
        return sum(t.numel() * t.element_size() for t in self.storage().values())

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def bits_per_value(self) -> float:
        """Stored bits per logical value (padding and the global scale included)."""
        return 8.0 * self.nbytes / max(self.numel, 1)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> QuantizedTensor:
        moved = {k: v.to(device) for k, v in self.storage().items()}
        return dataclasses.replace(self, **moved)

    # --- decoding --------------------------------------------------------------------------------
    def scale_values(self, block: int | None = None) -> torch.Tensor:
        """FP32 block-scale values (..., Kp // block).

        `block=None` gives the stored blocks. A smaller `block` dividing the stored one gives the
        view a dense kernel of that block size reads: every stored scale repeated
        `self.block // block` times (derived from the one stored payload, nothing stored twice).
        """
        from .registry import decode_scales

        values = decode_scales(self)  # (..., nb)
        if block is None or block == self.block:
            return values
        if self.format is Format.HIF4 or block <= 0 or self.block % block:
            raise ValueError(
                f"no {block}-block scale view of a {self.format.value} tensor stored in {self.block}-blocks"
            )
        return values.repeat_interleave(self.block // block, dim=-1)

    def dequantize(self, *, apply_global_scale: bool = True, scale_block: int | None = None) -> torch.Tensor:
        """FP32 values of logical shape `self.shape`.

        apply_global_scale=False gives the values in the scaled domain (`x / s`), as the SharQ
        linear consumes them. `scale_block` reads the block scales through that view (see
        `scale_values`); every view dequantizes to the same values.
        """
        from .registry import element_values

        values = element_values(self, scale_block)  # (..., Kp)
        values = values[..., : self.shape[-1]].reshape(self.shape)
        if apply_global_scale and self.global_scale is not None:
            values = values * self.global_scale
        return values
