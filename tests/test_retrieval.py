"""The datastore beside a model: build, add, load and search; consensus reranking; the
teacher-forced scores it ranks with; confidence fitted to say which captions are right; the
retrieved captions a SmallCap-style decoder reads, when captioning and when training."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from captioner import Captioner, DecodeOptions
from captioner.confidence import ConfidenceModel
from captioner.data.loaders import CaptionPairs
from captioner.data.sources import Example
from captioner.data.vocab import Vocabulary
from captioner.datastore import own_rows_neighbours
from captioner.decoding import Features, beam_search, score_captions
from captioner.retrieval import (
    DATASTORE_FILE, Datastore, DatastoreError, EncoderIdentity, Neighbours, RerankConfig, consensus, rerank,
    retrieved_tokens,
)
from captioner.errors import InvalidInputError
from captioner.train.config import ConfigError, RetrievalConfig, TrainConfig
from captioner.train.retrieval import PairRetrieved, training_retrieval

from conftest import TINY, train_tiny

IDENTITY = EncoderIdentity("toy", "digest", "crop_size=8")


def _store(rows: int = 40, dim: int = 16, seed: int = 0) -> tuple[Datastore, np.ndarray]:
    rng = np.random.default_rng(seed)
    pooled = rng.normal(size=(rows, dim)).astype(np.float32)
    captions = [{"en": [f"thing {i % 10}"]} for i in range(rows)]
    return Datastore.build(pooled, captions, IDENTITY, dims=8), pooled


def test_build_add_save_load_round_trip(tmp_path):
    store, pooled = _store()
    nearest = store.search(pooled[:5], k=3)
    assert nearest.rows[:, 0].tolist() == [0, 1, 2, 3, 4]  # each image finds itself first
    assert np.all(np.diff(nearest.similarity, axis=1) <= 1e-6)  # nearest first
    more = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    store.add(more, [{"en": ["my own drawing"], "de": ["meine Zeichnung"]}] * 3)
    assert len(store) == 43 and store.search(more[:1], k=1).rows[0, 0] == 40
    path = store.save(tmp_path)
    assert path.name == DATASTORE_FILE and sorted(p.name for p in tmp_path.iterdir()) == [DATASTORE_FILE]
    again = Datastore.load(tmp_path, IDENTITY)
    np.testing.assert_array_equal(again.keys, store.keys)
    assert again.captions == store.captions and again.rerank == store.rerank
    assert again.neighbour_captions(again.search(more[:1], k=1), "de") == [[("meine Zeichnung", pytest.approx(1.0, abs=1e-2))]]


@pytest.mark.parametrize("other, what", [
    (EncoderIdentity("resnet50", "digest", "crop_size=8"), "encoder"),
    (EncoderIdentity("toy", "other-weights", "crop_size=8"), "encoder weights"),
    (EncoderIdentity("toy", "digest", "crop_size=224"), "preprocessing"),
])
def test_a_datastore_of_another_encoder_or_preprocessing_is_refused(tmp_path, other, what):
    _store()[0].save(tmp_path)
    with pytest.raises(DatastoreError, match=f"built with another encoder or preprocessing \\({what} "):
        Datastore.load(tmp_path, other)


def test_a_damaged_datastore_is_one_clear_error(tmp_path):
    path = _store()[0].save(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatastoreError, match="corrupt or truncated"):
        Datastore.load(tmp_path)
    assert Datastore.load(tmp_path / "nowhere") is None


def test_consensus_weighs_the_neighbours_captions_by_similarity():
    from captioner.metrics.cider import CiderD

    refs = ["a red apple", "a red apple", "a green pear"]
    scorer = CiderD.from_corpus([[r] for r in refs] + [["a blue car"]])
    close, far = consensus([["a red apple", "a green pear"]], [refs], [[0.9, 0.8, 0.1]], scorer, str.split)[0]
    assert close > far
    flipped = consensus([["a red apple", "a green pear"]], [refs], [[0.1, 0.1, 0.9]], scorer, str.split)[0]
    assert flipped[1] > flipped[0]


# --- retrieved captions for a decoder that reads them ----------------------------------------
def test_training_images_retrieve_neither_themselves_nor_what_they_leave_out():
    store, pooled = _store()
    found = own_rows_neighbours(store, pooled, k=5, chunk=16)  # chunks of another size than the store
    assert found.rows.shape == (40, 5) and np.isfinite(found.similarity).all()
    assert not (found.rows == np.arange(40)[:, None]).any()
    assert (found.rows == store.search(pooled, 6).rows[:, 1:]).all()  # the others, in the search's order
    labels = np.arange(40) % 10  # the caption groups "thing i % 10"
    found = own_rows_neighbours(store, pooled, k=5, labels=labels)
    assert not (labels[found.rows] == labels[:, None]).any()
    tiny = own_rows_neighbours(*_store(rows=3), k=5)  # fewer others than asked: the rest at -inf
    assert tiny.rows.shape == (3, 3) and (tiny.similarity[:, 2] == -np.inf).all()


def test_retrieved_tokens_are_words_end_then_padding():
    vocab = Vocabulary(["a", "red", "apple", "ein", "roter", "apfel"], {"en": "ptb", "de": "unicode"})
    captions = [{"en": ["a red apple"], "de": ["ein roter apfel"]}, {"en": ["apple"]}, {"en": ["a red red red apple"]}]
    store = Datastore.build(np.eye(3, 4, dtype=np.float32), captions, IDENTITY, dims=2)
    neighbours = Neighbours(np.array([[0, 1, 2], [2, 0, 1]]), np.array([[0.9, 0.5, -np.inf], [0.9, 0.5, 0.1]]))
    end, pad = vocab.end_id, vocab.pad_id
    words = lambda text: [vocab.stoi[w] for w in text.split()]  # noqa: E731
    english = retrieved_tokens(store, neighbours, vocab, "en", (3, 4))
    assert english.shape == (2, 3, 4) and english.dtype == np.int64
    assert english[0].tolist() == [[*words("a red apple"), end], [*words("apple"), end, pad, pad], [pad] * 4]
    assert english[1, 0].tolist() == [*words("a red red"), end]  # cut to length - 1 words, then <end>
    german = retrieved_tokens(store, neighbours, vocab, "de", (2, 4))
    assert german[0].tolist() == [[*words("ein roter apfel"), end], [pad] * 4]  # "apple" has no German caption


def test_each_pair_reads_its_images_neighbours_in_its_language():
    tables = {"en": np.arange(3 * 2 * 4).reshape(3, 2, 4), "de": -np.arange(3 * 2 * 4).reshape(3, 2, 4)}
    retrieved = PairRetrieved(tables, image_rows=np.array([0, 0, 1, 2]), languages=np.array(["en", "de", "de", "en"]))
    batch = retrieved(np.array([3, 1, 2]))
    assert batch.dtype == torch.int64 and batch.shape == (3, 2, 4)
    assert batch.tolist() == [tables["en"][2].tolist(), tables["de"][0].tolist(), tables["de"][1].tolist()]


class _PooledCache:
    """A built feature cache's rows as ``features_from_cache`` reads them (pooled features only)."""

    grid_shape = None

    def __init__(self, pooled: np.ndarray):
        self.pooled = pooled

    def rows(self, rows: np.ndarray):
        return torch.from_numpy(self.pooled[rows]), None


