"""Encoders: the generic timm route (two families, random init), per-encoder configs, the
region grid's (h, w) through to attention pictures, and weights that never unpickle code."""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from PIL import Image

from captioner import Captioner, create_encoder
from captioner.data.vocab import Vocabulary
from captioner.encoders import ENCODERS, PretrainedWeightsUnavailable, encoder_routes

# A CNN (NCHW maps) and a ViT (tokens with a class token) at small inputs: fast on the CPU.
TIMM_CASES = {
    "timm:resnet18": ({}, 5),
    "timm:vit_tiny_patch16_224": ({"model_options": {"dynamic_img_size": True}}, 12),
}


@pytest.mark.parametrize("name", TIMM_CASES)
def test_timm_encoder_shapes_follow_the_model(name):
    options, stages = TIMM_CASES[name]
    encoder = create_encoder(name, pretrained=False, **options).eval()
    import timm

    reference = timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0)
    assert encoder.grid_dim == reference.num_features
    assert len(encoder.stage_members()) == stages
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 64, 96))
    h, w = out.grid_shape
    assert (h, w) == ((2, 3) if "resnet" in name else (4, 6))  # stride 32 vs 16-px patches
    assert out.pooled.shape == (2, encoder.pooled_dim)
    assert out.grid.shape == (2, h * w, encoder.grid_dim)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_timm_slash_name_is_the_same_encoder_and_routes_are_listed():
    encoder = create_encoder("timm/resnet18", pretrained=False)
    assert encoder.name == "timm:resnet18"
    assert "timm:<model name>" in encoder_routes()
    with pytest.raises(ValueError, match="unknown timm model"):
        create_encoder("timm:no_such_model_xyz", pretrained=False)
    with pytest.raises(ValueError, match="unknown option"):
        create_encoder("timm:resnet18", pretrained=False, depth=3)


def test_timm_preprocessing_comes_from_its_pretrained_config():
    vit = create_encoder("timm:vit_tiny_patch16_224", pretrained=False, model_options={"img_size": 64})
    assert vit.default_preprocess.mean == (0.5, 0.5, 0.5)  # timm's config for these weights
    assert vit.default_preprocess.crop_size == 64  # a fixed-size ViT accepts only its img_size
    resnet = create_encoder("timm:resnet18", pretrained=False)
    assert resnet.default_preprocess.interpolation == "bicubic"
    assert resnet.default_preprocess.resize_size == int(224 / 0.95)  # crop_pct 0.95


def test_every_encoder_registers_its_own_config_class():
    classes = {name: ENCODERS.config_class(name) for name in ENCODERS.names()}
    classes["timm:*"] = ENCODERS.config_class("timm:resnet18")
    assert len({classes["resnet50"], classes["vgg16"], classes["efficientnet_lite0"], classes["timm:*"]}) == 4
    assert "model_options" in ENCODERS.make_config("timm:resnet18").__dataclass_fields__


