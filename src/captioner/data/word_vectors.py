"""Pretrained word vectors (GloVe or word2vec text format) copied into a decoder's embedding."""
from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidInputError, MissingFileError
from .vocab import Vocabulary


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _is_word2vec_header(parts: list[str]) -> bool:
    """word2vec text files start with "<words> <dim>"; GloVe files have no header."""
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def load_word_vectors(embedding: nn.Embedding, vocab: Vocabulary, path: str | Path, freeze: bool = False) -> int:
    """Copy the vectors of vocabulary words found in ``path`` into ``embedding``'s rows.

    ``path``: one ``word v1 .. vd`` per line (GloVe; word2vec text with its optional
    ``count dim`` header line; ``.gz`` read as gzip). A vocabulary word takes the vector
    spelled exactly like it, else one that matches it lowercased (word2vec files are cased;
    our vocabulary is lowercase). Words without a vector keep their initial row. ``freeze``
    stops the whole embedding from training. Returns how many vocabulary words got a vector.
    """
    path = Path(path)
    if vocab.kind != "word":  # a file of whole words has no rows for subword pieces ("▁dog", "gy")
        raise InvalidInputError(f"word vectors ({path}) need a word vocabulary; this one is {vocab.kind} "
                                "(data.vocabulary: word)")
    if not path.is_file():
        raise MissingFileError(f"word vectors file not found: {path}")
    dim = embedding.embedding_dim
    file_dim = None
    found: dict[int, tuple[bool, list[float]]] = {}  # row → (exact spelling, vector)
    with _open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").rstrip(" ").split(" ")
            if line_number == 1 and _is_word2vec_header(parts):
                file_dim = int(parts[1])
                _check_dim(path, file_dim, dim)
                continue
            if len(parts) < 2:
                continue  # blank line
            if file_dim is None:
                file_dim = len(parts) - 1
                _check_dim(path, file_dim, dim)
            if len(parts) < file_dim + 1:
                raise InvalidInputError(
                    f"{path}:{line_number}: expected a word and {file_dim} numbers, got {len(parts)} fields"
                )
            # Some GloVe files hold "words" with spaces: the vector is always the last file_dim fields.
            word, values = " ".join(parts[:-file_dim]), parts[-file_dim:]
            for row, exact in _rows_for(word, vocab):
                if row not in found or (exact and not found[row][0]):
                    found[row] = (exact, [float(v) for v in values])
    if found:
        rows = sorted(found)
        vectors = torch.tensor([found[r][1] for r in rows], dtype=embedding.weight.dtype)
        with torch.no_grad():
            embedding.weight[torch.tensor(rows)] = vectors.to(embedding.weight.device)
    if freeze:
        embedding.weight.requires_grad_(False)
    return len(found)


def _check_dim(path: Path, file_dim: int, dim: int) -> None:
    if file_dim != dim:
        raise InvalidInputError(
            f"{path}: word vectors have dimension {file_dim} but the decoder's embedding has dimension {dim}; "
            f"use {dim}-dimensional vectors or set the decoder's embedding size to {file_dim}"
        )


def _rows_for(word: str, vocab: Vocabulary) -> list[tuple[int, bool]]:
    """Vocabulary rows this file word fills: the word itself, and its lowercase form."""
    rows = []
    if word in vocab.stoi:
        rows.append((vocab.stoi[word], True))
    lower = word.lower()
    if lower != word and lower in vocab.stoi:
        rows.append((vocab.stoi[lower], False))
    return rows
