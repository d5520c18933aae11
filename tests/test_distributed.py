"""DDP training equals one process on the union of the ranks' batches.

With DDP each rank trains on its share of a global batch and gradients are averaged, so the
reference is one process with ``batch_size × world`` whose batches are exactly those unions
(``BucketBatchSampler`` guarantees the composition). Two things would otherwise break the
equality: the loss is a mean over tokens, and ranks hold different numbers of tokens
(``rank_weight``); BatchNorm would normalise each rank's share with its own statistics
(``sync_batchnorm``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from captioner.data.loaders import BucketBatchSampler
from captioner import distributed as dist_utils
from captioner.train.batchnorm import sync_batchnorm

from conftest import TINY


@pytest.mark.parametrize("n", [7, 33, 401])
def test_ranks_batches_are_the_single_process_batches_split(n):
    lengths = np.random.default_rng(n).integers(3, 21, n)
    per_rank = [list(BucketBatchSampler(lengths, 4, seed=1, rank=r, world_size=2, pool=3)) for r in range(2)]
    single = list(BucketBatchSampler(lengths, 8, seed=1, pool=3))
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == len(BucketBatchSampler(lengths, 4, 1, 0, 2, 3))
    for step, batch in enumerate(single):
        shares = [per_rank[r][step] for r in range(2)]
        assert all(len(share) >= 1 for share in shares)
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
    every = np.concatenate([b for batches in per_rank for b in batches])
    assert sorted(every.tolist()) == list(range(n))  # each pair once per epoch, none repeated


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, momentum=0.01), nn.Linear(5, 11))


def _token_mean_loss(model, x, targets):
    """(batch, 6) features and (batch, T) targets with -100 padding, like the caption loss."""
    logits = model(x)[:, None].expand(-1, targets.shape[1], -1)  # (batch, T, 11)
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100), (
        targets != -100
    ).sum()


def _toy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 6, generator=g) * 3 + 1
    targets = torch.randint(0, 11, (7, 5), generator=g)
    for i, length in enumerate([1, 2, 5, 3, 5, 4, 2]):  # ranks get very different token counts
        targets[i, length:] = -100
    return x, targets


def _ddp_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = dist_utils.DistInfo(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    model = sync_batchnorm(_toy_model(), torch.device("cpu"))
    ddp = nn.parallel.DistributedDataParallel(model)
    x, targets = _toy_data()
    share = slice(rank, None, world)
    loss, tokens = _token_mean_loss(ddp, x[share], targets[share])
    (loss * dist_utils.rank_weight(tokens, info, torch.device("cpu"))).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.named_parameters()} | {
            "running_mean": model[1].running_mean, "running_var": model[1].running_var}, result_file)
    dist.destroy_process_group()
    # End without Python's finalisation: a gloo worker thread may still be releasing the last
    # collective's tensors while the interpreter shuts down, and that aborts the process
    # ("terminate called without an active exception"; pytorch/pytorch#190489) — about one
    # run in seven here, after everything above is done and saved.
    os._exit(0)


def test_rank_weight_and_sync_batchnorm_make_ddp_gradients_exact(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "grads.pt")), nprocs=2)
    ddp = torch.load(tmp_path / "grads.pt")
    model = _toy_model()
    x, targets = _toy_data()
    loss, _ = _token_mean_loss(model, x, targets)
    loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(ddp[name], parameter.grad, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(ddp["running_mean"], model[1].running_mean)
    torch.testing.assert_close(ddp["running_var"], model[1].running_var)


def _train(out, batch_size, nproc):
    """Train 3 epochs on the tiny set; returns (per-epoch train losses, last weights)."""
    from safetensors.torch import load_file

    from captioner.cli import main

    args = ["train", "--data", str(TINY / "captions.csv"), "--out", str(out), "--encoder", "efficientnet_lite0",
            "--epochs", "3", "--batch-size", str(batch_size), "--min-word-count", "1", "--device", "cpu",
            "--no-progress", "--set", "log_every=0"]
    if nproc == 1:
        assert main(args) == 0
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "captioner", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r], load_file(str(out / "last" / "model.safetensors"))


# The Linear bias just before BatchNorm has zero gradient in exact arithmetic (BatchNorm
# subtracts the batch mean); Adam turns rounding noise into lr-sized steps there, which
# BatchNorm cancels and its running mean absorbs. Those two differ by noise, not by a bug.
NOISE_ONLY = {"decoder.image_proj.0.bias", "decoder.image_proj.1.running_mean"}


def test_torchrun_two_processes_train_what_one_process_trains_on_the_union(tmp_path):
    """2 ranks × batch 4 ≡ 1 process × batch 8: same per-epoch loss, same weights after 3 epochs
    (33 captions: global batches 8, 8, 8, 9 — the 9 split 5 + 4; real EfficientNet-Lite0 features)."""
    single_losses, single_weights = _train(tmp_path / "single", 8, 1)
    ddp_losses, ddp_weights = _train(tmp_path / "ddp", 4, 2)
    assert len(ddp_losses) == len(single_losses) == 3
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=1e-5)
    assert ddp_weights.keys() == single_weights.keys()
    for name, value in single_weights.items():
        if name not in NOISE_ONLY:
            torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=5e-5, msg=name)
    moved = sum(float((single_weights[k] - v).abs().max()) for k, v in _initial_weights().items())
    assert moved > 1e-3  # it trained: the comparison is not between two untouched models


def _initial_weights():
    """The decoder both runs start from (seed 0, same vocabulary), for the "it trained" check."""
    from captioner.train.config import load_config
    from captioner.train.loop import build_model, prepare_data, seed_everything

    config = load_config(overrides={"data.path": str(TINY / "captions.csv"), "data.min_word_count": 1,
                                    "model.encoder": "efficientnet_lite0"})
    seed_everything(config.seed)
    _, vocab = prepare_data(config, log=lambda *_: None)
    return {f"decoder.{k}": v for k, v in build_model(config, vocab).decoder.state_dict().items()}
