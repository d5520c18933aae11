"""What captioning returns: a :class:`Caption` per image with its n-best alternatives,
serialised to JSON values only. Torch-free, so the torch model (``captioner.model``) and the
exported ONNX runtime (``captioner.runtime``) return the same objects."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional


def _json_score(score: float) -> Optional[float]:
    # JSON has no infinities or NaN: an impossible caption's score (-inf) becomes null.
    return float(score) if math.isfinite(score) else None


@dataclass
class Alternative:
    """One of the n-best captions of an image and its score."""

    text: str
    score: float

    def to_dict(self) -> dict:
        return {"caption": self.text, "score": _json_score(self.score)}


@dataclass
class Caption:
    """A caption for one image: its text, score (length-penalised log-probability), the
    n-best ``alternatives`` (the best included, first), for attention decoders the per-word
    attention weights (words × regions) over a ``grid_shape`` grid, and the ``confidence`` in
    [0, 1] (``None`` for a model without ``confidence.safetensors``; see
    :mod:`captioner.confidence`) with ``low_confidence`` set below the model's threshold."""

    text: str
    score: float
    alternatives: list[Alternative] = field(default_factory=list)
    attention: Any = None  # (words, regions) weights, a torch tensor or numpy array
    grid_shape: Optional[tuple[int, int]] = None
    words: list[str] = field(default_factory=list)
    confidence: Optional[float] = None
    low_confidence: Optional[bool] = None

    @classmethod
    def from_hypotheses(cls, hypotheses, vocab, **extra) -> "Caption":
        """The caption of one image's n-best ``hypotheses`` (best first; anything with
        ``tokens`` and ``score``), words from ``vocab``; ``extra`` fills the other fields."""
        best = hypotheses[0]
        return cls(
            text=vocab.decode(best.tokens),
            score=best.score,
            alternatives=[Alternative(vocab.decode(h.tokens), h.score) for h in hypotheses],
            words=[vocab.itos[t] for t in best.tokens],
            **extra,
        )

    def to_dict(self, attention: bool = False, digits: int = 4) -> dict:
        """``{"caption", "score", "confidence", "low_confidence", "alternatives"}``, JSON values
        only (a -inf or NaN score is ``None``, so are both confidence fields for a model without
        confidence statistics); ``attention=True`` adds ``{"words", "grid", "weights"}`` (weights
        rounded to ``digits``) when the caption has attention weights."""
        result = {
            "caption": self.text,
            "score": _json_score(self.score),
            "confidence": None if self.confidence is None else round(self.confidence, digits),
            "low_confidence": self.low_confidence,
            "alternatives": [a.to_dict() for a in self.alternatives],
        }
        if attention and self.attention is not None:
            result["attention"] = {
                "words": list(self.words),
                "grid": list(self.grid_shape) if self.grid_shape else None,
                "weights": [[round(float(w), digits) for w in row] for row in self.attention.tolist()],
            }
        return result
