"""Caption decoders, built by name: ``create_decoder("show-tell", vocab_size=..., pooled_dim=...)``."""
from . import show_tell  # noqa: F401  (registers the decoders)
from .base import DECODERS, Decoder, DecoderOutput, Features, create_decoder, list_decoders

__all__ = ["DECODERS", "Decoder", "DecoderOutput", "Features", "create_decoder", "list_decoders"]
