"""WebDataset shards: tar files of samples, the layout img2dataset writes.

A shard ``00000.tar`` holds each sample as files sharing a key — ``000001.jpg``,
``000001.txt``, ``000001.json`` — one after another. A key is the member name up to the
first dot of its last component, the rest is the suffix (webdataset's own rule). Shard lists
are brace patterns, ``'shards/{00000..00099}.tar'``.

Read with ``tarfile``, not the ``webdataset`` package: captioner needs every sample's shard
and key for its reports and resumes, whole shards per rank in a fixed order, and errors that
name the sample, which that pipeline hides behind handlers and worker splitting.

A sample in a training set is an :class:`~captioner.data.sources.Example` whose ``path`` is
its shard and ``image_id`` its key; the pair, ``"SHARD#KEY"`` (:func:`sample_ref`), stands
for the image wherever training lists images (feature-cache rows, pixel batches).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset

from ..errors import CaptionerError, InvalidInputError
from .examples import SHARD_ERROR, SHARD_SUFFIX, Example, sample_ref, split_ref
from .images import (DEFAULT_IMAGE_LIMITS, ImageLimits, ImageReadError, ImageTooLargeError, PreprocessConfig,
                     build_transform, load_image)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the image of a sample: the first of these it has
_KEY_RULE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICES = re.compile(r"\{([^{}]*,[^{}]*)\}")


class ShardError(CaptionerError, ValueError):
    """A shard that is missing or cannot be read as a tar file; the message names it."""


# --- shard lists ---------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """``'a/{00000..00002}.tar'`` → ``a/00000.tar a/00001.tar a/00002.tar``; ``{x,y}`` lists
    too; several braces multiply, the leftmost varying slowest (as ``braceexpand``). A range
    keeps the zero padding of its first bound."""
    found = [m for m in (_RANGE.search(pattern), _CHOICES.search(pattern)) if m]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())
    if match.re is _RANGE:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(number).zfill(width) for number in range(int(first), int(last) + step, step)]
    else:
        choices = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]




def expand_shards(patterns: Sequence[str] | str) -> list[str]:
    """Shard files named by brace patterns or globs, in order, each once. A shard that does
    not exist is an error that names it (a typo in a range should not train on less)."""
    shards: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for name in expand_braces(str(pattern)):
            matches = sorted(glob.glob(name)) if glob.has_magic(name) else [name]
            for shard in matches:
                if not Path(shard).is_file():
                    raise ShardError(f"shard not found: {shard} (from {pattern})")
                if not shard.endswith(SHARD_SUFFIX):  # samples are named SHARD.tar#KEY
                    raise ShardError(f"{shard}: WebDataset shards are uncompressed tar files ending in "
                                     f"{SHARD_SUFFIX}; rename or unpack it")
                if shard not in shards:
                    shards.append(shard)
    if not shards:
        raise ShardError(f"no shards match {patterns}")
    return shards








# --- samples -------------------------------------------------------------------------
@dataclass
class Sample:
    """One sample of a shard: its ``key`` and its files by suffix (``{"jpg": b"...", "txt": b"..."}``);
    ``refused``: why members over ``ImageLimits.max_file_bytes`` were left unread, by suffix."""

    shard: str
    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``SHARD#KEY``: how errors and reports name the sample."""
        return sample_ref(self.shard, self.key)

    def image_bytes(self) -> Optional[bytes]:
        """The sample's image: the first of ``IMAGE_EXTENSIONS`` it has, or None. Raises
        ``ImageTooLargeError`` when that member was too large to be read."""
        for extension in IMAGE_EXTENSIONS:
            if extension in self.refused:
                raise ImageTooLargeError(f"{self.name}: {self.refused[extension]}")
            if extension in self.files:
                return self.files[extension]
        return None

    def captions(self, caption_key: Optional[str] = None) -> list[str]:
        """The captions: the ``.txt`` file (one caption), or with ``caption_key`` that key of
        the ``.json`` file (a string or a list of strings). Missing ones give ``[]``."""
        if caption_key:
            if "json" not in self.files:
                return []
            try:
                value = json.loads(self.files["json"].decode("utf-8")).get(caption_key)
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                return []
            values = value if isinstance(value, list) else [value]
            return [v for v in values if isinstance(v, str)]
        if "txt" not in self.files:
            return []
        return [self.files["txt"].decode("utf-8", errors="replace").strip()]

    def image(self) -> Image.Image:
        """The sample's image as RGB, through the same ``load_image`` as image files; raises
        ``ImageReadError`` naming ``SHARD#KEY``."""
        data = self.image_bytes()
        if data is None:
            raise ImageReadError(f"{self.name}: no image (none of {', '.join('.' + e for e in IMAGE_EXTENSIONS)})")
        return decode_image(data, self.name)


