"""Where captioner keeps what it derives (feature caches, ONNX exports, downloaded emoji
sources), and the digest that names a module's weights in those caches.

A leaf module: it imports nothing of the package, so every layer can use it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root(kind: str | None = None) -> Path:
    """``$CAPTIONER_CACHE`` (else ``~/.cache/captioner``), or its ``kind`` subfolder."""
    root = os.environ.get("CAPTIONER_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "captioner"
    return base / kind if kind else base


def weights_digest(module) -> str:
    """SHA-256 over a torch module's state dict (names and raw bytes): equal weights, equal digest."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
