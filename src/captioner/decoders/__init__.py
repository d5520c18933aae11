"""Caption decoders, built by name: ``create_decoder("show-tell", vocab_size=..., pooled_dim=...)``."""
from . import merge, one_shot, retrieval_transformer, show_attend_tell, show_tell, transformer  # noqa: F401  (registers)
from .base import DECODERS, Decoder, DecoderOutput, Features, create_decoder, list_decoders

__all__ = ["DECODERS", "Decoder", "DecoderOutput", "Features", "create_decoder", "list_decoders"]
