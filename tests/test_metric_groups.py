"""Per-group scores (`captioner.metrics.groups.evaluate_by_group`): each group scored as its own test set."""
from __future__ import annotations

import pytest

from captioner.metrics import evaluate_captions
from captioner.metrics.groups import evaluate_by_group

REFERENCES = {
    "a1": ["dog face"], "a2": ["cat face"], "a3": ["waving hand: light skin tone"],
    "b1": ["dog face"], "b2": ["thumbs up"], "b3": ["grinning face"],
}
PREDICTIONS = {"a1": "dog face", "a2": "cat face", "a3": "waving hand", "b1": "dog", "b2": "thumbs down", "b3": "grinning face"}
GROUPS = {k: "fluent-flat" if k.startswith("a") else "emojione-2" for k in REFERENCES}


def test_each_group_scored_like_its_own_evaluation():
    scores = evaluate_by_group(PREDICTIONS, REFERENCES, GROUPS)
    assert list(scores) == ["emojione-2", "fluent-flat", "all"]
    assert scores["fluent-flat"]["images"] == 3 and scores["all"]["images"] == 6
    assert scores["fluent-flat"]["exact_match"] == pytest.approx(2 / 3)
    assert scores["emojione-2"]["exact_match"] == pytest.approx(1 / 3)
    assert scores["all"]["exact_match"] == pytest.approx(3 / 6)
    for group, keys in (("fluent-flat", ["a1", "a2", "a3"]), ("all", list(REFERENCES))):
        alone = evaluate_captions({k: PREDICTIONS[k] for k in keys}, {k: REFERENCES[k] for k in keys},
                                  metrics=("BLEU", "ROUGE_L", "CIDEr"))
        for metric in ("Bleu_4", "ROUGE_L", "CIDEr"):
            assert scores[group][metric] == pytest.approx(alone[metric])
    assert "per_image" not in scores["all"]
    assert scores["fluent-flat"]["CIDEr"] > scores["emojione-2"]["CIDEr"]


def test_missing_group_or_reserved_name_is_an_error():
    with pytest.raises(ValueError, match="no group"):
        evaluate_by_group(PREDICTIONS, REFERENCES, {k: g for k, g in GROUPS.items() if k != "b3"})
    with pytest.raises(ValueError, match="'all'"):
        evaluate_by_group(PREDICTIONS, REFERENCES, {k: "all" for k in REFERENCES})
    with pytest.raises(ValueError, match="no prediction"):
        evaluate_by_group({k: v for k, v in PREDICTIONS.items() if k != "a1"}, REFERENCES, GROUPS)
