"""How far to trust a caption: a ``confidence`` in (0, 1) — the probability that the caption
is right, learned on the model's validation images — and ``low_confidence``, a flag for
images unlike anything the model was trained on (a photo given to an emoji model).

Signals, each measured on the model's own features, words and datastore:

- **familiarity** — minus the distance of the encoder's pooled feature from the training
  images' features (root mean square over the dimensions): Mahalanobis along their
  ``FAMILIARITY_AXES`` principal axes, and off them each dimension's part in units of its spread
  (the mean, the spreads and the axes are stored: ``pooled_dim`` × 130 numbers). The axes see
  what a spread per dimension cannot: an encoder fine-tuned on drawings maps a photo into the
  drawings' range dimension by dimension, not into their correlations (21 photos vs 724
  drawings: AUROC 0.90 per dimension, 0.997 with the axes; the frozen encoder: 0.9989 and
  0.9995). Files of format 2 (no axes) score per dimension, as they did. An encoder whose top
  stages were tuned (``tuned_blocks``) gives, beside its pooled feature, the mean of what its
  untuned stages make of the image (``Features.untuned``); a fit on such an encoder measures
  familiarity there (format 4, ``familiarity_of: untuned``): those stages were never taught
  that drawings and photos are alike;
- **word probability** — the mean probability of the caption's words (``<end>`` left out);
- **log probability** — the caption's log-probability under the decoder (every token, ``<end>``
  included): unlike the mean it falls with every doubtful word, and a longer name has more;
- **margin** — how far the caption's ranking score is ahead of the second candidate's;
- with a datastore (:mod:`captioner.retrieval`): **consensus** — the caption's CIDEr-D against
  the nearest training images' captions; **agreement** — the share of those neighbours that
  have this very caption; **similarity** — the nearest neighbour's cosine similarity.

The signals are standardised over the validation images (a value past ±10 standard deviations
counts as 10: the fit never saw such values) and combined by a logistic regression fitted there
to say whether each validation caption was right (exact when the dataset names its images —
emoji, classes — else among the better half by CIDEr-D): the confidence is that probability,
scaled down for an image the flag marks (by e for every standard deviation of the validation
familiarity it lies past the flag: the fit never saw such images, so a photo is not "99 %
right"). The flag: the image's familiarity is below that of all but ``threshold`` (1 %) of the
validation images — a false-alarm rate fixed up front, not tuned on out-of-domain images, so no
photos are needed to fit it. With per-image labels (``fit_confidence``'s ``held_out_labels``:
each drawing's artist) each validation image is captioned without its own label's datastore
rows, as a new artist's drawings are. A model with a datastore has a second fit, on its
validation captions decoded without the datastore (the decoder's own signals), for captions
decoded with retrieval off.

Everything lives in ``confidence.safetensors`` in the model directory (a few KB). Files of the
first format (two signals added and turned into a validation percentile; the flag below its
threshold) still load and score as they did. Torch-free: the torch model and the exported one
(which carries the same file) score alike.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .captions import caption_signals, mean_word_probability
from .decoding import DecodeOptions, Features, host_array
from .errors import CaptionerError
from .io import atomic_write

CONFIDENCE_FILE = "confidence.safetensors"
CONFIDENCE_FORMAT = 4  # 4: familiarity of the untuned stages' features; 3: along principal axes; 2: per dimension
FAMILIARITY_INPUTS = ("pooled", "untuned")  # the Features field familiarity reads (format 4: untuned)
FAMILIARITY_AXES = 128  # principal axes of the training features that familiarity measures along
FIRST_FORMAT_SIGNALS = ("familiarity", "word_probability")
RETRIEVAL_SIGNALS = ("consensus", "agreement", "similarity")  # need the model's datastore
SIGNALS = ("familiarity", "word_probability", "log_probability", "margin", *RETRIEVAL_SIGNALS)
SIGNAL_CLIP = 10.0  # standard deviations: farther out, a signal says no more (a caption the decoder did not write: -inf)
# Flag the least familiar 1% of held-out in-domain images: a false-alarm rate chosen up front
# (not tuned on out-of-domain images), stored per model and changeable there.
DEFAULT_THRESHOLD = 0.01
DEFAULT_DOMAIN = "the images it was trained on"
MIN_HELD_OUT = 20  # fewer held-out images cannot place a 1% threshold meaningfully
RIDGE = 1e-2  # the logistic regression's L2 penalty on standardised signals: a few signals, ~1,000 images


class ConfidenceFileError(CaptionerError, ValueError):
    """A ``confidence.safetensors`` that is unreadable or does not fit its model."""


def _percentile(sorted_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + reference scores below) / (1 + references): a share in (0, 1]."""
    below = np.searchsorted(sorted_scores, np.asarray(scores, dtype=np.float32), side="right")
    return ((below + 1.0) / (len(sorted_scores) + 1.0)).astype(np.float32)


