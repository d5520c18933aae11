"""Offline means offline: ``captioner caption`` (in ONNX Runtime) and a tiny ``captioner train``
make no connection attempt and write no telemetry.

Each runs as a real process with a ``sitecustomize`` that installs an audit hook recording every
socket lookup or connection Python makes. onnxruntime's telemetry client resolves its collector
in C++, where no audit hook sees it, so the process also runs under ``strace`` where it can,
with a CA bundle in ``SSL_CERT_FILE`` so that the client would try: with telemetry on, the
training run (long enough for the client's first upload) makes the audit's two DNS lookups. The
home folder is checked for the telemetry files the client writes as soon as it is imported.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY

SOCKET_EVENTS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
                 "socket.connect", "socket.sendto", "socket.bind")
SITECUSTOMIZE = f"""
import os, sys

def _record(event, args):
    if event in {SOCKET_EVENTS!r}:
        with open(os.environ["SOCKET_LOG"], "a") as log:
            log.write(f"{{os.getpid()}} {{event}} {{args!r}}\\n")

sys.addaudithook(_record)
"""


STRACE = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect,sendto,sendmsg"]  # stops on these only


def _can_strace() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run([*STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0  # ptrace allowed


def _ca_bundle() -> str | None:
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _run_offline(args: list[str], tmp_path: Path, name: str) -> tuple[list[str], list[str]]:
    """Run ``captioner ARGS`` with the audit hook (and strace); (Python socket events, network syscalls)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    log, trace = tmp_path / f"{name}.sockets", tmp_path / f"{name}.strace"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "SOCKET_LOG": str(log), "HOME": str(home), "OMP_NUM_THREADS": "1"}
    for variable in ("ORT_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY", "XDG_CACHE_HOME"):
        env.pop(variable, None)  # what captioner does by itself is under test
    if _ca_bundle():
        env["SSL_CERT_FILE"] = _ca_bundle()
    command = [sys.executable, "-m", "captioner", *args]
    if _can_strace():
        command = [*STRACE, "-o", str(trace), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = log.read_text().splitlines() if log.exists() else []
    # Local sockets (the name-service cache, the system log) are no network.
    calls = [line for line in (trace.read_text().splitlines() if trace.exists() else [])
             if re.search(r"AF_INET6?|htons\(53\)", line)]
    return events, calls


def test_caption_and_train_make_no_connection_attempt_and_write_no_telemetry(tmp_path):
    images = sorted((TINY / "images").glob("*.jpg"))[:9]  # 8 or more: auto runs the encoder in ONNX Runtime
    assert len(images) >= 9
    events, calls = _run_offline(["caption", *map(str, images), "--output", str(tmp_path / "preds.jsonl"),
                                  "--runtime", "onnx", "--beam-size", "1"], tmp_path, "caption")
    assert events == [] and calls == [], events + calls
    events, calls = _run_offline(["train", "--data", str(TINY / "captions.csv"), "--out", str(tmp_path / "run"),
                                  "--encoder", "efficientnet_lite0", "--decoder", "show-tell", "--epochs", "1",
                                  "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--val-fraction",
                                  "0.3", "--set", "log_every=0"], tmp_path, "train")
    assert events == [] and calls == [], events + calls
    assert not (tmp_path / "home" / ".cache" / "Microsoft").exists()  # onnxruntime's device id and event store


def test_a_users_choice_is_kept(monkeypatch):
    from captioner.offline import disable_telemetry

    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    disable_telemetry()
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "0" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
