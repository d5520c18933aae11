"""How far to trust a caption: a confidence in [0, 1] that says when an image is unlike what
the model was trained on (a photo given to an emoji model) or when its caption is a guess.

Two signals, each measured on the model's own features and words:

- **familiarity** — minus the diagonal Mahalanobis distance (root-mean-square z-score) of the
  encoder's pooled feature from the training images' features (their per-dimension mean and
  standard deviation are stored, 2 × ``pooled_dim`` numbers);
- **word probability** — the mean probability of the words of the best caption (``<end>`` left
  out: after a one-word guess it is near 1 and says nothing).

Each is standardised by its mean and spread over the held-out (validation) images and the two
are added. The confidence is the share of those held-out images whose sum is lower — a
percentile, calibrated on in-domain images by construction: below a threshold ``t`` falls a
share ``t`` of images like the held-out ones, and anything less familiar. No out-of-domain
images are needed to fit it, so ``captioner train`` writes it for every new model.

Everything lives in ``confidence.safetensors`` in the model directory (a few KB): the feature
statistics, the signals' standardisation, the sorted held-out scores, the threshold and the
name of the domain the page shows ("low confidence — this model knows emoji art").
Torch-free: the torch model and the exported one (which carries the same file) score alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .decoding import DecodeOptions, Features
from .errors import CaptionerError
from .io import atomic_write

CONFIDENCE_FILE = "confidence.safetensors"
CONFIDENCE_FORMAT = 1
SIGNALS = ("familiarity", "word_probability")
# Flag the least familiar 1% of held-out in-domain images: a false-alarm rate chosen up front
# (not tuned on out-of-domain images), stored per model and changeable there.
DEFAULT_THRESHOLD = 0.01
DEFAULT_DOMAIN = "the images it was trained on"
MIN_HELD_OUT = 20  # fewer held-out images cannot place a 1% threshold meaningfully


class ConfidenceFileError(CaptionerError, ValueError):
    """A ``confidence.safetensors`` that is unreadable or does not fit its model."""


def mean_word_probability(token_log_probs: Sequence[float], words: int) -> float:
    """Mean probability of a caption's ``words`` first chosen tokens (its words, not ``<end>``)."""
    chosen = token_log_probs[: max(words, 1)]  # an empty caption: its <end> alone
    if not chosen:
        return 0.0
    return sum(math.exp(lp) for lp in chosen) / len(chosen)


def host_array(values) -> np.ndarray:
    """Features (a torch tensor on any device, or a numpy array) as a float32 numpy array."""
    if hasattr(values, "detach"):  # torch: leave the graph and the device
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


