"""``OnnxCaptioner``: an exported model folder captioned with numpy + onnxruntime alone."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..captions import Caption
from ..data.images import ImageInput, PreprocessConfig
from ..data.vocab import Vocabulary
from .images import preprocess
from .manifest import NEXT_SUFFIX, PREPROCESS_FILE, VOCAB_FILE, ExportedModelError, read_manifest
from .search import DecodingConfig, Hypothesis, State, beam_search, greedy

INSTALL_HINT = "pip install 'captioner[onnx]'"


def _session(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError(f"captioning an exported model needs onnxruntime, which is not installed: {INSTALL_HINT}") \
            from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _ExportedDecoder:
    """The exported ``init_state`` / ``step`` graphs behind the interface ``search`` decodes over."""

    def __init__(self, manifest: dict, init_session, step_session):
        self.vocab_size = int(manifest["decoder"]["vocab_size"])
        self.static = frozenset(slot["name"] for slot in manifest["state"] if slot["static"])
        self.step_limit = manifest["decoder"]["step_limit"]
        self.step_limit_reason = manifest["decoder"]["step_limit_reason"]
        self._init, self._step = init_session, step_session
        self._init_inputs = manifest["init_state"]["inputs"]
        self._init_outputs = manifest["init_state"]["outputs"]
        self._step_inputs = manifest["step"]["inputs"]
        self._step_outputs = manifest["step"]["outputs"]

    def init_state(self, pooled: np.ndarray, grid: np.ndarray) -> State:
        features = {"pooled": pooled, "grid": grid}
        feeds = {name: features[name] for name in self._init_inputs}
        return dict(zip(self._init_outputs, self._init.run(self._init_outputs, feeds)))

    def step(self, tokens: np.ndarray, state: State, step: int) -> tuple[np.ndarray, State]:
        if self.step_limit is not None and step >= self.step_limit:
            raise ValueError(self.step_limit_reason)
        feeds = {name: tokens if name == "tokens" else state[name] for name in self._step_inputs}
        log_probs, *values = self._step.run(self._step_outputs, feeds)
        updated = {name[: -len(NEXT_SUFFIX)]: value for name, value in zip(self._step_outputs[1:], values)}
        return log_probs, {**state, **updated}


class OnnxCaptioner:
    """Captions images with a model exported by ``captioner export --format onnx``, with
    numpy and onnxruntime only (no torch): the same captions and scores as ``Captioner``.

    >>> OnnxCaptioner("exported/").caption("dog.png", beam_size=3).text

    ``threads``: intra-op threads per graph; default ``$OMP_NUM_THREADS`` when set, else
    onnxruntime's choice (one per physical core).
    """

    def __init__(self, directory: str | Path, threads: int | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if threads is None:
            threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        try:
            self.vocab = Vocabulary.load(self.directory / VOCAB_FILE)
            self.preprocess = PreprocessConfig(**json.loads((self.directory / PREPROCESS_FILE).read_text("utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ExportedModelError(f"{self.directory}: unreadable {VOCAB_FILE} or {PREPROCESS_FILE} ({e})") from None
        if len(self.vocab) != self.manifest["decoder"]["vocab_size"]:
            raise ExportedModelError(
                f"{self.directory}: {VOCAB_FILE} has {len(self.vocab)} words but the graphs score "
                f"{self.manifest['decoder']['vocab_size']}; export the model again"
            )
        sessions = {part: _session(self.directory / name, threads) for part, name in self.manifest["graphs"].items()}
        self._encoder = sessions["encoder"]
        self.decoder = _ExportedDecoder(self.manifest, sessions["init_state"], sessions["step"])
        self.max_length = int(self.manifest["decoding"]["max_length"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"OnnxCaptioner({str(self.directory)!r}, encoder={m['encoder']['name']!r}, "
                f"decoder={m['decoder']['name']!r}, quantization={m['quantization']!r})")

    def encode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images (batch, 3, crop, crop) float32 → (pooled, grid)."""
        names = self.manifest["encoder"]["outputs"]
        pooled, grid = self._encoder.run(names, {self.manifest["encoder"]["inputs"][0]: pixels})
        return pooled, grid

    def decoding_config(self, max_length: int | None = None) -> DecodingConfig:
        d = self.manifest["decoding"]
        return DecodingConfig(
            start_id=d["start_id"], end_id=d["end_id"], pad_id=d["pad_id"], banned_ids=tuple(d["banned_ids"]),
            max_length=max_length or self.max_length, min_length=d["min_length"],
            retire_finished=d.get("retire_finished", False),  # absent from exports made before it existed
        )

    def generate(self, pooled: np.ndarray, grid: np.ndarray, beam_size: int = 1, n_best: int = 1,
                 max_length: int | None = None, length_penalty: float = 0.0,
                 no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
        """Decode from features: greedy when one beam, one caption and no beam options."""
        config = self.decoding_config(max_length)
        if beam_size == 1 and n_best == 1 and length_penalty == 0.0 and no_repeat_ngram_size == 0:
            return greedy(self.decoder, pooled, grid, config)
        return beam_search(self.decoder, pooled, grid, config, beam_size, n_best, length_penalty,
                           no_repeat_ngram_size)

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam_size: int = 3,
        n_best: int = 1,
        max_length: int | None = None,
        batch_size: int = 32,
        length_penalty: float = 0.0,
        no_repeat_ngram_size: int = 0,
    ) -> Caption | list[Caption]:
        """Caption one image (path or PIL image) or a list of them, batched, as ``Captioner.caption``."""
        single = isinstance(images, (str, Path)) or hasattr(images, "convert")
        items = [images] if single else list(images)
        captions: list[Caption] = []
        for start in range(0, len(items), batch_size):
            pixels = np.stack([preprocess(item, self.preprocess) for item in items[start : start + batch_size]])
            captions.extend(self.caption_pixels(pixels, beam_size, n_best, max_length, length_penalty,
                                                no_repeat_ngram_size))
        return captions[0] if single else captions

    def caption_pixels(self, pixels: np.ndarray, beam_size: int = 3, n_best: int = 1, max_length: int | None = None,
                       length_penalty: float = 0.0, no_repeat_ngram_size: int = 0) -> list[Caption]:
        """Caption a batch of already preprocessed images (batch, 3, crop, crop) float32."""
        results = self.generate(*self.encode(pixels), beam_size, max(n_best, 1), max_length, length_penalty,
                                no_repeat_ngram_size)
        return [Caption.from_hypotheses(hypotheses, self.vocab) for hypotheses in results]
