"""Multi-node training: two torchrun launchers (``--nnodes 2``, c10d rendezvous on loopback),
one process each, as two machines would run — each with its own feature cache (a node's
local disk), the run folder shared. It trains the model that one launcher with two
processes trains."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import TINY
from test_distributed import NOISE_ONLY


def _train_args(out) -> list[str]:
    return ["-m", "captioner", "train", "--data", str(TINY / "captions.csv"), "--out", str(out),
            "--encoder", "efficientnet_lite0", "--epochs", "1", "--batch-size", "4", "--min-word-count", "1",
            "--device", "cpu", "--no-progress", "--set", "log_every=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_with_c10d_rendezvous_train_the_two_process_model(tmp_path):
    run = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                  f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=captioner-test"]
    nodes = [subprocess.Popen([*run, *rendezvous, *_train_args(tmp_path / "multi")],
                              env={**env, "CAPTIONER_CACHE": str(tmp_path / f"node{i}-cache")},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert "× 2 processes" in "".join(outputs)

    single = subprocess.run([*run, "--standalone", "--nproc-per-node=2", *_train_args(tmp_path / "single")],
                            env=env, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-2000:]
    multi_weights = load_file(str(tmp_path / "multi" / "last" / "model.safetensors"))
    single_weights = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    assert multi_weights.keys() == single_weights.keys()
    for name, value in single_weights.items():
        if name not in NOISE_ONLY:
            torch.testing.assert_close(multi_weights[name], value, rtol=1e-4, atol=5e-5, msg=name)
