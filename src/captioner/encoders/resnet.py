"""ResNet-50/101/152 (He et al., 2015; torchvision weights): Show and Tell's encoder family."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torchvision import models

from ..errors import InvalidInputError
from .base import Encoder, EncoderConfig, load_torchvision_weights, register_encoder, torchvision_preprocess


@dataclass
class ResNetConfig(EncoderConfig):
    """ResNet options; ``trainable_blocks`` counts stem, layer1 .. layer4 from the top (0..5).
    ``weights_file``: a local copy of the torchvision ``.pth`` file. ``grid_size``: 0 keeps the
    network's own region grid (7×7 at 224 pixels); N average-pools it to N×N regions, as the
    Show, Attend and Tell tutorial's encoder does (``AdaptiveAvgPool2d((14, 14))``)."""

    grid_size: int = 0


def adaptive_average_pool(feature_map: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(feature_map, size)`` — the same windows (output cell i averages
    inputs floor(i·in/size) .. ceil((i+1)·in/size) - 1) — as two products with averaging
    matrices, so it also exports to ONNX when ``size`` does not divide the input (8 → 14 at 256 px)."""
    height, width = feature_map.shape[-2:]
    rows = _averaging_matrix(height, size, feature_map)  # (size, h)
    columns = _averaging_matrix(width, size, feature_map)  # (size, w)
    return rows @ feature_map @ columns.T  # (batch, channels, size, size)


# Traced whole when an encoder is split (captioner.encoders.split): its matrices are built from
# the map's size with Python integers, which a trace cannot follow.
torch.fx.wrap("adaptive_average_pool")


def _averaging_matrix(length: int, size: int, like: torch.Tensor) -> torch.Tensor:
    index = torch.arange(size)
    start = (index * length) // size
    end = ((index + 1) * length + size - 1) // size  # ceil
    position = torch.arange(length)
    inside = (position[None] >= start[:, None]) & (position[None] < end[:, None])  # (size, length)
    return (inside / (end - start)[:, None]).to(like.device, like.dtype)


class ResNetEncoder(Encoder):
    def __init__(self, name: str, config: ResNetConfig, builder, weights):
        if isinstance(config.grid_size, bool) or not isinstance(config.grid_size, int) or config.grid_size < 0:
            raise InvalidInputError(f"{name}: grid_size must be 0 (the network's own grid) or a number of regions "
                                    f"a side, got {config.grid_size!r}")
        net = builder(weights=None)
        width = net.fc.in_features  # 2048: the last stage's channels, pooled and per region
        super().__init__(name, config, width, width, torchvision_preprocess(weights))
        if config.pretrained:
            net.load_state_dict(load_torchvision_weights(name, config, weights))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, images: torch.Tensor):
        x = images
        for stage in self.stages():
            x = stage(x)
        pooled = x.mean(dim=(2, 3))  # (batch, 2048): from the network's own grid either way
        if self.config.grid_size:
            x = adaptive_average_pool(x, self.config.grid_size)
        return pooled, x  # (batch, 2048), (batch, 2048, h, w): 7x7 at 224, or grid_size²


def _resnet(builder, weights):
    return lambda name, config: ResNetEncoder(name, config, builder, weights)


register_encoder("resnet50", ResNetConfig)(_resnet(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2))
register_encoder("resnet101", ResNetConfig)(_resnet(models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2))
register_encoder("resnet152", ResNetConfig)(_resnet(models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1))
