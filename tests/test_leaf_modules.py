"""The small shared modules: atomic writes, cache roots, weights digests, device names."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from captioner.cache import cache_root, weights_digest
from captioner.device import resolve_device
from captioner.errors import CaptionerError
from captioner.io import atomic_write, atomic_write_bytes, atomic_write_text


def test_atomic_write_text_replaces_the_file_and_fsyncs_file_and_folder(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.json"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(target.parent) == ["out.json"]  # no temp file left beside it
    expected = [False, True] if os.name == "posix" else [False]
    assert synced == expected * 2  # the temp file, then (POSIX) the folder holding the rename
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.onnx"
    atomic_write_bytes(target, b"good")

    def half_then_crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_cache_root_follows_captioner_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert cache_root("onnx") == tmp_path / "onnx"
    monkeypatch.delenv("CAPTIONER_CACHE")
    assert cache_root("features") == cache_root() / "features"


def test_weights_digest_changes_with_the_weights_only():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


def test_resolve_device_names_the_fix():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CaptionerError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CaptionerError, match="use --device cpu"):
            resolve_device("cuda")
