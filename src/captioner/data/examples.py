"""What a dataset is made of, whatever its format: one :class:`Example` per image, and how a
WebDataset sample's image is named (``SHARD#KEY``). A leaf of ``captioner.data``: the readers
(``sources``, ``webdataset``) import it, it imports neither."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SHARD_SUFFIX = ".tar"
# The metadata key of an example that stands for a damaged shard (cut off, or no tar): its
# message. Validation reports it like an unreadable image; --skip-invalid drops it.
SHARD_ERROR = "shard_error"


def is_shard_pattern(pattern: str) -> bool:
    """Whether ``pattern`` names WebDataset shards (it ends in ``.tar``, after brace expansion)."""
    return str(pattern).endswith(SHARD_SUFFIX)


def sample_ref(shard: str, key: str) -> str:
    """How training names a shard sample's image: ``SHARD#KEY``."""
    return f"{shard}#{key}"


def is_sample_ref(ref: str) -> bool:
    """Whether an image name is a shard sample's ``SHARD#KEY``."""
    return SHARD_SUFFIX + "#" in ref


def split_ref(ref: str) -> tuple[str, str]:
    """``SHARD#KEY`` → (shard, key); the shard is what ends in ``.tar`` (keys may hold ``#``)."""
    cut = ref.index(SHARD_SUFFIX + "#") + len(SHARD_SUFFIX)
    return ref[:cut], ref[cut + 1 :]


@dataclass
class Example:
    """One image and all of its reference captions. ``path`` is the image file, or for a
    WebDataset sample its shard (``image_id`` is then the sample's key). ``languages`` holds the
    language of each caption (``None`` where the dataset does not say), or is empty when the dataset
    names no language at all: its captions are in the dataset's one language."""

    image_id: str
    path: Path
    captions: list[str]
    split: str = "train"
    metadata: dict = field(default_factory=dict)  # the dataset's own per-image fields, e.g. "artist"
    languages: list = field(default_factory=list)  # parallel to captions: a language code or None

    def caption_languages(self, default: str) -> list[str]:
        """The language of each caption, ``default`` where the dataset names none."""
        if not self.languages:
            return [default] * len(self.captions)
        return [language or default for language in self.languages]

    def captions_in(self, language: str, default: str) -> list[str]:
        """The captions in ``language`` (``default``: the language of captions the dataset does not tag)."""
        return [c for c, lang in zip(self.captions, self.caption_languages(default)) if lang == language]

    @property
    def image_ref(self) -> str:
        """What names the image in training's image lists: its file, or ``SHARD#KEY``."""
        return sample_ref(str(self.path), self.image_id) if is_shard_pattern(str(self.path)) else str(self.path)
