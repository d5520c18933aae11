"""Training configuration: code defaults → YAML file → command-line overrides.

Unknown keys are an error at every layer; the resolved config is written into the run folder.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import CaptionerError, InvalidInputError, UnknownNameError


@dataclass
class DataConfig:
    path: str = ""  # the captions file (any supported format)
    images: Optional[str] = None  # image root; default: the captions file's folder
    format: Optional[str] = None  # coco | karpathy | flickr8k | csv | jsonl | webdataset; default: detected
    val_fraction: float = 0.0  # for files without splits (shards: by key hash)
    val_shards: Optional[str] = None  # webdataset: the val split's shards (a brace pattern)
    caption_key: Optional[str] = None  # webdataset: captions from this key of each .json (default: the .txt)
    shuffle_buffer: int = 1000  # webdataset, fine-tuning: training pairs shuffled through a buffer this large
    skip_invalid: bool = False  # drop bad examples instead of stopping
    min_word_count: int = 4
    max_length: int = 20  # tokens per caption (words, or subword pieces), training and generation
    language: str = "en"  # the language of captions the dataset does not tag (captioner.data.language)
    languages: list = field(default_factory=list)  # train on captions in these languages only (empty: all)
    tokenizer: Optional[str] = None  # word tokenizer of every language: ptb | unicode | chars (default: per language)
    vocabulary: str = "word"  # word | bpe | unigram (subword pieces trained on the captions, tokenizer.json)
    vocab_size: int = 4000  # bpe / unigram: pieces, marker tokens included
    # Many languages: each epoch each image trains on its captions in `language` and this many of its
    # other languages' captions, drawn anew each epoch (0: every caption, every epoch)
    other_languages_per_epoch: int = 0
    feature_cache: Optional[str] = None  # default: $CAPTIONER_CACHE/features or ~/.cache/captioner/features
    augment_views: int = 0  # this many augmented views of each image (cached once; made from pixels when the
    # encoder reads pixels); each epoch, each pair reads one of its image's views or the clean image,
    # uniformly (captioner.data.augment: no mirror images)
    augment: dict = field(default_factory=dict)  # AugmentConfig overrides: scale, rotate, background, outline, blur, jpeg …
    cache_grid: bool = False  # keep the grid even if this decoder does not need it (attention runs can share)
    cache_activations: bool = True  # fine-tuned encoder: cache its frozen stages' output once and train the top
    # stages on it (captioner.data.activation_cache); false, or an encoder that cannot be cut, reads pixels
    runtime: str = "auto"  # engine extracting features: auto (ONNX Runtime on the CPU when installed) | torch | onnx
    onnx: bool = False  # the old spelling of runtime: onnx
    num_workers: int = 0

    def __post_init__(self):
        from ..data.language import get_tokenizer, normalize_language
        from ..data.vocab import VOCABULARY_KINDS
        from ..encoders.onnx_runtime import RUNTIMES

        try:
            self.language = normalize_language(self.language, "data.language")
            if isinstance(self.languages, str):  # --set data.languages=en,de
                self.languages = [part for part in self.languages.split(",") if part.strip()]
            if not isinstance(self.languages, list):
                raise ConfigError(f"data.languages: expected a list of language codes, got {self.languages!r}")
            self.languages = [normalize_language(str(lang), "data.languages") for lang in self.languages]
            if self.tokenizer is not None:
                get_tokenizer(self.tokenizer)
        except (InvalidInputError, UnknownNameError) as e:
            raise ConfigError(str(e)) from None
        if self.vocabulary not in VOCABULARY_KINDS:
            raise ConfigError(f"data.vocabulary: expected one of {', '.join(VOCABULARY_KINDS)}, "
                              f"got {self.vocabulary!r}")

        if self.runtime not in RUNTIMES:
            raise ConfigError(f"data.runtime: expected one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.onnx:
            if self.runtime == "torch":
                raise ConfigError("data.onnx (--onnx) asks for runtime onnx but data.runtime is torch: keep one")
            self.runtime, self.onnx = "onnx", False  # one spelling in the saved config
        if self.augment_views < 0:
            raise ConfigError(f"data.augment_views: expected 0 or more views, got {self.augment_views}")
        from ..data.augment import AugmentConfig

        try:
            AugmentConfig.from_dict(self.augment)  # a wrong key fails now, not after feature extraction
        except (InvalidInputError, TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None


@dataclass
class ModelConfig:
    encoder: str = "resnet152"
    pretrained: bool = True
    trainable_blocks: int = 0  # > 0: fine-tune the last N encoder stages (data.cache_activations); frozen again
    # for inference at the end of the run
    encoder_options: dict = field(default_factory=dict)  # more of the encoder's config, e.g. weights_file, model_options
    decoder: str = "show-tell"
    decoder_options: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)  # overrides of the encoder's preprocessing
    word_vectors: Optional[str] = None  # GloVe/word2vec text file to initialise the embedding
    freeze_word_vectors: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-3  # Adam, as in Show and Tell's PyTorch reference (yunjey)
    encoder_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    schedule: str = "constant"  # constant | cosine | step
    warmup_steps: int = 0
    step_size: int = 10  # epochs between ×gamma decays (schedule: step)
    gamma: float = 0.5
    label_smoothing: float = 0.0


@dataclass
class SelfCriticalConfig:
    """Self-critical sequence training (``objective: self-critical``)."""

    samples: int = 5  # captions sampled per image and step
    baseline: str = "mean-of-others"  # mean-of-others (Luo 2020) | greedy (Rennie et al. 2017)
    temperature: float = 1.0  # of the sampling distribution (1: the model's own)


@dataclass
class RetrievalConfig:
    """The datastore written beside the trained model (captioner.retrieval): its training images'
    features and captions, the reranking tuned on the val images, the confidence's signals."""

    datastore: bool = True  # false: no datastore (the confidence then reads the model alone)
    dims: int = 128  # the keys' dimensions (principal axes of the training features)
    neighbours: int = 15  # how many nearest images vote when reranking
    # What an image may not retrieve besides itself — "image" (nothing more, as SmallCap) or a
    # per-image field of the dataset ("artist": no image of its own artist, as a new artist's
    # drawings find none of theirs when captioned): for a decoder that reads retrieved captions,
    # each training image; for the confidence, each val image it is calibrated on
    leave_out: str = "image"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: str = "cross-entropy"  # what training minimises: a name from captioner.objectives.list_objectives()
    init_from: str = ""  # a model directory to start from: its weights, vocabulary and preprocessing
    scst: SelfCriticalConfig = field(default_factory=SelfCriticalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    out: str = ""
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (on the CPU only with cpu_amp)
    cpu_amp: bool = False  # bf16 autocast on the CPU too; it learns as fp32 does (tests/test_precision.py) but
    # pays only where the CPU computes bf16 natively (AMX): on AVX2, show-attend-tell epochs took 4x as long,
    # the transformer's 15x
    # A fine-tuned encoder's weights, and so its activations, in NHWC layout while it trains. None: on the
    # CPU, where a step of EfficientNet-Lite0's last four stages + decoder took 1.53 s instead of 2.64
    # (benchmarks/timing/bench_finetune_step.py, 2 threads); not on CUDA, where it is not measured yet.
    channels_last: Optional[bool] = None
    val_beam_size: int = 1
    val_max_images: int = 5000
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    log_every: int = 50
    tensorboard: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigError(CaptionerError, ValueError):
    """A config key or value that does not exist or does not fit its type."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint in (int, float, str):
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}") from None
    if hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def merge(config, updates: dict, prefix: str = ""):
    """Return ``config`` with ``updates`` (nested dicts) applied; unknown keys raise."""
    hints = _field_types(type(config))
    changes = {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            valid = ", ".join(f"{prefix}{k}" for k in hints)
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {valid}")
        current = getattr(config, key)
        if isinstance(current, dict) and isinstance(value, dict):
            changes[key] = {**current, **value}  # layers add to a mapping rather than replace it
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping of {type(current).__name__} keys")
            changes[key] = merge(current, value, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(value, hints[key], dotted)
    return dataclasses.replace(config, **changes)


def dotted_to_nested(overrides: dict[str, Any]) -> dict:
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


# Short names for the keys people set most: ``captioner train --lr 3e-4`` and
# ``captioner.train_model(lr=3e-4)`` both mean ``optim.lr``.
SHORTCUTS: dict[str, tuple[str, type]] = {
    "data": ("data.path", str),
    "images": ("data.images", str),
    "format": ("data.format", str),
    "val_fraction": ("data.val_fraction", float),
    "val_shards": ("data.val_shards", str),
    "caption_key": ("data.caption_key", str),
    "min_word_count": ("data.min_word_count", int),
    "max_length": ("data.max_length", int),
    "feature_cache": ("data.feature_cache", str),
    "num_workers": ("data.num_workers", int),
    "skip_invalid": ("data.skip_invalid", bool),
    "runtime": ("data.runtime", str),
    "out": ("out", str),
    "encoder": ("model.encoder", str),
    "decoder": ("model.decoder", str),
    "pretrained": ("model.pretrained", bool),
    "trainable_blocks": ("model.trainable_blocks", int),
    "word_vectors": ("model.word_vectors", str),
    "epochs": ("epochs", int),
    "batch_size": ("batch_size", int),
    "lr": ("optim.lr", float),
    "encoder_lr": ("optim.encoder_lr", float),
    "seed": ("seed", int),
    "device": ("device", str),
    "patience": ("patience", int),
    "val_beam_size": ("val_beam_size", int),
    "objective": ("objective", str),
    "init_from": ("init_from", str),
    "scst_samples": ("scst.samples", int),
    "scst_baseline": ("scst.baseline", str),
    "scst_temperature": ("scst.temperature", float),
    "label_smoothing": ("optim.label_smoothing", float),
    "warmup_steps": ("optim.warmup_steps", int),
}


def settings_to_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings → dotted overrides: a shortcut (``lr=3e-4``), a dotted key spelled with
    ``__`` (``optim__schedule="cosine"``), or a section as a mapping (``optim={"lr": 3e-4}``)."""
    overrides: dict[str, Any] = {}
    for name, value in settings.items():
        if name in SHORTCUTS and not isinstance(value, dict):
            overrides[SHORTCUTS[name][0]] = value
        elif isinstance(value, dict):
            overrides.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            overrides[name.replace("__", ".")] = value
    return overrides


def load_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides`` (dotted keys: ``optim.lr``)."""
    config = TrainConfig()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            reason = " ".join(str(e).split())  # the parser's message spans lines
            raise ConfigError(f"{path} is not a readable YAML file ({reason[:300]}); fix its syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        config = merge(config, data)
    if overrides:
        config = merge(config, dotted_to_nested(overrides))
    return config


def save_config(config: TrainConfig, path: str | Path) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
