"""The training loop: read data → vocabulary → model (new, or ``--init-from`` a trained one) →
(feature cache) → epochs of training on an objective (teacher-forced cross-entropy by default,
or self-critical), each followed by validation on *generated* captions."""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as dist_utils
from ..cache import cache_root
from ..data.augment import AugmentConfig
from ..data.activation_cache import ActivationCache, TopFeatures
from ..data.batches import ActivationBatches, FeatureBatches, ImageTargets, PixelBatches
from ..data.feature_cache import FeatureCache
from ..data.images import PreprocessConfig
from ..data.loaders import BucketBatchSampler, CaptionPairs
from ..data.sources import (
    DatasetError, drop_invalid, read_dataset, select_languages, split_examples, validate_examples,
)
from ..data.vocab import END, Vocabulary, vocabulary_for
from ..device import resolve_device
from ..distributed import DistInfo
from ..encoders.split import EncoderSplitError
from ..errors import InvalidInputError
from ..model import CONFIG_FILE, Captioner
from ..objectives import Objective, create_objective
from .batchnorm import sync_batchnorm
from .config import TrainConfig, save_config
from .finish import finish_model
from .interrupt import Interrupted, StopRequest, stop_on_signals
from .logs import MetricsLog, epoch_summary, plot_curves
from .retrieval import check_leave_out, check_training_retrieval, training_retrieval
from .state import Progress, RunFolder, save_training_state, start_run
from .validation import validate


def _print(message: str) -> None:
    print(message, flush=True)


