"""Image encoders, built by name: ``create_encoder("resnet152")``, ``create_encoder("timm:convnext_tiny")``."""
from . import efficientnet, resnet, timm_encoder, vgg  # noqa: F401  (registers the encoders)
from .base import (
    ENCODERS,
    Encoder,
    EncoderActivations,
    EncoderConfig,
    EncoderOutput,
    PretrainedWeightsUnavailable,
    create_encoder,
    encoder_routes,
    list_encoders,
)

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderActivations",
    "EncoderConfig",
    "EncoderOutput",
    "PretrainedWeightsUnavailable",
    "create_encoder",
    "encoder_routes",
    "list_encoders",
]
