"""Model folders are untrusted input, like images: they are downloaded and shared.

A folder — torch (``config.json``, ``vocab.json``, ``model.safetensors``) or exported
(``manifest.json``, ONNX graphs) — is read through :class:`ModelFolder`, which keeps three
promises:

- **confined paths**: every file it opens, and every path the folder's own files name (a
  manifest's graphs, its confidence file, an encoder's ``weights_file``), resolves inside the
  folder: no absolute paths, no ``..``, no symlink out. (onnxruntime already refuses external
  data outside a graph's folder; tarfile's ``data`` filter is the same idea.)
- **bounded reads**: a file's size is checked against :class:`FolderLimits` before it is read,
  and a JSON file before it is parsed;
- **checked numbers**: sizes, lengths, ids, crop and dims are whole numbers within the limits
  before anything is allocated from them.

Every failure is one error line (the caller's ``CaptionerError`` subclass) that names the file
and the field. The limits live here, each with why; the image limits are
:class:`captioner.data.images.ImageLimits` and the longest caption is
:data:`captioner.decoding.MAX_DECODE_LENGTH`. Torch-free: the exported runtime uses it too.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Optional

from .decoding import MAX_DECODE_LENGTH
from .errors import CaptionerError

MiB = 2**20


@dataclass(frozen=True)
class FolderLimits:
    """The most a model folder may make captioner read or allocate. Each default is far above
    what a real model needs and far below what hurts a machine.

    ``max_json_bytes``: config.json, manifest.json, preprocess.json (captioner writes 1–30 KB:
    a 12-layer transformer's manifest lists its state slots). ``max_vocab_bytes`` /
    ``max_vocab_words``: vocab.json (the bundled model's 1,745 words are 18 KB; multilingual
    subword vocabularies hold 250 K pieces; a million words at 32 bytes each is the ceiling).
    ``max_crop_size`` / ``max_resize_size``: preprocessing (published backbones take at most
    1024² inputs, SAM's; a batch of 32 at 1024² is 400 MB of float32 pixels, at 4000² it is
    6 GB). ``max_feature_dim``: an encoder's feature size (published image backbones give at
    most a few thousand: EfficientNet-B7 2,560, ViT-22B 6,144). ``max_graph_bytes``: an ONNX
    graph (protobuf's own 2 GiB ceiling; larger models keep their weights as external data).
    ``max_confidence_bytes``: confidence.safetensors (a few KB: two pooled-dim vectors and the
    held-out scores). ``max_subword_bytes``: a subword vocabulary's tokenizer.json (250 K pieces
    with their merges: ~20 MB). ``max_datastore_bytes``: datastore.safetensors (the bundled
    model's 27,000 drawings: ~8 MB; a million captioned images at 128 dims with their captions:
    ~400 MB; past a few million an exact search is no longer what a user wants).
    """

    max_json_bytes: int = 1 * MiB
    max_vocab_bytes: int = 32 * MiB
    max_vocab_words: int = 1_000_000
    max_crop_size: int = 1024
    max_resize_size: int = 2048
    max_feature_dim: int = 65_536
    max_graph_bytes: int = 2 * 1024 * MiB
    max_confidence_bytes: int = 16 * MiB
    max_subword_bytes: int = 64 * MiB
    max_datastore_bytes: int = 2 * 1024 * MiB


DEFAULT_FOLDER_LIMITS = FolderLimits()


class ModelFolder:
    """An untrusted model folder: its files confined to it and read within ``limits``; every
    failure raises ``error`` (a ``CaptionerError`` subclass) naming the file and the field."""

    def __init__(self, directory: str | Path, error: type[CaptionerError],
                 limits: FolderLimits = DEFAULT_FOLDER_LIMITS):
        self.directory = Path(directory)
        self.root = self.directory.resolve()
        self.error = error
        self.limits = limits

    def where(self, name: str) -> str:
        """How messages name a file of the folder."""
        return str(self.directory / name)

    def path(self, name: Any, named_by: Optional[tuple[str, str]] = None, *, required: bool = True) -> Optional[Path]:
        """The regular file ``name`` inside the folder (``None`` when it is absent and not
        ``required``). ``named_by`` = (file, field): the folder's own file that names it, for
        paths a folder names (a manifest's graphs, a ``weights_file``)."""
        said = f"{self.where(named_by[0])}: {named_by[1]}" if named_by else None
        if not isinstance(name, str) or not name:
            raise self.error(f"{said}: expected a file name, got {name!r}")
        pure = PurePath(name)
        if named_by and (pure.is_absolute() or pure.anchor or ".." in pure.parts):
            raise self.error(f"{said} is {name!r}, outside the model folder: a model folder may only name its own "
                             "files (copy the file into the folder and name it relative to it)")
        target = self.directory / name
        resolved = target.resolve()
        if not resolved.is_relative_to(self.root):
            raise self.error(f"{said or self.where(name)}: {target} is a symlink to {resolved}, outside the model "
                             "folder; a model folder may only hold its own files (copy them in)")
        if not resolved.is_file():
            if not required and not os.path.lexists(target):
                return None
            raise self.error(f"{said + ': ' if said else ''}{target} is missing or not a regular file")
        return target

    def check_size(self, path: Path, max_bytes: int, limit_name: str) -> int:
        """``path``'s size in bytes, refused above ``max_bytes`` before it is read."""
        size = path.stat().st_size
        if size > max_bytes:
            raise self.error(f"{path}: {size:,} bytes is over the limit of {max_bytes:,} for this file "
                             f"({limit_name}); not a file captioner writes")
        return size

    def read_bytes(self, path: Path, max_bytes: int, limit_name: str) -> bytes:
        """The bytes of ``path``, never more than ``max_bytes`` read (a file growing meanwhile too)."""
        self.check_size(path, max_bytes, limit_name)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise self.error(f"{path}: over the limit of {max_bytes:,} bytes ({limit_name})")
        return data

    def read_json(self, name: str, max_bytes: Optional[int] = None, limit_name: str = "max_json_bytes") -> Any:
        """A JSON file of the folder, size-checked before it is parsed."""
        path = self.path(name)
        data = self.read_bytes(path, max_bytes or self.limits.max_json_bytes, limit_name)
        try:
            return json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise self.error(f"{path}: unreadable JSON (not UTF-8: byte {e.start}); restore or re-save the model") \
                from None
        except (json.JSONDecodeError, RecursionError) as e:
            reason = str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise self.error(f"{path}: unreadable JSON ({reason}); restore or re-save the model") from None

    # --- numbers ---------------------------------------------------------------------------
    def whole(self, value: Any, file: str, field: str, low: int, high: int) -> int:
        """``value`` if it is a whole number from ``low`` to ``high`` (JSON ints only: no
        floats such as 1e9, no booleans)."""
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(f"{self.where(file)}: {field} must be a whole number from {low:,} to {high:,}, "
                             f"got {value!r}")
        return value

    def check_lengths(self, file: str, field: str, max_length: Any, min_length: Any = 1) -> int:
        """A caption length limit (and its minimum) within ``MAX_DECODE_LENGTH``, which bounds
        decoding time whatever a folder says."""
        self.whole(max_length, file, f"{field}max_length", 1, MAX_DECODE_LENGTH)
        self.whole(min_length, file, f"{field}min_length", 0, max_length)
        return max_length

    def vocabulary(self, name: str):
        """The folder's ``Vocabulary``: the file's size checked before it is parsed, its word
        count before the vocabulary is built."""
        from .data.vocab import Vocabulary

        data = self.read_json(name, self.limits.max_vocab_bytes, "max_vocab_bytes")
        words = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise self.error(f"{self.where(name)}: itos must be a list of words; save the model again")
        self.check_vocab_size(len(words), name, "its word count (itos)")
        subwords = data.get("subwords")
        if subwords is not None:  # a subword vocabulary's pieces: inside the folder, within their limit
            self.check_size(self.path(subwords, (name, "subwords")), self.limits.max_subword_bytes, "max_subword_bytes")
        try:
            return Vocabulary.from_dict(data, self.directory)
        except ValueError as e:  # special tokens missing, words repeated, a subword file it cannot read
            raise self.error(f"{self.where(name)}: {e}") from None

    def check_vocab_size(self, size: Any, file: str, field: str) -> int:
        """A vocabulary size within ``max_vocab_words`` (decoding allocates a row of it per beam)."""
        return self.whole(size, file, field, 1, self.limits.max_vocab_words)

    def preprocess(self, data: Any, file: str, field: str = ""):
        """A ``PreprocessConfig`` from a folder's dict, its sizes and statistics checked first."""
        from .data.images import ImageConfigError, PreprocessConfig

        if not isinstance(data, dict):
            raise self.error(f"{self.where(file)}: {field or 'the preprocessing'} must be an object, got {data!r}")
        if "crop_size" in data:
            self.whole(data["crop_size"], file, f"{field}crop_size", 1, self.limits.max_crop_size)
        if "resize_size" in data:
            self.whole(data["resize_size"], file, f"{field}resize_size", 1, self.limits.max_resize_size)
        for key in ("mean", "std"):
            values = data.get(key, (0.5,) * 3)
            if (not isinstance(values, list | tuple) or len(values) != 3
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                               for v in values)
                    or (key == "std" and not all(v > 0 for v in values))):
                rule = "three positive numbers" if key == "std" else "three finite numbers"
                raise self.error(f"{self.where(file)}: {field}{key} must be {rule} (one per RGB channel), "
                                 f"got {values!r}")
        try:
            return PreprocessConfig(**data)
        except TypeError as e:  # an unknown key
            raise self.error(f"{self.where(file)}: {field or 'preprocessing'}: {e}") from None
        except ImageConfigError as e:
            raise self.error(f"{self.where(file)}: {e}") from None


__all__ = ["DEFAULT_FOLDER_LIMITS", "FolderLimits", "ModelFolder"]
