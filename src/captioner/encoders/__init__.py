"""Image encoders, built by name: ``create_encoder("resnet152")``."""
from . import efficientnet, resnet, vgg  # noqa: F401  (registers the encoders)
from .base import (
    ENCODERS,
    Encoder,
    EncoderConfig,
    EncoderOutput,
    PretrainedWeightsUnavailable,
    create_encoder,
    list_encoders,
)

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "PretrainedWeightsUnavailable",
    "create_encoder",
    "list_encoders",
]