def _train_retrieval(leave_out: str = "image", artists=("a", "a", "a", "b", "b", "b"), frozen: bool = True,
                     **retrieval) -> tuple[SimpleNamespace, np.ndarray]:
    """``training_retrieval`` over six images captioned "w0" … "w5" whose features cluster by
    artist; returns the model (its datastore set) and the images each image's pair reads (6, 2)."""
    vocab = Vocabulary([f"w{i}" for i in range(len(artists))])
    examples = [Example(f"img{i}", Path(f"{i}.png"), [f"w{i}"], metadata={"artist": a} if a else {})
                for i, a in enumerate(artists)]
    rng = np.random.default_rng(0)
    centre = {"a": np.eye(8)[0] * 5, "b": np.eye(8)[1] * 5, None: np.eye(8)[2] * 5}
    pooled = np.stack([centre[a] + rng.normal(0, 0.3, 8) for a in artists]).astype(np.float32)
    model = SimpleNamespace(encoder=SimpleNamespace(frozen=frozen), vocab=vocab, datastore=None,
                            decoder=SimpleNamespace(name="retrieval-transformer", retrieved_shape=(2, 3)),
                            encoder_identity=lambda: IDENTITY)
    config = TrainConfig(retrieval=RetrievalConfig(leave_out=leave_out, **retrieval))
    pairs = CaptionPairs(examples, list(range(len(examples))), vocab, max_length=5)
    retrieved = training_retrieval(model, config, _PooledCache(pooled), examples, pairs, log=lambda message: None)
    tokens = retrieved(np.arange(len(pairs))).numpy()  # (pairs, 2, 3): each neighbour's word, <end>, <pad>
    assert (tokens[:, :, 1:] == [vocab.end_id, vocab.pad_id]).all()
    return model, np.vectorize(lambda i: int(vocab.itos[i][1:]))(tokens[:, :, 0])


