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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from .decoders import Features
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


@dataclass
class ConfidenceModel:
    """Feature statistics and calibration that turn (pooled feature, caption) into a confidence."""

    feature_mean: torch.Tensor  # (pooled_dim,)
    feature_std: torch.Tensor  # (pooled_dim,)
    signal_mean: torch.Tensor  # (signals,) over the held-out images
    signal_std: torch.Tensor  # (signals,)
    held_out_scores: torch.Tensor  # (held-out images,) sorted combined scores
    threshold: float = DEFAULT_THRESHOLD
    domain: str = DEFAULT_DOMAIN

    # --- scoring ------------------------------------------------------------------------
    def familiarity(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, pooled_dim) → (batch,): minus the RMS z-score against the training features."""
        z = (pooled.float().cpu() - self.feature_mean) / self.feature_std  # (batch, pooled_dim)
        return -z.pow(2).mean(dim=1).sqrt()

    def signals(self, pooled: torch.Tensor, word_probabilities: Sequence[float]) -> torch.Tensor:
        """(batch, len(SIGNALS)) raw signals: familiarity, mean word probability."""
        words = torch.tensor(list(word_probabilities), dtype=torch.float32)
        return torch.stack([self.familiarity(pooled), words], dim=1)

    def score(self, signals: torch.Tensor) -> torch.Tensor:
        """Raw signals (batch, signals) → combined score (batch,), higher = more trustworthy."""
        return ((signals - self.signal_mean) / self.signal_std).sum(dim=1)

    def calibrate(self, scores: torch.Tensor) -> torch.Tensor:
        """Combined scores → confidence: (1 + held-out scores below) / (1 + held-out images)."""
        below = torch.searchsorted(self.held_out_scores, scores.float().contiguous(), right=True)
        return (below.float() + 1.0) / (len(self.held_out_scores) + 1.0)

    def confidence(self, pooled: torch.Tensor, word_probabilities: Sequence[float]) -> torch.Tensor:
        """(batch,) confidences in (0, 1] for images' pooled features and their best captions."""
        return self.calibrate(self.score(self.signals(pooled, word_probabilities)))

    def is_low(self, confidence: float) -> bool:
        """Whether a caption of this confidence is flagged (``low_confidence``)."""
        return confidence < self.threshold

    # --- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train_pooled: Iterable[torch.Tensor],
        held_out_pooled: torch.Tensor,
        held_out_word_probabilities: Sequence[float],
        threshold: float = DEFAULT_THRESHOLD,
        domain: str = DEFAULT_DOMAIN,
    ) -> "ConfidenceModel":
        """Feature statistics from batches of training features; standardisation and percentiles
        from held-out images' features and best captions' mean word probabilities."""
        count, total, squares = 0, None, None
        for batch in train_pooled:  # streamed: float64 sums, the features are never all in memory
            batch = batch.double().cpu()  # (batch, pooled_dim)
            total = batch.sum(0) if total is None else total + batch.sum(0)
            squares = batch.pow(2).sum(0) if squares is None else squares + batch.pow(2).sum(0)
            count += len(batch)
        if count < 2:
            raise ValueError(f"confidence statistics need at least 2 training images, got {count}")
        if len(held_out_pooled) < MIN_HELD_OUT:
            raise ValueError(
                f"confidence calibration needs at least {MIN_HELD_OUT} held-out images, got {len(held_out_pooled)}"
            )
        mean = total / count
        variance = (squares / count - mean.pow(2)).clamp_min(0.0)
        # A floor for dimensions that never vary in training (dead ReLUs): 1% of the typical spread.
        std = variance.sqrt().clamp_min(0.01 * float(variance.sqrt().median()) + 1e-12)
        model = cls(mean.float(), std.float(), torch.zeros(len(SIGNALS)), torch.ones(len(SIGNALS)),
                    torch.zeros(0), float(threshold), domain)
        signals = model.signals(held_out_pooled, held_out_word_probabilities)  # (held-out, signals)
        model.signal_mean = signals.mean(0)
        model.signal_std = signals.std(0).clamp_min(1e-6)
        model.held_out_scores = model.score(signals).sort().values
        return model

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / CONFIDENCE_FILE
        tensors = {
            "feature_mean": self.feature_mean, "feature_std": self.feature_std,
            "signal_mean": self.signal_mean, "signal_std": self.signal_std,
            "held_out_scores": self.held_out_scores,
        }
        tensors = {k: v.float().contiguous() for k, v in tensors.items()}
        metadata = {"format": str(CONFIDENCE_FORMAT), "signals": ",".join(SIGNALS),
                    "threshold": repr(float(self.threshold)), "domain": self.domain}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, directory: str | Path, pooled_dim: int) -> Optional["ConfidenceModel"]:
        """The model directory's confidence file, or ``None`` when it has none."""
        from safetensors import SafetensorError, safe_open

        path = Path(directory) / CONFIDENCE_FILE
        if not path.is_file():
            return None
        fix = f"delete it to caption without confidence, or rewrite it with {_REWRITE_HINT}"
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ConfidenceFileError(f"{path} is corrupt or truncated ({e}); {fix}") from None
        if metadata.get("format") != str(CONFIDENCE_FORMAT) or metadata.get("signals") != ",".join(SIGNALS):
            raise ConfidenceFileError(
                f"{path}: format {metadata.get('format')!r} with signals {metadata.get('signals')!r} is not "
                f"what this captioner computes (format {CONFIDENCE_FORMAT}, {','.join(SIGNALS)}); {fix}"
            )
        try:
            model = cls(
                tensors["feature_mean"], tensors["feature_std"], tensors["signal_mean"], tensors["signal_std"],
                tensors["held_out_scores"], float(metadata["threshold"]), metadata.get("domain", DEFAULT_DOMAIN),
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
    from .data.images import build_transform, load_image

    transform = build_transform(model.preprocess)
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            pixels = torch.stack([transform(load_image(p)) for p in paths[start : start + batch_size]])
            yield model.encode(pixels.to(model.device))


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
    beam_size: int = 3,
    threshold: float = DEFAULT_THRESHOLD,
    domain: str = DEFAULT_DOMAIN,
) -> ConfidenceModel:
    """Fit ``model``'s confidence: feature statistics over ``train_features``; calibration over
    ``held_out_features`` captioned the way ``Captioner.caption`` does (``beam_size``)."""
    pooled, word_probabilities = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for features in held_out_features:
                pooled.append(features.pooled.float().cpu())
                for hypotheses in model.generate(features, beam_size):
                    best = hypotheses[0]
                    word_probabilities.append(mean_word_probability(best.token_log_probs, len(best.tokens)))
    finally:
        model.train(was_training)
    if not pooled:
        raise ValueError("confidence calibration needs held-out images, got none")
    return ConfidenceModel.fit(
        (f.pooled for f in train_features), torch.cat(pooled), word_probabilities, threshold, domain
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
