"""``Captioner``: encoder + decoder + vocabulary + preprocessing, saved and rebuilt as one
self-describing model directory (``config.json``, ``vocab.json``, ``model.safetensors``)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .captions import Caption, caption_features, caption_in_batches
from .version import __version__
from .confidence import CONFIDENCE_FILE, ConfidenceModel
from .retrieval import DATASTORE_FILE, Datastore, EncoderIdentity, with_retrieved
from .data.images import ImageInput, PreprocessConfig, build_transform
from .data.vocab import Vocabulary
from .decoders import Decoder, Features, create_decoder
from .decoding import (
    DecodeOptions, DecodingConfig, DecodingRules, Hypothesis, decode, decoding_config_of, score_captions,
)
from .device import available_memory
from .encoders import Encoder, EncoderActivations, create_encoder
from .encoders.split import EncoderSplit
from .errors import CaptionerError, InvalidInputError
from .io import atomic_write, atomic_write_text
from .untrusted import ModelFolder
from .registry import build_dataclass

CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"
FORMAT_VERSION = 1


class ModelDirectoryError(CaptionerError, ValueError):
    """A model directory that is missing, incomplete or tampered with."""


def default_model_dir() -> Path:
    """The model bundled with the package (trained on emoji art, see MODEL_CARD.md)."""
    return Path(__file__).parent / "pretrained" / "emoji-lite0"


class Captioner(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        vocab: Vocabulary,
        preprocess: PreprocessConfig | None = None,
        max_length: int = 20,
        decoding: DecodingRules | None = None,
    ):
        super().__init__()
        if max_length < 1:
            raise InvalidInputError(f"max_length must be at least 1 word, got {max_length}")
        self.decoding = decoding or DecodingRules()
        unknown = [token for token in self.decoding.banned_tokens if token not in vocab]
        if unknown:
            raise InvalidInputError(f"decoding.banned_tokens names tokens the vocabulary lacks: {', '.join(unknown)}")
        self.encoder = encoder
        self.decoder = decoder
        self.vocab = vocab
        self.preprocess = preprocess or encoder.default_preprocess
        self.max_length = max_length
        self.runtime = "auto"  # the engine captioning runs the encoder with: see use_runtime()
        self._onnx_encoder = None  # made on first use, for the weights it was made from:
        self._onnx_tensors: list[torch.Tensor] = []  # the encoder's parameters and buffers then
        self._onnx_weights = None  # and their (data_ptr, version)
        self._auto_fell_back = False  # auto tried ONNX Runtime here and could not use it
        self.confidence: Optional[ConfidenceModel] = None  # from confidence.safetensors, if any
        self.datastore: Optional[Datastore] = None  # from datastore.safetensors, if any
        self._split: Optional[EncoderSplit] = None  # the encoder cut for cached activations: see encoder_split()
        self._split_key = None

    @classmethod
    def build(
        cls,
        encoder: str,
        decoder: str,
        vocab: Vocabulary,
        encoder_options: dict | None = None,
        decoder_options: dict | None = None,
        preprocess: PreprocessConfig | None = None,
        max_length: int = 20,
        decoding: DecodingRules | None = None,
    ) -> "Captioner":
        enc = create_encoder(encoder, **(encoder_options or {}))
        arguments, options = (decoder, len(vocab), enc.pooled_dim, enc.grid_dim), decoder_options or {}
        try:
            with torch.device("meta"):  # built without memory: refuse what cannot be built or allocated
                probe = create_decoder(*arguments, **options)
        except CaptionerError:
            raise
        except (TypeError, ValueError, RuntimeError) as e:  # the options' fault: nothing else runs here
            raise InvalidInputError(f"decoder {decoder!r} cannot be built with options {options}: {e}") from None
        needed = sum(p.numel() * p.element_size() for p in probe.parameters())
        available = available_memory()
        if needed > available:
            raise InvalidInputError(
                f"decoder {decoder!r} with options {options} needs {needed / 2**30:.1f} GiB for its weights "
                f"alone, more than the {available / 2**30:.1f} GiB of memory available; choose smaller sizes"
            )
        dec = create_decoder(*arguments, **options)
        return cls(enc, dec, vocab, preprocess, max_length, decoding)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def forward(self, inputs: Features | torch.Tensor | EncoderActivations, tokens: torch.Tensor):
        """Teacher-forced scores; ``inputs`` are cached features, preprocessed pixels or the cached
        activations of the encoder's frozen stages (``features_of``)."""
        return self.decoder(self.features_of(inputs), tokens)

    # --- features -------------------------------------------------------------------
    def features_of(self, inputs: Features | torch.Tensor | EncoderActivations) -> Features:
        """What the decoder reads for a training batch's ``inputs``: cached features as they are,
        pixels through the encoder, a split encoder's cached activations through its top."""
        if isinstance(inputs, torch.Tensor):
            return self.encode(inputs)
        if isinstance(inputs, EncoderActivations):
            return self._decoder_features(self.encoder_split(inputs.stage).top(inputs.values))
        return inputs

    def encode(self, images: torch.Tensor) -> Features:
        """Preprocessed images (batch, 3, H, W) → the features the decoder needs, from the
        engine ``runtime`` picks (see :meth:`use_runtime`)."""
        return self._decoder_features(self._runtime_encoder(images)(images))

    def _decoder_features(self, out) -> Features:
        if not self.decoder.needs_grid:
            return Features(out.pooled, untuned=out.untuned)
        return Features(out.pooled, out.grid, out.grid_shape, untuned=out.untuned)

    def encoder_split(self, stage: int) -> EncoderSplit:
        """The encoder cut before ``stage`` for this model's input size (``Encoder.split``), made
        once and again only when the stage, input size, device or dtype changes."""
        parameter = next(self.encoder.parameters())
        key = (stage, self.preprocess.crop_size, parameter.device, parameter.dtype)
        if self._split is None or self._split_key != key:
            self._split, self._split_key = self.encoder.split(self.preprocess.crop_size, stage), key
        return self._split

    def use_runtime(self, runtime: str = "auto") -> "Captioner":
        """Which engine runs the frozen encoder from now on: ``"torch"``, ``"onnx"`` or ``"auto"``.

        ``auto`` (a new model's setting) runs it in ONNX Runtime when that is the fastest correct
        path: a frozen encoder, CPU tensors of the model's ``preprocess.crop_size``, no autograd
        and no autocast, onnxruntime and onnx installed; torch otherwise (training's backward
        passes, CUDA, other input sizes). Same captions as torch either way: the features agree
        to a relative error below 1e-4 (``tests/test_fast_defaults.py``).

        ``onnx`` insists: it exports now and raises ``ValueError`` for a fine-tuned encoder
        (``trainable_blocks > 0``) and ``RuntimeError`` when onnxruntime is missing. The export is
        cached under ``$CAPTIONER_CACHE/onnx`` (or ``~/.cache/captioner/onnx``) and the session
        kept by this model, so neither is paid per call. Encoder weights changed in place
        (``load_state_dict``, ``.to()``) get a new export on the next call; after assigning new
        parameter objects (``load_state_dict(assign=True)``) call ``use_runtime`` again.
        """
        from .encoders.onnx_runtime import check_runtime

        check_runtime(runtime)
        if runtime == "torch":
            self._onnx_encoder = self._onnx_weights = None  # frees the session
        elif runtime == "onnx" and (self._onnx_encoder is None or self._onnx_weights != self._encoder_weights()):
            self._make_onnx_encoder("onnx")  # raises before the setting changes
        self._auto_fell_back = False
        self.runtime = runtime
        return self

    def _runtime_encoder(self, images: torch.Tensor):
        """The callable that encodes ``images``: the torch encoder or its ONNX Runtime twin."""
        if self.runtime == "torch":
            return self.encoder
        if self.runtime == "auto" and not self._auto_fits(images):
            return self.encoder
        if self._onnx_encoder is None or self._onnx_weights != self._encoder_weights():
            self._make_onnx_encoder(self.runtime)  # first use, or the weights changed since
        return self._onnx_encoder or self.encoder

    def _auto_fits(self, images: torch.Tensor) -> bool:
        size = self.preprocess.crop_size
        return (
            not self._auto_fell_back
            and images.device.type == "cpu"
            and images.dtype == torch.float32
            and tuple(images.shape[1:]) == (3, size, size)
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and self.encoder.frozen
        )

    def _make_onnx_encoder(self, runtime: str) -> None:
        from .encoders.onnx_runtime import runtime_encoder

        self._onnx_encoder = runtime_encoder(runtime, self.encoder, self.preprocess.crop_size, "cpu")
        self._onnx_tensors = [*self.encoder.parameters(), *self.encoder.buffers()]
        self._onnx_weights = self._encoder_weights()
        self._auto_fell_back = self._onnx_encoder is None

    def _encoder_weights(self) -> tuple:
        # Checked on every encode, so cheap: 0.02 ms for Lite0's 296 tensors over a list kept
        # from when the export was made (0.57 ms walking the modules each time, 0.15 s hashing).
        # New storage (.to(), .half()) or an in-place write (load_state_dict) shows here.
        return tuple((t.data_ptr(), t._version) for t in self._onnx_tensors)

    def decoding_config(self, language: str | None = None) -> DecodingConfig:
        """The vocabulary ids and length limit decoding obeys for this model, in ``language``."""
        return decoding_config_of(self.vocab, self.max_length, language, self.decoding)

    @contextmanager
    def _evaluating(self):
        """Eval mode (no dropout, BatchNorm statistics) for the duration, restored after."""
        was_training = self.training
        if was_training:  # (walking every module costs 1.3 ms a call: only when it changes anything)
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    @torch.inference_mode()
    def generate(self, features: Features, options: DecodeOptions | None = None, generator=None,
                 **decode_options) -> list[list[Hypothesis]]:
        """Decode from features as ``options`` say (see :class:`~captioner.decoding.DecodeOptions`:
        beam search, width 3, by default), in eval mode; ``generator`` seeds sampling. A decoder
        that reads retrieved captions gets them from the model's datastore unless ``features``
        carry them (:func:`~captioner.retrieval.with_retrieved`)."""
        options = DecodeOptions.of(options, **decode_options)
        device = self.device
        features = Features(*(f.to(device) if isinstance(f, torch.Tensor) else f for f in features))
        features = with_retrieved(self, features, options.language)
        with self._evaluating():
            return decode(self.decoder, features, self.decoding_config(options.language), options, generator)

    @torch.inference_mode()
    def score_captions(self, features: Features, captions, language: str | None = None,
                       floors=None) -> list[list[Hypothesis]]:
        """The model's log-probabilities of given captions (per image, word-id lists), teacher-forced
        (:func:`captioner.decoding.score_captions`, ``floors`` included), in eval mode."""
        device = self.device
        features = Features(*(f.to(device) if isinstance(f, torch.Tensor) else f for f in features))
        features = with_retrieved(self, features, language)
        with self._evaluating():
            return score_captions(self.decoder, features, self.decoding_config(language), captions, floors)

    def encoder_identity(self) -> EncoderIdentity:
        """What makes this model's pooled features comparable to another's (a datastore checks it)."""
        from .cache import weights_digest

        return EncoderIdentity(self.encoder.name, weights_digest(self.encoder), self.preprocess.key())

    # --- captioning -----------------------------------------------------------------
    def preprocess_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images (paths, bytes or PIL images) → one batch of pixels (batch, 3, crop, crop) on the model's device."""
        transform = build_transform(self.preprocess)
        return torch.stack([transform(image) for image in images]).to(self.device)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageInput]) -> Features:
        """The features of images (paths, bytes or PIL images), without gradients."""
        with self._evaluating():
            return self.encode(self.preprocess_images(images))

    @torch.inference_mode()
    def caption(self, images: ImageInput | Sequence[ImageInput], options: DecodeOptions | None = None, *,
                batch_size: int = 32, **decode_options) -> Caption | list[Caption]:
        """Caption one image (path or PIL image) or a list of them, batched.

        ``options`` (or their names as keywords) say how to decode (:class:`DecodeOptions`).

        >>> Captioner.from_pretrained().caption("dog.png", beam_size=5).text
        """
        with self._evaluating():
            return caption_in_batches(self, images, DecodeOptions.of(options, **decode_options), batch_size)

    @torch.inference_mode()
    def caption_pixels(self, pixels: torch.Tensor, options: DecodeOptions | None = None,
                       **decode_options) -> list[Caption]:
        """Caption a batch of already preprocessed images (batch, 3, H, W)."""
        options = DecodeOptions.of(options, **decode_options)
        with self._evaluating():
            return caption_features(self, self.encode(pixels.to(self.device, non_blocking=True)), options)

    # --- persistence ----------------------------------------------------------------
    def describe(self) -> dict:
        """Everything needed to rebuild this model (config.json)."""
        return {
            "format_version": FORMAT_VERSION,
            "captioner_version": __version__,
            "encoder": {"name": self.encoder.name, "options": self._encoder_options()},
            "decoder": self.decoder.describe(),
            "preprocess": self.preprocess.to_dict(),
            "vocab_size": len(self.vocab),
            "max_length": self.max_length,
            "decoding": asdict(self.decoding),
            "encoder_weights_saved": self._saves_encoder_weights(),
        }

    def _encoder_options(self) -> dict:
        options = asdict(self.encoder.config)
        if not options.get("tuned_blocks"):  # a folder of an untuned encoder stays readable by earlier versions
            del options["tuned_blocks"]
        return options

    def _saves_encoder_weights(self) -> bool:
        """Whether the whole encoder is saved. Frozen pretrained weights are rebuilt from their
        source (but for its ``tuned_blocks`` top stages, which are saved); anything else is saved —
        weights read from a user's weights_file too, so the folder never names a file outside itself."""
        config = self.encoder.config
        return not (config.pretrained and self.encoder.frozen) or config.weights_file is not None

    def state_to_save(self) -> dict[str, torch.Tensor]:
        state = {f"decoder.{k}": v for k, v in stored_state(self.decoder).items()}
        encoder = encoder_to_store(self.encoder, self._saves_encoder_weights())
        state.update({f"encoder.{k}": v for k, v in encoder.items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def round_tuned_stages(self, dtype: torch.dtype) -> None:
        """Round the encoder's tuned stages to ``dtype``'s precision (``save_pretrained(...,
        weights_dtype=dtype)`` then stores them so: the bundled model's fp16 stages). The encoder
        is no longer the one the datastore and confidence were built on: both are dropped, to be
        built again (``captioner datastore build``, ``scripts/confidence_stats.py``)."""
        self.encoder.round_tuned(dtype)
        self.datastore = self.confidence = None

    def save_pretrained(
        self, directory: str | Path, extra_files: dict[str, str] | None = None, weights_dtype: torch.dtype | None = None
    ) -> Path:
        """Write config.json, vocab.json, model.safetensors and, when the model has them, its
        confidence statistics and datastore (each file atomically; a stale confidence or datastore
        file of earlier weights is removed).

        ``weights_dtype=torch.float16`` halves the decoder's weights (the bundled model); they are
        cast back to the model's dtype on load. An encoder tensor is cast only where that loses
        nothing (its values are already ``weights_dtype`` numbers, ``Encoder.round_tuned``): a
        datastore and the feature caches are keyed by the encoder's exact digest.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_to_save()
        if weights_dtype is not None:
            state = {k: v.to(weights_dtype) if v.is_floating_point() and (
                k.startswith("decoder.") or torch.equal(v.to(weights_dtype).to(v.dtype), v)) else v
                for k, v in state.items()}
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        self.vocab.save(directory / VOCAB_FILE)
        for name, text in (extra_files or {}).items():
            atomic_write_text(directory / name, text)
        for part, name in ((self.confidence, CONFIDENCE_FILE), (self.datastore, DATASTORE_FILE)):
            if part is not None:
                part.save(directory)
            else:
                (directory / name).unlink(missing_ok=True)  # a stale one of earlier weights
        # config.json last: a directory with a config is a complete model.
        atomic_write_text(directory / CONFIG_FILE, json.dumps(self.describe(), indent=2))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path | None = None, device: str | torch.device = "cpu", with_datastore: bool = True
    ) -> "Captioner":
        """Rebuild a model from its directory alone; no argument = the bundled model.
        ``with_datastore=False`` leaves its datastore unread (to build a new one over it).

        The directory is untrusted input (:mod:`captioner.untrusted`): its files must lie
        inside it, its JSON and vocabulary are size-checked before they are parsed, its numbers
        checked against the limits, and the shapes config.json describes against the
        safetensors header before any weight is allocated. Anything wrong raises one
        ``ModelDirectoryError`` naming the file and the field.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory) if directory is not None else default_model_dir()
        if not directory.is_dir():
            raise ModelDirectoryError(f"model directory not found: {directory}")
        for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE):
            if not os.path.lexists(directory / name):
                raise ModelDirectoryError(
                    f"{directory} is not a complete captioner model: {name} is missing "
                    f"(a model directory holds {CONFIG_FILE}, {VOCAB_FILE} and {WEIGHTS_FILE})"
                )
        folder = ModelFolder(directory, ModelDirectoryError)
        config = folder.read_json(CONFIG_FILE)
        if not isinstance(config, dict):
            raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: holds a JSON {type(config).__name__}, "
                                      "not an object")
        vocab = folder.vocabulary(VOCAB_FILE)
        if config.get("format_version") != FORMAT_VERSION:
            raise ModelDirectoryError(
                f"{directory}: model format {config.get('format_version')!r} is not supported by this "
                f"captioner (format {FORMAT_VERSION}); re-save it with a matching version"
            )
        if config.get("vocab_size") != len(vocab):
            raise ModelDirectoryError(
                f"{directory}: vocab.json has {len(vocab)} words but config.json says {config.get('vocab_size')!r}"
            )
        parts = _checked_parts(folder, config)
        weights = folder.path(WEIGHTS_FILE)
        try:
            preprocess = folder.preprocess(config.get("preprocess"), CONFIG_FILE, "preprocess.")
            max_length = folder.check_lengths(CONFIG_FILE, "", config.get("max_length"))
            # absent from models saved before per-model rules existed: captioner's own
            decoding = build_dataclass(DecodingRules, config.get("decoding", {}), f"{CONFIG_FILE} decoding")
            header = _weight_shapes(weights)
            encoder = _build_encoder(folder, parts, header)
            decoder = _build_decoder(folder, parts, encoder, len(vocab), header)
            state = load_file(str(weights))
        except ModelDirectoryError:
            raise
        except SafetensorError as e:
            raise ModelDirectoryError(f"{directory}/{WEIGHTS_FILE} is corrupt or truncated ({e})") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ModelDirectoryError(f"{directory}: config.json does not describe a buildable model ({e})") from None
        model = cls(encoder, decoder, vocab, preprocess, max_length, decoding)
        model._load_weights(state, directory, with_encoder=parts["encoder"]["saved"])
        for name, limit in ((CONFIDENCE_FILE, "max_confidence_bytes"), (DATASTORE_FILE, "max_datastore_bytes")):
            path = folder.path(name, required=False)
            if path is not None:
                folder.check_size(path, getattr(folder.limits, limit), limit)
        model.confidence = ConfidenceModel.load(directory, model.encoder.pooled_dim,
                                                untuned_dim=model.encoder.untuned_dim(model.preprocess.crop_size))
        if with_datastore and (directory / DATASTORE_FILE).is_file():
            model.datastore = Datastore.load(directory, model.encoder_identity())
        if with_datastore and model.confidence is not None and model.confidence.needs_datastore \
                and model.datastore is None:
            raise ModelDirectoryError(f"{directory}/{CONFIDENCE_FILE} reads the model's datastore, and "
                                      f"{DATASTORE_FILE} is missing: restore it, or delete {CONFIDENCE_FILE}")
        if with_datastore and model.decoder.retrieved_shape is not None and model.datastore is None:
            raise ModelDirectoryError(f"{directory}: decoder {model.decoder.name!r} reads the captions of each "
                                      f"image's nearest datastore images, and {DATASTORE_FILE} is missing: restore "
                                      "it, or make one with `captioner datastore build`")
        return model.to(device).eval()

    def _load_weights(self, state: dict[str, torch.Tensor], directory: Path, with_encoder: bool) -> None:
        """The weights file's tensors into the decoder and, as the folder says (config.json's
        ``encoder_weights_saved``, the encoder's ``tuned_blocks``), the whole encoder or its tuned
        stages over the source's weights (``_build_encoder`` matched their names and shapes)."""
        parts = {"decoder": self.decoder}
        if with_encoder or self.encoder.config.tuned_blocks:
            parts["encoder"] = self.encoder
        for prefix, module in parts.items():
            sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            sub.update({k: sub[source] for k, source in getattr(module, "tied_weights", {}).items() if source in sub})
            try:  # tuned stages alone: the rest stays the source's
                module.load_state_dict(sub, strict=module is self.decoder or with_encoder)
            except RuntimeError as e:
                first = str(e).splitlines()[0:3]
                raise ModelDirectoryError(
                    f"{directory}/{WEIGHTS_FILE} does not match config.json ({' '.join(first)})"
                ) from None