def test_training_images_read_their_nearest_others_captions_leaving_out_themselves_or_their_artist():
    model, read = _train_retrieval("image")
    assert len(model.datastore) == 6  # the training images: what the finished model captions with
    assert [sorted(row) for row in read.tolist()] == [[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]]
    _, read = _train_retrieval("artist")  # the nearest others are their own artist's: all left out
    for image, row in enumerate(read.tolist()):
        assert len(set(row)) == 2 and set(row) <= ({3, 4, 5} if image < 3 else {0, 1, 2})


def test_training_a_retrieval_decoder_refuses_what_it_cannot_learn_from():
    with pytest.raises(ConfigError, match=r"retrieval.leave_out: 1 images have no 'artist' field "
                                          r"\(e.g. 'img5'\)"):
        _train_retrieval("artist", artists=("a", "a", "a", "b", "b", None))
    with pytest.raises(ConfigError, match="retrieval.datastore must stay true"):
        _train_retrieval(datastore=False)
    with pytest.raises(InvalidInputError, match=r"a frozen encoder \(trainable_blocks: 0\)"):
        _train_retrieval(frozen=False)


@pytest.fixture(scope="module")
def artists_data(tmp_path_factory) -> Path:
    """The tiny set as a Karpathy file with an ``artist`` per image (three of them) and every
    fourth image in val."""
    images = {}
    for row in csv.DictReader(open(TINY / "captions.csv")):
        images.setdefault(row["image"], row["caption"])
    entries = [{"filepath": str(TINY), "filename": name, "split": "val" if i % 4 == 0 else "train",
                "artist": "abc"[i % 3], "sentences": [{"raw": caption}]} for i, (name, caption) in enumerate(images.items())]
    path = tmp_path_factory.mktemp("artists") / "dataset.json"
    path.write_text(json.dumps({"images": entries}), encoding="utf-8")
    return path


def test_a_retrieval_decoder_trains_validates_and_captions_with_its_training_images(artists_data, tmp_path, capsys):
    out = train_tiny(artists_data, tmp_path / "run", "retrieval-transformer", 2, [
        "--set", "retrieval.leave_out=artist",
        "--set", "model.decoder_options={d_model: 32, num_layers: 1, num_heads: 2, ff_dim: 64, neighbours: 2, "
                 "retrieved_length: 8}"])
    assert "each reads its 2 nearest others' captions (leaving out its own artist)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["epoch"] for r in records if "CIDEr" in r] == [1, 2]  # val images captioned with the datastore
    entries = json.loads(artists_data.read_text(encoding="utf-8"))["images"]
    model = Captioner.from_pretrained(out)
    assert len(model.datastore) == sum(e["split"] == "train" for e in entries)
    assert (out / "last" / DATASTORE_FILE).is_file()  # every checkpoint carries it (--resume, the best model)
    val = [str(TINY / e["filename"]) for e in entries if e["split"] == "val"]
    assert all(c.text for c in model.caption(val, beam_size=2))


