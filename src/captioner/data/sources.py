"""Dataset readers: every captions format people have, read into one in-memory form.

Supported formats (detected from content, overridable with ``fmt``):

- ``coco``: COCO captions JSON (``images[]`` + ``annotations[]``) with an image root;
- ``karpathy``: Karpathy split JSON (``images[].filepath/filename/split/sentences[].raw``);
- ``flickr8k``: ``Flickr8k.token.txt`` (``name.jpg#0<TAB>caption``), optional split lists;
- ``csv`` / ``jsonl``: one row per caption with ``image`` and ``caption`` columns
  (an optional ``split`` column);
- ``webdataset``: tar shards named by a brace pattern (``'shards/{00000..00099}.tar'``),
  detected from the ``.tar`` suffix (see :mod:`captioner.data.webdataset`).

A caption's language, where the dataset gives one: a ``language`` column (CSV/TSV/JSON lines), a
``language`` field of a COCO annotation or of a Karpathy sentence (``"language": "ja"``). Captions
without one are in the dataset's language (``data.language``, English by default);
:func:`select_languages` fills those in and keeps the languages asked for.
"""
from __future__ import annotations

import csv
import json
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable
from pathlib import Path

from .examples import SHARD_ERROR, Example
from .images import ImageReadError, verify_image
from .language import normalize_language

from ..errors import CaptionerError, InvalidInputError

FORMATS = ("coco", "karpathy", "flickr8k", "csv", "jsonl", "webdataset")
SPLITS = ("train", "val", "test")


