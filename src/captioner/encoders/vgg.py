"""VGG-16 (Simonyan & Zisserman, 2014) with the fc2 (4096-d) pooled feature, as in the
Keras captioning tutorials built on it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models

from .base import Encoder, EncoderConfig, load_torchvision_weights, register_encoder, torchvision_preprocess


@dataclass
class VGGConfig(EncoderConfig):
    """VGG options; ``trainable_blocks`` counts the five conv blocks and fc1+fc2 from the top
    (0..6). ``weights_file``: a local copy of the torchvision ``.pth`` file."""


class VGG16Encoder(Encoder):
    def __init__(self, name: str, config: VGGConfig):
        weights = models.VGG16_Weights.IMAGENET1K_V1
        net = models.vgg16(weights=None)
        convs = [layer for layer in net.features if isinstance(layer, nn.Conv2d)]
        fc2 = net.classifier[3]
        super().__init__(name, config, fc2.out_features, convs[-1].out_channels, torchvision_preprocess(weights))
        if config.pretrained:
            net.load_state_dict(load_torchvision_weights(name, config, weights))
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
        return pooled, x  # grid: (batch, 512, h, w): 7x7 at 224


register_encoder("vgg16", VGGConfig)(VGG16Encoder)