@dataclass
class ConfidenceModel:
    """Feature statistics and calibration that turn (pooled feature, caption) into a confidence."""

    feature_mean: np.ndarray  # (pooled_dim,)
    feature_std: np.ndarray  # (pooled_dim,)
    signal_mean: np.ndarray  # (signals,) over the held-out images
    signal_std: np.ndarray  # (signals,)
    held_out_scores: np.ndarray  # (held-out images,) sorted combined scores
    threshold: float = DEFAULT_THRESHOLD
    domain: str = DEFAULT_DOMAIN

    # --- scoring ------------------------------------------------------------------------
    def familiarity(self, pooled) -> np.ndarray:
        """(batch, pooled_dim) → (batch,): minus the RMS z-score against the training features."""
        z = (host_array(pooled) - self.feature_mean) / self.feature_std  # (batch, pooled_dim)
        return -np.sqrt(np.mean(z * z, axis=1))

    def signals(self, pooled, word_probabilities: Sequence[float]) -> np.ndarray:
        """(batch, len(SIGNALS)) raw signals: familiarity, mean word probability."""
        words = np.asarray(list(word_probabilities), dtype=np.float32)
        return np.stack([self.familiarity(pooled), words], axis=1)

    def score(self, signals: np.ndarray) -> np.ndarray:
        """Raw signals (batch, signals) → combined score (batch,), higher = more trustworthy."""
        return ((signals - self.signal_mean) / self.signal_std).sum(axis=1)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Combined scores → confidence: (1 + held-out scores below) / (1 + held-out images)."""
        below = np.searchsorted(self.held_out_scores, np.asarray(scores, dtype=np.float32), side="right")
        return ((below + 1.0) / (len(self.held_out_scores) + 1.0)).astype(np.float32)

    def confidence(self, pooled, word_probabilities: Sequence[float]) -> np.ndarray:
        """(batch,) confidences in (0, 1] for images' pooled features and their best captions."""
        return self.calibrate(self.score(self.signals(pooled, word_probabilities)))

    def is_low(self, confidence: float) -> bool:
        """Whether a caption of this confidence is flagged (``low_confidence``)."""
        return confidence < self.threshold

    # --- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train_pooled: Iterable,
        held_out_pooled,
        held_out_word_probabilities: Sequence[float],
        threshold: float = DEFAULT_THRESHOLD,
        domain: str = DEFAULT_DOMAIN,
    ) -> "ConfidenceModel":
        """Feature statistics from batches of training features; standardisation and percentiles
        from held-out images' features and best captions' mean word probabilities."""
        count, total, squares = 0, None, None
        for batch in train_pooled:  # streamed: float64 sums, the features are never all in memory
            batch = host_array(batch).astype(np.float64)  # (batch, pooled_dim)
            total = batch.sum(0) if total is None else total + batch.sum(0)
            squares = (batch * batch).sum(0) if squares is None else squares + (batch * batch).sum(0)
            count += len(batch)
        if count < 2:
            raise ValueError(f"confidence statistics need at least 2 training images, got {count}")
        held_out_pooled = host_array(held_out_pooled)
        if len(held_out_pooled) < MIN_HELD_OUT:
            raise ValueError(
                f"confidence calibration needs at least {MIN_HELD_OUT} held-out images, got {len(held_out_pooled)}"
            )
        mean = total / count
        spread = np.sqrt(np.clip(squares / count - mean * mean, 0.0, None))
        # A floor for dimensions that never vary in training (dead ReLUs): 1% of the typical spread.
        middle = (len(spread) - 1) // 2  # the lower median, as torch.median
        std = np.maximum(spread, 0.01 * float(np.partition(spread, middle)[middle]) + 1e-12)
        model = cls(mean.astype(np.float32), std.astype(np.float32), np.zeros(len(SIGNALS), np.float32),
                    np.ones(len(SIGNALS), np.float32), np.zeros(0, np.float32), float(threshold), domain)
        signals = model.signals(held_out_pooled, held_out_word_probabilities)  # (held-out, signals)
        model.signal_mean = signals.mean(0)
        model.signal_std = np.maximum(signals.std(0, ddof=1), 1e-6).astype(np.float32)
        model.held_out_scores = np.sort(model.score(signals)).astype(np.float32)
        return model

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(directory) / CONFIDENCE_FILE
        arrays = {
            "feature_mean": self.feature_mean, "feature_std": self.feature_std,
            "signal_mean": self.signal_mean, "signal_std": self.signal_std,
            "held_out_scores": self.held_out_scores,
        }
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        metadata = {"format": str(CONFIDENCE_FORMAT), "signals": ",".join(SIGNALS),
                    "threshold": repr(float(self.threshold)), "domain": self.domain}
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, directory: str | Path, pooled_dim: int, name: str = CONFIDENCE_FILE) -> Optional["ConfidenceModel"]:
        """The model directory's confidence file (``name``), or ``None`` when it has none."""
        from safetensors import SafetensorError, safe_open

        path = Path(directory) / name
        if not path.is_file():
            return None
        fix = f"delete it to caption without confidence, or rewrite it with {_REWRITE_HINT}"
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ConfidenceFileError(f"{path} is corrupt or truncated ({e}); {fix}") from None
        if metadata.get("format") != str(CONFIDENCE_FORMAT) or metadata.get("signals") != ",".join(SIGNALS):
            raise ConfidenceFileError(
                f"{path}: format {metadata.get('format')!r} with signals {metadata.get('signals')!r} is not "
                f"what this captioner computes (format {CONFIDENCE_FORMAT}, {','.join(SIGNALS)}); {fix}"
            )
        try:
            model = cls(
                *(arrays[k].astype(np.float32) for k in ("feature_mean", "feature_std", "signal_mean", "signal_std",
                                                          "held_out_scores")),
                float(metadata["threshold"]), metadata.get("domain", DEFAULT_DOMAIN),
            )
        except (KeyError, ValueError) as e:
            raise ConfidenceFileError(f"{path}: missing or invalid entry {e}; {fix}") from None
        if model.feature_mean.shape != (pooled_dim,) or model.feature_std.shape != (pooled_dim,):
            raise ConfidenceFileError(
                f"{path}: feature statistics of size {tuple(model.feature_mean.shape)} do not fit the encoder's "
                f"pooled features ({pooled_dim}); {fix}"
            )
        return model

    def describe(self) -> dict:
        """What the API and the page need: the threshold and the domain to name."""
        return {"threshold": self.threshold, "domain": self.domain, "held_out_images": len(self.held_out_scores)}


