"""Caption confidence: per-word log-probs from decoding, the confidence file, and the bundled
model flagging photographs (not emoji) in the library, the CLI's --json, batch records and the API."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import Captioner
from captioner.batch import caption_files
from captioner.confidence import (
    CONFIDENCE_FILE, ConfidenceFileError, ConfidenceModel, mean_word_probability, save_run_confidence,
)
from captioner.decoders import Features, create_decoder
from captioner.decoding import DecodingConfig, beam_search, greedy
from captioner.model import default_model_dir

EXAMPLES = Path(__file__).parent.parent / "examples"
PHOTOS = sorted(EXAMPLES.glob("photo-*.jpg"))
EMOJI = sorted(EXAMPLES.glob("emoji-*.png"))
TINY_IMAGES = Path(__file__).parent / "fixtures" / "tiny" / "images"


@pytest.fixture(scope="module")
def bundled():
    return Captioner.from_pretrained()


# --- decoding returns each chosen word's log-probability --------------------------------
def test_token_log_probs_add_up_to_the_caption_log_prob():
    torch.manual_seed(0)
    decoder = create_decoder("show-tell", vocab_size=12, pooled_dim=16, embed_dim=8, hidden_dim=16).eval()
    with torch.no_grad():
        decoder.head.weight.mul_(8)
    config = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1), max_length=8)
    features = Features(torch.randn(5, 16))
    results = greedy(decoder, features, config) + beam_search(decoder, features, config, beam_size=4, n_best=4)
    for hypotheses in results:
        for h in hypotheses:
            # the words, then <end> unless the caption ran to max_length
            assert len(h.token_log_probs) in (len(h.tokens), len(h.tokens) + 1)
            assert len(h.token_log_probs) == len(h.tokens) + 1 or len(h.tokens) == config.max_length
            assert sum(h.token_log_probs) == pytest.approx(h.log_prob, abs=1e-4)
            assert all(lp <= 0 for lp in h.token_log_probs)


def test_mean_word_probability_leaves_out_end():
    words_and_end = [torch.tensor(0.5).log().item(), torch.tensor(0.25).log().item(), 0.0]
    assert mean_word_probability(words_and_end, 2) == pytest.approx(0.375)


# --- the confidence model on features with a known distribution ---------------------------
def _fitted(dim: int = 16) -> ConfidenceModel:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(2000, dim, generator=g) * 2 + 1
    held_out = torch.randn(400, dim, generator=g) * 2 + 1
    words = torch.rand(400, generator=g).mul(0.5).add(0.5).tolist()
    return ConfidenceModel.fit(train.split(256), held_out, words, threshold=0.05, domain="test blobs")


def test_confidence_is_a_calibrated_percentile():
    model = _fitted()
    g = torch.Generator().manual_seed(1)
    fresh = torch.randn(4000, 16, generator=g) * 2 + 1  # new images like the held-out ones
    words = torch.rand(4000, generator=g).mul(0.5).add(0.5).tolist()
    confidence = model.confidence(fresh, words)
    assert 0 < confidence.min() and confidence.max() <= 1
    # calibrated: a share ~t of in-domain images falls below t
    for t in (0.05, 0.25, 0.5):
        assert (confidence < t).mean() == pytest.approx(t, abs=0.03)
    shifted = fresh[:200] + 6  # far from the training features, even with certain words
    far = model.confidence(shifted, [1.0] * 200)
    assert all(model.is_low(c) for c in far.tolist())
    assert far.max() == pytest.approx(1 / (len(model.held_out_scores) + 1))


def test_less_probable_words_lower_the_confidence():
    model = _fitted()
    features = torch.randn(1, 16, generator=torch.Generator().manual_seed(2)) * 2 + 1  # a typical image
    assert model.confidence(features, [0.55]).item() < model.confidence(features, [0.95]).item()


def test_confidence_file_round_trip_and_errors(tmp_path):
    model = _fitted()
    path = model.save(tmp_path)
    assert path.name == CONFIDENCE_FILE and path.stat().st_size < 20_000
    again = ConfidenceModel.load(tmp_path, pooled_dim=16)
    assert again.threshold == 0.05 and again.domain == "test blobs"
    features = torch.randn(8, 16)
    assert np.array_equal(again.confidence(features, [0.7] * 8), model.confidence(features, [0.7] * 8))
    assert ConfidenceModel.load(tmp_path / "elsewhere", pooled_dim=16) is None
    with pytest.raises(ConfidenceFileError, match=f"{CONFIDENCE_FILE}.*do not fit.*1280"):
        ConfidenceModel.load(tmp_path, pooled_dim=1280)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfidenceFileError, match="corrupt or truncated.*delete it"):
        ConfidenceModel.load(tmp_path, pooled_dim=16)


def test_too_few_held_out_images_is_an_error():
    with pytest.raises(ValueError, match="at least 20 held-out images"):
        ConfidenceModel.fit([torch.randn(50, 4)], torch.randn(5, 4), [0.5] * 5)


# --- the bundled model -------------------------------------------------------------------
def test_bundled_model_ships_its_confidence(bundled):
    assert (default_model_dir() / CONFIDENCE_FILE).stat().st_size < 20_000
    assert bundled.confidence is not None and bundled.confidence.domain == "emoji art"
    assert 0 < bundled.confidence.threshold < 0.5


def test_bundled_model_flags_photos_not_emoji(bundled):
    assert PHOTOS and EMOJI
    photos = bundled.caption(PHOTOS)
    emoji = bundled.caption(EMOJI)
    assert [c.low_confidence for c in photos] == [True] * len(photos), [c.confidence for c in photos]
    assert [c.low_confidence for c in emoji] == [False] * len(emoji), [c.confidence for c in emoji]
    assert max(c.confidence for c in photos) < min(c.confidence for c in emoji)
    record = emoji[0].to_dict()
    assert 0 < record["confidence"] <= 1 and record["low_confidence"] is False
    json.dumps(record, allow_nan=False)


def test_confidence_in_the_command_lines_json(tmp_path):
    images = [PHOTOS[0], EMOJI[0]]
    result = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", *map(str, images), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["low_confidence"] for r in records] == [True, False]
    assert all(0 < r["confidence"] <= 1 for r in records)


def test_confidence_in_batch_records(bundled):
    records = caption_files([str(PHOTOS[0]), str(EMOJI[0])], model=bundled)
    assert [r.to_dict()["low_confidence"] for r in records] == [True, False]


def test_confidence_in_the_http_api():
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    pytest.importorskip("multipart", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from captioner.serve.app import create_app

    with TestClient(create_app()) as client:
        info = client.get("/v1/models").json()["models"][0]
        assert info["confidence"]["domain"] == "emoji art"
        files = [("image", (p.name, p.read_bytes())) for p in (PHOTOS[0], EMOJI[0])]
        results = client.post("/v1/captions", files=files).json()["results"]
    assert [r["low_confidence"] for r in results] == [True, False]
    assert results[0]["confidence"] < info["confidence"]["threshold"] <= results[1]["confidence"]


# --- saving, and fitting for a newly trained model ----------------------------------------
def test_save_pretrained_keeps_the_confidence_and_drops_a_stale_one(bundled, tmp_path):
    bundled.save_pretrained(tmp_path / "copy")
    copy = Captioner.from_pretrained(tmp_path / "copy")
    assert np.array_equal(copy.confidence.held_out_scores, bundled.confidence.held_out_scores)
    copy.confidence = None
    copy.save_pretrained(tmp_path / "copy")  # other weights: the old statistics must not stay
    assert not (tmp_path / "copy" / CONFIDENCE_FILE).exists()
    assert Captioner.from_pretrained(tmp_path / "copy").caption(EMOJI[0]).confidence is None


def test_a_trained_model_gets_its_confidence(trained_show_tell, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_show_tell, run)
    (run / CONFIDENCE_FILE).unlink(missing_ok=True)
    model = Captioner.from_pretrained(run)
    images = sorted(str(p) for p in TINY_IMAGES.glob("*.jpg"))
    assert "not fitted" in save_run_confidence(model, run, images, len(images) - 5)  # 5 val images are too few
    held_out = images * 2  # the tiny set is small: its images stand in for a val split of 20+
    message = save_run_confidence(model, run, images + held_out, len(images))
    assert CONFIDENCE_FILE in message
    caption = Captioner.from_pretrained(run).caption(images[0])
    assert 0 < caption.confidence <= 1 and caption.low_confidence in (True, False)
