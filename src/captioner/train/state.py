"""The run folder and the training state that ``--resume`` restores, committed crash-safely.

Layout of ``out/``::

    config.json, vocab.json, model.safetensors   the best model (a model directory; tokenizer.json
                                                 beside vocab.json for a subword vocabulary)
    last -> checkpoints/step-00000180           the last checkpoint (a symlink; a model directory)
    checkpoints/step-00000180/                  model files + training_state.pt of one step
    train_config.yaml, metrics.jsonl, cider_df.json, curves.png

A checkpoint is written as a new folder beside the committed one, flushed to disk, and
committed by one atomic replacement of the ``last`` symlink; only then is the old folder
removed and, when this step is the best so far, the best model copied into ``out/``. A kill
at any instant therefore leaves the previous or the new checkpoint, never a mix, and the
next start removes what a killed save left behind (partial folders, ``*.tmp`` files), trims
``metrics.jsonl`` back to the checkpoint and finishes copying the best model.
``training_state.pt`` (optimizer, scheduler, progress, RNG) holds plain tensors and numbers
and is loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import CaptionerError
from ..io import atomic_write, atomic_write_text, fsync_path
from ..data.vocab import SUBWORD_FILE
from ..model import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, Captioner
from ..retrieval import DATASTORE_FILE

STATE_FILE = "training_state.pt"
LAST_LINK = "last"
CHECKPOINTS = "checkpoints"


class RunFolderError(CaptionerError):
    """A run folder that cannot be started or resumed as asked (already used, nothing to
    resume, a damaged or foreign training state)."""


@dataclass(frozen=True)
class RunFolder:
    """Where a training run's files go (nothing is created until ``create``)."""

    out: Path

    def __post_init__(self):
        if not str(self.out):
            raise RunFolderError("an output folder is required (--out DIR)")
        object.__setattr__(self, "out", Path(self.out))

    @property
    def last(self) -> Path:
        """The last checkpoint's model directory (a symlink into ``checkpoints/``)."""
        return self.out / LAST_LINK

    @property
    def checkpoints(self) -> Path:
        return self.out / CHECKPOINTS

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
    def cider_df_file(self) -> Path:
        return self.out / "cider_df.json"

    @property
    def tensorboard_dir(self) -> Path:
        return self.out / "tensorboard"

    def create(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def committed(self) -> Path | None:
        """The committed checkpoint folder (``None`` before the first commit)."""
        if not os.path.lexists(self.last):
            return None
        if not self.last.is_symlink():
            raise RunFolderError(
                f"{self.last} is a folder written by an older captioner (before checkpoints/); "
                f"finish that run with the captioner that started it, or train into a new --out"
            )
        folder = self.out / os.readlink(self.last)
        if folder.parent != self.checkpoints or not (folder / STATE_FILE).is_file():
            raise RunFolderError(
                f"{self.last} points at {os.readlink(self.last)}, which is not a checkpoint of this run; "
                f"remove {self.last} to start over"
            )
        return folder

    def check_fresh(self) -> None:
        """Refuse to start a new run over an existing one (or over a model directory)."""
        if self.committed() is not None or (self.out / CONFIG_FILE).exists():
            raise RunFolderError(
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

    @property
    def holds_best(self) -> bool:
        """Whether the model at this point is the best one (the epoch that just ended was best)."""
        return self.best_epoch == self.epoch and self.batch_in_epoch == 0


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
    """Commit the model and everything ``--resume`` needs to continue exactly from here, as one
    checkpoint; when ``progress`` says this model is the best so far, it becomes ``out/``'s."""
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
    }
    previous = run.committed()
    _remove_stale(run, keep=previous)
    name = f"step-{progress.step:08d}"
    if previous is not None and previous.name == name:
        name += "-1"  # the same step saved again (an interrupt right after a resume)
    folder = run.checkpoints / name
    model.save_pretrained(folder)
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
    fsync_path(run.checkpoints)
    _point_last_at(run, folder)  # the commit
    if previous is not None:
        shutil.rmtree(previous)
    if progress.holds_best:
        _publish_best(run)


def _point_last_at(run: RunFolder, folder: Path) -> None:
    """Atomically make ``out/last`` name ``folder`` (a new symlink renamed over the old)."""
    tmp = run.out / f".{LAST_LINK}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(Path(CHECKPOINTS) / folder.name, tmp)
    os.replace(tmp, run.last)
    fsync_path(run.out)


def _publish_best(run: RunFolder) -> None:
    """Copy the committed checkpoint's model files into ``out/``, each file atomically and
    ``config.json`` last; ``config.json`` and ``vocab.json`` do not change within a run, so
    ``out/`` is the previous best or the new one at every instant. A checkpoint's datastore (the
    training images', which a decoder that reads retrieved captions needs) comes along."""
    source = run.committed()
    subwords = [SUBWORD_FILE] if (source / SUBWORD_FILE).is_file() else []  # before the vocab.json naming it
    datastore = [DATASTORE_FILE] if (source / DATASTORE_FILE).is_file() else []
    for name in (WEIGHTS_FILE, *datastore, *subwords, VOCAB_FILE, CONFIG_FILE):
        atomic_write(run.out / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp))


