"""What a run records: ``metrics.jsonl`` (one JSON object a line: step and epoch records),
optionally TensorBoard scalars, and ``curves.png``."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingDependencyError
from ..io import atomic_write


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and, given ``tensorboard_dir``, writes their
    numbers as TensorBoard scalars at the record's ``step``. Call it with a record."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MissingDependencyError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self._writer = SummaryWriter(str(tensorboard_dir))

    def __call__(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def epoch_summary(record: dict, improved: bool) -> str:
    """One line for the console: the epoch's main numbers."""
    keys = ("train_loss", "train_reward", "val_loss", "Bleu_4", "CIDEr", "exact_match", "bad_ending")
    parts = [f"{k} {record[k]:.4f}" for k in keys if k in record]
    return f"epoch {record['epoch']}: " + ", ".join(parts) + (" (best)" if improved else "")


# The panels of curves.png: (y label, record keys). A panel shows the keys every epoch record
# has, and is left out when it has none.
CURVE_PANELS = (
    ("loss", ("train_loss", "val_loss")),
    ("validation", ("CIDEr", "Bleu_4", "exact_match")),
    ("self-critical CIDEr-D", ("train_reward", "train_baseline", "train_advantage_std")),
    ("sampled words", ("train_sample_length",)),
    ("ending in a function word", ("train_bad_ending", "bad_ending")),
)


def plot_curves(history: list[dict], path: Path) -> None:
    """Per-epoch curves of ``history`` (epoch records), as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    panels = [(label, [k for k in keys if all(k in r for r in history)]) for label, keys in CURVE_PANELS]
    panels = [(label, keys) for label, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (label, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(epochs, [r[key] for r in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
