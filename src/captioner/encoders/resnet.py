"""ResNet-50/101/152 (He et al., 2015; torchvision weights): Show and Tell's encoder family."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models

from .base import Encoder, EncoderConfig, load_torchvision_weights, register_encoder, torchvision_preprocess


@dataclass
class ResNetConfig(EncoderConfig):
    """ResNet options; ``trainable_blocks`` counts stem, layer1 .. layer4 from the top (0..5).
    ``weights_file``: a local copy of the torchvision ``.pth`` file."""


class ResNetEncoder(Encoder):
    def __init__(self, name: str, config: ResNetConfig, builder, weights):
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
        return x.mean(dim=(2, 3)), x  # (batch, 2048), (batch, 2048, h, w): 7x7 at 224


def _resnet(builder, weights):
    return lambda name, config: ResNetEncoder(name, config, builder, weights)


register_encoder("resnet50", ResNetConfig)(_resnet(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2))
register_encoder("resnet101", ResNetConfig)(_resnet(models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2))
register_encoder("resnet152", ResNetConfig)(_resnet(models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1))