def test_training_calibrates_the_confidence_without_each_val_images_own_artist(tmp_path, capsys):
    """With ``retrieval.leave_out: artist`` the val images the confidence is fitted on are
    captioned without their artist's datastore rows (each image twice, by two artists, so that
    31 of them are val)."""
    folder = tmp_path / "images"
    folder.mkdir()
    entries = []
    for row in csv.DictReader(open(TINY / "captions.csv")):
        for copy, artist in enumerate("ab"):
            name = f"{artist}-{Path(row['image']).name}"
            if not (folder / name).exists():
                (folder / name).symlink_to(TINY / row["image"])
                entries.append({"filepath": str(folder), "filename": name, "split": ("train", "val")[copy],
                                "artist": artist, "sentences": [{"raw": row["caption"]}]})
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({"images": entries}), encoding="utf-8")
    out = train_tiny(data, tmp_path / "run", "show-tell", 2, ["--set", "retrieval.leave_out=artist"])
    assert "each captioned without its own artist's datastore rows" in capsys.readouterr().out
    model = Captioner.from_pretrained(out)
    fitted = model.confidence
    assert "log_probability" in fitted.signals and len(fitted.held_out_scores) == 31
    # and fitted again on the decoder alone, for captions decoded with retrieval off
    assert fitted.alone.signals == ("familiarity", "word_probability", "log_probability", "margin")
    val = [str(folder / e["filename"]) for e in entries if e["split"] == "val"][:4]
    assert all(c.confidence is not None for c in model.caption(val, retrieval=False))
    assert [c.low_confidence for c in model.caption(val, retrieval=False)] == [c.low_confidence for c in model.caption(val)]


# --- with a real trained model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model(trained_show_tell):
    return Captioner.from_pretrained(trained_show_tell)


def test_training_writes_a_datastore_of_its_training_images(model, tiny_one_caption):
    assert model.datastore is not None and len(model.datastore) == 31
    assert model.datastore.identity == model.encoder_identity()


def test_teacher_forced_scores_equal_the_searchs_own(model):
    features = model.encode_images(sorted((TINY / "images").glob("*.png"))[:3])
    config = model.decoding_config()
    found = beam_search(model.decoder, features, config, 3, 2)
    scored = score_captions(model.decoder, features, config, [[h.tokens for h in image] for image in found])
    for image_found, image_scored in zip(found, scored):
        for h, s in zip(image_found, image_scored):
            assert s.log_prob == pytest.approx(h.log_prob, abs=1e-4)
            assert s.token_log_probs == pytest.approx(h.token_log_probs, abs=1e-4)
    unknown = score_captions(model.decoder, features, config, [[[model.vocab.unk_id]], [], []])
    assert unknown[0][0].log_prob == -np.inf and unknown[1:] == [[], []]


def test_reranking_picks_the_caption_the_neighbours_agree_on(model, tmp_path):
    """A datastore whose images of an apple are all captioned "slice of pizza": the neighbours'
    consensus overrules the decoder's own best caption once it weighs enough."""
    apple = TINY / "images" / "emoji_1f34e.png"
    features = model.encode_images([apple])
    own = model.caption(apple, retrieval=False).text
    rng = np.random.default_rng(0)
    pooled = features.pooled.numpy()
    near = np.repeat(pooled, 4, axis=0) + rng.normal(scale=0.01, size=(4, pooled.shape[1]))
    far = pooled + rng.normal(scale=5.0, size=(20, pooled.shape[1]))  # other captions, for the n-grams' rarity
    others = [{"en": [c]} for c in ("cat face", "dog face", "a clock on a wall", "rocket", "red apple tree")] * 4
    store = Datastore.build(np.concatenate([near, far]).astype(np.float32),
                            [{"en": ["slice of pizza"]}] * 4 + others, model.encoder_identity(), dims=8)
    model.datastore, saved = store, model.datastore
    try:
        results = model.generate(features, DecodeOptions(n_best=3))
        weak = rerank(model, features, results, None, RerankConfig(neighbours=4, weight=0.0, neighbour_captions=True))
        strong = rerank(model, features, results, None, RerankConfig(neighbours=4, weight=5.0))
        kept = rerank(model, features, results, None, RerankConfig(neighbours=4, weight=0.0, neighbour_captions=False))
    finally:
        model.datastore = saved
    text = lambda r: model.vocab.decode(r.hypotheses[0].tokens)  # noqa: E731
    assert own != "slice of pizza" and text(strong[0]) == "slice of pizza"
    assert strong[0].agreement == 1.0 and strong[0].consensus > 5
    assert text(kept[0]) == own and text(weak[0]) != "slice of pizza"