@dataclass
class ConfidenceModel:
    """Feature statistics, the signals' standardisation and weights, and the calibration that turn
    (pooled feature, caption, neighbours) into a confidence; see the module docstring."""

    feature_mean: np.ndarray  # (pooled_dim,)
    feature_std: np.ndarray  # (pooled_dim,)
    signal_mean: np.ndarray  # (signals,) over the held-out images
    signal_std: np.ndarray  # (signals,)
    held_out_scores: np.ndarray  # sorted: combined scores (percentile) or familiarities (logistic) of held-out images
    threshold: float = DEFAULT_THRESHOLD
    domain: str = DEFAULT_DOMAIN
    signals: tuple[str, ...] = FIRST_FORMAT_SIGNALS
    weights: np.ndarray = field(default_factory=lambda: np.ones(2, np.float32))  # (signals,)
    bias: float = 0.0
    calibration: str = "percentile"  # "percentile" (the first format) or "logistic"
    target: str = ""  # what "right" meant when fitted (logistic): "exact match" or "CIDEr-D above the median"
    # A model with a datastore: the fit for captions decoded without it (retrieval off), on the
    # decoder's own signals; same feature statistics, flag and held-out images.
    alone: Optional["ConfidenceModel"] = None
    # Format 3: the training features' principal axes (pooled_dim, k) and their spread along each (k,):
    # familiarity measures along them, and off them by ``feature_std``. None: per dimension (format 2).
    feature_axes: Optional[np.ndarray] = None
    axis_std: Optional[np.ndarray] = None
    # Which features familiarity reads: the encoder's pooled feature, or (format 4) its untuned
    # stages' (``Features.untuned``) — the feature statistics above are theirs.
    reads: str = "pooled"

    @property
    def needs_datastore(self) -> bool:
        return any(s in RETRIEVAL_SIGNALS for s in self.signals)

    def fit_for(self, values: Mapping[str, Sequence[float]]) -> Optional["ConfidenceModel"]:
        """The fit that reads what was measured (``values``, familiarity aside): this one, or —
        captions decoded without the datastore — the decoder-alone one; ``None`` if neither."""
        for fitted in (self, self.alone):
            if fitted is not None and all(s == "familiarity" or s in values for s in fitted.signals):
                return fitted
        return None

    # --- scoring ------------------------------------------------------------------------
    def familiarity_of(self, features: Features) -> np.ndarray:
        """The familiarity of encoded images: of the features this fit reads (``reads``)."""
        return self.familiarity(_familiarity_input(features, self.reads))

    def familiarity(self, pooled) -> np.ndarray:
        """(batch, feature dim) → (batch,): minus the Mahalanobis distance (RMS over dimensions) to
        the training features: along the principal axes, and per dimension off them."""
        centred = host_array(pooled).astype(np.float32) - self.feature_mean  # (batch, pooled_dim)
        along = np.zeros(len(centred), np.float32)
        if self.feature_axes is not None:
            projected = centred @ self.feature_axes  # (batch, k)
            along = np.sum((projected / self.axis_std) ** 2, axis=1)
            centred = centred - projected @ self.feature_axes.T
        off = np.sum((centred / self.feature_std) ** 2, axis=1)
        return -np.sqrt((along + off) / centred.shape[1])

    def score(self, values: Mapping[str, Sequence[float]]) -> np.ndarray:
        """The signals of a batch (``values[name]``: one number per image) → combined score (batch,)."""
        matrix = np.stack([np.asarray(values[s], dtype=np.float32) for s in self.signals], axis=1)
        if self.calibration == "percentile":  # the first format, scored as it always was
            return ((matrix - self.signal_mean) / self.signal_std) @ self.weights + self.bias
        return _standardised(matrix, self.signal_mean, self.signal_std) @ self.weights + self.bias

    def confidence(self, values: Mapping[str, Sequence[float]]) -> np.ndarray:
        """(batch,) confidences in (0, 1] from the batch's signals."""
        score = self.score(values)
        if self.calibration == "percentile":
            return _percentile(self.held_out_scores, score)
        right = 1.0 / (1.0 + np.exp(-np.clip(score, -30, 30)))
        # The fit saw only in-domain images; past the flag it extrapolates (a photo whose emoji name
        # every neighbour shares would score high). There the probability decays by e for every
        # standard deviation of the validation images' familiarity the image lies beyond the flag.
        return (right * self._in_domain(np.asarray(values["familiarity"], dtype=np.float64))).astype(np.float32)

    def _in_domain(self, familiarity: np.ndarray) -> np.ndarray:
        """1 up to the flag's familiarity, then exp(-distance past it / the validation spread)."""
        edge = float(np.quantile(self.held_out_scores, self.threshold))
        spread = float(self.signal_std[self.signals.index("familiarity")])
        return np.exp(np.minimum(0.0, familiarity - edge) / max(spread, 1e-6))

    def is_low(self, confidence: float, familiarity: float) -> bool:
        """Whether a caption is flagged (``low_confidence``): an image less familiar than all but
        ``threshold`` of the validation images (the first format: its confidence below ``threshold``)."""
        if self.calibration == "percentile":
            return confidence < self.threshold
        return float(_percentile(self.held_out_scores, np.asarray([familiarity]))[0]) < self.threshold

    # --- fitting --------------------------------------------------------------------------
    @staticmethod
    def feature_statistics(train_pooled: Iterable, axes: int = FAMILIARITY_AXES
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Batches of training features (streamed, float64 sums) → their mean, each dimension's
        spread, the principal axes (pooled_dim, k ≤ ``axes``) and the spread along each."""
        count, total, products = 0, None, None
        for batch in train_pooled:
            batch = host_array(batch).astype(np.float64)  # (batch, pooled_dim)
            total = batch.sum(0) if total is None else total + batch.sum(0)
            products = batch.T @ batch if products is None else products + batch.T @ batch
            count += len(batch)
        if count < 2:
            raise ValueError(f"confidence statistics need at least 2 training images, got {count}")
        mean = total / count
        covariance = products / count - np.outer(mean, mean)
        variances, vectors = np.linalg.eigh(covariance)  # ascending
        k = max(0, min(axes, len(mean) - 1, count - 1))
        top = vectors[:, len(mean) - k :][:, ::-1]  # (pooled_dim, k), the widest first
        along = np.sqrt(np.clip(variances[len(mean) - k :][::-1], 0.0, None))
        spread = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        return (mean.astype(np.float32), _floored(spread).astype(np.float32), top.astype(np.float32),
                _floored(along).astype(np.float32))

    @classmethod
    def fit(cls, train_pooled: Iterable, held_out_pooled, values: Mapping[str, Sequence[float]],
            correct: Sequence[bool], target: str, threshold: float = DEFAULT_THRESHOLD,
            domain: str = DEFAULT_DOMAIN, reads: str = "pooled") -> "ConfidenceModel":
        """Feature statistics from batches of training features; on the held-out images (their
        features, their captions' signals ``values`` — familiarity is computed here — and
        whether each caption was ``correct``), the standardisation, a ridge logistic regression
        and the familiarities that place the out-of-domain flag. ``reads`` names the features
        given (``Features.pooled``, or ``untuned``)."""
        if reads not in FAMILIARITY_INPUTS:
            raise ValueError(f"familiarity reads one of {', '.join(FAMILIARITY_INPUTS)}, not {reads!r}")
        mean, std, axes, axis_std = cls.feature_statistics(train_pooled)
        held_out_pooled = host_array(held_out_pooled)
        if len(held_out_pooled) < MIN_HELD_OUT:
            raise ValueError(
                f"confidence calibration needs at least {MIN_HELD_OUT} held-out images, got {len(held_out_pooled)}"
            )
        model = cls(mean, std, np.zeros(0), np.zeros(0), np.zeros(0), float(threshold), domain,
                    feature_axes=axes if axes.shape[1] else None, axis_std=axis_std if axes.shape[1] else None,
                    reads=reads)
        return model._fitted(model.familiarity(held_out_pooled), values, correct, target)

    def _fitted(self, familiarity: np.ndarray, values: Mapping[str, Sequence[float]], correct: Sequence[bool],
                target: str) -> "ConfidenceModel":
        """A logistic fit of ``values`` (+ ``familiarity``) to ``correct`` with this one's feature
        statistics, threshold and domain."""
        names = tuple(s for s in SIGNALS if s == "familiarity" or s in values)
        model = ConfidenceModel(self.feature_mean, self.feature_std, np.zeros(len(names), np.float32),
                                np.ones(len(names), np.float32), np.zeros(0), self.threshold, self.domain, names,
                                np.zeros(len(names), np.float32), 0.0, "logistic", target,
                                feature_axes=self.feature_axes, axis_std=self.axis_std, reads=self.reads)
        values = {**values, "familiarity": familiarity}
        matrix = np.stack([np.asarray(values[s], dtype=np.float64) for s in names], axis=1)  # (held-out, signals)
        finite = np.where(np.isfinite(matrix), matrix, np.nan)
        model.signal_mean = np.nan_to_num(np.nanmean(finite, 0)).astype(np.float32)
        model.signal_std = np.maximum(np.nan_to_num(np.nanstd(finite, 0, ddof=1)), 1e-6).astype(np.float32)
        weights, bias = _logistic_regression(_standardised(matrix, model.signal_mean, model.signal_std),
                                             np.asarray(correct, dtype=np.float64))
        model.weights, model.bias = weights.astype(np.float32), float(bias)
        model.held_out_scores = np.sort(familiarity).astype(np.float32)
        return model

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(directory) / CONFIDENCE_FILE
        arrays = {
            "feature_mean": self.feature_mean, "feature_std": self.feature_std,
            "signal_mean": self.signal_mean, "signal_std": self.signal_std,
            "held_out_scores": self.held_out_scores, "weights": self.weights,
        }
        if self.feature_axes is not None:
            arrays |= {"feature_axes": self.feature_axes, "axis_std": self.axis_std}
        file_format = 4 if self.reads != "pooled" else 3 if self.feature_axes is not None else 2
        if file_format == 4 and self.feature_axes is None:
            raise ValueError("a fit that reads the untuned features measures along principal axes")
        metadata = {"format": str(file_format), "signals": ",".join(self.signals),
                    "threshold": repr(float(self.threshold)), "domain": self.domain, "bias": repr(self.bias),
                    "calibration": self.calibration, "target": self.target,
                    **({"familiarity_of": self.reads} if file_format == 4 else {})}
        if self.alone is not None:
            alone = self.alone
            arrays |= {"alone_signal_mean": alone.signal_mean, "alone_signal_std": alone.signal_std,
                       "alone_weights": alone.weights}
            metadata |= {"alone_signals": ",".join(alone.signals), "alone_bias": repr(alone.bias),
                         "alone_target": alone.target}
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, directory: str | Path, pooled_dim: int, name: str = CONFIDENCE_FILE,
             untuned_dim: Optional[int] = None) -> Optional["ConfidenceModel"]:
        """The model directory's confidence file (``name``), or ``None`` when it has none;
        ``untuned_dim``: the width of the encoder's ``untuned`` features (``None``: it gives none)."""
        from safetensors import SafetensorError, safe_open

        path = Path(directory) / name
        if not path.is_file():
            return None
        fix = f"delete it to caption without confidence, or rewrite it with {_REWRITE_HINT}"
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ConfidenceFileError(f"{path} is corrupt or truncated ({e}); {fix}") from None
        signals = tuple(metadata.get("signals", "").split(","))
        first_format = metadata.get("format") == "1" and signals == FIRST_FORMAT_SIGNALS
        if not first_format and (metadata.get("format") not in ("2", "3", str(CONFIDENCE_FORMAT))
                                 or not set(signals) <= set(SIGNALS)
                                 or metadata.get("calibration") not in ("percentile", "logistic")):
            raise ConfidenceFileError(
                f"{path}: format {metadata.get('format')!r} with signals {metadata.get('signals')!r} is not "
                f"what this captioner computes (format {CONFIDENCE_FORMAT}, signals from {','.join(SIGNALS)}); {fix}"
            )
        try:
            model = cls(
                *(arrays[k] for k in ("feature_mean", "feature_std", "signal_mean", "signal_std", "held_out_scores")),
                float(metadata["threshold"]), metadata.get("domain", DEFAULT_DOMAIN), signals,
                arrays["weights"] if not first_format else np.ones(len(signals), np.float32),
                0.0 if first_format else float(metadata["bias"]),
                "percentile" if first_format else metadata["calibration"], metadata.get("target", ""),
            )
        except (KeyError, ValueError) as e:
            raise ConfidenceFileError(f"{path}: missing or invalid entry {e}; {fix}") from None
        if metadata.get("format") == "4":
            model.reads = metadata.get("familiarity_of", "")
            if model.reads not in FAMILIARITY_INPUTS:
                raise ConfidenceFileError(f"{path}: familiarity_of {model.reads!r} is not one of "
                                          f"{', '.join(FAMILIARITY_INPUTS)}; {fix}")
        dim = pooled_dim if model.reads == "pooled" else untuned_dim
        if dim is None:
            raise ConfidenceFileError(f"{path}: its familiarity reads the features of an encoder's untuned stages, "
                                      f"and this model's encoder has no tuned stages; {fix}")
        if model.feature_mean.shape != (dim,) or model.feature_std.shape != (dim,):
            raise ConfidenceFileError(
                f"{path}: feature statistics of size {tuple(model.feature_mean.shape)} do not fit the encoder's "
                f"{model.reads} features ({dim}); {fix}"
            )
        if any(a.shape != (len(signals),) for a in (model.signal_mean, model.signal_std, model.weights)):
            raise ConfidenceFileError(f"{path}: the signals' statistics do not match its {len(signals)} signals; {fix}")
        if metadata.get("format") in ("3", "4"):  # familiarity along principal axes
            axes, along = arrays.get("feature_axes"), arrays.get("axis_std")
            if axes is None or along is None or axes.ndim != 2 or axes.shape[0] != dim \
                    or along.shape != (axes.shape[1],) or not 0 < axes.shape[1] < dim:
                raise ConfidenceFileError(f"{path}: format {metadata['format']} needs feature_axes (feature dim "
                                          f"{dim} × k < {dim}) and axis_std (k); {fix}")
            model.feature_axes, model.axis_std = axes, along
        if "alone_signals" in metadata:  # the fit for captions decoded without the datastore
            alone = tuple(metadata["alone_signals"].split(","))
            try:
                model.alone = dataclasses.replace(
                    model, signals=alone, signal_mean=arrays["alone_signal_mean"],
                    signal_std=arrays["alone_signal_std"], weights=arrays["alone_weights"],
                    bias=float(metadata["alone_bias"]), target=metadata.get("alone_target", ""), alone=None)
            except (KeyError, ValueError) as e:
                raise ConfidenceFileError(f"{path}: missing or invalid entry {e}; {fix}") from None
            if not set(alone) <= set(SIGNALS) - set(RETRIEVAL_SIGNALS) or model.calibration != "logistic" or any(
                    a.shape != (len(alone),) for a in (model.alone.signal_mean, model.alone.signal_std,
                                                       model.alone.weights)):
                raise ConfidenceFileError(f"{path}: its fit without the datastore (signals {metadata['alone_signals']!r}) "
                                          f"does not fit together; {fix}")
        return model

    def describe(self) -> dict:
        """What the API and the page need: the threshold and the domain to name."""
        return {"threshold": self.threshold, "domain": self.domain, "held_out_images": len(self.held_out_scores),
                "signals": list(self.signals), "predicts": self.target or "the caption's standing among held-out ones"}


def _familiarity_input(features: Features, reads: str):
    """The features familiarity reads (``reads``: a ``Features`` field) — there, or one line."""
    value = getattr(features, reads)
    if value is None:
        raise ValueError(f"the confidence's familiarity reads the encoder's {reads} features, and these "
                         f"features have none (an encoder without tuned stages, or features from a cache)")
    return value


def _floored(spread: np.ndarray) -> np.ndarray:
    """Spreads with a floor for what never varies in training (dead ReLUs): 1 % of the typical
    (lower median, as torch.median) spread."""
    if not len(spread):
        return spread
    middle = (len(spread) - 1) // 2
    return np.maximum(spread, 0.01 * float(np.partition(spread, middle)[middle]) + 1e-12)


def _standardised(matrix: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Signals in standard deviations from the validation mean, within ±``SIGNAL_CLIP`` (-inf: the
    low end; NaN: the mean)."""
    standard = np.nan_to_num((matrix - mean) / std, nan=0.0, posinf=SIGNAL_CLIP, neginf=-SIGNAL_CLIP)
    return np.clip(standard, -SIGNAL_CLIP, SIGNAL_CLIP)


def _logistic_regression(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, steps: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias maximising the ridge-penalised log-likelihood of ``y`` (0/1) given ``x``
    (rows: examples), by Newton's method (IRLS); the bias is not penalised."""
    rows, columns = x.shape
    design = np.concatenate([x, np.ones((rows, 1))], axis=1)
    penalty = np.diag([ridge * rows] * columns + [0.0])
    beta = np.zeros(columns + 1)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -30, 30)))
        gradient = design.T @ (p - y) + penalty @ beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(columns + 1)
        update = np.linalg.solve(hessian, gradient)
        beta -= update
        if np.abs(update).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


