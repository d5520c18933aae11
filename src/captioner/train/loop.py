"""The training loop: read data → vocabulary → model → (feature cache) → epochs of
teacher-forced training, each followed by validation on *generated* captions."""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..cache import cache_root
from ..data.feature_cache import FeatureCache
from ..data.images import PreprocessConfig
from ..data.loaders import BucketBatchSampler, CaptionPairs, PixelPairs
from ..data.sources import DatasetError, drop_invalid, read_dataset, split_examples, validate_examples
from ..data.vocab import Vocabulary
from ..decoders.base import Features
from ..device import resolve_device
from ..model import Captioner
from ..objectives import CaptionCrossEntropy
from . import distributed as dist_utils
from .config import TrainConfig, save_config
from .state import RunFiles, load_training_state, save_training_state
from .validation import validate


@dataclass
class Progress:
    """Where training stands; saved with the training state for ``--resume``."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already trained (mid-epoch resume)
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C / SIGTERM after its state was saved."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(config: TrainConfig, log=print):
    """Read and validate the dataset (before any heavy work) and build the vocabulary."""
    examples = read_dataset(
        config.data.path, config.data.images, config.data.format, config.data.val_fraction, seed=config.seed
    )
    problems = validate_examples(examples)
    if problems:
        if not config.data.skip_invalid:
            raise DatasetError(
                f"{config.data.path} has problems:\n{problems.report()}\n"
                "Fix them, or pass --skip-invalid to train on the valid examples only."
            )
        before = len(examples)
        examples = drop_invalid(examples, problems)
        log(f"skipped {before - len(examples)} invalid examples:\n{problems.report()}")
    train = split_examples(examples, "train")
    if not train:
        raise DatasetError(f"{config.data.path}: no training examples (splits found: {sorted({e.split for e in examples})})")
    vocab = Vocabulary.build((c for e in train for c in e.captions), config.data.min_word_count)
    return examples, vocab


def build_model(config: TrainConfig, vocab: Vocabulary) -> Captioner:
    m = config.model
    model = Captioner.build(
        m.encoder,
        m.decoder,
        vocab,
        encoder_options={"pretrained": m.pretrained, "trainable_blocks": m.trainable_blocks},
        decoder_options=m.decoder_options,
        max_length=config.data.max_length,
    )
    if m.preprocess:
        model.preprocess = PreprocessConfig(**{**model.encoder.default_preprocess.to_dict(), **m.preprocess})
    if m.word_vectors:
        from ..data.word_vectors import load_word_vectors

        load_word_vectors(model.decoder.embedding, vocab, m.word_vectors, freeze=m.freeze_word_vectors)
    return model


class FeatureBatches:
    """Batches of (cached features, captions) — the frozen-encoder path, no pixels read."""

    def __init__(self, cache: FeatureCache, pairs: CaptionPairs, sampler: BucketBatchSampler, device):
        self.cache, self.pairs, self.sampler, self.device = cache, pairs, sampler, device

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for indices in self.sampler:
            pooled, grid = self.cache.rows(self.pairs.image_rows[indices])
            features = Features(
                pooled.to(self.device, non_blocking=True),
                grid.to(self.device, non_blocking=True) if grid is not None else None,
            )
            yield features, self.pairs.captions(indices).to(self.device, non_blocking=True)


class PixelBatches:
    """Batches of (augmented pixels, captions) — the fine-tuning path."""

    def __init__(self, paths, pairs, preprocess, sampler, device, num_workers):
        self.pairs, self.sampler, self.device = pairs, sampler, device
        self.loader = DataLoader(
            PixelPairs(paths, pairs, preprocess, train=True),
            batch_sampler=sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for pixels, indices in self.loader:
            captions = self.pairs.captions(indices.numpy())
            yield pixels.to(self.device, non_blocking=True), captions.to(self.device, non_blocking=True)


def make_optimizer(model: Captioner, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": config.optim.lr}]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.optim.encoder_lr})
    return torch.optim.Adam(groups, weight_decay=config.optim.weight_decay)


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    o = config.optim
    total = max(1, steps_per_epoch * config.epochs)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if o.schedule == "step":
            return warm * o.gamma ** (step // max(1, steps_per_epoch * o.step_size))
        if o.schedule == "constant":
            return warm
        raise ValueError(f"optim.schedule must be constant, cosine or step, got {o.schedule!r}")

    factor(0)  # fail now on a bad schedule name, not after an epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model, objective, batches, optimizer, scheduler, config, progress, run, info, device):
    """One pass over the training pairs; returns (mean loss, tokens seen)."""
    model.train()
    use_amp = config.amp and device.type == "cuda"
    total_loss, total_tokens = 0.0, 0
    from tqdm import tqdm

    bar = tqdm(total=len(batches), initial=progress.batch_in_epoch, desc=f"epoch {progress.epoch + 1}/{config.epochs}",
               disable=not (config.progress and info.is_main), leave=False)
    for index, (inputs, captions) in enumerate(batches):
        if index < progress.batch_in_epoch:
            continue  # already trained before an interruption
        with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
            loss, ce, tokens = objective(model, inputs, captions)
        if info.enabled:
            # DDP averages ranks' gradients with equal weight; weight each rank's token mean
            # by its share of the global batch's tokens so the update is one process's.
            loss = loss * dist_utils.token_weight(tokens, info)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        progress.step += 1
        progress.batch_in_epoch = index + 1
        n = int(tokens)
        total_loss += float(ce) * n
        total_tokens += n
        bar.set_postfix(loss=f"{float(ce):.3f}", ppl=f"{math.exp(min(float(ce), 20)):.1f}")
        bar.update(1)
        if info.is_main and config.log_every and progress.step % config.log_every == 0:
            run.log({"step": progress.step, "loss": float(ce), "lr": scheduler.get_last_lr()[0]})
        if run.interrupted:
            bar.close()
            raise Interrupted
    bar.close()
    loss_sum, token_sum = dist_utils.all_reduce_sum([total_loss, total_tokens], info)
    return loss_sum / max(token_sum, 1), int(token_sum)


def main(config: TrainConfig, resume: bool = False) -> Path:
    """Train; ``config.out`` ends as a model directory (best model), ``out/last`` beside it."""
    device = resolve_device(config.device)
    info = dist_utils.setup(device)
    seed_everything(config.seed + info.rank)
    run = RunFiles(Path(config.out), info.is_main)
    log = run.print
    restore_signals = lambda: None  # noqa: E731
    try:
        if config.tensorboard:
            run.enable_tensorboard()
        examples, vocab = prepare_data(config, log)
        if resume:
            model, progress = load_training_state(run, config)
            vocab = model.vocab  # the run's vocabulary, even if the data changed since
        else:
            run.check_fresh()
            model = build_model(config, vocab)
            progress = Progress()
        model.to(device)
        if info.is_main:
            save_config(config, run.out / "train_config.yaml")
            save_cider_df(run.out, split_examples(examples, "train"))
        train_examples = split_examples(examples, "train")
        val_examples = split_examples(examples, "val")[: config.val_max_images]
        paths = [str(e.path) for e in train_examples + val_examples]
        train_rows = list(range(len(train_examples)))
        val_rows = list(range(len(train_examples), len(paths)))
        pairs = CaptionPairs(train_examples, train_rows, vocab, config.data.max_length)
        val_pairs = CaptionPairs(val_examples, val_rows, vocab, config.data.max_length) if val_examples else None
        sampler = BucketBatchSampler(pairs.lengths, config.batch_size, config.seed, info.rank, info.world_size)
        cache = None
        if model.encoder.frozen:
            cache = FeatureCache(
                config.data.feature_cache or cache_root("features"), model.encoder, model.preprocess, paths,
                with_grid=model.decoder.needs_grid or config.data.cache_grid,
            )
            cache.build(device, progress=config.progress and info.is_main, num_workers=config.data.num_workers,
                        onnx=config.data.onnx, shard=(info.local_rank, info.local_world_size),
                        barrier=lambda: dist_utils.barrier(info))
            dist_utils.barrier(info)
            cache.open()
            batches = FeatureBatches(cache, pairs, sampler, device)
        else:
            if config.data.onnx:
                raise ValueError("--onnx (data.onnx) extracts a frozen encoder's features; with "
                                 f"trainable_blocks={config.model.trainable_blocks} training reads pixels: drop it")
            batches = PixelBatches(paths, pairs, model.preprocess, sampler, device, config.data.num_workers)
        log(f"train: {len(train_examples)} images, {len(pairs)} captions; val: {len(val_examples)} images; "
            f"vocabulary {len(vocab)}; {model.encoder.name} → {model.decoder.name} on {device}"
            + (f" × {info.world_size} processes" if info.enabled else ""))

        objective = CaptionCrossEntropy(vocab.pad_id, config.optim.label_smoothing)
        if info.enabled:
            dist_utils.sync_batchnorm(model, device)  # BatchNorm statistics over the global batch
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if info.enabled else model
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(batches))
        if resume:
            run.restore_optimizer(optimizer, scheduler)
        bad_epochs = 0
        restore_signals = install_interrupt_handler(run)  # after extraction: Ctrl-C there stops at once
        while progress.epoch < config.epochs:
            sampler.set_epoch(progress.epoch)
            started = time.perf_counter()
            try:
                train_loss, tokens = train_one_epoch(
                    trained, objective, batches, optimizer, scheduler, config, progress, run, info, device
                )
            except Interrupted:
                if info.is_main:
                    save_training_state(run, model, optimizer, scheduler, progress)
                log(f"interrupted: state saved at step {progress.step}; continue with --resume")
                raise
            seconds = time.perf_counter() - started
            progress.epoch += 1
            progress.batch_in_epoch = 0
            stop = False
            if info.is_main:
                record = {"epoch": progress.epoch, "step": progress.step, "train_loss": train_loss,
                          "train_ppl": math.exp(min(train_loss, 50)), "epoch_seconds": seconds,
                          "tokens_per_second": tokens / seconds, "lr": scheduler.get_last_lr()[0]}
                if val_examples:
                    record.update(validate(model, objective, val_examples, val_rows, val_pairs, cache, config, device))
                score = record.get("CIDEr", -record.get("val_loss", train_loss)) if val_examples else -train_loss
                improved = score > progress.best_score
                if improved:
                    progress.best_score, progress.best_epoch = score, progress.epoch
                    model.save_pretrained(run.out)
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                progress.history.append(record)
                run.log(record)
                log(run.summary(record, improved))
                save_training_state(run, model, optimizer, scheduler, progress)
                stop = config.patience > 0 and bad_epochs >= config.patience
                if stop:
                    log(f"early stop: no improvement for {bad_epochs} epochs (best epoch {progress.best_epoch})")
            if info.is_main and (stop or progress.epoch % max(1, config.epochs // 10) == 0
                                 or progress.epoch == config.epochs):
                run.plot(progress.history)  # about ten times a run: a plot costs more than a tiny epoch
            if dist_utils.broadcast_flag(stop, info):
                break
        log(f"done: best model (epoch {progress.best_epoch}) in {run.out}; last in {run.last}")
        return run.out
    finally:
        restore_signals()
        run.close()
        dist_utils.cleanup(info)


def save_cider_df(out: Path, train_examples) -> None:
    """CIDEr-D document frequencies of the training references, saved beside the model
    (``cider_df.json``) for scoring sampled captions as a training reward."""
    from ..io import atomic_write_text
    from ..metrics import CiderD

    path = out / "cider_df.json"
    if not path.exists():
        cider = CiderD.from_corpus([e.captions for e in train_examples])
        atomic_write_text(path, json.dumps(cider.to_dict()))


def install_interrupt_handler(run: RunFiles):
    """First Ctrl-C / SIGTERM: finish the batch, save state, stop. Second: stop now.
    Returns a function that puts the previous handlers back."""

    def handler(signum, frame):
        if run.interrupted:
            sys.exit(130)
        run.interrupted = True

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]


__all__ = ["main", "train_one_epoch", "prepare_data", "build_model", "Progress", "Interrupted"]