def test_evaluate_scores_the_reranked_captions_caption_writes(model, tmp_path):
    """``captioner evaluate`` scores what ``caption`` writes: reranked by the datastore unless
    ``retrieval=False`` (a datastore that calls every image "slice of pizza", weighed heavily)."""
    from captioner.evaluate import evaluate_model

    images = sorted((TINY / "images").glob("emoji_*.png"))[:4]
    data = tmp_path / "captions.csv"
    data.write_text("image,caption,split\n" + "".join(f"{p},slice of pizza,test\n" for p in images), encoding="utf-8")
    pooled = model.encode_images(images).pooled.numpy()
    far = pooled[:1] + np.random.default_rng(0).normal(scale=5.0, size=(20, pooled.shape[1]))  # n-gram rarity
    others = [{"en": [c]} for c in ("cat face", "dog face", "a clock on a wall", "rocket", "red apple tree")] * 4
    store = Datastore.build(np.concatenate([np.repeat(pooled, 4, axis=0), far]).astype(np.float32),
                            [{"en": ["slice of pizza"]}] * 16 + others, model.encoder_identity(), dims=8,
                            rerank=RerankConfig(neighbours=4, weight=5.0))
    model.datastore, saved = store, model.datastore
    try:
        reranked = evaluate_model(model, data, beam_size=3)
        own = evaluate_model(model, data, beam_size=3, retrieval=False)
        captioned = [c.text for c in model.caption(images)]
    finally:
        model.datastore = saved
    assert captioned == ["slice of pizza"] * 4 and reranked.scores["exact_match"] == 1.0
    assert own.scores["exact_match"] < 1.0