# timm.create_model arguments that name files or download sources: a model folder may not set
# them (its encoder's weights come from its own model.safetensors or the encoder's known source).
_SOURCE_OPTIONS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})


def _checked_parts(folder: ModelFolder, config: dict) -> dict[str, dict]:
    """config.json's ``encoder`` and ``decoder`` as ``{"name": str, "options": dict}`` (the
    encoder's also ``"saved"``: its weights are in model.safetensors), with no encoder option
    that points at a file or a download source."""
    parts = {}
    for part in ("encoder", "decoder"):
        entry = config.get(part)
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("options", {}), dict)):
            raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: {part} must be {{name: string, options: "
                                      f"object}}, got {entry!r}")
        parts[part] = {"name": entry["name"], "options": entry.get("options", {})}
    saved = config.get("encoder_weights_saved", False)
    if not isinstance(saved, bool):
        raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: encoder_weights_saved must be true or false, "
                                  f"got {saved!r}")
    parts["encoder"]["saved"] = saved
    model_options = parts["encoder"]["options"].get("model_options") or {}
    named = sorted(_SOURCE_OPTIONS & set(model_options)) if isinstance(model_options, dict) else []
    if named:
        raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: encoder.options.model_options.{named[0]} names a "
                                  f"file or a download source; a model folder may not (its weights belong in "
                                  f"{WEIGHTS_FILE})")
    return parts


