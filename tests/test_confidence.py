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

from captioner import Captioner, CaptionerError
from captioner.batch import caption_files
from captioner.confidence import (
    CONFIDENCE_FILE, ConfidenceFileError, ConfidenceModel, mean_word_probability,
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
def _fitted(dim: int = 16) -> tuple[ConfidenceModel, np.random.Generator]:
    """Held-out captions that are right more often the more probable their words are."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, dim)) * 2 + 1
    held_out = rng.normal(size=(400, dim)) * 2 + 1
    words = rng.uniform(0.5, 1.0, 400)
    right = rng.random(400) < words - 0.3  # P(right) = words - 0.3: 0.2 … 0.7
    values = {"word_probability": words, "margin": rng.normal(size=400)}
    model = ConfidenceModel.fit(np.array_split(train, 8), held_out, values, right, "exact match", threshold=0.05,
                                domain="test blobs")
    return model, rng


def test_confidence_is_a_calibrated_probability_and_the_flag_a_familiarity_percentile():
    model, rng = _fitted()
    fresh = rng.normal(size=(4000, 16)) * 2 + 1  # new images like the held-out ones
    words = rng.uniform(0.5, 1.0, 4000)
    right = rng.random(4000) < words - 0.3
    confidence = model.confidence({"word_probability": words, "margin": rng.normal(size=4000),
                                   "familiarity": model.familiarity(fresh)})
    assert 0 < confidence.min() and confidence.max() < 1
    for low, high in ((0.2, 0.35), (0.35, 0.5), (0.5, 0.7)):  # calibrated: right as often as it says
        inside = (confidence >= low) & (confidence < high)
        assert right[inside].mean() == pytest.approx(confidence[inside].mean(), abs=0.06)
    familiarity = model.familiarity(fresh)
    flagged = np.mean([model.is_low(0.5, f) for f in familiarity])
    assert flagged == pytest.approx(0.05, abs=0.02)  # the threshold: a share of in-domain images
    far = model.familiarity(fresh[:200] + 6)  # far from the training features, whatever the words
    assert all(model.is_low(0.99, f) for f in far)


def test_less_probable_words_lower_the_confidence():
    model, _ = _fitted()
    typical = {"familiarity": [-1.0], "margin": [0.0]}
    assert model.confidence({**typical, "word_probability": [0.55]})[0] < \
           model.confidence({**typical, "word_probability": [0.95]})[0]


def test_confidence_file_round_trip_and_errors(tmp_path):
    model, rng = _fitted()
    path = model.save(tmp_path)
    assert path.name == CONFIDENCE_FILE and path.stat().st_size < 20_000
    again = ConfidenceModel.load(tmp_path, pooled_dim=16)
    assert again.threshold == 0.05 and again.domain == "test blobs" and again.target == "exact match"
    values = {"word_probability": [0.7] * 8, "margin": [0.1] * 8, "familiarity": model.familiarity(rng.normal(size=(8, 16)))}
    assert np.array_equal(again.confidence(values), model.confidence(values))
    assert ConfidenceModel.load(tmp_path / "elsewhere", pooled_dim=16) is None
    with pytest.raises(ConfidenceFileError, match=f"{CONFIDENCE_FILE}.*do not fit.*1280"):
        ConfidenceModel.load(tmp_path, pooled_dim=1280)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfidenceFileError, match="corrupt or truncated.*delete it"):
        ConfidenceModel.load(tmp_path, pooled_dim=16)


def test_a_fit_without_the_datastore_scores_captions_decoded_with_retrieval_off(tmp_path):
    """A model with a datastore carries a second fit on the decoder's own signals: captions
    decoded without the datastore (no neighbour signals) get their confidence from it, and it
    survives the file's round trip; a tampered one is refused in one line."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(500, 8)), rng.normal(size=(300, 8))
    words = rng.uniform(0.5, 1.0, 300)
    right = rng.random(300) < words - 0.3
    alone_values = {"word_probability": words, "margin": rng.normal(size=300)}
    full = ConfidenceModel.fit([train], held_out, {**alone_values, "agreement": right + rng.normal(size=300)}, right,
                               "exact match")
    full.alone = ConfidenceModel.fit([train], held_out, alone_values, right, "exact match")
    measured = {"familiarity": full.familiarity(held_out[:5]), "word_probability": words[:5], "margin": np.zeros(5)}
    assert full.fit_for(measured) is full.alone and full.fit_for({**measured, "agreement": [0.5] * 5}) is full
    assert full.fit_for({"familiarity": [0.0]}) is None
    full.save(tmp_path)
    again = ConfidenceModel.load(tmp_path, pooled_dim=8)
    np.testing.assert_allclose(again.fit_for(measured).confidence(measured), full.alone.confidence(measured), rtol=1e-6)
    assert again.alone.signals == ("familiarity", "word_probability", "margin") and again.alone.alone is None
    path = tmp_path / CONFIDENCE_FILE
    with safe_open(str(path), framework="numpy") as f:
        metadata, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(arrays, str(path), metadata={**metadata, "alone_signals": "familiarity,consensus,margin"})
    with pytest.raises(ConfidenceFileError, match="fit without the datastore .* does not fit together"):
        ConfidenceModel.load(tmp_path, pooled_dim=8)


def test_too_few_held_out_images_is_an_error():
    with pytest.raises(ValueError, match="at least 20 held-out images"):
        ConfidenceModel.fit([np.ones((50, 4))], np.ones((5, 4)), {"word_probability": [0.5] * 5}, [True] * 5, "")


# --- the bundled model -------------------------------------------------------------------
def test_bundled_model_ships_its_confidence(bundled):
    # Its encoder's top four stages are fine-tuned: familiarity reads what the stages below make
    # of an image (blocks 0–3: 80 numbers; the statistics and 79 principal axes, ~32 KB).
    assert (default_model_dir() / CONFIDENCE_FILE).stat().st_size < 200_000
    assert bundled.confidence is not None and bundled.confidence.domain == "emoji art"
    assert bundled.confidence.reads == "untuned" and bundled.confidence.feature_mean.shape == (80,)
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
    assert 0 <= records[0]["confidence"] < records[1]["confidence"] <= 1  # JSON keeps 4 digits: a photo may show 0.0


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


def test_a_trained_model_gets_its_datastore_and_confidence(tiny_one_caption, tmp_path):
    """captioner train ends by writing the best model's datastore and, with 20+ val images, the
    confidence fitted on them (the tiny set's 31 images: 20 of them held out)."""
    from conftest import train_tiny

    run = train_tiny(tiny_one_caption, tmp_path / "run", epochs=3, extra=["--val-fraction", "0.65"])
    model = Captioner.from_pretrained(run)
    assert model.datastore is not None and model.confidence is not None and model.confidence.needs_datastore
    caption = model.caption(sorted(TINY_IMAGES.glob("*.jpg"))[0])
    assert 0 < caption.confidence < 1 and caption.low_confidence in (True, False)
    (run / "datastore.safetensors").unlink()
    with pytest.raises(CaptionerError, match="reads the model's datastore"):
        Captioner.from_pretrained(run)


def test_a_fine_tuned_run_measures_familiarity_where_its_encoder_was_not_tuned(tiny_one_caption, tmp_path):
    """A run that fine-tunes the encoder's last stage (on cached activations) fits its confidence
    on what the stages below it make of each image — read from the activation cache at the end
    of training, from pixels when captioning — not on the pooled feature that fine-tuning moved."""
    from conftest import train_tiny

    run = train_tiny(tiny_one_caption, tmp_path / "run", epochs=1,
                     extra=["--val-fraction", "0.65", "--trainable-blocks", "1"])
    model = Captioner.from_pretrained(run)
    assert model.encoder.config.tuned_blocks == 1
    assert model.confidence.reads == "untuned" and model.confidence.feature_mean.shape == (320,)
    caption = model.caption(sorted(TINY_IMAGES.glob("*.jpg"))[0])
    assert 0 < caption.confidence < 1 and caption.low_confidence in (True, False)


def test_familiarity_sees_what_breaks_the_features_correlations(tmp_path):
    """Familiarity measures along the training features' principal axes: an image whose every
    dimension lies in the training range but whose dimensions disagree as training's never do
    (a photo through an encoder fine-tuned on drawings) is less familiar than one as far out
    along them; the axes survive the file (format 3), a format-2 file (no axes) still loads and
    measures per dimension, and axes of the wrong shape are refused."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    common = rng.normal(size=(3000, 1))
    train = np.concatenate([common + 0.1 * rng.normal(size=(3000, 8)), rng.normal(size=(3000, 8))], axis=1)
    held_out = train[:300] + 0.01 * rng.normal(size=(300, 16))
    words = rng.uniform(0.5, 1.0, 300)
    model = ConfidenceModel.fit(np.array_split(train, 3), held_out, {"word_probability": words},
                                rng.random(300) < words - 0.3, "exact match")
    assert model.feature_axes.shape == (16, 15) and model.axis_std.shape == (15,)
    along, across = np.zeros((1, 16)), np.zeros((1, 16))
    along[0, :8] = 1.5  # the eight correlated dimensions together, 1.5 standard deviations out
    across[0, :8] = [1.5, -1.5] * 4  # as far out, each, but against their correlation
    assert model.familiarity(across)[0] < model.familiarity(along)[0] - 1.0
    per_dimension = ConfidenceModel(model.feature_mean, model.feature_std, *([np.zeros(1)] * 3))
    assert per_dimension.familiarity(across)[0] == pytest.approx(per_dimension.familiarity(along)[0], rel=0.05)

    path = model.save(tmp_path)
    again = ConfidenceModel.load(tmp_path, pooled_dim=16)
    np.testing.assert_array_equal(again.familiarity(across), model.familiarity(across))
    with safe_open(str(path), framework="numpy") as f:
        metadata, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert metadata["format"] == "3"
    del arrays["feature_axes"], arrays["axis_std"]
    save_file(arrays, str(path), metadata={**metadata, "format": "2"})
    assert ConfidenceModel.load(tmp_path, pooled_dim=16).feature_axes is None
    save_file({**arrays, "feature_axes": np.zeros((16, 16), np.float32), "axis_std": np.ones(16, np.float32)},
              str(path), metadata=metadata)
    with pytest.raises(ConfidenceFileError, match="format 3 needs feature_axes"):
        ConfidenceModel.load(tmp_path, pooled_dim=16)


def test_familiarity_of_the_untuned_stages_is_format_4(tmp_path):
    """A fit on an encoder with tuned stages reads their input (``Features.untuned``), not the
    pooled feature: the file says so (format 4) and loads only beside an encoder that gives
    features of that width; features without them are one line, not a shape error."""
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(400, 12)), rng.normal(size=(60, 12))
    words = rng.uniform(0.5, 1.0, 60)
    model = ConfidenceModel.fit(np.array_split(train, 2), held_out, {"word_probability": words},
                                rng.random(60) < words - 0.3, "exact match", reads="untuned")
    pooled, untuned = rng.normal(size=(3, 16)), held_out[:3]
    np.testing.assert_array_equal(model.familiarity_of(Features(pooled, untuned=untuned)), model.familiarity(untuned))
    with pytest.raises(ValueError, match="reads the encoder's untuned features"):
        model.familiarity_of(Features(pooled))
    path = model.save(tmp_path)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == "4" and f.metadata()["familiarity_of"] == "untuned"
    again = ConfidenceModel.load(tmp_path, pooled_dim=16, untuned_dim=12)
    assert again.reads == "untuned"
    np.testing.assert_array_equal(again.familiarity_of(Features(pooled, untuned=untuned)),
                                  model.familiarity(untuned))
    with pytest.raises(ConfidenceFileError, match="has no tuned stages"):
        ConfidenceModel.load(tmp_path, pooled_dim=16)
    with pytest.raises(ConfidenceFileError, match="do not fit the encoder's untuned features"):
        ConfidenceModel.load(tmp_path, pooled_dim=12, untuned_dim=16)