_REWRITE_HINT = "scripts/confidence_stats.py (see its --help)"


def features_from_images(model, paths: Sequence[str | Path], batch_size: int = 32) -> Iterator[Features]:
    """Encode image files in batches with ``model``'s preprocessing (for fitting confidence)."""
    for start in range(0, len(paths), batch_size):
        yield model.encode_images(paths[start : start + batch_size])


def features_from_cache(cache, rows: Sequence[int], batch_size: int = 256) -> Iterator[Features]:
    """Rows of a built ``FeatureCache`` as batches of features (the frozen-encoder path)."""
    rows = list(rows)
    for start in range(0, len(rows), batch_size):
        pooled, grid = cache.rows(np.asarray(rows[start : start + batch_size]))
        yield Features(pooled, grid, cache.grid_shape)


def fit_confidence(
    model,
    train_features: Iterable[Features],
    held_out_features: Iterable[Features],
    options: DecodeOptions | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    domain: str = DEFAULT_DOMAIN,
) -> ConfidenceModel:
    """Fit ``model``'s confidence: feature statistics over ``train_features``; calibration over
    ``held_out_features`` captioned the way ``caption`` does (``options``: its defaults)."""
    pooled, word_probabilities = [], []
    for features in held_out_features:
        pooled.append(host_array(features.pooled))
        for hypotheses in model.generate(features, options):
            best = hypotheses[0]
            word_probabilities.append(mean_word_probability(best.token_log_probs, len(best.tokens)))
    if not pooled:
        raise ValueError("confidence calibration needs held-out images, got none")
    return ConfidenceModel.fit(
        (f.pooled for f in train_features), np.concatenate(pooled), word_probabilities, threshold, domain
    )


def save_run_confidence(model, directory: str | Path, paths: Sequence[str], train_count: int, cache=None) -> str:
    """End of ``captioner train``: fit the best ``model``'s confidence on its training images
    (``paths[:train_count]``) and val images (the rest), write it into ``directory``; returns
    what to tell the user. Read from the feature cache when there is one, else from pixels."""
    held_out = len(paths) - train_count
    if held_out < MIN_HELD_OUT:
        return f"confidence: not fitted ({held_out} val images; its calibration needs at least {MIN_HELD_OUT})"
    if cache is not None:
        train = features_from_cache(cache, range(train_count))
        val = features_from_cache(cache, range(train_count, len(paths)))
    else:
        train, val = features_from_images(model, paths[:train_count]), features_from_images(model, paths[train_count:])
    model.confidence = fit_confidence(model, train, val)
    path = model.confidence.save(directory)
    return f"confidence: {path} (calibrated on {held_out} val images, threshold {model.confidence.threshold})"


__all__ = ["ConfidenceModel", "ConfidenceFileError", "CONFIDENCE_FILE", "fit_confidence",
           "features_from_images", "features_from_cache", "mean_word_probability", "save_run_confidence"]