def decode_image(data: bytes, name: str) -> Image.Image:
    """Image bytes → RGB through ``load_image`` (sized from the header before decoding, like a
    file); ``ImageReadError`` naming ``name`` when they are no image, a corrupt or an oversized one."""
    return load_image(data, name=name)


def iter_samples(shard: str, suffixes: Optional[Iterable[str]] = None,
                 limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Iterator[Sample]:
    """The samples of one shard in tar order. ``suffixes``: read only these files' bytes
    (the others are seeked over: reading captions never reads the images). A member is held
    in memory whole, so one over ``limits.max_file_bytes`` (a sparse 2 GB ``.jpg`` in a 61 KB
    shard) is not read: ``Sample.refused`` says why.

    Raises ``ShardError`` for a file that is not a tar and — after yielding every sample
    before the damage — for one that is cut off or damaged: a member whose data runs past the
    end of the file (read or seeked over), or an archive that does not end in its end-of-archive
    block (tarfile itself stops there silently)."""
    wanted = set(suffixes) if suffixes is not None else None
    current: Optional[Sample] = None
    complete = 0

    def damaged(where: str) -> ShardError:
        whole = f"{complete} whole sample{'' if complete == 1 else 's'}"
        return ShardError(f"{shard}: cut off or damaged {where} after {whole}; the rest of the shard cannot be read "
                          "(rewrite it)")

    try:
        with open(shard, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
            end = os.fstat(file.fileno()).st_size
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY_RULE.match(member.name)
                if not match:
                    continue  # no suffix: not part of a sample
                key, suffix = match.group(1), match.group(2).lower()
                if key.startswith("./"):
                    key = key[2:]
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                        complete += 1
                    current = Sample(shard, key)
                if not member.issparse() and member.offset_data + member.size > end:
                    raise damaged(f"in {member.name}")
                if wanted is not None and suffix not in wanted:
                    continue
                if member.size > limits.max_file_bytes:
                    current.refused[suffix] = (f"its .{suffix} member is {member.size:,} bytes, over the limit of "
                                               f"{limits.max_file_bytes:,} (max_file_bytes); not read")
                else:
                    current.files[suffix] = tar.extractfile(member).read()
            file.seek(tar.offset)
            if file.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
                raise damaged("at its end")  # the last sample may have had more members: not yielded
    except (tarfile.TarError, EOFError, OSError) as e:
        if current is not None:
            raise damaged(f"({e})") from None
        raise ShardError(f"{shard}: not a readable tar shard ({e}); rewrite or remove it") from None
    if current is not None:
        yield current


# --- datasets --------------------------------------------------------------------------
def read_webdataset(
    patterns: Sequence[str] | str,
    caption_key: Optional[str] = None,
    val_shards: Sequence[str] | str | None = None,
    val_fraction: float = 0.0,
):
    """The examples of these shards (and of ``val_shards``, all in split ``val``), captions
    read, images not. Without ``val_shards``, ``val_fraction`` puts samples in val by a hash
    of their key: the same samples whatever the shard order or count of ranks. A shard that is
    cut off or unreadable keeps the samples before the damage and adds one example standing
    for the damage (its ``metadata[SHARD_ERROR]`` says what), which validation reports."""
    train_shards = expand_shards(patterns)
    held_out = expand_shards(val_shards) if val_shards else []
    caption_files = ["json"] if caption_key else ["txt"]
    examples = []
    for shard in train_shards + [s for s in held_out if s not in train_shards]:
        split = "val" if shard in held_out else "train"
        try:
            for sample in iter_samples(shard, caption_files):
                if split == "train" and not held_out and val_fraction > 0 and _key_fraction(sample.key) < val_fraction:
                    example_split = "val"
                else:
                    example_split = split
                examples.append(Example(sample.key, Path(shard), sample.captions(caption_key), example_split))
        except ShardError as e:  # the samples before the damage stay; validation reports it like a bad image
            examples.append(Example("", Path(shard), [], split, {SHARD_ERROR: str(e)}))
    return examples


def _key_fraction(key: str) -> float:
    """A key's place in [0, 1), from its hash: a stable split that needs no shuffling."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def check_images(examples, problems) -> None:
    """Decode the image of every shard example (one pass per shard, up to its last example) and
    add what fails to ``problems`` as ``SHARD#KEY: cause``; a key the shard lacks is ``missing``."""
    by_shard: dict[str, set[str]] = {}
    for example in examples:
        by_shard.setdefault(str(example.path), set()).add(example.image_id)
    for shard, keys in by_shard.items():
        found = set()
        try:
            for sample in iter_samples(shard):
                if sample.key not in keys:
                    continue
                found.add(sample.key)
                try:
                    sample.image()
                except ImageReadError as e:
                    problems.unreadable.append(str(e))
                    problems.bad_paths.add(sample.name)
                if found == keys:
                    break  # the rest of the shard holds none of them
        except ShardError as e:  # changed since its captions were read: its missing keys are named below
            problems.unreadable.append(str(e))
        for key in sorted(keys - found):
            problems.missing.append(sample_ref(shard, key))
            problems.bad_paths.add(sample_ref(shard, key))


class ShardImages(IterableDataset):
    """Preprocessed pixels of shard samples named by ``SHARD#KEY`` refs: ``(pixels, index)``
    in the order of ``refs``, streaming each shard once per run of refs into it. Samples were
    checked beforehand (``check_images``), so a bad one raises here."""

    def __init__(self, refs: Sequence[str], preprocess: PreprocessConfig):
        self.refs = list(refs)
        self.transform = build_transform(preprocess)

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self):
        for shard, positions in _runs_by_shard(self.refs):
            wanted = {split_ref(self.refs[i])[1]: i for i in positions}
            pending: dict[int, Sample] = {}
            order = iter(positions)
            next_index = next(order, None)
            for sample in iter_samples(shard):
                if sample.key in wanted:
                    pending[wanted[sample.key]] = sample
                while next_index is not None and next_index in pending:  # yield in the refs' order
                    yield self.transform(pending.pop(next_index).image()), next_index
                    next_index = next(order, None)
                if next_index is None:
                    break  # a shard cut off after its last wanted sample was skipped with --skip-invalid
            if next_index is not None:
                raise ImageReadError(f"{self.refs[next_index]}: not in its shard")


class ShardSamples(IterableDataset):
    """Every sample of these shards for batch captioning, in shard and tar order, except
    ``skip_keys``: ``(pixels or None, (shard index, position in shard, key), error or None)``
    — a bad image is an error item, never a stopped batch (batch with ``collate_with_errors``);
    so is a damaged shard (key ``None``, after the samples read before the damage).
    DataLoader workers take whole shards each."""

    def __init__(self, shards: Sequence[str], preprocess: PreprocessConfig, skip_keys: Collection[str] = ()):
        self.shards = list(shards)
        self.transform = build_transform(preprocess)
        self.skip_keys = skip_keys

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for index in range(first, len(self.shards), step):
            position = 0
            try:
                for position, sample in enumerate(iter_samples(self.shards[index])):
                    if sample.key in self.skip_keys:
                        continue
                    item = (index, position, sample.key)
                    try:
                        yield self.transform(sample.image()), item, None
                    except ImageReadError as e:
                        yield None, item, str(e)
            except ShardError as e:  # reported like a bad image; the samples before it and later shards go on
                yield None, (index, position + 1, None), str(e)


def _runs_by_shard(refs: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Consecutive refs into the same shard, as (shard, their positions)."""
    runs: list[tuple[str, list[int]]] = []
    for i, ref in enumerate(refs):
        shard = split_ref(ref)[0]
        if runs and runs[-1][0] == shard:
            runs[-1][1].append(i)
        else:
            runs.append((shard, [i]))
    return runs


def shard_runs(refs: Sequence[str]) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive refs into one shard: the feature cache's
    chunks for a shard dataset, so that it is written and resumed shard by shard."""
    runs, start = [], 0
    for _, positions in _runs_by_shard(refs):
        runs.append((start, start + len(positions)))
        start += len(positions)
    return runs


class ShardPairStream:
    """Training pairs of a shard dataset streamed shard by shard: each rank reads its own
    shards (every world-th, shuffled per epoch), pairs pass a shuffle buffer, and batches of
    ``batch_size`` come out as ``(pixels, pair indices)``.

    Every rank takes the same number of batches per epoch (what the rank with the fewest
    pairs can fill; DDP steps together), so an epoch may leave a few pairs out, others each
    epoch. ``refs`` are the training images (``SHARD#KEY``), ``image_rows`` each pair's
    image (the ``CaptionPairs`` rows).
    """

    def __init__(self, refs: Sequence[str], image_rows: np.ndarray, preprocess: PreprocessConfig, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, buffer_size: int = 1000):
        self.transform = build_transform(preprocess)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.buffer_size = buffer_size
        self.epoch = 0
        pairs_of: dict[str, dict[str, list[int]]] = {}
        for pair, row in enumerate(image_rows):
            shard, key = split_ref(refs[row])
            pairs_of.setdefault(shard, {}).setdefault(key, []).append(pair)
        self.pairs_of = pairs_of
        self.shards = list(pairs_of)
        if len(self.shards) < world_size:
            raise InvalidInputError(f"{len(self.shards)} training shards cannot be shared by {world_size} processes: "
                             "each process reads its own shards; write more, smaller shards")
        counts = [sum(len(p) for s in self.shards[r::world_size] for p in pairs_of[s].values())
                  for r in range(world_size)]
        self.batches_per_epoch = min(counts) // batch_size
        if self.batches_per_epoch == 0:
            raise InvalidInputError(f"a process's shards hold {min(counts)} training captions, fewer than one batch "
                             f"of {batch_size}: lower --batch-size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        rng = np.random.default_rng((self.seed, self.epoch, self.rank))
        mine = self.shards[self.rank :: self.world_size]
        mine = [mine[i] for i in rng.permutation(len(mine))]
        batch: list[tuple[torch.Tensor, int]] = []
        emitted = 0
        for sample, pair in self._shuffled(mine, rng):
            batch.append((self.transform(sample.image()), pair))
            if len(batch) == self.batch_size:
                yield torch.stack([p for p, _ in batch]), np.array([i for _, i in batch])  # (batch, 3, H, W)
                batch, emitted = [], emitted + 1
                if emitted == self.batches_per_epoch:
                    return

    def _shuffled(self, shards: list[str], rng) -> Iterator[tuple[Sample, int]]:
        """(sample, pair index) through a buffer of ``buffer_size``: each new pair replaces a
        random one, which goes out (the webdataset shuffle)."""
        buffer: list[tuple[Sample, int]] = []
        for shard in shards:
            wanted = self.pairs_of[shard]
            unseen = set(wanted)
            for sample in iter_samples(shard):
                if not unseen:
                    break  # nothing more to read here (a shard cut off later was kept by --skip-invalid)
                unseen.discard(sample.key)
                for pair in wanted.get(sample.key, ()):
                    if len(buffer) < self.buffer_size:
                        buffer.append((sample, pair))
                        continue
                    i = int(rng.integers(len(buffer)))
                    buffer[i], out = (sample, pair), buffer[i]
                    yield out
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))


def write_shards(samples: Iterable[tuple[str, dict[str, bytes]]], pattern: str, per_shard: int) -> list[str]:
    """Write (key, {suffix: bytes}) samples as shards of ``per_shard`` samples; ``pattern``
    has one ``{}`` for the shard number (``out/{:05d}.tar``). Returns the shard files."""
    shards, tar, count = [], None, 0
    try:
        for key, files in samples:
            if tar is None or count == per_shard:
                if tar is not None:
                    tar.close()
                shards.append(pattern.format(len(shards)))
                Path(shards[-1]).parent.mkdir(parents=True, exist_ok=True)
                tar, count = tarfile.open(shards[-1], "w"), 0
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            count += 1
    finally:
        if tar is not None:
            tar.close()
    return shards
