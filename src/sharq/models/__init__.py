"""Model-level integration: SharQ conversion of Hugging Face decoders and other module trees."""

from .architectures import ARCHITECTURES, DecoderArchitecture
from .convert import ConversionReport, quantize_

__all__ = ["ARCHITECTURES", "DecoderArchitecture", "ConversionReport", "quantize_"]
