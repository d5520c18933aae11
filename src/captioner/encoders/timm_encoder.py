"""Any timm model as an encoder: ``create_encoder("timm:convnext_tiny")`` (or ``timm/NAME``).

Everything is read from the model: the pooled dim from ``head_hidden_size``/``num_features``,
the region grid from ``forward_features`` (NCHW maps, NHWC maps, or ViT tokens laid back onto
the patch grid), the stages from ``feature_info`` and the preprocessing from timm's pretrained
config. Weights come from ``weights_file``, else timm's hub cache, else a download; a local
file is read as safetensors or with ``torch.load(weights_only=True)`` (``.npz`` with
``allow_pickle=False``), never by unpickling code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..data.images import PreprocessConfig
from .base import ENCODERS, OFFLINE_FIX, Encoder, EncoderConfig, PretrainedWeightsUnavailable, load_state_dict_file

PREFIXES = ("timm:", "timm/")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo, in order


@dataclass
class TimmEncoderConfig(EncoderConfig):
    """Options of a ``timm:<model name>`` encoder.

    ``trainable_blocks`` counts the model's ``feature_info`` stages from the top (all of them =
    the whole network). ``weights_file``: a local ``.safetensors``/``.pth``/``.npz`` weights file
    (timm's ``pretrained_cfg_overlay=dict(file=...)``). ``model_options``: extra keyword
    arguments for ``timm.create_model`` (e.g. ``{"img_size": 160}`` or
    ``{"dynamic_img_size": true}`` for a ViT at another input size).
    """

    model_options: dict = field(default_factory=dict)


def timm_model_name(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    raise ValueError(f"not a timm encoder name: {name!r} (expected timm:<model name>)")


def cached_pretrained_file(pretrained_cfg: dict) -> str | None:
    """The model's pretrained weights if timm's caches (Hugging Face hub, torch hub) hold them."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [pretrained_cfg["hf_hub_filename"]] if pretrained_cfg.get("hf_hub_filename") else HUB_FILES
        for filename in names:
            path = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(path, str):
                return path
    url = pretrained_cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if path.is_file():
            return str(path)
    return None


def _weights_overlay(path: str, encoder: str) -> dict:
    """timm's ``pretrained_cfg_overlay`` for a local weights file. A state dict is read here,
    by ``load_state_dict_file`` (safetensors, or ``weights_only=True``): a file that would
    unpickle code, or that is damaged, is refused in one line naming it — timm's own loader
    raises it with a 57-line traceback. Original JAX ``.npz`` files need the model's own loader
    (``custom_load``, which reads them with ``allow_pickle=False``)."""
    if str(path).endswith(".npz"):
        return {"file": str(path), "custom_load": True}
    return {"state_dict": load_state_dict_file(path, encoder)}


def create_timm_model(model_name: str, config: TimmEncoderConfig) -> nn.Module:
    """``timm.create_model(model_name, num_classes=0)`` with pretrained weights when asked for:
    from ``weights_file``, the hub cache or a download; ``PretrainedWeightsUnavailable`` if none."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; timm.list_models('*{model_name[:8]}*') lists similar names")
    options = dict(config.model_options, num_classes=0)
    if not config.pretrained:
        return timm.create_model(model_name, pretrained=False, **options)
    if config.weights_file:
        if not Path(config.weights_file).is_file():
            raise PretrainedWeightsUnavailable(f"weights_file for encoder timm:{model_name} not found: {config.weights_file}")
        return timm.create_model(model_name, pretrained=True,
                                 pretrained_cfg_overlay=_weights_overlay(config.weights_file, f"timm:{model_name}"),
                                 **options)
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise PretrainedWeightsUnavailable(
            f"timm publishes no pretrained weights for {model_name!r}: pass weights_file=PATH or pretrained=false"
        )
    cached = cached_pretrained_file(pretrained_cfg.to_dict())
    if cached:  # load the cached file directly: no network round trip (and no retries offline)
        return timm.create_model(model_name, pretrained=True,
                                 pretrained_cfg_overlay=_weights_overlay(cached, f"timm:{model_name}"), **options)
    try:
        return timm.create_model(model_name, pretrained=True, **options)
    except OSError as e:  # no connection, DNS, HTTP and hub "not found locally" errors are all OSErrors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for encoder timm:{model_name} are not in timm's cache and could not be "
            f"downloaded ({reason}). Fix: pass weights_file=PATH (a local weights file), or run once with "
            f"internet access (timm caches them), {OFFLINE_FIX}."
        ) from None


def timm_preprocess(model: nn.Module) -> PreprocessConfig:
    """timm's evaluation preprocessing for this model (``resolve_data_config``) as a PreprocessConfig."""
    from timm.data import resolve_data_config

    data = resolve_data_config(model=model)
    height, width = data["input_size"][1:]
    fixed = fixed_input_size(model)
    if fixed is not None:  # a ViT built for another img_size accepts only that size
        height, width = fixed
    if height != width:
        raise ValueError(f"timm model input {height}x{width}: captioner preprocessing makes square crops only")
    crop_pct = data.get("crop_pct") or 1.0
    return PreprocessConfig(
        crop_size=int(height),
        resize_size=int(math.floor(height / crop_pct)),
        resize="squash" if data.get("crop_mode") == "squash" else "shorter",
        interpolation=data["interpolation"] if data["interpolation"] in ("bilinear", "bicubic", "nearest") else "bicubic",
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    )


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one (H, W) a patch-embedding model accepts, or None when it takes any size."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is None or getattr(model, "dynamic_img_size", False) or not getattr(patch_embed, "strict_img_size", True):
        return None
    return tuple(int(s) for s in img_size)


def stage_boundaries(model: nn.Module) -> list[str]:
    """Names of the modules that start each stage: ``feature_info``, else ``stages``/``blocks``/``layers``."""
    info = getattr(model, "feature_info", None)
    if info:
        return [entry["module"] for entry in info]
    for attr in ("stages", "blocks", "layers"):
        children = getattr(model, attr, None)
        if isinstance(children, (nn.Sequential, nn.ModuleList)) and len(children):
            return [f"{attr}.{i}" for i in range(len(children))]
    return [""]


def partition_stages(model: nn.Module, boundaries: list[str]) -> list[list[nn.Module]]:
    """Every module of ``model`` in forward (registration) order, cut at ``boundaries[1:]``:
    stage 0 also holds the stem, the last stage also the final norm and head."""
    starts = set(boundaries[1:])
    groups: list[list[nn.Module]] = [[]]
    for name, module in model.named_modules():
        if name in starts:
            groups.append([])
        groups[-1].append(module)
    return groups


class TimmEncoder(Encoder):
    """A timm model without its classifier: pooled = ``forward_head(pre_logits=True)``,
    grid = ``forward_features`` as (h, w) regions."""

    def __init__(self, name: str, config: TimmEncoderConfig):
        model_name = timm_model_name(name)
        model = create_timm_model(model_name, config)
        pooled_dim = getattr(model, "head_hidden_size", None) or model.num_features
        super().__init__(f"timm:{model_name}", config, pooled_dim, model.num_features, timm_preprocess(model))
        self.model = model
        self.output_fmt = getattr(model, "output_fmt", "NCHW")
        # Plain Python lists of shared modules: not registered twice in the state dict.
        self._stage_members = partition_stages(model, stage_boundaries(model))

    def stage_members(self) -> list[list[nn.Module]]:
        return self._stage_members

    def _token_grid(self, height: int, width: int) -> tuple[int, int]:
        patch_embed = self.model.patch_embed
        if hasattr(patch_embed, "dynamic_feat_size") and getattr(self.model, "dynamic_img_size", False):
            return tuple(patch_embed.dynamic_feat_size((height, width)))
        return tuple(patch_embed.grid_size)

    def network(self, images: torch.Tensor):
        x = self.model.forward_features(images)
        return self.model.forward_head(x, pre_logits=True), x  # (batch, pooled_dim), timm's own layout

    def feature_map(self, x: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        if x.dim() == 3:  # ViT-like tokens (batch, prefix + h*w, dim): drop class/register tokens
            h, w = self._token_grid(*image_size)
            patches = x[:, getattr(self.model, "num_prefix_tokens", 0) :]
            if patches.shape[1] != h * w:
                raise ValueError(f"{self.name}: {patches.shape[1]} patch tokens do not fill its {h}x{w} patch grid")
            return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2) if self.output_fmt == "NHWC" else x
        raise ValueError(f"{self.name}: forward_features gave a {tuple(x.shape)} tensor, not a map or tokens")

    def features(self, images: torch.Tensor):
        pooled, x = self.network(images)
        return pooled, self.feature_map(x, tuple(images.shape[-2:]))  # (batch, grid_dim, h, w)


ENCODERS.register_route(PREFIXES, "timm:<model name>", TimmEncoderConfig, TimmEncoder)
