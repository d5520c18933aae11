"""Training objectives, separate from models and from the loop.

An objective is called on one batch, ``objective(model, inputs, targets)``, and returns an
``ObjectiveResult``: the loss to backpropagate, the weight that loss is a mean over (what DDP
and the epoch averages weight ranks and batches by), and the numbers to log. The train loop
reads nothing else, so it does not know which objective it runs. Objectives are created by
name (``create_objective("cross-entropy", vocab=..., config=...)``), as encoders and decoders are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .decoders.base import Features
from .errors import InvalidInputError


@dataclass
class ObjectiveResult:
    """What one batch of an objective gives the train loop."""

    loss: torch.Tensor  # scalar to backpropagate: a mean over ``weight`` units
    weight: torch.Tensor | int  # how many units (target tokens, images) ``loss`` is a mean over
    # Numbers to log (detached scalars), each a mean over ``weight`` units.
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Objective:
    """What the train loop optimises.

    Subclasses implement ``__call__`` and ``from_run`` and may set:
    ``log_names``, the keys of every result's ``logs`` (fixed, so that every rank reduces the same
    numbers; ``"loss"`` must be one: without validation data it picks the best epoch);
    ``weight_unit``, what the weight counts (it names the epoch's ``<unit>_per_second``).
    """

    log_names: tuple[str, ...] = ("loss",)
    weight_unit: str = "tokens"

    @classmethod
    def from_run(cls, *, vocab, config) -> "Objective":
        """This objective for a run with this vocabulary and ``TrainConfig`` (``create_objective``)."""
        raise NotImplementedError

    def __call__(self, model, inputs: Features | torch.Tensor, targets) -> ObjectiveResult:
        """One batch: ``inputs`` (features or pixels) and ``targets`` as the run's batches yield them."""
        raise NotImplementedError

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """The numbers to report for weighted means of ``logs`` (an epoch's, or one batch's);
        objectives add what derives from them (perplexity from mean cross-entropy)."""
        return dict(means)


_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str):
    """Class decorator: ``create_objective(name, ...)`` builds this objective with its
    ``from_run``. A duplicate name raises."""

    def register(cls):
        if name in _OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        _OBJECTIVES[name] = cls.from_run
        return cls

    return register


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def create_objective(name: str, *, vocab, config) -> Objective:
    """The objective ``name`` for a run with this vocabulary and ``TrainConfig``."""
    if name not in _OBJECTIVES:
        raise InvalidInputError(f"unknown objective {name!r} (config key 'objective'); choose one of {list_objectives()}")
    return _OBJECTIVES[name](vocab=vocab, config=config)


@register_objective("cross-entropy")
class CaptionCrossEntropy(Objective):
    """Teacher forcing: predict token t+1 from tokens ≤ t; cross-entropy over non-pad targets
    (plus any regulariser the decoder returns, e.g. doubly stochastic attention).

    ``targets`` are captions (batch, L) = <start> w1 .. wn <end> <pad>..; the weight is the
    number of target tokens, and ``logs["loss"]`` the cross-entropy alone (no regulariser).
    """

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0):
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    @classmethod
    def from_run(cls, *, vocab, config) -> "CaptionCrossEntropy":
        return cls(vocab.pad_id, config.optim.label_smoothing)

    def __call__(self, model, inputs: Features | torch.Tensor, targets: torch.Tensor) -> ObjectiveResult:
        output = model(inputs, targets[:, :-1])
        shifted = targets[:, 1:]  # (batch, L - 1)
        cross_entropy = F.cross_entropy(
            output.logits.flatten(0, 1).float(),
            shifted.flatten(),
            ignore_index=self.pad_id,
            label_smoothing=self.label_smoothing,
        )
        tokens = (shifted != self.pad_id).sum()
        loss = cross_entropy if output.aux_loss is None else cross_entropy + output.aux_loss
        return ObjectiveResult(loss, tokens, {"loss": cross_entropy.detach()})

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return {**means, "ppl": math.exp(min(means["loss"], 50))}
