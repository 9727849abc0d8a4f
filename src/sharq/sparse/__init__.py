"""N:M activation masks and the SharQ decomposition (reference numerics)."""

from .decompose import Decomposition, PreparedActivation, decompose, prepare_activation
from .masks import apply_mask, nm_mask, pair4of8_mask, topn_mask

__all__ = [
    "Decomposition",
    "PreparedActivation",
    "decompose",
    "prepare_activation",
    "apply_mask",
    "nm_mask",
    "pair4of8_mask",
    "topn_mask",
]
