"""The run folder: metrics log, curves, and the training state that ``--resume`` restores.

``out/`` is the best model directory; ``out/last/`` the last one plus ``training_state.pt``
(optimizer, scheduler, progress, RNG — plain tensors and numbers, loaded with
``weights_only=True``).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from ..model import CONFIG_FILE, Captioner

STATE_FILE = "training_state.pt"


class RunFiles:
    def __init__(self, out: Path, is_main: bool):
        if not str(out):
            raise ValueError("an output folder is required (--out DIR)")
        self.out = out
        self.last = out / "last"
        self.is_main = is_main
        self.interrupted = False
        self._pending_state = None
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
        self._writer = None

    def check_fresh(self) -> None:
        if (self.out / CONFIG_FILE).exists() or (self.last / STATE_FILE).exists():
            raise FileExistsError(
                f"{self.out} already holds a training run; pass --resume to continue it, "
                "or choose another --out"
            )

    def print(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, step)

    def enable_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        if self.is_main:
            self._writer = SummaryWriter(str(self.out / "tensorboard"))

    def summary(self, record: dict, improved: bool) -> str:
        keys = ("train_loss", "val_loss", "Bleu_4", "CIDEr", "exact_match")
        parts = [f"{k} {record[k]:.4f}" for k in keys if k in record]
        return f"epoch {record['epoch']}: " + ", ".join(parts) + (" (best)" if improved else "")

    def plot(self, history: list[dict]) -> None:
        """curves.png: losses and validation metrics per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in history]
        metrics = [k for k in ("CIDEr", "Bleu_4", "exact_match") if all(k in r for r in history)]
        fig, axes = plt.subplots(1, 1 + bool(metrics), figsize=(5 + 5 * bool(metrics), 3.5), squeeze=False)
        ax = axes[0][0]
        for key in ("train_loss", "val_loss"):
            if all(key in r for r in history):
                ax.plot(epochs, [r[key] for r in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax.legend()
        if metrics:
            ax = axes[0][1]
            for key in metrics:
                ax.plot(epochs, [r[key] for r in history], marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.legend()
        fig.tight_layout()
        atomic_write(self.out / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=80))
        plt.close(fig)

    def restore_optimizer(self, optimizer, scheduler) -> None:
        state = self._pending_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


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


def save_training_state(run: RunFiles, model: Captioner, optimizer, scheduler, progress) -> None:
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
    }
    model.save_pretrained(run.last)
    atomic_write(run.last / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_training_state(run: RunFiles, config):
    """The last model and the progress of an interrupted run; the optimizer state waits in
    ``run`` until the optimizer exists (``run.restore_optimizer``)."""
    from .loop import Progress

    path = run.last / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (train without --resume first)")
    model = Captioner.from_pretrained(run.last)
    expected = (config.model.encoder, config.model.decoder)
    if (model.encoder.name, model.decoder.name) != expected:
        raise ValueError(
            f"--resume: {run.last} holds {model.encoder.name} → {model.decoder.name}, the config asks for "
            f"{expected[0]} → {expected[1]}; use the run's own config ({run.out / 'train_config.yaml'})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    _set_rng_state(state["rng"])
    run._pending_state = state
    return model, Progress(**state["progress"])
