"""VGG-16 with the fc2 (4096-d) pooled feature: the seed article's Keras variant."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from .base import Encoder, EncoderConfig, load_torchvision_weights, register_encoder


class VGG16Encoder(Encoder):
    pooled_dim = 4096
    grid_dim = 512

    def __init__(self, name: str, config: EncoderConfig):
        super().__init__(name, config)
        weights = models.VGG16_Weights.IMAGENET1K_V1
        net = models.vgg16(weights=None)
        if config.pretrained:
            net.load_state_dict(load_torchvision_weights(name, weights))
        # Five conv blocks, each ending in a max-pool, then fc1 → fc2 (dropout is identity in eval).
        cut = [i + 1 for i, layer in enumerate(net.features) if isinstance(layer, nn.MaxPool2d)]
        self.blocks = nn.ModuleList(net.features[a:b] for a, b in zip([0] + cut[:-1], cut))
        self.avgpool = net.avgpool
        self.fc = net.classifier[:5]  # fc1, relu, dropout, fc2, relu

    def stages(self) -> list[nn.Module]:
        return [*self.blocks, self.fc]

    def features(self, images: torch.Tensor):
        x = images
        for block in self.blocks:
            x = block(x)
        pooled = self.fc(torch.flatten(self.avgpool(x), 1))  # (batch, 4096)
        return pooled, x  # grid: (batch, 512, 7, 7)


register_encoder("vgg16")(VGG16Encoder)