@pytest.mark.parametrize("name", TIMM_CASES)
def test_captioner_on_a_timm_encoder_saves_loads_and_decodes(name, tmp_path):
    options, _ = TIMM_CASES[name]
    torch.manual_seed(0)
    vocab = Vocabulary(["a", "cat", "dog", "on", "the", "mat"])
    model = Captioner.build(name, "show-attend-tell", vocab, encoder_options={"pretrained": False, **options},
                            decoder_options={"embed_dim": 16, "hidden_dim": 16, "attention_dim": 16}).eval()
    path = model.save_pretrained(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["encoder"]["name"] == name and config["encoder_weights_saved"] is True
    loaded = Captioner.from_pretrained(path)
    pixels = torch.randn(2, 3, 64, 64)
    a, b = model.caption_pixels(pixels, beam_size=1), loaded.caption_pixels(pixels, beam_size=1)
    assert [c.text for c in a] == [c.text for c in b] and [c.score for c in a] == pytest.approx([c.score for c in b])
    assert torch.equal(model.encode(pixels).grid, loaded.encode(pixels).grid)


def test_trainable_blocks_map_onto_timm_stages():
    encoder = create_encoder("timm:resnet18", pretrained=False, trainable_blocks=1)
    model = encoder.model
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not any(p.requires_grad for p in model.layer3.parameters())
    encoder.train()
    assert model.layer4.training and not model.layer3.training
    assert not model.layer4[0].bn1.training  # trainable BatchNorm keeps its statistics (Encoder.train)
    everything = create_encoder("timm:resnet18", pretrained=False, trainable_blocks=5)
    assert all(p.requires_grad for p in everything.parameters())  # all stages: the stem too
    vit = create_encoder("timm:vit_tiny_patch16_224", pretrained=False, trainable_blocks=2,
                         model_options={"img_size": 32})
    trainable = {n for n, p in vit.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("blocks.10.") for n in trainable) and any(n.startswith("norm.") for n in trainable)
    assert not any(n.startswith(("blocks.9.", "patch_embed.")) or n == "cls_token" for n in trainable)
    with pytest.raises(ValueError, match="trainable_blocks must be 0..5"):
        create_encoder("timm:resnet18", pretrained=False, trainable_blocks=6)


def test_timm_weights_offline_give_one_line_with_the_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_encoder("timm:resnet18")
    message = str(error.value)
    assert "weights_file" in message and "pretrained=false" in message and len(message) < 800
    with pytest.raises(PretrainedWeightsUnavailable, match="not found"):
        create_encoder("timm:resnet18", weights_file=str(tmp_path / "missing.safetensors"))


def test_timm_weights_file_loads_that_file(tmp_path):
    from safetensors.torch import save_file

    source = create_encoder("timm:resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_encoder("timm:resnet18", weights_file=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


class _Payload:
    """Unpickling this writes a marker file: what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_poisoned_torch_hub_cache_never_runs_code(tmp_path, monkeypatch, fmt):
    from torchvision.models import ResNet152_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch/hub/checkpoints" / ResNet152_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    payload = {"conv1.weight": _Payload(marker)}
    if fmt == "torch.save":
        torch.save(payload, cache)
    else:
        cache.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_encoder("resnet152")
    assert str(cache) in str(error.value) and "not a plain state dict" in str(error.value)
    assert len(str(error.value)) < 600 and "\n" not in str(error.value)
    assert not marker.exists()
    # The planted file is live: unpickled unsafely, it writes the marker.
    if fmt == "torch.save":
        torch.load(cache, weights_only=False)
    else:
        pickle.loads(cache.read_bytes())
    assert marker.exists()


def test_non_square_pixels_give_a_non_square_grid_end_to_end(tmp_path):
    from captioner.visualize import save_attention_figure

    torch.manual_seed(0)
    vocab = Vocabulary(["a", "cat", "dog", "on", "the", "mat"])
    model = Captioner.build("resnet50", "show-attend-tell", vocab, encoder_options={"pretrained": False},
                            decoder_options={"embed_dim": 16, "hidden_dim": 16, "attention_dim": 16}).eval()
    pixels = torch.randn(1, 3, 160, 224)
    features = model.encode(pixels)
    assert features.grid_shape == (5, 7) and features.grid.shape[1] == 35
    caption = model.caption_pixels(pixels, beam_size=2)[0]
    assert caption.grid_shape == (5, 7) and caption.attention.shape[-1] == 35
    path = save_attention_figure(pixels[0], caption, tmp_path, model.preprocess, name="wide")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
    with pytest.raises(ValueError, match="no grid_shape"):
        save_attention_figure(pixels[0], dataclasses.replace(caption, grid_shape=None), tmp_path, model.preprocess)


def test_feature_cache_keeps_the_grid_shape(tmp_path):
    from captioner.data.feature_cache import FeatureCache
    from captioner.data.images import PreprocessConfig

    images = []
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 40, 200)).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    encoder = create_encoder("timm:resnet18", pretrained=False)
    cache = FeatureCache(tmp_path / "cache", encoder, PreprocessConfig(crop_size=64, resize_size=64), images,
                         with_grid=True).build(progress=False)
    assert cache.grid_shape == (2, 2) and cache.grid.shape[1] == 4
    reopened = FeatureCache(tmp_path / "cache", encoder, PreprocessConfig(crop_size=64, resize_size=64), images,
                            with_grid=True).open()
    assert reopened.grid_shape == (2, 2)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: path.write_bytes(b"truncated download"), "not a readable weights file"),
        (lambda path: torch.save([torch.zeros(2)], path), "not a plain state dict"),
    ],
)
def test_unusable_cached_torchvision_weights_give_one_line(tmp_path, monkeypatch, write, message):
    from torchvision.models import VGG16_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch/hub/checkpoints" / VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    write(cache)
    with pytest.raises(PretrainedWeightsUnavailable, match=message) as error:
        create_encoder("vgg16")
    assert str(cache) in str(error.value) and "\n" not in str(error.value)