def _remove_stale(run: RunFolder, keep: Path | None) -> None:
    """Remove what a killed save left: checkpoint folders that were never committed (or were
    replaced) and temp files."""
    if run.checkpoints.is_dir():
        for folder in run.checkpoints.iterdir():
            if folder == keep:
                continue
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
    if run.out.is_dir():
        for path in run.out.glob(".*.tmp"):
            path.unlink()


def _trim_metrics(path: Path, progress: Progress) -> None:
    """Drop the records written after the checkpoint (they will be written again) and a line
    cut off by a kill, so ``metrics.jsonl`` reads as one uninterrupted run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= progress.step and record.get("epoch", 0) <= progress.epoch:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def start_run(run: RunFolder, config, resume: bool, log: Callable[[str], None] = print,
              is_main: bool = True) -> ResumedRun | None:
    """Open ``run`` for training: the resumed run (``resume``), or ``None`` to start from scratch.

    A fresh start refuses a folder with a committed run. ``--resume`` of a run killed before
    its first checkpoint starts it from the beginning. Either way the files a killed run left
    past its checkpoint are cleaned up first (by ``is_main``, the one process that writes).
    """
    committed = run.committed()
    if not resume:
        run.check_fresh()
    elif committed is None:
        if not run.config_file.exists():
            raise RunFolderError(f"nothing to resume in {run.out}: no run was started there (train without --resume)")
        log(f"--resume: {run.out} was stopped before its first checkpoint; starting the run from the beginning")
    if committed is None or not resume:
        if is_main:
            _remove_stale(run, keep=None)
            for path in (run.metrics_file, run.curves_file, run.cider_df_file):
                path.unlink(missing_ok=True)
        return None
    resumed = load_training_state(run, config)
    if is_main:
        _remove_stale(run, keep=committed)
        _trim_metrics(run.metrics_file, resumed.progress)
        if resumed.progress.holds_best:
            _publish_best(run)  # the copy may have been cut short by the kill
    return resumed


def load_training_state(run: RunFolder, config) -> ResumedRun:
    """The interrupted run's last model, progress and optimizer/scheduler state. Also puts the
    random generators back where they were, so the continued run draws what the straight one would."""
    folder = run.committed()
    if folder is None:
        raise RunFolderError(f"nothing to resume: {run.last} does not exist (train without --resume first)")
    model = Captioner.from_pretrained(folder)
    expected = (config.model.encoder, config.model.decoder)
    if (model.encoder.name, model.decoder.name) != expected:
        raise RunFolderError(
            f"--resume: {run.last} holds {model.encoder.name} → {model.decoder.name}, the config asks for "
            f"{expected[0]} → {expected[1]}; use the run's own config ({run.config_file})"
        )
    path = folder / STATE_FILE
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
        progress = Progress(**state["progress"])
        _set_rng_state(state["rng"])
        return ResumedRun(model, progress, state["optimizer"], state["scheduler"])
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFolderError(
            f"{path} is not a training state written by captioner ({reason[:200]}); "
            f"restore it, or train into a new --out"
        ) from None
