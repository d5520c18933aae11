"""Vocabulary: words ↔ ids, built from tokenized training captions, saved as plain JSON."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from .tokenizer import ptb_tokenize

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)


class Vocabulary:
    """Word ↔ id mapping; ids 0..3 are ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(token for caption in captions for token in ptb_tokenize(caption))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>`` ids; ``max_length`` counts the words, not the markers."""
        tokens = ptb_tokenize(caption)
        if max_length is not None:
            tokens = tokens[:max_length]
        return [self.start_id] + [self.stoi.get(t, self.unk_id) for t in tokens] + [self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<end>``, markers and padding left out."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        itos = data["itos"]
        if list(itos[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}")
        return cls(itos[len(SPECIAL_TOKENS):])

    def save(self, path: str | Path) -> None:
        from ..io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
