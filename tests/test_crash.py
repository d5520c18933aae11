"""Crash consistency: ``captioner train`` SIGKILLed at checkpoint-write moments and at random
times, resumed each time, ends with exactly the weights (and metrics) of an uninterrupted run.

The kills come from a ``sitecustomize.py`` this test puts on the subprocess's PYTHONPATH: it
wraps ``os.fsync``/``os.replace``/``os.rename``/``os.symlink`` and SIGKILLs the process at
the chosen call — the library has no test hooks.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

# CRASH_AT="FUNCTION:PATTERN:N" kills the process just before the Nth call of os.FUNCTION whose
# target path (fsync: the file or folder the descriptor is open on) matches the glob PATTERN.
# CRASH_LOG appends "function path" for each call, to see which moments a run went through.
SITECUSTOMIZE = '''
import fnmatch, os, signal

_spec = os.environ.get("CRASH_AT")
_log = os.environ.get("CRASH_LOG")
if _spec or _log:
    _function, _pattern, _count = (_spec or "::0").split(":")
    _left = [int(_count)]

    def _target(name, args):
        if name == "fsync":
            return os.readlink(f"/proc/self/fd/{args[0]}")
        return os.fspath(args[1] if name != "symlink" else args[1])

    def _wrap(name, function):
        def wrapper(*args, **kwargs):
            path = _target(name, args)
            if _log:
                with open(_log, "a") as f:
                    f.write(f"{name} {path}\\n")
            if name == _function and fnmatch.fnmatch(path, _pattern):
                _left[0] -= 1
                if _left[0] == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return wrapper

    for _name in ("fsync", "replace", "rename", "symlink"):
        setattr(os, _name, _wrap(_name, getattr(os, _name)))
'''

EPOCHS = 3


def _command(data: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "captioner", "train", "--data", str(data), "--out", str(out),
            "--encoder", "efficientnet_lite0", "--decoder", "show-tell", "--epochs", str(EPOCHS),
            "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--set", "log_every=1",
            "--set", "val_beam_size=1", *(["--resume"] if resume else [])]


def _env(hooks: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_AT", "CRASH_LOG")}
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _train(data, out, hooks, resume, crash_at) -> subprocess.CompletedProcess:
    return subprocess.run(_command(data, out, resume), env=_env(hooks, CRASH_AT=crash_at), capture_output=True,
                          text=True, timeout=300)


def _lines(out: Path) -> int:
    """Complete lines in metrics.jsonl (while a run may be appending to it)."""
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _records(out: Path) -> list[dict]:
    # Everything but the wall-clock numbers, which differ from run to run.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_seconds" and not k.endswith("_per_second")} for r in records]


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), (a, b, key)


def test_sigkill_at_checkpoint_moments_and_random_times_resumes_exactly(tiny_one_caption, tmp_path):
    from captioner.train.state import RunFolder

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    log = tmp_path / "calls.log"
    # The uninterrupted run, beside the crashed one (two cores).
    uninterrupted = subprocess.Popen(_command(tiny_one_caption, straight, False), env=_env(hooks, CRASH_LOG=str(log)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def kill(crash_at: str, resume: bool) -> None:
        result = _train(tiny_one_caption, crashed, hooks, resume, crash_at)
        assert result.returncode == -signal.SIGKILL, (crash_at, result.returncode, result.stderr[-2000:])

    # The first checkpoint's weights written, not yet renamed: nothing is committed, the
    # partial folder is left behind, and a fresh start (no --resume) is allowed.
    kill("fsync:*/checkpoints/step-*/.model.safetensors.*.tmp:1", resume=False)
    assert not os.path.lexists(crashed / "last") and list((crashed / "checkpoints").iterdir())
    RunFolder(crashed).check_fresh()
    # --resume with nothing committed starts from the beginning; killed just after the first
    # commit, while the best model is being copied into out/.
    kill(f"fsync:{crashed}/.model.safetensors.*.tmp:1", resume=True)
    assert (crashed / "last/training_state.pt").is_file() and not (crashed / "config.json").exists()
    # Resumed: metrics trimmed, then killed half-way through finishing that copy (weights and
    # vocabulary in place, config.json not yet).
    kill(f"replace:{crashed}/config.json:1", resume=True)
    assert (crashed / "model.safetensors").is_file() and not (crashed / "config.json").exists()
    # Resumed: the second checkpoint written and about to be committed.
    kill(f"replace:{crashed}/last:1", resume=True)
    assert os.readlink(crashed / "last").endswith("step-00000004")
    # Kills at random instants of resumed runs, once each has trained a step, then one run to the end.
    rng = random.Random(13)
    for _ in range(2):
        logged = _lines(crashed)
        process = subprocess.Popen(_command(tiny_one_caption, crashed, True), env=_env(hooks),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and _lines(crashed) <= logged:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err, err
    finished = subprocess.run(_command(tiny_one_caption, crashed, True), env=_env(hooks), capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err
    assert f"replace {straight}/last" in log.read_text()  # the commit the kills above aim around
    _assert_same_weights(straight / "last/model.safetensors", crashed / "last/model.safetensors")
    _assert_same_weights(straight / "model.safetensors", crashed / "model.safetensors")  # the best model
    assert _records(crashed) == _records(straight)  # no epoch or step logged twice, none lost
    assert [p.name for p in (crashed / "checkpoints").iterdir()] == [os.readlink(crashed / "last").split("/")[-1]]
    assert not list(crashed.rglob("*.tmp"))