def test_datastore_commands_build_and_add_without_retraining(trained_show_tell, tmp_path):
    run = tmp_path / "model"
    shutil.copytree(trained_show_tell, run, ignore=shutil.ignore_patterns("checkpoints", "last"))
    built = subprocess.run([sys.executable, "-m", "captioner", "datastore", "build", "--model", str(run), "--data",
                            str(TINY / "captions.csv")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    mine = tmp_path / "mine.csv"
    mine.write_text(f"image,caption\n{TINY / 'images' / 'emoji_1f34e.png'},my very own apple\n", encoding="utf-8")
    added = subprocess.run([sys.executable, "-m", "captioner", "datastore", "add", "--model", str(run), "--data",
                            str(mine)], capture_output=True, text=True, timeout=600)
    assert added.returncode == 0, added.stderr
    model = Captioner.from_pretrained(run)
    assert len(model.datastore) == 32
    assert model.datastore.captions[-1] == {"en": ["my very own apple"]}
    wrong = subprocess.run([sys.executable, "-m", "captioner", "datastore", "add", "--model", str(tmp_path / "none"),
                            "--data", str(mine)], capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1


# --- confidence that knows which captions are right --------------------------------------------
def test_confidence_ranks_right_captions_above_wrong_ones():
    """Held-out captions whose rightness is known: agreement with the neighbours and word
    probability say which are right; the fitted confidence orders fresh ones the same way."""
    rng = np.random.default_rng(0)

    def batch(n):
        right = rng.random(n) < 0.4
        values = {"agreement": np.where(right, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.5, n)),
                  "word_probability": np.where(right, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 0.8, n)),
                  "margin": rng.normal(size=n), "consensus": rng.normal(size=n), "similarity": rng.normal(size=n)}
        return rng.normal(size=(n, 8)).astype(np.float32), values, right

    train = [rng.normal(size=(500, 8)).astype(np.float32)]
    pooled, values, right = batch(600)
    model = ConfidenceModel.fit(train, pooled, values, right, "exact match")
    pooled, values, right = batch(2000)
    confidence = model.confidence({**values, "familiarity": model.familiarity(pooled)})
    auroc = (confidence[right][:, None] > confidence[~right][None, :]).mean()
    assert auroc > 0.85
    assert 0.3 < confidence[right].mean() and confidence[~right].mean() < 0.3  # a probability, not a rank
    photo = model.familiarity(pooled[:1] + 50)[0]
    assert model.is_low(0.9, photo) and not model.is_low(0.9, model.familiarity(pooled[:1])[0])
    # Past the flag the fit extrapolates: the same signals on an unfamiliar image score far lower.
    sure = {name: v[:1] for name, v in values.items()} | {"agreement": [1.0], "word_probability": [1.0]}
    familiar, unfamiliar = (model.confidence({**sure, "familiarity": [f]})[0]
                            for f in (model.familiarity(pooled[:1])[0], photo))
    assert familiar > 0.5 and unfamiliar < 1e-6 * familiar  # 50 spreads out: e^-50 and less


def test_a_datastore_without_some_rows_never_finds_them():
    store, pooled = _store()
    gone = np.arange(len(store)) % 3 == 0
    rest = store.without(gone)
    assert len(rest) == int((~gone).sum()) and len(store) == 40 and rest.captions is store.captions
    found = rest.search(pooled, k=5)
    assert set(np.flatnonzero(~gone)[found.rows].ravel()) <= set(np.flatnonzero(~gone))
    assert rest.neighbour_captions(rest.search(pooled[:1], k=1), "en")[0][0][0] != "thing 0"  # row 0 is gone


def test_confidence_is_calibrated_leaving_out_each_images_own_artist(model):
    """Held-out images whose artist the datastore holds find that artist's drawings (here: the
    very images); calibrated with their artist left out, they find only other artists' — as a
    new artist's drawings will — and the neighbours' signals are measured so."""
    from captioner.captions import caption_signals
    from captioner.confidence import fit_confidence

    paths = sorted((TINY / "images").glob("*.png"))[:6]
    features = model.encode_images(paths)
    pooled = features.pooled.numpy()
    far = pooled[[0]] + np.random.default_rng(0).normal(scale=3.0, size=(10, pooled.shape[1]))
    store = Datastore.build(np.concatenate([pooled, far]).astype(np.float32),
                            [{"en": ["cat face"]}] * 6 + [{"en": ["rocket"]}] * 10, model.encoder_identity(), dims=8)
    artists = ["a", "a", "a", "b", "b", "b"]
    held_out = Features(torch.cat([features.pooled] * 4), None if features.grid is None else torch.cat([features.grid] * 4),
                        features.grid_shape)
    references = [["cat face"]] * 24
    model.datastore, saved, confidence = store, model.datastore, model.confidence
    try:
        _, own = caption_signals(model, features, DecodeOptions())
        kept = fit_confidence(model, [features], [held_out], references)
        left_out = fit_confidence(model, [features], [held_out], references, held_out_labels=artists * 4,
                                  store_labels=artists + ["c"] * 10)
        nothing_left_out = fit_confidence(model, [features], [held_out], references, held_out_labels=["x"] * 24,
                                          store_labels=artists + ["c"] * 10)
        with pytest.raises(ValueError, match="3 datastore labels for a datastore of 16 rows"):
            fit_confidence(model, [features], [held_out], references, held_out_labels=artists * 4,
                           store_labels=["a"] * 3)
    finally:
        model.datastore, model.confidence = saved, confidence
    similarity = lambda fitted: fitted.signal_mean[fitted.signals.index("similarity")]  # noqa: E731
    assert own["similarity"] == pytest.approx([1.0] * 6, abs=1e-2) and similarity(kept) == pytest.approx(1.0, abs=1e-2)
    rows = np.array(artists + ["c"] * 10)
    elsewhere = [store.search(pooled[i : i + 1], 1, exclude=(rows == artist)[None]).similarity[0, 0]
                 for i, artist in enumerate(artists)]  # each image's nearest row of another artist
    assert similarity(left_out) == pytest.approx(np.mean(elsewhere), abs=1e-4) and max(elsewhere) < 0.999
    np.testing.assert_array_equal(nothing_left_out.signal_mean, kept.signal_mean)
    assert "log_probability" in kept.signals


def test_the_datastore_translates_captions_its_groups_hold_in_two_languages():
    """Each group holds one image's captions in several languages: a caption in one language
    finds the groups that hold it, and their captions in another, those of the most groups first."""
    groups = [{"en": ["Dog face"], "de": ["Hundegesicht"]}, {"en": ["dog face"], "de": ["Hundegesicht", "Hund"]},
              {"en": ["cat"], "de": ["Katze"]}, {"en": ["bird"]}, {"de": ["Vogel"]}]
    store = Datastore.build(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), groups, IDENTITY, dims=2)
    key = lambda text: " ".join(text.lower().split())  # noqa: E731
    assert store.languages() == {"en", "de"}
    assert store.translations(["dog  face", "cat", "bird", "fish"], "en", "de", key) == [
        ["Hundegesicht", "Hund"], ["Katze"], [], []]
    store.add(np.ones((1, 4), np.float32), [{"en": ["cat"], "fr": ["chat"]}])
    assert store.languages() == {"en", "de", "fr"} and store.translations(["cat"], "en", "fr", key) == [["chat"]]


