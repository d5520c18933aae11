"""``OnnxCaptioner``: an exported model folder captioned with numpy + onnxruntime alone.

Decoding (:mod:`captioner.decoding`), preprocessing (:func:`captioner.data.images.preprocess_array`),
captions and confidence (:mod:`captioner.captions`, :mod:`captioner.confidence`) are the torch
model's own code, run on numpy arrays: only the graphs are the export's."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..captions import Caption, caption_features, caption_in_batches
from ..confidence import ConfidenceModel
from ..data.images import ImageInput, preprocess_array
from ..decoding import (
    DecodeOptions, DecodingConfig, DecodingRules, Features, Hypothesis, State, decode, decoding_config_of,
    score_captions,
)
from ..errors import InvalidInputError, MissingDependencyError
from ..registry import build_dataclass
from ..retrieval import Datastore, EncoderIdentity, with_retrieved
from ..untrusted import ModelFolder
from .manifest import (GRAPH_FILES, MANIFEST_FILE, NEXT_SUFFIX, PREPROCESS_FILE, VOCAB_FILE, ExportedModelError,
                       read_manifest)

INSTALL_HINT = "pip install 'captioner[onnx]'"
STEP_COUNTER = "__step__"  # the exported decoder's own count of steps, kept in its state


def _session(path: Path, threads: int, inputs: list[str], outputs: list[str]):
    """An onnxruntime session of the graph at ``path``, refused in one line when the file is no
    graph or its input and output names are not the ones the manifest gives."""
    try:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    except ImportError:
        raise MissingDependencyError(
            f"captioning an exported model needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoSuchFile,
            ort_errors.InvalidArgument, ort_errors.NotImplemented) as e:  # what a damaged graph file raises
        reason = " ".join(str(e).split())[:300]
        raise ExportedModelError(f"{path}: not a graph onnxruntime can load ({reason}); export the model again") \
            from None
    given = [value.name for value in session.get_inputs()]
    made = {value.name for value in session.get_outputs()}
    if sorted(given) != sorted(inputs) or not set(outputs) <= made:
        raise ExportedModelError(
            f"{path}: the graph reads {given} and returns {sorted(made)}, not the inputs {inputs} and outputs "
            f"{outputs} {MANIFEST_FILE} names; export the model again")
    return session


class _ExportedDecoder:
    """The exported ``init_state`` / ``step`` graphs behind the decoder interface decoding uses."""

    has_attention = False  # the step graphs return no attention weights

    def __init__(self, manifest: dict, init_session, step_session):
        self.name = manifest["decoder"]["name"]
        self.vocab_size = int(manifest["decoder"]["vocab_size"])
        self.static_state = frozenset(slot["name"] for slot in manifest["state"] if slot["static"])
        self.step_limit = manifest["decoder"]["step_limit"]
        self.step_limit_reason = manifest["decoder"]["step_limit_reason"]
        retrieved = manifest.get("retrieved")  # absent from exports of decoders that read no retrieved captions
        self.retrieved_shape = None if retrieved is None else (retrieved["neighbours"], retrieved["length"])
        self._init, self._step = init_session, step_session
        self._init_inputs = manifest["init_state"]["inputs"]
        self._init_outputs = manifest["init_state"]["outputs"]
        self._step_inputs = manifest["step"]["inputs"]
        self._step_outputs = manifest["step"]["outputs"]

    def init_state(self, features: Features) -> State:
        given = {"pooled": features.pooled, "grid": features.grid, "retrieved": features.retrieved}
        missing = [name for name in self._init_inputs if given[name] is None]
        if missing:
            raise InvalidInputError(f"decoder {self.name!r} reads Features.{missing[0]}, and none was given")
        feeds = {name: given[name] for name in self._init_inputs}
        return {**dict(zip(self._init_outputs, self._init.run(self._init_outputs, feeds))), STEP_COUNTER: 0}

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        step = state[STEP_COUNTER]
        if self.step_limit is not None and step >= self.step_limit:
            raise InvalidInputError(self.step_limit_reason)
        feeds = {name: tokens if name == "tokens" else state[name] for name in self._step_inputs}
        log_probs, *values = self._step.run(self._step_outputs, feeds)
        updated = {name[: -len(NEXT_SUFFIX)]: value for name, value in zip(self._step_outputs[1:], values)}
        return log_probs, {**state, **updated, STEP_COUNTER: step + 1}


class OnnxCaptioner:
    """Captions images with a model exported by ``captioner export --format onnx``, with
    numpy and onnxruntime only (no torch): the same captions, scores and confidence as the
    :class:`~captioner.model.Captioner` it was exported from, through the same methods
    (:class:`captioner.captions.CaptionModel`).

    >>> OnnxCaptioner.from_pretrained("exported/").caption("dog.png", beam_size=3).text

    ``threads``: intra-op threads per graph; default ``$OMP_NUM_THREADS`` when set, else
    onnxruntime's choice (one per physical core).
    """

    def __init__(self, directory: str | Path, threads: int | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)  # every entry checked, every path inside the folder
        if threads is None:
            threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        folder = ModelFolder(self.directory, ExportedModelError)
        self.vocab = folder.vocabulary(VOCAB_FILE)
        self.preprocess = folder.preprocess(folder.read_json(PREPROCESS_FILE), PREPROCESS_FILE)
        if len(self.vocab) != self.manifest["decoder"]["vocab_size"]:
            raise ExportedModelError(
                f"{self.directory}: {VOCAB_FILE} has {len(self.vocab)} words but the graphs score "
                f"{self.manifest['decoder']['vocab_size']}; export the model again"
            )
        sessions = {part: _session(self.directory / self.manifest["graphs"][part], threads,
                                   self.manifest[part]["inputs"], self.manifest[part]["outputs"])
                    for part in GRAPH_FILES}
        self._check_pixels(sessions["encoder"].get_inputs()[0].shape)
        self._encoder = sessions["encoder"]
        self.decoder = _ExportedDecoder(self.manifest, sessions["init_state"], sessions["step"])
        self.max_length = self.manifest["decoding"]["max_length"]
        # the model's decoding rules (exports made before they were recorded: captioner's own)
        try:
            self.rules = build_dataclass(DecodingRules, self.manifest["decoding"].get("rules", {}), "rules")
            decoding_config_of(self.vocab, self.max_length, None, self.rules)  # the rules' tokens are the vocabulary's
        except (InvalidInputError, KeyError, TypeError) as e:
            raise ExportedModelError(f"{self.directory / MANIFEST_FILE}: decoding.rules: {e}; export the model again") \
                from None
        confidence_file = self.manifest.get("confidence")
        encoder = self.manifest["encoder"]
        self.confidence = None if confidence_file is None else ConfidenceModel.load(
            self.directory, encoder["pooled_shape"][1], confidence_file,
            untuned_dim=encoder["untuned_shape"][1] if "untuned_shape" in encoder else None)
        self.datastore = Datastore.load(self.directory, self.encoder_identity()) if self.manifest.get("datastore") \
            else None

    def _check_pixels(self, shape: list) -> None:
        """The encoder graph takes the crop preprocess.json makes (its sides, when fixed)."""
        size = self.preprocess.crop_size
        sides = [side for side in shape[2:] if isinstance(side, int)]
        if len(shape) != 4 or any(side != size for side in sides):
            raise ExportedModelError(
                f"{self.directory / self.manifest['graphs']['encoder']}: takes pixels of shape {shape}, but "
                f"{PREPROCESS_FILE} makes {size}×{size} crops; export the model again")

    @classmethod
    def from_pretrained(cls, directory: str | Path, threads: int | None = None) -> "OnnxCaptioner":
        """The exported model in ``directory`` (as ``Captioner.from_pretrained`` for a torch model)."""
        return cls(directory, threads)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"OnnxCaptioner({str(self.directory)!r}, encoder={m['encoder']['name']!r}, "
                f"decoder={m['decoder']['name']!r}, quantization={m['quantization']!r})")

    def encode(self, pixels: np.ndarray) -> Features:
        """Preprocessed images (batch, 3, crop, crop) float32 → their features."""
        names = self.manifest["encoder"]["outputs"]
        found = self._encoder.run(names, {self.manifest["encoder"]["inputs"][0]: np.asarray(pixels)})
        return Features(found[0], found[1], untuned=found[2] if len(found) > 2 else None)

    def decoding_config(self, language: str | None = None) -> DecodingConfig:
        """The vocabulary ids and length limit decoding obeys for this model, in ``language``."""
        return decoding_config_of(self.vocab, self.max_length, language, self.rules)

    def generate(self, features: Features, options: DecodeOptions | None = None, generator=None,
                 **decode_options) -> list[list[Hypothesis]]:
        """Decode from features as ``options`` say (:class:`~captioner.decoding.DecodeOptions`)."""
        options = DecodeOptions.of(options, **decode_options)
        features = with_retrieved(self, features, options.language)
        return decode(self.decoder, features, self.decoding_config(options.language), options, generator)

    def score_captions(self, features: Features, captions, language: str | None = None,
                       floors=None) -> list[list[Hypothesis]]:
        """The model's log-probabilities of given captions (per image, word-id lists), teacher-forced
        (``floors``: :func:`captioner.decoding.score_captions`)."""
        features = with_retrieved(self, features, language)
        return score_captions(self.decoder, features, self.decoding_config(language), captions, floors)

    def encoder_identity(self) -> EncoderIdentity:
        """The exported encoder's name and weights digest (recorded at export) and preprocessing."""
        encoder = self.manifest["encoder"]
        return EncoderIdentity(encoder["name"], encoder.get("weights_digest", ""), self.preprocess.key())

    def preprocess_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images (paths, bytes or PIL images) → one batch of pixels (batch, 3, crop, crop) float32."""
        return np.stack([preprocess_array(image, self.preprocess) for image in images])

    def encode_images(self, images: Sequence[ImageInput]) -> Features:
        """The features of images (paths, bytes or PIL images)."""
        return self.encode(self.preprocess_images(images))

    def caption(self, images: ImageInput | Sequence[ImageInput], options: DecodeOptions | None = None, *,
                batch_size: int = 32, **decode_options) -> Caption | list[Caption]:
        """Caption one image (path or PIL image) or a list of them, batched, as ``Captioner.caption``."""
        return caption_in_batches(self, images, DecodeOptions.of(options, **decode_options), batch_size)

    def caption_pixels(self, pixels, options: DecodeOptions | None = None, **decode_options) -> list[Caption]:
        """Caption a batch of already preprocessed images (batch, 3, crop, crop) float32 (a numpy
        array, or anything ``numpy.asarray`` takes, such as a CPU torch tensor)."""
        options = DecodeOptions.of(options, **decode_options)
        return caption_features(self, self.encode(np.asarray(pixels, dtype=np.float32)), options)
