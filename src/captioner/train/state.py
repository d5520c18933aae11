"""The run folder and the training state that ``--resume`` restores.

``out/`` is the best model directory; ``out/last/`` the last one plus ``training_state.pt``
(optimizer, scheduler, progress, RNG — plain tensors and numbers, loaded with
``weights_only=True``).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from ..model import CONFIG_FILE, Captioner

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class RunFolder:
    """Where a training run's files go (nothing is created until ``create``)."""

    out: Path

    def __post_init__(self):
        if not str(self.out):
            raise ValueError("an output folder is required (--out DIR)")
        object.__setattr__(self, "out", Path(self.out))

    @property
    def last(self) -> Path:
        """The last epoch's model directory, beside the best one."""
        return self.out / "last"

    @property
    def state_file(self) -> Path:
        return self.last / STATE_FILE

    @property
    def config_file(self) -> Path:
        return self.out / "train_config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def curves_file(self) -> Path:
        return self.out / "curves.png"

    @property
    def tensorboard_dir(self) -> Path:
        return self.out / "tensorboard"

    def create(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def check_fresh(self) -> None:
        """Refuse to start a new run over an existing one."""
        if (self.out / CONFIG_FILE).exists() or self.state_file.exists():
            raise FileExistsError(
                f"{self.out} already holds a training run; pass --resume to continue it, "
                "or choose another --out"
            )


@dataclass
class Progress:
    """Where training stands; saved with the training state for ``--resume``."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already trained (mid-epoch resume)
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list = field(default_factory=list)


@dataclass
class ResumedRun:
    """What ``load_training_state`` gives back: the last model, its progress, and the state
    dicts to load into the optimizer and scheduler once they exist."""

    model: Captioner
    progress: Progress
    optimizer_state: dict
    scheduler_state: dict


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def save_training_state(run: RunFolder, model: Captioner, optimizer, scheduler, progress: Progress) -> None:
    """The last model and everything ``--resume`` needs to continue exactly from here."""
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
    }
    model.save_pretrained(run.last)
    atomic_write(run.state_file, lambda tmp: torch.save(state, tmp))


def load_training_state(run: RunFolder, config) -> ResumedRun:
    """The interrupted run's last model, progress and optimizer/scheduler state. Also puts the
    random generators back where they were, so the continued run draws what the straight one would."""
    path = run.state_file
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (train without --resume first)")
    model = Captioner.from_pretrained(run.last)
    expected = (config.model.encoder, config.model.decoder)
    if (model.encoder.name, model.decoder.name) != expected:
        raise ValueError(
            f"--resume: {run.last} holds {model.encoder.name} → {model.decoder.name}, the config asks for "
            f"{expected[0]} → {expected[1]}; use the run's own config ({run.config_file})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    _set_rng_state(state["rng"])
    return ResumedRun(model, Progress(**state["progress"]), state["optimizer"], state["scheduler"])