_REWRITE_HINT = "scripts/confidence_stats.py (see its --help)"


def features_from_images(model, paths: Sequence[str | Path], batch_size: int = 32) -> Iterator[Features]:
    """Encode image files in batches with ``model``'s preprocessing (for fitting confidence)."""
    for start in range(0, len(paths), batch_size):
        yield model.encode_images(paths[start : start + batch_size])


def features_from_cache(cache, rows: Sequence[int], batch_size: int = 256) -> Iterator[Features]:
    """Rows of a built ``FeatureCache`` (or ``TopFeatures``: with what the untuned stages make of
    each image, where it knows) as batches of features."""
    rows = list(rows)
    for start in range(0, len(rows), batch_size):
        pooled, grid = cache.rows(np.asarray(rows[start : start + batch_size]))
        yield Features(pooled, grid, cache.grid_shape, untuned=getattr(cache, "untuned", None))


def fit_confidence(
    model,
    train_features: Iterable[Features],
    held_out_features: Iterable[Features],
    references: Sequence[Sequence[str]],
    options: DecodeOptions | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    domain: str = DEFAULT_DOMAIN,
    held_out_labels: Optional[Sequence[str]] = None,
    store_labels: Optional[Sequence[str]] = None,
) -> ConfidenceModel:
    """Fit ``model``'s confidence: feature statistics over ``train_features``; the signals of the
    held-out images captioned the way ``caption`` does (``options``; with the model's datastore
    when it has one), and whether each caption was right against its ``references`` (one list per
    held-out image, in ``options.language``).

    ``held_out_labels`` and ``store_labels`` (one per held-out image and one per datastore row:
    each image's artist, say) calibrate for images unlike any stored: each held-out image is
    captioned with the rows of its own label left out of the datastore. A drawing whose artist
    the datastore holds finds that artist's other drawings — neighbours that agree, right or
    wrong — and a fit on those images weighs the neighbours' agreement as captions of a new
    artist's drawings will not earn.

    A model with a datastore gets a second fit (``ConfidenceModel.alone``) on the same images
    captioned without it, so that captions decoded with retrieval off (``--no-retrieval``) have
    a confidence too."""
    options = options or DecodeOptions()
    alone_options = DecodeOptions.of(options, retrieval=False) if model.datastore is not None and options.retrieval \
        else None  # with a datastore, a second fit for captions decoded without it
    familiar, reads, measured = [], None, {"": ([], {}), "alone": ([], {})}  # fit → (texts, signals)
    model.confidence = None  # the signals are measured without a previous fit
    labels = None if held_out_labels is None else np.asarray(held_out_labels)
    start = 0  # the batch's first held-out image
    for features in held_out_features:
        # Familiarity reads the untuned stages' features where the encoder gives them.
        reads = reads or ("untuned" if features.untuned is not None else "pooled")
        familiar.append(host_array(_familiarity_input(features, reads)))
        count = len(familiar[-1])
        if labels is None:
            found = {"": caption_signals(model, features, options)}
        else:
            own = labels[start : start + count]
            found = {"": _signals_leaving_out(model, features, options, own, np.asarray(store_labels))}
        start += count
        if alone_options is not None:
            found["alone"] = caption_signals(model, features, alone_options)
        for fit, (captions, signals) in found.items():
            texts, values = measured[fit]
            texts += [c.text for c in captions]
            for name, column in signals.items():
                values.setdefault(name, []).extend(column)
    if not familiar:
        raise ValueError("confidence calibration needs held-out images, got none")
    texts, values = measured[""]
    fitted = ConfidenceModel.fit((_familiarity_input(f, reads) for f in train_features), np.concatenate(familiar),
                                 values, *_rightness(model, texts, references, options.language), threshold, domain,
                                 reads)
    if alone_options is not None:
        texts, values = measured["alone"]
        fitted.alone = fitted._fitted(fitted.familiarity(np.concatenate(familiar)), values,
                                      *_rightness(model, texts, references, options.language))
    return fitted


