"""Scores per group of images (per artist, per source): how a model does on each kind of input."""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

from ..errors import InvalidInputError
from .evaluate import _predictions, _references, evaluate_captions, exact_match


def evaluate_by_group(
    predictions: Mapping[Hashable, str] | Sequence[Mapping[str, Any]],
    references: Mapping[Hashable, Sequence[str]] | Mapping[str, Any],
    groups: Mapping[Hashable, str],
    *,
    metrics: Iterable[str] | None = ("BLEU", "ROUGE_L", "CIDEr"),
    tokenize: bool = True,
    tokenizer: str | None = None,
    language: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Score each group of images on its own, plus ``"all"``.

    ``predictions`` and ``references`` take the forms :func:`evaluate_captions` takes; ``groups`` maps
    every image id to its group (e.g. the dataset's ``artist``). Each group is scored as if it were the
    whole test set (CIDEr-D's document frequencies come from that group's references, as a separate
    ``captioner evaluate`` run on those images would give). Returns ``{group: {"images": n,
    "exact_match": share, "Bleu_4": ..., "CIDEr": ..., ...}}`` in sorted group order, ``"all"`` last;
    ``per_image`` is dropped and ``skipped`` kept. ``tokenizer`` / ``language``: how captions are split
    into words, as for :func:`evaluate_captions`.
    """
    pred = _predictions(predictions)
    refs = _references(references)
    missing = [k for k in refs if k not in groups]
    if missing:
        raise InvalidInputError(f"{len(missing)} image id(s) have no group: {missing[:10]}")
    members: dict[str, list[Hashable]] = {}
    for key in refs:
        members.setdefault(str(groups[key]), []).append(key)
    if "all" in members:
        raise InvalidInputError("a group may not be called 'all': that name holds the scores over every image")
    members["all"] = list(refs)
    scores = {}
    for group in [*sorted(g for g in members if g != "all"), "all"]:
        keys = members[group]
        group_pred = {k: pred[k] for k in keys if k in pred}
        group_refs = {k: refs[k] for k in keys}
        result = evaluate_captions(group_pred, group_refs, metrics=metrics, tokenize=tokenize,
                                   tokenizer=tokenizer, language=language)
        result.pop("per_image")
        exact = exact_match(group_pred, group_refs, result["tokenizer"] or "ptb")
        scores[group] = {"images": len(keys), "exact_match": exact, **result}
    return scores
