"""Which torch device a command runs on; shared by training, captioning and the server."""
from __future__ import annotations

import os
import sys

import torch

from .errors import CaptionerError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when available; under torchrun each process takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CaptionerError(f"--device {name}: no CUDA device is available here; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CaptionerError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def available_memory() -> int:
    """Bytes of memory this machine can still give (Linux ``MemAvailable``; else the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no such counter here: nothing to check against
        return sys.maxsize
