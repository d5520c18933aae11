"""ResNet-50/101/152 (torchvision): the seed's encoder (ResNet-152, frozen)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from .base import Encoder, EncoderConfig, load_torchvision_weights, register_encoder


class ResNetEncoder(Encoder):
    pooled_dim = 2048
    grid_dim = 2048

    def __init__(self, name: str, config: EncoderConfig, builder, weights):
        super().__init__(name, config)
        net = builder(weights=None)
        if config.pretrained:
            net.load_state_dict(load_torchvision_weights(name, weights))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, images: torch.Tensor):
        x = images
        for stage in self.stages():
            x = stage(x)
        return x.mean(dim=(2, 3)), x  # (batch, 2048), (batch, 2048, 7, 7)


def _resnet(builder, weights):
    return lambda name, config: ResNetEncoder(name, config, builder, weights)


register_encoder("resnet50")(_resnet(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2))
register_encoder("resnet101")(_resnet(models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2))
register_encoder("resnet152")(_resnet(models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1))