def test_captions_in_another_language_translate_the_first_languages_through_the_datastore(trained_en_de):
    """A datastore that pairs every image's English caption with *another* image's German one: in
    German the model writes the datastore's translation of its English caption (with that
    caption's confidence signals), not its own German; without retrieval, its own German."""
    model = Captioner.from_pretrained(trained_en_de)
    rows = list(csv.DictReader(open(TINY / "captions_en_de.csv", encoding="utf-8")))
    english = {r["image"]: r["caption"] for r in rows if r["language"] == "en"}
    german = {r["image"]: r["caption"] for r in rows if r["language"] == "de"}
    images = sorted(english)
    shifted = {image: german[images[(i + 1) % len(images)]] for i, image in enumerate(images)}
    paths = [str(TINY / image) for image in images]
    features = model.encode_images(paths)
    store = Datastore.build(features.pooled.numpy(), [{"en": [english[i]], "de": [shifted[i]]} for i in images],
                            model.encoder_identity(), dims=8, rerank=RerankConfig(neighbours=3, weight=0.0))
    model.datastore = store
    own_english = model.caption(paths, beam_size=1)
    assert [c.text for c in own_english] == [model.vocab.decode(model.vocab.encode(english[i])) for i in images]
    translated = model.caption(paths, beam_size=1, language="de")
    assert [c.text for c in translated] == [model.vocab.decode(model.vocab.encode(shifted[i], language="de"))
                                            for i in images]
    from captioner.captions import caption_signals

    _, english_signals = caption_signals(model, features, DecodeOptions(beam_size=1))
    _, german_signals = caption_signals(model, features, DecodeOptions(beam_size=1, language="de"))
    assert set(german_signals) == {"consensus", "agreement", "similarity", "margin", "word_probability",
                                   "log_probability"}
    assert german_signals == english_signals  # what the confidence reads: the translated caption's
    own_german = model.caption(paths, beam_size=1, language="de", retrieval=False)
    assert [c.text for c in own_german] == [model.vocab.decode(model.vocab.encode(german[i], language="de"))
                                            for i in images]


