"""No network and no telemetry by default: what captioner tells the libraries it uses before
any of them is imported (``captioner/__init__`` applies it, so every entry point does).

onnxruntime (1.32 on Linux) starts a telemetry client when it is imported unless
``ORT_DISABLE_TELEMETRY`` is set: it writes a device id and an event database under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` and, where it finds a CA bundle, resolves and
posts to ``mobile.events.data.microsoft.com`` — the two DNS lookups an offline ``captioner
train`` made (its feature extraction runs in ONNX Runtime). Its ``disable_telemetry_events()``
comes too late: the client starts at import. Hugging Face's hub client (timm weights) sends
usage pings with downloads unless ``HF_HUB_DISABLE_TELEMETRY`` is set.

Values a user set are kept (``ORT_DISABLE_TELEMETRY=0`` opts back in). A process that imported
onnxruntime before captioner keeps whatever it started with. A leaf module.
"""
from __future__ import annotations

import os

TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def disable_telemetry() -> None:
    """Set the environment variables that keep the libraries' telemetry off, unless already set."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