@dataclass
class DatasetProblems:
    """What validation found; reported all at once before any heavy work."""

    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    bad_paths: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unreadable or self.empty_captions or self.duplicate_ids)

    def report(self, limit: int = 20) -> str:
        lines = []
        for label, items in (
            ("missing image files", self.missing),
            ("unreadable images", self.unreadable),
            ("images with an empty caption", self.empty_captions),
            ("duplicate image ids", self.duplicate_ids),
        ):
            if items:
                lines.append(f"{len(items)} {label}:")
                lines.extend(f"  {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


class DatasetError(CaptionerError, ValueError):
    """A dataset file that cannot be used as it is; the message says what to fix."""


def detect_format(path: Path) -> str:
    """Guess the captions format from the file's content."""
    path = Path(path)
    with open(path, "r", encoding="utf-8") as f:
        head = f.read(4096)
    stripped = head.lstrip()
    if stripped.startswith("{"):
        # One JSON document (COCO / Karpathy) or JSON lines (each line an object).
        first_line = stripped.splitlines()[0].strip()
        try:
            obj = json.loads(first_line)
            if isinstance(obj, dict) and "caption" in obj:
                return "jsonl"
        except json.JSONDecodeError:
            pass
        if '"annotations"' in head or '"annotations"' in _read_text(path):
            return "coco"
        return "karpathy"
    first = stripped.splitlines()[0] if stripped else ""
    if "#" in first.split("\t")[0] and "\t" in first:
        return "flickr8k"
    if "," in first or "\t" in first:
        return "csv"
    raise DatasetError(
        f"cannot tell the format of {path}: expected COCO/Karpathy JSON, JSON lines, "
        f"Flickr8k token text or CSV; pass --format one of {', '.join(FORMATS)}"
    )


def _read_text(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def _load_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def _language(value, path: Path, where: str) -> str | None:
    """A caption's ``language`` field: a checked language code, or None when empty or absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return normalize_language(value, f"{path}: {where}")
    except InvalidInputError as e:
        raise DatasetError(str(e)) from None


def _add_caption(example: Example, caption: str, language: str | None) -> None:
    """Append a caption and its language, keeping ``languages`` empty while no caption has one."""
    tagged = bool(example.languages) or language is not None
    if tagged and not example.languages:
        example.languages = [None] * len(example.captions)
    example.captions.append(caption)
    if tagged:
        example.languages.append(language)


def read_coco(path: Path, image_root: Path) -> list[Example]:
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetError(f"{path}: a COCO captions file needs 'images' and 'annotations' lists")
    examples: "OrderedDict[str, Example]" = OrderedDict()
    for image in data["images"]:
        image_id = str(image["id"])
        if image_id in examples:
            examples[image_id].split = "__duplicate__"
            continue
        examples[image_id] = Example(image_id, Path(image_root) / image["file_name"], [], "train")
    for annotation in data["annotations"]:
        image_id = str(annotation["image_id"])
        if image_id not in examples:
            raise DatasetError(f"{path}: annotation {annotation.get('id')} names unknown image_id {image_id}")
        language = _language(annotation.get("language"), path, f"annotation {annotation.get('id')}")
        _add_caption(examples[image_id], annotation["caption"], language)
    return list(examples.values())


# The Karpathy layout's own fields; any other scalar field of an image (``artist``, ``source``) is metadata.
_KARPATHY_KEYS = frozenset(("filepath", "filename", "split", "sentences", "sentids", "imgid", "cocoid"))


def read_karpathy(path: Path, image_root: Path) -> list[Example]:
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise DatasetError(f"{path}: a Karpathy split file needs an 'images' list")
    examples = []
    for i, image in enumerate(data["images"]):
        relative = Path(image.get("filepath", "")) / image["filename"]
        split = image.get("split", "train")
        split = "train" if split == "restval" else split
        image_id = str(image.get("cocoid", image.get("imgid", i)))
        metadata = {k: v for k, v in image.items()
                    if k not in _KARPATHY_KEYS and isinstance(v, (str, int, float, bool))}
        example = Example(image_id, Path(image_root) / relative, [], split, metadata)
        for number, s in enumerate(image.get("sentences", [])):
            language = _language(s.get("language"), path, f"image {image_id} sentence {number}")
            _add_caption(example, s["raw"] if "raw" in s else " ".join(s["tokens"]), language)
        examples.append(example)
    return examples


def read_flickr8k(path: Path, image_root: Path, split_files: dict[str, Path] | None = None) -> list[Example]:
    examples: "OrderedDict[str, Example]" = OrderedDict()
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:
            raise DatasetError(f"{path}:{number}: expected 'image.jpg#N<TAB>caption'")
        name = key.split("#")[0]
        example = examples.setdefault(name, Example(name, Path(image_root) / name, [], "train"))
        example.captions.append(caption)
    if split_files:
        split_of = {}
        for split, list_path in split_files.items():
            for name in _read_text(list_path).split():
                split_of[name] = split
        for example in examples.values():
            example.split = split_of.get(example.image_id, "unused")
    return [e for e in examples.values() if e.split != "unused"]


def read_rows(path: Path, image_root: Path, fmt: str) -> list[Example]:
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(_read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{number}: not a JSON object: {e}") from None
    else:
        with open(path, newline="", encoding="utf-8") as f:
            dialect = csv.Sniffer().sniff(f.read(4096), delimiters=",\t;")
            f.seek(0)
            rows = list(csv.DictReader(f, dialect=dialect))
    examples: "OrderedDict[str, Example]" = OrderedDict()
    for number, row in enumerate(rows, 1):
        if "image" not in row or "caption" not in row:
            raise DatasetError(f"{path}: row {number} needs 'image' and 'caption' columns, got {sorted(row)}")
        name = str(row["image"])
        example = examples.setdefault(name, Example(name, Path(image_root) / name, [], row.get("split") or "train"))
        _add_caption(example, row["caption"] or "", _language(row.get("language"), path, f"row {number}"))
    return list(examples.values())


def read_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    fmt: str | None = None,
    val_fraction: float = 0.0,
    split_files: dict[str, Path] | None = None,
    seed: int = 0,
    caption_key: str | None = None,
    val_shards: str | None = None,
) -> list[Example]:
    """Read any supported captions file, or WebDataset shards, into a list of :class:`Example`.

    ``image_root`` defaults to the captions file's folder. A file without splits puts
    everything in train unless ``val_fraction`` moves a seeded random share to val.
    Shards (a ``.tar`` pattern or ``fmt="webdataset"``): captions from each sample's ``.txt``,
    or from the ``caption_key`` of its ``.json``; ``val_shards`` are the val split, else
    ``val_fraction`` of the keys by hash.
    """
    if fmt == "webdataset" or (fmt is None and str(path).endswith(".tar")):
        from .webdataset import ShardError, read_webdataset

        try:
            return read_webdataset(str(path), caption_key, val_shards, val_fraction)
        except ShardError as e:
            raise DatasetError(str(e)) from None
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"captions file not found: {path}")
    image_root = Path(image_root) if image_root is not None else path.parent
    try:
        fmt = fmt or detect_format(path)
        if fmt == "coco":
            examples = read_coco(path, image_root)
        elif fmt == "karpathy":
            examples = read_karpathy(path, image_root)
        elif fmt == "flickr8k":
            examples = read_flickr8k(path, image_root, split_files or _flickr_split_files(path))
        elif fmt in ("csv", "jsonl"):
            examples = read_rows(path, image_root, fmt)
        else:
            raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8"
        ) from None
    if val_fraction > 0 and not any(e.split == "val" for e in examples):
        train = [e for e in examples if e.split == "train"]
        order = random.Random(seed).sample(range(len(train)), len(train))
        for i in order[: max(1, round(val_fraction * len(train)))]:
            train[i].split = "val"
    return examples


def _flickr_split_files(token_path: Path) -> dict[str, Path] | None:
    """The standard Flickr8k split lists, when they sit beside the token file."""
    folder = token_path.parent
    found = {
        split: folder / f"Flickr_8k.{name}Images.txt"
        for split, name in (("train", "train"), ("val", "dev"), ("test", "test"))
    }
    found = {split: p for split, p in found.items() if p.is_file()}
    return found or None


def validate_examples(examples: list[Example], check_images: bool = True) -> DatasetProblems:
    """Find missing/unreadable images, empty captions and duplicate ids in one pass."""
    problems = DatasetProblems()
    seen = set()
    shard_examples = [e for e in examples if e.image_ref != str(e.path) and SHARD_ERROR not in e.metadata]
    if shard_examples and check_images:
        from .webdataset import check_images as check_shard_images

        check_shard_images(shard_examples, problems)
    for example in examples:
        if SHARD_ERROR in example.metadata:  # a damaged shard: what it still held are examples of their own
            problems.unreadable.append(example.metadata[SHARD_ERROR])
            problems.bad_paths.add(example.image_ref)
            continue
        if example.image_id in seen or example.split == "__duplicate__":
            problems.duplicate_ids.append(example.image_id)
        seen.add(example.image_id)
        if not example.captions or any(not c.strip() for c in example.captions):
            problems.empty_captions.append(f"{example.image_id} ({example.image_ref})")
        if check_images and example.image_ref == str(example.path):
            if not os.path.lexists(example.path):  # a directory or a symlink loop is unreadable, not missing
                problems.missing.append(str(example.path))
                problems.bad_paths.add(str(example.path))
                continue
            try:
                verify_image(example.path)  # decodes the data, so a truncated JPEG is found here
            except ImageReadError as e:  # the message names the file
                problems.unreadable.append(str(e))
                problems.bad_paths.add(str(example.path))
    return problems


def drop_invalid(examples: list[Example], problems: DatasetProblems) -> list[Example]:
    """Keep only the examples validation found nothing wrong with."""
    kept, seen = [], set()
    for example in examples:
        if example.image_ref in problems.bad_paths or example.image_id in seen or example.split == "__duplicate__":
            continue
        keep = [i for i, c in enumerate(example.captions) if c.strip()]
        if not keep:
            continue
        seen.add(example.image_id)
        kept.append(Example(example.image_id, example.path, [example.captions[i] for i in keep], example.split,
                            example.metadata, [example.languages[i] for i in keep] if example.languages else []))
    return kept


def select_languages(examples: list[Example], default: str, languages=None) -> list[Example]:
    """Every caption tagged with its language (``default`` where the dataset names none), only the
    captions in ``languages`` kept (``None``: all), and only the images left with a caption; none left
    raises, naming the languages the examples have."""
    wanted = None if languages is None else {normalize_language(lang, "data.languages") for lang in languages}
    selected, seen = [], set()
    for example in examples:
        tagged = example.caption_languages(default)
        seen.update(tagged)
        keep = [i for i, lang in enumerate(tagged) if wanted is None or lang in wanted]
        if keep:
            selected.append(Example(example.image_id, example.path, [example.captions[i] for i in keep],
                                    example.split, example.metadata, [tagged[i] for i in keep]))
    if examples and not selected:
        raise DatasetError(f"no captions in {', '.join(sorted(wanted))}; the captions here are in "
                           f"{', '.join(sorted(seen))} (untagged ones count as {default})")
    return selected


def split_examples(examples: list[Example], split: str, artists: Iterable[str] | None = None) -> list[Example]:
    """The examples of one split — only the images of ``artists`` when given (their ``artist``
    field, as ``captioner data emoji`` writes it)."""
    wanted = None if artists is None else set(artists)
    return [e for e in examples if e.split == split and (wanted is None or e.metadata.get("artist") in wanted)]
