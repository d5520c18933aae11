"""Training: the loop (``loop``), its configuration (``config``), run folders and resume
(``state``), validation on generated captions. From Python, :func:`train_model`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union


def train_model(config: Union[str, Path, None] = None, *, resume: bool = False, **settings: Any) -> Path:
    """Train a model as ``captioner train`` does; returns the model folder (the best epoch's).

    ``config``: a YAML file (as ``--config``); ``settings`` override it (code defaults < YAML <
    settings): shortcuts as on the command line (``data="captions.json"``, ``out="runs/a"``,
    ``decoder="show-attend-tell"``, ``epochs=10``, ``lr=3e-4``), any key spelled with ``__``
    (``optim__schedule="cosine"``) or a section as a mapping (``optim={"lr": 3e-4}``).
    ``resume=True`` continues the run in ``out``.

    >>> captioner.train_model(data="captions.csv", out="runs/first", encoder="efficientnet_lite0", epochs=5)
    """
    from ..errors import InvalidInputError
    from .config import load_config, settings_to_overrides
    from .loop import main

    resolved = load_config(config, settings_to_overrides(settings))
    if not resolved.data.path or not resolved.out:
        raise InvalidInputError("training needs data (the captions file) and out (the run folder), "
                                "as settings or in the config")
    return main(resolved, resume=resume)


__all__ = ["train_model"]