def stored_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as model.safetensors holds it: tied weights once (``Decoder.tied_weights``)."""
    tied = getattr(module, "tied_weights", {})
    return {name: tensor for name, tensor in module.state_dict().items() if name not in tied}


def encoder_to_store(encoder: Encoder, whole: bool) -> dict[str, torch.Tensor]:
    """What a model folder stores of its encoder: all of it, or its ``tuned_blocks`` top stages
    (nothing for a frozen pretrained encoder)."""
    return stored_state(encoder) if whole else encoder.tuned_state()


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def _encoder_options(folder: ModelFolder, parts: dict) -> dict:
    """The encoder's options as far as the folder can be trusted with them: an encoder whose
    weights are in model.safetensors is built without reading any other file (randomly
    initialised, then loaded); otherwise its ``weights_file`` must lie inside the folder."""
    options = dict(parts["encoder"]["options"])
    if parts["encoder"]["saved"]:
        return {**options, "pretrained": False, "weights_file": None}
    if options.get("weights_file") is not None:
        options["weights_file"] = str(folder.path(options["weights_file"],
                                                  (CONFIG_FILE, "encoder.options.weights_file")))
    return options


def _build_encoder(folder: ModelFolder, parts: dict, header: dict[str, tuple[int, ...]]) -> Encoder:
    """The folder's encoder. Its size comes from its name, or from ``model_options`` (a timm
    model's widths, depth, input size): those are tried on the meta device first, and must make
    the saved weights' shapes, or fit in memory when the weights come from the encoder's source."""
    name, options, saved = parts["encoder"]["name"], _encoder_options(folder, parts), parts["encoder"]["saved"]
    if options.get("model_options"):
        with torch.device("meta"):
            probe = _built(folder, "encoder", lambda: create_encoder(name, **{**options, "pretrained": False,
                                                                                "weights_file": None}))
        if saved:
            _match(folder, "encoder", stored_state(probe), header)
        else:
            needed = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
            if needed > available_memory():
                raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: encoder {name!r} with these model_options "
                                          f"needs {needed / 2**30:.1f} GiB, more than the memory available")
    encoder = create_encoder(name, **options)
    if saved or encoder.config.tuned_blocks:  # the whole encoder, or its tuned stages over the source's
        _match(folder, "encoder", encoder_to_store(encoder, saved), header)
    return encoder


def _build_decoder(folder: ModelFolder, parts: dict, encoder: Encoder, vocab_size: int,
                   header: dict[str, tuple[int, ...]]):
    """The folder's decoder, built once its shapes on the meta device are exactly the weights
    file's: a decoder config.json makes a million wide is refused without its memory, and the
    file holds nothing more than the model (nothing else is read)."""
    name, options = parts["decoder"]["name"], parts["decoder"]["options"]
    with torch.device("meta"):
        probe = _built(folder, "decoder", lambda: create_decoder(name, vocab_size, encoder.pooled_dim,
                                                                 encoder.grid_dim, **options))
    _match(folder, "decoder", stored_state(probe), header)
    stored = ("decoder.", "encoder.") if parts["encoder"]["saved"] or encoder.config.tuned_blocks else ("decoder.",)
    extra = sorted(name for name in header if not name.startswith(stored))
    if extra:
        raise ModelDirectoryError(f"{folder.where(WEIGHTS_FILE)} does not match config.json: for {extra[0]} it "
                                  f"holds shape {header[extra[0]]}, config.json makes nothing")
    return create_decoder(name, vocab_size, encoder.pooled_dim, encoder.grid_dim, **options)


def _built(folder: ModelFolder, part: str, build):
    """``build()`` with the options' own errors as one line naming config.json."""
    try:
        return build()
    except CaptionerError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # the options' fault (timm asserts on
        # options it refuses): on meta nothing else runs
        raise ModelDirectoryError(f"{folder.where(CONFIG_FILE)}: the {part} options cannot be built "
                                  f"({' '.join(str(e).split())[:300]})") from None


def _match(folder: ModelFolder, part: str, state: dict[str, torch.Tensor], header: dict[str, tuple[int, ...]]) -> None:
    """``state`` (what config.json makes of ``part`` to be stored) is exactly the weights file's
    ``part.*`` tensors, shape for shape."""
    made = {f"{part}.{name}": tuple(tensor.shape) for name, tensor in state.items()}
    held = {name: shape for name, shape in header.items() if name.startswith(part + ".")}
    for name in sorted(set(made) | set(held)):
        if made.get(name) != held.get(name):
            makes = "nothing" if name not in made else f"shape {made[name]}"
            holds = "nothing" if name not in held else f"shape {held[name]}"
            raise ModelDirectoryError(f"{folder.where(WEIGHTS_FILE)} does not match config.json: for {name} it "
                                      f"holds {holds}, config.json makes {makes}")
