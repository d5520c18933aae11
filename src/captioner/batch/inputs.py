"""What a batch run captions: image files named directly, in folders or by globs — or
WebDataset shards (``'shards/{00000..00099}.tar'``), never both in one run."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional, Sequence

from ..data.examples import is_shard_pattern
from ..errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def expand_image_paths(patterns: Sequence[str], skipped: Optional[list[str]] = None) -> list[str]:
    """Images named directly, in a directory (sorted, recursive) or by a glob, in that order.

    A directory yields its files with an image suffix (``IMAGE_SUFFIXES``); its other files are
    appended to ``skipped`` when a list is given, so a caller can say how many were left out.
    Folders are never images, whatever their name (a folder ``x.jpg``). A pattern that names
    nothing is kept, so that it gets its own "no such file" error.
    """
    paths: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(file))
                elif skipped is not None:
                    skipped.append(str(file))
        elif path.exists():
            paths.append(str(path))
        else:
            matches = [m for m in sorted(glob.glob(pattern, recursive=True)) if not os.path.isdir(m)]
            paths.extend(matches if matches else [pattern])
    return paths


class NothingToCaptionError(InvalidInputError):
    """Paths that name no image at all: an empty folder, or one of other files only
    (``captioner caption`` says so and exits 1, as when images cannot be read)."""


def image_paths(patterns: Sequence[str], skipped: list[str]) -> list[str]:
    """:func:`expand_image_paths`, and ``NothingToCaptionError`` when the patterns name no image."""
    paths = expand_image_paths(patterns, skipped)
    if not paths:
        why = f" ({skipped_note(skipped)})" if skipped else ""
        raise NothingToCaptionError(f"nothing to caption: no image files in {', '.join(map(str, patterns))}{why}")
    return paths


def are_shards(patterns: Sequence[str]) -> bool:
    """Whether the inputs are WebDataset shards (all end in ``.tar``); a mix is an error."""
    shards = [is_shard_pattern(str(p)) for p in patterns]
    if any(shards) and not all(shards):
        raise InvalidInputError("caption either WebDataset shards (*.tar) or image files in one run, not both")
    return all(shards)


def skipped_note(skipped: list[str]) -> str:
    """What to tell the user about the files of a folder left out for their suffix."""
    files = "1 file" if len(skipped) == 1 else f"{len(skipped)} files"
    return (f"left out {files} without an image suffix ({', '.join(sorted(IMAGE_SUFFIXES))}), "
            f"e.g. {skipped[0]}")