def _signals_leaving_out(model, features: Features, options: DecodeOptions, labels: np.ndarray,
                         store_labels: np.ndarray):
    """:func:`caption_signals` of a batch, each image captioned with the datastore rows of its
    own label left out (``Datastore.without``)."""
    store = model.datastore
    if store is None or len(store_labels) != len(store):
        raise ValueError(f"{len(store_labels)} datastore labels for a datastore of "
                         f"{0 if store is None else len(store)} rows")
    captions, values = [None] * len(labels), {}
    for label in dict.fromkeys(labels.tolist()):
        rows = np.flatnonzero(labels == label)
        part = Features(*(x[rows] if hasattr(x, "shape") else x for x in features))
        model.datastore = store.without(store_labels == label)
        try:
            found, signals = caption_signals(model, part, options)
        finally:
            model.datastore = store
        for j, i in enumerate(rows):
            captions[i] = found[j]
        for name, column in signals.items():
            values.setdefault(name, [0.0] * len(labels))
            for j, i in enumerate(rows):
                values[name][i] = column[j]
    return captions, values


def _rightness(model, texts: Sequence[str], references: Sequence[Sequence[str]], language) -> tuple[list[bool], str]:
    """Whether each caption was right: exact (as words) when that separates the held-out captions
    (between 5 % and 95 % exact), else its CIDEr-D above the median (``compute_cider_d``)."""
    tokenize = lambda text: " ".join(model.vocab.tokenize(text, language))  # noqa: E731
    exact = [tokenize(t) in {tokenize(r) for r in refs} for t, refs in zip(texts, references)]
    if 0.05 <= np.mean(exact) <= 0.95:
        return exact, "exact match"
    from .metrics.cider import compute_cider_d

    keys = list(range(len(texts)))
    _, per_image = compute_cider_d({k: tokenize(texts[k]) for k in keys},
                                   {k: [tokenize(r) for r in references[k]] for k in keys})
    return list(per_image > np.median(per_image)), "CIDEr-D above the median"


__all__ = ["ConfidenceModel", "ConfidenceFileError", "CONFIDENCE_FILE", "SIGNALS", "fit_confidence",
           "features_from_images", "features_from_cache", "mean_word_probability"]