def _ignore(*_) -> None:
    """What other ranks than 0 do with messages and records."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(config: TrainConfig, log=print):
    """Read and validate the dataset (before any heavy work) and build the vocabulary."""
    examples = read_dataset(
        config.data.path, config.data.images, config.data.format, config.data.val_fraction, seed=config.seed,
        caption_key=config.data.caption_key, val_shards=config.data.val_shards,
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
    examples = select_languages(examples, config.data.language, config.data.languages or None)
    train = split_examples(examples, "train")
    if not train:
        raise DatasetError(f"{config.data.path}: no training examples (splits found: {sorted({e.split for e in examples})})")
    d = config.data
    vocab = vocabulary_for(train, kind=d.vocabulary, language=d.language, tokenizer=d.tokenizer,
                           min_count=d.min_word_count, vocab_size=d.vocab_size)
    return examples, vocab


def build_model(config: TrainConfig, vocab: Vocabulary) -> Captioner:
    m = config.model
    model = Captioner.build(
        m.encoder,
        m.decoder,
        vocab,
        encoder_options={**m.encoder_options, "pretrained": m.pretrained, "trainable_blocks": m.trainable_blocks},
        decoder_options=m.decoder_options,
        max_length=config.data.max_length,
    )
    if m.preprocess:
        model.preprocess = PreprocessConfig(**{**model.encoder.default_preprocess.to_dict(), **m.preprocess})
    if m.word_vectors:
        from ..data.word_vectors import load_word_vectors

        load_word_vectors(model.decoder.embedding, vocab, m.word_vectors, freeze=m.freeze_word_vectors)
    return model


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
        raise InvalidInputError(f"optim.schedule must be constant, cosine or step, got {o.schedule!r}")

    factor(0)  # fail now on a bad schedule name, not after an epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainContext:
    """What ``train_one_epoch`` works with; fixed for a run (the ``Progress`` it advances is not)."""

    model: nn.Module  # what is trained: the Captioner, DDP-wrapped under torchrun
    objective: Objective
    batches: Iterable  # (inputs, targets) pairs the objective takes, with a len()
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    log: Callable[[dict], None] = _ignore  # step records (rank 0: metrics.jsonl)
    should_stop: Callable[[], bool] = lambda: False  # polled after every batch (Ctrl-C)


def train_one_epoch(ctx: TrainContext, progress: Progress) -> tuple[dict[str, float], int]:
    """One pass over the batches, from ``progress.batch_in_epoch`` on (a resumed epoch skips what
    it trained); advances ``progress``. Returns the objective's logs averaged by weight over the
    epoch and every rank, and that total weight. Raises ``Interrupted`` after the batch in hand
    once ``ctx.should_stop()``."""
    from tqdm import tqdm

    model, objective, config, info = ctx.model, ctx.objective, ctx.config, ctx.dist
    model.train()
    use_amp = config.amp and (ctx.device.type == "cuda" or config.cpu_amp)
    sums, total_weight = dict.fromkeys(objective.log_names, 0.0), 0
    bar = tqdm(total=len(ctx.batches), initial=progress.batch_in_epoch, leave=False,
               desc=f"epoch {progress.epoch + 1}/{config.epochs}", disable=not (config.progress and info.is_main))
    for index, (inputs, targets) in enumerate(ctx.batches):
        if index < progress.batch_in_epoch:
            continue  # already trained before an interruption
        with torch.autocast(ctx.device.type, torch.bfloat16, enabled=use_amp):
            result = objective(model, inputs, targets)
        loss = result.loss
        if info.enabled:
            # DDP averages ranks' gradients with equal weight; weight each rank's mean by its
            # share of the global batch (tokens, images) so the update is one process's.
            loss = loss * dist_utils.rank_weight(result.weight, info, ctx.device)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        ctx.optimizer.step()
        ctx.scheduler.step()
        progress.step += 1
        progress.batch_in_epoch = index + 1
        weight = int(result.weight)
        logs = {key: float(value) for key, value in result.logs.items()}
        for key, value in logs.items():
            sums[key] += value * weight
        total_weight += weight
        bar.set_postfix({key: f"{value:.3f}" for key, value in objective.summarize(logs).items()})
        bar.update(1)
        if config.log_every and progress.step % config.log_every == 0:
            ctx.log({"step": progress.step, **logs, "lr": ctx.scheduler.get_last_lr()[0]})
        if ctx.should_stop():
            bar.close()
            raise Interrupted
    bar.close()
    *log_sums, weight_sum = dist_utils.all_reduce_sum([*sums.values(), total_weight], info)
    return {key: total / max(weight_sum, 1) for key, total in zip(sums, log_sums)}, int(weight_sum)


def main(config: TrainConfig, resume: bool = False) -> Path:
    """Train; ``config.out`` ends as a model directory (best model), ``out/last`` beside it."""
    device = resolve_device(config.device)
    info = dist_utils.setup(device)
    seed_everything(config.seed + info.rank)
    run = RunFolder(Path(config.out))
    say = _print if info.is_main else _ignore  # console messages come from rank 0 only
    metrics = None
    try:
        if info.is_main:
            run.create()
            metrics = MetricsLog(run.metrics_file, run.tensorboard_dir if config.tensorboard else None)
        examples, vocab = prepare_data(config, say)
        train_examples = split_examples(examples, "train")
        val_examples = split_examples(examples, "val")[: config.val_max_images]
        model = None  # a fresh model is built once the objective has accepted the config
        progress = Progress()
        committed = run.committed()
        if resume and config.init_from and committed is not None:
            # the model trained is the one it started from, not the config's defaults
            config = with_model_of(config, json.loads((committed / CONFIG_FILE).read_text(encoding="utf-8")))
        resumed = start_run(run, config, resume, log=say, is_main=info.is_main)
        if resumed is not None:
            model, progress = resumed.model, resumed.progress
        elif config.init_from:
            model = load_init_model(config.init_from, train_examples, config.data.path)
            config = with_model_of(config, model.describe())
            say(f"starting from {config.init_from}: {model.encoder.name} → {model.decoder.name}, "
                f"vocabulary {len(model.vocab)}")
        if model is not None:
            vocab = model.vocab  # a resumed or initial model's vocabulary, even if the data changed since
        objective = create_objective(config.objective, vocab=vocab, config=config,  # a bad one fails here, early
                                     train_captions=[e.captions for e in train_examples])
        if model is None:
            model = build_model(config, vocab)
        model.to(device)
        if trains_channels_last(config, model, device):
            model.encoder.to(memory_format=torch.channels_last)  # saved as contiguous tensors all the same
        if config.retrieval.datastore:  # the field the datastore's users leave out, before any extraction
            check_leave_out(config, train_examples + val_examples)
        if model.decoder.retrieved_shape is not None:  # what it cannot train with, before any extraction
            check_training_retrieval(model, config, train_examples)
        if info.is_main:
            save_config(config, run.config_file)
            save_cider_df(run.out, train_examples, vocab)
        paths = [e.image_ref for e in train_examples + val_examples]
        val_rows = list(range(len(train_examples), len(paths)))
        if objective.rows == "images":
            pairs = ImageTargets(len(train_examples))
        else:
            pairs = CaptionPairs(train_examples, list(range(len(train_examples))), vocab, config.data.max_length)
        val_pairs = CaptionPairs(val_examples, val_rows, vocab, config.data.max_length) if val_examples else None
        epoch_pairs = None
        if config.data.other_languages_per_epoch and objective.rows != "images":
            epoch_pairs = partial(pairs.epoch_pairs, seed=config.seed, other_languages=config.data.other_languages_per_epoch)
        sampler = BucketBatchSampler(pairs.lengths, config.batch_size, config.seed, info.rank, info.world_size,
                                     epoch_pairs=epoch_pairs)
        batches, cache = make_batches(config, model, paths, pairs, sampler, info, device, examples, say)
        if model.decoder.retrieved_shape is not None:  # its datastore, and each pair's retrieved captions
            batches.retrieved = training_retrieval(model, config, cache, train_examples, pairs, say)
        say(f"train: {len(train_examples)} images, {len(pairs)} {objective.rows} a pass; "
            f"val: {len(val_examples)} images; vocabulary {len(vocab)}; "
            f"{model.encoder.name} → {model.decoder.name} on {device}"
            + (f" × {info.world_size} processes" if info.enabled else ""))

        if info.enabled:
            # BatchNorm statistics over the global batch: the decoder's (the encoder's BatchNorm layers,
            # trainable or not, keep their ImageNet statistics: Encoder.train)
            sync_batchnorm(model.decoder, device)
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if info.enabled else model
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(batches))
        if resumed is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
            scheduler.load_state_dict(resumed.scheduler_state)
        stop_request = StopRequest()
        ctx = TrainContext(trained, objective, batches, optimizer, scheduler, config, device, info,
                           log=metrics or _ignore, should_stop=stop_request)
        bad_epochs = 0
        with stop_on_signals(stop_request):  # only now: Ctrl-C during feature extraction stops at once
            while progress.epoch < config.epochs:
                sampler.set_epoch(progress.epoch)
                started = time.perf_counter()
                try:
                    means, weight = train_one_epoch(ctx, progress)
                except Interrupted:
                    if info.is_main:
                        save_training_state(run, model, optimizer, scheduler, progress)
                    say(f"interrupted: state saved at step {progress.step}; continue with --resume")
                    raise
                seconds = time.perf_counter() - started
                progress.epoch += 1
                progress.batch_in_epoch = 0
                stop = False
                if info.is_main:
                    record = {"epoch": progress.epoch, "step": progress.step,
                              **{f"train_{key}": value for key, value in objective.summarize(means).items()},
                              "epoch_seconds": seconds, f"{objective.weight_unit}_per_second": weight / seconds,
                              "lr": scheduler.get_last_lr()[0]}
                    if val_examples:
                        record.update(validate(model, val_examples, val_rows, val_pairs, cache, config, device))
                    # Generated captions' CIDEr-D choose the best model; without them, the objective says.
                    score = record["CIDEr"] if "CIDEr" in record else objective.best_model_score(means)
                    improved = score > progress.best_score
                    if improved:
                        progress.best_score, progress.best_epoch = score, progress.epoch  # saved below
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                    progress.history.append(record)
                    metrics(record)
                    say(epoch_summary(record, improved))
                    save_training_state(run, model, optimizer, scheduler, progress)
                    stop = config.patience > 0 and bad_epochs >= config.patience
                    if stop:
                        say(f"early stop: no improvement for {bad_epochs} epochs (best epoch {progress.best_epoch})")
                # About ten plots a run: a plot costs more than a tiny epoch.
                if info.is_main and (stop or progress.epoch % max(1, config.epochs // 10) == 0
                                     or progress.epoch == config.epochs):
                    plot_curves(progress.history, run.curves_file)
                if dist_utils.broadcast_flag(stop, info):
                    break
        if info.is_main and progress.best_epoch > 0:  # the best model: its datastore and confidence
            finish_model(run.out, device, train_examples, val_examples, config, cache, say)
        say(f"done: best model (epoch {progress.best_epoch}) in {run.out}; last in {run.last}")
        return run.out
    finally:
        if metrics is not None:
            metrics.close()
        dist_utils.cleanup(info)


def make_batches(config: TrainConfig, model: Captioner, paths: list[str], pairs: CaptionPairs,
                 sampler: BucketBatchSampler, info: DistInfo, device: torch.device, examples=(), log=print):
    """The training batches, and what validation reads features from (``None``: pixels).

    A frozen encoder's features are extracted once into the cache (each machine's ranks share
    the work) and read from there, for the val images too. A fine-tuned encoder is cut before
    its first trainable stage: the frozen stages' output is extracted once into an activation
    cache, and the model runs its top stages on it (``data.cache_activations``; an encoder that
    cannot be cut, or ``false``, reads pixels every step). ``paths``: the cache rows (training
    images, then validation images); ``examples``: the whole dataset, whose images get augmented
    views (``data.augment_views``) in one cache any re-split of the same dataset reuses
    (held-out artists, another validation split); pixel batches make the same views.
    """
    count = config.data.augment_views
    augment = AugmentConfig.from_dict(config.data.augment) if count else None
    dataset_paths = [e.image_ref for e in examples]
    position = {ref: i for i, ref in enumerate(dataset_paths)}
    positions = np.array([position[ref] for ref in paths], dtype=np.int64) if count else None
    split = None
    if not model.encoder.frozen:
        split = encoder_split_for(config, model, log)
        if split is None:
            if config.data.runtime == "onnx":
                raise InvalidInputError("--runtime onnx (data.runtime) runs what is frozen of the encoder, extracted "
                                        f"once; with trainable_blocks={config.model.trainable_blocks} and no activation "
                                        "cache, training reads pixels through the whole encoder: drop it")
            return PixelBatches(paths, pairs, model.preprocess, sampler, device, config.data.num_workers,
                                config.data.shuffle_buffer, augment, count, len(dataset_paths), positions), None

    def extracted(cache_paths: list[str], augment: AugmentConfig | None = None) -> FeatureCache:
        root = config.data.feature_cache or cache_root("features")
        if split is not None:
            cache = ActivationCache(root, model.encoder, split, model.preprocess, cache_paths, augment=augment)
        else:
            cache = FeatureCache(root, model.encoder, model.preprocess, cache_paths,
                                 with_grid=model.decoder.needs_grid or config.data.cache_grid, augment=augment)
        cache.build(device, progress=config.progress and info.is_main, num_workers=config.data.num_workers,
                    runtime=config.data.runtime, shard=(info.local_rank, info.local_world_size),
                    barrier=lambda: dist_utils.barrier(info))
        dist_utils.barrier(info)
        return cache.open()

    cache = extracted(paths)
    views = extracted(dataset_paths * count, augment) if count else None
    if split is not None:
        return (ActivationBatches(cache, pairs, sampler, device, split.stage, views, count, positions),
                TopFeatures(cache, model))
    return FeatureBatches(cache, pairs, sampler, device, views, count, positions), cache


def trains_channels_last(config: TrainConfig, model: Captioner, device: torch.device) -> bool:
    """Whether the encoder trains in NHWC layout (``config.channels_last``; unset: a fine-tuned
    encoder on the CPU). A frozen encoder runs only while features are extracted, in its own mode."""
    if model.encoder.frozen:
        return False
    return config.channels_last if config.channels_last is not None else device.type == "cpu"


def encoder_split_for(config: TrainConfig, model: Captioner, log=print):
    """The fine-tuned encoder cut before its first trainable stage, whose frozen stages' output
    training caches; ``None`` (read pixels) when ``data.cache_activations`` is off or the encoder
    cannot be cut there (said once, with the reason)."""
    if not config.data.cache_activations:
        return None
    try:
        return model.encoder_split(len(model.encoder.stage_members()) - model.encoder.config.trainable_blocks)
    except EncoderSplitError as e:
        log(f"training reads pixels every step: {e}")
        return None


def save_cider_df(out: Path, train_examples, vocab: Vocabulary) -> None:
    """CIDEr-D document frequencies of the training references, saved beside the model
    (``cider_df.json``) for scoring sampled captions as a training reward: from the references
    split by the vocabulary's word tokenizer with ``<end>`` appended (``reward_references``), as its
    header says."""
    from ..io import atomic_write_text
    from ..objectives import reward_document_frequencies

    path = out / "cider_df.json"
    if not path.exists():
        cider, _ = reward_document_frequencies([e.captions for e in train_examples], vocab.tokenize)
        tokenizer = vocab.tokenizer_of()
        header = {"references": f"split into words by the {tokenizer!r} tokenizer (captioner.data.language), "
                                "lower case, punctuation removed, with <end> appended",
                  "tokenizer": tokenizer, "end_token": END}
        atomic_write_text(path, json.dumps({**header, **cider.to_dict()}))


# --init-from refuses data whose training references have more unknown words than this share
# (a model trained on these data misses only its rare words, a few percent at min_word_count 4).
MAX_UNKNOWN_WORD_SHARE = 0.05


def load_init_model(directory: str, train_examples, data_path) -> Captioner:
    """The model to start from (``--init-from``), checked to know the words of the training
    references: their captions are mapped with its vocabulary."""
    model = Captioner.from_pretrained(directory)
    vocab = model.vocab
    unknown, total = vocab.unknown_words((c, lang) for e in train_examples
                                         for c, lang in zip(e.captions, e.caption_languages(vocab.default_language)))
    share = sum(unknown.values()) / max(total, 1)
    if share > MAX_UNKNOWN_WORD_SHARE:
        examples = ", ".join(repr(w) for w, _ in unknown.most_common(8))
        raise InvalidInputError(
            f"--init-from {directory}: its vocabulary ({len(model.vocab)} words) does not cover {data_path}: "
            f"{share:.0%} of the training references' words are unknown to it (at most "
            f"{MAX_UNKNOWN_WORD_SHARE:.0%}), e.g. {examples}; start from a model trained on these data"
        )
    return model


def with_model_of(config: TrainConfig, described: dict) -> TrainConfig:
    """``config`` recording the model it trains (``--init-from``'s, as its config.json describes
    it), so the run's config and ``--resume`` describe what is trained."""
    return replace(config, model=replace(
        config.model, encoder=described["encoder"]["name"], decoder=described["decoder"]["name"],
        decoder_options=described["decoder"]["options"], preprocess=described["preprocess"],
    ))


__all__ = ["main", "train_one_epoch", "TrainContext", "prepare_data", "build_model", "load_init_model"]