def test_reranking_drops_hopeless_candidates_without_changing_its_top_places(model):
    """Neighbours' captions that provably rank below the beam's second place stop being scored
    (``floors``); the two best places, their scores and the signals are what a full scoring gives."""
    images = sorted((TINY / "images").glob("*.png"))[:6]
    features = model.encode_images(images)
    rng = np.random.default_rng(1)
    pooled = np.repeat(features.pooled.numpy(), 3, axis=0) + rng.normal(scale=0.05, size=(18, features.pooled.shape[1]))
    captions = [{"en": [c]} for c in ("cat face", "dog face", "a clock on a wall", "rocket", "red apple", "a cup")] * 3
    model.datastore, saved = Datastore.build(pooled.astype(np.float32), captions, model.encoder_identity(), dims=8), \
        model.datastore
    try:
        results = model.generate(features, DecodeOptions(n_best=3))
        for config in (RerankConfig(neighbours=6, weight=0.0), RerankConfig(neighbours=6, weight=0.5)):
            pruned = rerank(model, features, results, None, config, keep=2)
            full = rerank(model, features, results, None, config, keep=10**6)
            for p, f in zip(pruned, full):
                assert [(h.tokens, h.score) for h in p.hypotheses[:2]] == [(h.tokens, h.score) for h in f.hypotheses[:2]]
                assert (p.consensus, p.agreement, p.similarity, p.margin) == (f.consensus, f.agreement, f.similarity,
                                                                             f.margin)
        everything = [[list(range(5, 9))] for _ in images]
        assert all(math.isfinite(h[0].log_prob) for h in model.score_captions(features, everything, None,
                                                                              [[-math.inf]] * len(images)))
        assert all(h[0].log_prob == -math.inf for h in model.score_captions(features, everything, None,
                                                                            [[0.0]] * len(images)))
    finally:
        model.datastore = saved


def test_a_one_language_model_captions_in_the_languages_its_datastore_translates_into(model, tmp_path):
    """An English model whose datastore keeps Japanese and Arabic captions beside English ones
    captions in those too: its English caption, translated through the datastore (that caption's
    signals); an English caption no stored image carries gives the nearest image's caption, with
    the word probability and margin of a caption the decoder did not write (0). Evaluation
    scores it with the language's tokenizer; retrieval off or an unknown language: one line."""
    from captioner.captions import caption_signals, check_language, model_languages
    from captioner.evaluate import evaluate_model

    paths = sorted((TINY / "images").glob("emoji_*.png"))
    english = [c.text for c in model.caption(paths, beam_size=1, retrieval=False)]
    unique = [i for i, text in enumerate(english) if english.count(text) == 1][:5]
    paths, english = [paths[i] for i in unique], [english[i] for i in unique]
    assert len(paths) == 5
    japanese = [f"絵文字{'一二三四五'[i]}" for i in range(5)]
    groups = [{"en": ["a caption nobody writes" if i == 0 else text], "ja": [japanese[i]], "ar": [f"رمز {i}"]}
              for i, text in enumerate(english)]
    features = model.encode_images(paths)
    store = Datastore.build(features.pooled.numpy(), groups, model.encoder_identity(), dims=4,
                            rerank=RerankConfig(neighbours=2, weight=0.0, neighbour_captions=False))
    model.datastore, saved = store, model.datastore
    try:
        assert list(model_languages(model)) == ["en", "ar", "ja"]
        assert model_languages(model)["ja"] == "chars" and check_language(model, "JA") == "ja"
        captions = model.caption(paths, beam_size=1, language="ja")
        assert [c.text for c in captions] == japanese
        _, signals = caption_signals(model, features, DecodeOptions(beam_size=1, language="ja"))
        _, pivot = caption_signals(model, features, DecodeOptions(beam_size=1))
        assert signals["word_probability"][0] == 0.0 and signals["margin"][0] == 0.0 < pivot["word_probability"][0]
        assert signals["log_probability"][0] == -math.inf < pivot["log_probability"][0]
        assert {k: v[1:] for k, v in signals.items()} == {k: v[1:] for k, v in pivot.items()}
        with pytest.raises(InvalidInputError, match=r"'ja' is not one .* knows en \(ar, ja only through its datastore"):
            model.caption(paths[0], language="ja", retrieval=False)
        with pytest.raises(InvalidInputError, match="knows en, ar, ja$"):
            model.caption(paths[0], language="ko")
        data = tmp_path / "captions.csv"
        data.write_text("image,caption,split,language\n" + "".join(
            f"{p},{e},test,en\n{p},{j},test,ja\n" for p, e, j in zip(paths, english, japanese)), encoding="utf-8")
        scored = evaluate_model(model, data, beam_size=1, language="ja")
    finally:
        model.datastore = saved
    assert scored.scores["language"] == "ja" and scored.scores["tokenizer"] == "chars"
    assert scored.scores["exact_match"] == 1.0 and "loss" not in scored.scores
