"""Deterministic splits: held-out emoji (new combinations of seen words) and held-out artists."""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable, Sequence

from .names import tokenize

SPLIT_SEED = "captioner-emoji-v1"
SPLITS = ("train", "val", "test")
SPLIT_BY = ("emoji", "image")
# Every image of a held-out artist: a split of its own, so `test` keeps meaning "emoji never seen in
# training, drawn in seen styles" and the two estimates are never mixed in one number.
ARTIST_SPLIT = "test-artist"


def assign_splits(
    captions: Iterable[str], test_fraction: float = 0.1, val_fraction: float = 0.05, seed: str = SPLIT_SEED
) -> dict[str, str]:
    """Caption → split. Whole captions (emoji) are held out, in a fixed hash order, only while every word
    of the held-out caption is still in some training caption; deterministic, no global randomness."""
    unique = sorted(set(captions))
    word_sets = {c: frozenset(tokenize(c)) for c in unique}
    in_train = Counter(w for c in unique for w in word_sets[c])
    order = sorted(unique, key=lambda c: (hashlib.sha256(f"{seed}\0{c}".encode()).hexdigest(), c))
    split = {c: "train" for c in unique}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        target = round(fraction * len(unique))
        picked = 0
        for c in order:
            if picked >= target:
                break
            if split[c] != "train" or not word_sets[c]:
                continue
            if all(in_train[w] >= 2 for w in word_sets[c]):
                split[c] = name
                picked += 1
                for w in word_sets[c]:
                    in_train[w] -= 1
    return split


def split_images(
    captions: Sequence[str],
    artists: Sequence[str],
    *,
    holdout_artists: Iterable[str] = (),
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    seed: str = SPLIT_SEED,
    by: str = "emoji",
) -> list[str]:
    """The split of each image (``captions[i]`` drawn by ``artists[i]``).

    Images by a ``holdout_artists`` artist all go to :data:`ARTIST_SPLIT`. The other images are split by
    :func:`assign_splits` over their own captions only, so train/val/test are exactly what a build without
    the held-out artists would give, and a held-out artist's emoji is seen in training in other styles
    unless it is a held-out emoji.

    ``by="image"`` (the shipped model's split: every emoji trains) holds out single drawings instead of
    whole emoji — at most one image of an emoji, and only of an emoji drawn by another artist too, so
    val/test measure a known emoji in an unseen drawing, the situation a new artist's art is in.
    """
    if len(captions) != len(artists):
        raise ValueError(f"{len(captions)} captions but {len(artists)} artists")
    if by not in SPLIT_BY:
        raise ValueError(f"split by {by!r}: expected one of {', '.join(SPLIT_BY)}")
    held = frozenset(holdout_artists)
    if by == "image":
        return _split_drawings(captions, artists, held, test_fraction, val_fraction, seed)
    caption_split = assign_splits(
        (c for c, a in zip(captions, artists) if a not in held), test_fraction, val_fraction, seed
    )
    return [ARTIST_SPLIT if a in held else caption_split[c] for c, a in zip(captions, artists)]


def _split_drawings(captions, artists, held, test_fraction, val_fraction, seed) -> list[str]:
    """``split_images(by="image")``: single drawings into test then val, in a fixed hash order."""
    rest = [i for i, a in enumerate(artists) if a not in held]
    left = Counter(captions[i] for i in rest)  # drawings of each emoji still in train
    order = sorted(rest, key=lambda i: hashlib.sha256(f"{seed}\0{artists[i]}\0{captions[i]}".encode()).hexdigest())
    split = [ARTIST_SPLIT if a in held else "train" for a in artists]
    taken: set[str] = set()
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        target, picked = round(fraction * len(rest)), 0
        for i in order:
            if picked >= target:
                break
            if split[i] == "train" and captions[i] not in taken and left[captions[i]] >= 2:
                split[i] = name
                taken.add(captions[i])
                left[captions[i]] -= 1
                picked += 1
    return split
