"""Captions in other languages (issue #24): word tokenizers per script, word and subword vocabularies
with language tokens, dataset readers' ``language`` fields, and scores in the language's words."""
from __future__ import annotations

import json
import math

import pytest

from captioner.data.language import (
    char_segments, get_tokenizer, list_tokenizers, normalize_language, tokenizer_for, word_joiner,
)
from captioner.data.sources import DatasetError, read_dataset, select_languages
from captioner.data.tokenizer import ptb_tokenize
from captioner.data.vocab import SubwordVocabulary, Vocabulary, create_vocabulary, vocabulary_for
from captioner.errors import InvalidInputError, UnknownNameError
from captioner.metrics import evaluate_captions

from conftest import FIXTURES, TINY

LANGUAGES = {"en": "ptb", "de": "unicode", "ja": "chars"}
CAPTIONS = [("a dog face", "en"), ("a cat face", "en"), ("Hundegesicht", "de"), ("Katzengesicht", "de"),
            ("イヌの顔", "ja"), ("ネコの顔", "ja")]


# --------------------------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("tokenizer, text, words", [
    # accented Latin: NFC, lower case keeps ß (casefold would write "strasse"), punctuation dropped
    ("unicode", "Äpfel, Öl — STRASSE und Straße.", ["äpfel", "öl", "strasse", "und", "straße"]),
    ("unicode", "Cafe\u0301 au lait", ["café", "au", "lait"]),  # decomposed accent: one word
    ("unicode", "o'clock, mittel-dunkel", ["o'clock", "mittel-dunkel"]),
    # Arabic (right to left): words, harakat inside them, Arabic comma and question mark dropped
    ("unicode", "وجه كلب، قطّة؟", ["وجه", "كلب", "قطّة"]),
    # Devanagari: vowel signs and viramas are combining marks inside the word, the danda is punctuation
    ("unicode", "क्या हाल है। कुत्ते का चेहरा", ["क्या", "हाल", "है", "कुत्ते", "का", "चेहरा"]),
    # Persian: the zero-width non-joiner stays inside its word
    ("unicode", "می\u200cخواهم", ["می\u200cخواهم"]),
    # emoji inside text: each emoji (with its skin tone and ZWJ parts) a word of its own
    ("unicode", "I love 🐶 dogs 👩🏽‍🔧!", ["i", "love", "🐶", "dogs", "👩🏽\u200d🔧"]),
    # CJK: one word per character, punctuation (full-width too) dropped
    ("chars", "女性の整備士: 中間の肌色。", ["女", "性", "の", "整", "備", "士", "中", "間", "の", "肌", "色"]),
    ("chars", "女技工：淺褐皮膚", ["女", "技", "工", "淺", "褐", "皮", "膚"]),
    ("chars", "狗脸🐶", ["狗", "脸", "🐶"]),
    # Thai: grapheme clusters, so tone marks and vowel signs stay with their consonant
    ("chars", "หน้าสุนัข", ["ห", "น้", "า", "สุ", "นั", "ข"]),
])
def test_tokenizers_per_script(tokenizer, text, words):
    assert get_tokenizer(tokenizer)(text) == words


def test_ptb_is_the_english_default_and_unchanged():
    assert get_tokenizer("ptb") is ptb_tokenize
    assert tokenizer_for("en") == tokenizer_for("en-GB") == "ptb"
    assert tokenizer_for("ja") == tokenizer_for("zh-Hant") == tokenizer_for("th") == "chars"
    assert tokenizer_for("de") == tokenizer_for("ar") == tokenizer_for("hi") == "unicode"
    assert set(list_tokenizers()) >= {"ptb", "unicode", "chars"}
    assert word_joiner("chars") == "" and word_joiner("unicode") == " "
    assert char_segments("イヌ: 顔") == [["イ", "ヌ"], ["顔"]]
    with pytest.raises(UnknownNameError, match="unknown tokenizer 'mecab'; choose one of chars, ptb, unicode"):
        get_tokenizer("mecab")


def test_language_codes_are_checked_and_spelled_as_cldr():
    assert [normalize_language(c) for c in ("EN", "zh_hant", "pt-pt", "sr-latn-ba")] == \
        ["en", "zh-Hant", "pt-PT", "sr-Latn-BA"]
    with pytest.raises(InvalidInputError, match="row 3: 'english!' is not a language code"):
        normalize_language("english!", "row 3")


# --------------------------------------------------------------------------------------------- vocabularies
def test_a_vocabulary_from_before_languages_loads_as_english_ptb_and_encodes_as_before():
    path = FIXTURES / "vocab-before-languages.json"  # the English bundled model's, round 3
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert set(raw) == {"itos"}  # written before languages existed
    vocab = Vocabulary.load(path)
    assert vocab.languages == {"en": "ptb"} and vocab.language_ids == {}
    assert vocab.itos == raw["itos"]
    caption = "Woman running: medium-dark skin tone"
    expected = [1, *(raw["itos"].index(w) for w in ptb_tokenize(caption)), 2]
    assert vocab.encode(caption) == vocab.encode(caption, language="en") == expected
    assert vocab.decode(expected) == "woman running medium-dark skin tone"
    assert vocab.language_token_id(None) is None and vocab.language_token_id("en") is None
    with pytest.raises(InvalidInputError, match="^language 'ja' is not one this model was trained on; it knows en$"):
        vocab.language_token_id("ja")


def test_word_vocabulary_with_language_tokens():
    vocab = create_vocabulary("word", CAPTIONS, languages=LANGUAGES, min_count=1)
    assert vocab.itos[:7] == ["<pad>", "<start>", "<end>", "<unk>", "<2en>", "<2de>", "<2ja>"]
    ids = vocab.encode("イヌの顔。", language="ja")
    assert ids[:2] == [vocab.start_id, vocab.language_token_id("ja")] and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == "イヌの顔"  # characters joined without spaces, the language token left out
    assert vocab.words(ids) == ["イ", "ヌ", "の", "顔"]
    assert vocab.decode(vocab.encode("Hundegesicht!", language="de")) == "hundegesicht"
    assert vocab.encode("a dog face", max_length=2, language="en")[2:-1] == [vocab.stoi["a"], vocab.stoi["dog"]]
    with pytest.raises(InvalidInputError, match="^language 'fr' is not one this model was trained on; it knows en, de, ja"):
        vocab.encode("un chien", language="fr")
    assert all(vocab.word_starts)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_round_trip_and_save_load_without_pickle(kind, tmp_path):
    vocab = create_vocabulary(kind, CAPTIONS * 3, languages=LANGUAGES, vocab_size=60)
    assert isinstance(vocab, SubwordVocabulary) and vocab.kind == kind
    assert vocab.itos[:7] == ["<pad>", "<start>", "<end>", "<unk>", "<2en>", "<2de>", "<2ja>"]
    for text, language in CAPTIONS + [("Hunde, Katzengesicht!", "de")]:
        ids = vocab.encode(text, language=language)
        assert ids[:2] == [vocab.start_id, vocab.language_token_id(language)]
        assert vocab.decode(ids) == {"a dog face": "a dog face"}.get(text, text.lower().replace("!", "").replace(",", ""))
        assert vocab.words(ids) == vocab.tokenize(text, language)  # what metrics and rewards score
    pieces = [vocab.itos[i] for i in vocab.encode("Hundegesicht", language="de")[2:-1]]
    starts = [vocab.word_starts[vocab.stoi[p]] for p in pieces]
    assert starts[0] and not any(starts[1:]) or pieces == ["▁", *pieces[1:]]  # one word, however many pieces
    vocab.save(tmp_path / "vocab.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "vocab.json"]
    for name in ("tokenizer.json", "vocab.json"):  # plain JSON, nothing a loader could execute
        json.loads((tmp_path / name).read_text(encoding="utf-8"))
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert type(again) is SubwordVocabulary and again.itos == vocab.itos and again.languages == vocab.languages
    assert again.encode("Katzengesicht", language="de") == vocab.encode("Katzengesicht", language="de")


def test_subword_vocabulary_refuses_files_it_did_not_write(tmp_path):
    vocab = create_vocabulary("bpe", CAPTIONS, languages=LANGUAGES, vocab_size=40)
    vocab.save(tmp_path / "vocab.json")
    data = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    (tmp_path / "vocab.json").write_text(json.dumps({**data, "subwords": "../elsewhere.json"}), encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json' beside vocab.json"):
        Vocabulary.load(tmp_path / "vocab.json")
    (tmp_path / "vocab.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a readable tokenizers model"):
        Vocabulary.load(tmp_path / "vocab.json")


def test_readers_take_a_language_per_caption(tmp_path):
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("image,caption,language\na.png,a dog,en\na.png,ein Hund,de\nb.png,イヌ,ja\nb.png,dog,\n",
                        encoding="utf-8")
    examples = read_dataset(csv_path)
    assert [e.languages for e in examples] == [["en", "de"], ["ja", None]]
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "a dog"},
        {"id": 2, "image_id": 1, "caption": "犬", "language": "zh_hans"}]}), encoding="utf-8")
    assert read_dataset(coco)[0].languages == [None, "zh-Hans"]
    karpathy = tmp_path / "karpathy.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "a.png", "sentences": [
        {"raw": "Hundegesicht", "language": "de"}, {"raw": "dog face", "language": "en"}]}]}), encoding="utf-8")
    assert read_dataset(karpathy)[0].languages == ["de", "en"]
    plain = read_dataset(TINY / "captions.csv")
    assert all(e.languages == [] for e in plain)  # a dataset that names no language stays as it was
    csv_path.write_text("image,caption,language\na.png,a dog,english!\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"captions.csv: row 1: 'english!' is not a language code"):
        read_dataset(csv_path)


def test_select_languages_and_vocabulary_for():
    examples = read_dataset(TINY / "captions_en_de.csv")
    both = select_languages(examples, "en")
    assert sum(len(e.captions) for e in both) == 62
    german = select_languages(examples, "en", ["de"])
    assert len(german) == 31 and all(e.languages == ["de"] for e in german)
    vocab = vocabulary_for(german, min_count=1)
    assert vocab.languages == {"de": "unicode"} and vocab.language_ids == {}  # one language: no token
    vocab = vocabulary_for(both, kind="word", language="de", min_count=1)
    assert list(vocab.languages) == ["de", "en"] and vocab.languages["en"] == "ptb"
    untagged = select_languages(read_dataset(TINY / "captions.csv"), "en")
    assert vocabulary_for(untagged, min_count=1).itos == Vocabulary.build(
        [c for e in untagged for c in e.captions], min_count=1).itos
    with pytest.raises(DatasetError, match="^no captions in ja; the captions here are in de, en"):
        select_languages(examples, "en", ["ja"])


def test_config_language_keys_are_checked():
    from captioner.train.config import ConfigError, load_config

    config = load_config(overrides={"data.languages": "de,ja", "data.language": "DE", "data.vocabulary": "bpe"})
    assert config.data.languages == ["de", "ja"] and config.data.language == "de"
    for key, value, message in (("data.vocabulary", "wordpiece", "data.vocabulary: expected one of word, bpe"),
                                ("data.tokenizer", "mecab", "unknown tokenizer 'mecab'"),
                                ("data.languages", "de,??", r"data.languages: '\?\?' is not a language code")):
        with pytest.raises(ConfigError, match=message):
            load_config(overrides={key: value})


# --------------------------------------------------------------------------------------------- metrics
def test_japanese_scores_computed_by_hand():
    """Two images scored on characters. BLEU: every n-gram of the candidates is in the references,
    so BLEU-n is the brevity penalty, exp(1 - 8/6). CIDEr-D (coco-caption's: raw counts × (log N −
    log df), N = 2 images; length penalty exp(−Δ²/72) on bigram counts; ×10): image 1 equals its
    reference, 10; image 2 "ネコ" against "ネコの顔": n=1 cosine 1, n=2 cosine 1/√2 (ネコ, コの, の顔 with
    の顔 in both references, idf 0), no 3- or 4-grams; Δ = 1 − 3."""
    predictions = {1: "イヌの顔。", 2: "ネコ"}
    references = {1: ["イヌの顔"], 2: ["ネコの顔"]}
    out = evaluate_captions(predictions, references, metrics=["bleu", "cider", "meteor", "spice"], language="ja")
    assert out["tokenizer"] == "chars" and out["language"] == "ja"
    brevity = math.exp(1 - 8 / 6)
    for n in range(1, 5):
        assert out[f"Bleu_{n}"] == pytest.approx(brevity, abs=1e-6)
    image_2 = 10 * (1 + 1 / math.sqrt(2)) / 4 * math.exp(-(2 ** 2) / (2 * 6 ** 2))
    assert out["per_image"][1]["CIDEr"] == pytest.approx(10.0)
    assert out["per_image"][2]["CIDEr"] == pytest.approx(image_2)
    assert out["CIDEr"] == pytest.approx((10 + image_2) / 2)
    assert set(out["skipped"]) == {"METEOR", "SPICE"} and "English-only" in out["skipped"]["METEOR"]
    ptb = evaluate_captions(predictions, references, metrics=["cider"])  # PTB: a Japanese phrase is one "word"
    assert ptb["tokenizer"] == "ptb" and ptb["per_image"][2]["CIDEr"] == 0.0


def test_evaluate_files_scores_in_the_references_language(tmp_path, capsys):
    from captioner.evaluate import evaluate_files

    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "caption": "Hundegesicht", "language": "de"},
        {"image_id": 2, "caption": "rotes Herz", "language": "de"}]}), encoding="utf-8")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": 1, "caption": "Hundegesicht!"},
                                 {"image_id": 2, "caption": "Rotes Herz."}]), encoding="utf-8")
    scores = evaluate_files(preds, refs)
    assert scores["tokenizer"] == "unicode" and scores["language"] == "de"
    assert scores["Bleu_1"] == pytest.approx(1.0) and "METEOR" in scores["skipped"]
    from captioner import cli

    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(refs)]) == 0
    printed = capsys.readouterr()
    assert "tokenizer    unicode" in printed.out and "language     de" in printed.out
    assert "METEOR skipped: METEOR is English-only" in printed.err


# --------------------------------------------------------------------------------------------- self-critical
def test_self_critical_rewards_score_words_not_pieces():
    from captioner.objectives import SelfCritical, reward_document_frequencies

    captions = [["Hundegesicht"], ["Katzengesicht"], ["rotes Herz"]]
    vocab = create_vocabulary("bpe", [(c[0], "de") for c in captions] * 2, languages={"de": "unicode"},
                              vocab_size=45)
    scorer, references = reward_document_frequencies(captions, vocab.tokenize)
    objective = SelfCritical(scorer, scorer.prepare_references(references), vocab)
    sample = vocab.encode("Hundegesicht")[1:-1]
    assert len(sample) > 1  # several pieces, one word
    rewards = objective.rewards([sample, vocab.encode("Katzengesicht")[1:-1]], [0, 0], max_length=20)
    assert rewards[0] > 0 and rewards[1] == 0.0  # the right word earns the reward, pieces of another none


# --------------------------------------------------------------------------------------------- training
def test_training_path_with_german_subwords(tmp_path):
    """The whole path on the tiny set's German captions: unicode words, a BPE vocabulary saved beside
    the model, evaluation in German words that says so (learning itself: the test below)."""
    from captioner.evaluate import evaluate_model
    from captioner.model import Captioner

    from conftest import train_tiny

    out = train_tiny(TINY / "captions_en_de.csv", tmp_path / "de", epochs=2, extra=[
        "--set", "data.languages=de", "--set", "data.vocabulary=bpe", "--set", "data.vocab_size=300"])
    assert (out / "tokenizer.json").is_file() and (out / "last" / "tokenizer.json").is_file()
    model = Captioner.from_pretrained(out)
    assert isinstance(model.vocab, SubwordVocabulary) and model.vocab.languages == {"de": "unicode"}
    assert json.loads((out / "cider_df.json").read_text())["tokenizer"] == "unicode"
    evaluation = evaluate_model(model, TINY / "captions_en_de.csv", split="train", beam_size=1)
    assert evaluation.scores["tokenizer"] == "unicode" and evaluation.scores["language"] == "de"
    assert set(evaluation.scores["skipped"]) == {"METEOR", "SPICE"}
    assert len(evaluation.predictions) == 31


def test_one_model_learns_two_languages(trained_en_de):
    """The tiny set with every image captioned in English and German, one BPE vocabulary with <2en>
    and <2de>: forced to either language, the model writes that language's caption of every image."""
    from captioner.model import Captioner

    model = Captioner.from_pretrained(trained_en_de)
    assert model.vocab.languages == {"en": "ptb", "de": "unicode"}
    examples = select_languages(read_dataset(TINY / "captions_en_de.csv"), "en")
    for language in ("en", "de"):
        captions = model.caption([str(e.path) for e in examples], beam_size=1, language=language)
        expected = [model.vocab.decode(model.vocab.encode(c, language=lang))
                    for e in examples for c, lang in zip(e.captions, e.languages) if lang == language]
        assert [c.text for c in captions] == expected
    with pytest.raises(InvalidInputError, match="^language 'ja' is not one this model captions in; it knows en, de$"):
        model.caption(str(examples[0].path), language="ja")


def test_word_vectors_refuse_a_subword_vocabulary(tmp_path):
    from torch import nn

    from captioner.data.word_vectors import load_word_vectors

    vocab = create_vocabulary("bpe", CAPTIONS, languages=LANGUAGES, vocab_size=40)
    with pytest.raises(InvalidInputError, match="need a word vocabulary; this one is bpe"):
        load_word_vectors(nn.Embedding(len(vocab), 4), vocab, tmp_path / "glove.txt")


def test_caption_command_refuses_an_unknown_language_in_one_line(trained_en_de, capsys):
    from captioner.cli import main

    image = str(TINY / "images" / "chelsea.jpg")
    assert main(["caption", image, "--model", str(trained_en_de), "--language", "ja"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "captioner caption: error: language 'ja' is not one this model captions in; it knows en, de"
    assert main(["caption", image, "--model", str(trained_en_de), "--language", "de"]) == 0


def test_each_epoch_trains_the_default_language_and_a_draw_of_the_others():
    """data.other_languages_per_epoch: every English caption every epoch, plus one caption per image
    in another language, drawn anew each epoch (the count stays the same, so epochs have one length)."""
    from pathlib import Path

    import numpy as np

    from captioner.data.examples import Example
    from captioner.data.loaders import BucketBatchSampler, CaptionPairs
    from captioner.data.vocab import Vocabulary

    langs = ["en", "de", "fr", "es"]
    examples = [Example(str(i), Path(f"{i}.png"), [f"thing {i} {lang}" for lang in langs], languages=langs)
                for i in range(6)]
    vocab = Vocabulary(["thing", *map(str, range(6)), *langs], languages={lang: "unicode" for lang in langs})
    pairs = CaptionPairs(examples, list(range(6)), vocab, max_length=5)
    draws = [pairs.epoch_pairs(epoch, seed=0, other_languages=1) for epoch in range(6)]
    for chosen in draws:
        assert len(chosen) == 12 and pairs.in_default_language[chosen].sum() == 6
        assert sorted(pairs.image_rows[chosen[~pairs.in_default_language[chosen]]]) == list(range(6))  # one per image
    assert len({tuple(c) for c in draws}) > 1  # a new draw each epoch
    assert np.array_equal(draws[2], pairs.epoch_pairs(2, seed=0, other_languages=1))  # reproducible (resume)
    sampler = BucketBatchSampler(pairs.lengths, 4, seed=0, epoch_pairs=lambda e: pairs.epoch_pairs(e, 0, 1))
    sampler.set_epoch(3)
    assert sorted(int(i) for batch in sampler for i in batch) == sorted(draws[3].tolist())
    assert len(sampler) == len(list(sampler))


def test_a_subword_captions_words_and_attention_are_per_word():
    """Pieces join into the words a reader sees (no ``▁`` marker), each word's attention the mean
    of its pieces'; a word vocabulary keeps one row per token."""
    import numpy as np

    from captioner.captions import word_attention

    vocab = create_vocabulary("bpe", CAPTIONS, languages=LANGUAGES, vocab_size=40)
    pieces = lambda text: vocab.encode(text, language="de")[2:-1]  # noqa: E731  (no markers)
    ids = pieces("Hundegesicht Katzengesicht")
    assert len(ids) > 2  # 40 pieces: each word is several
    attention = np.random.default_rng(0).dirichlet(np.ones(6), size=len(ids)).astype(np.float32)
    words, per_word = word_attention(vocab, ids, attention, "de")
    assert words == ["hundegesicht", "katzengesicht"] and per_word.shape == (2, 6)
    first = len(pieces("Hundegesicht"))
    assert np.allclose(per_word.sum(1), 1.0) and np.allclose(per_word[0], attention[:first].mean(0))
    plain = create_vocabulary("word", CAPTIONS, languages=LANGUAGES, min_count=1)
    ids = plain.encode("a dog face", language="en")[2:-1]
    words, same = word_attention(plain, ids, attention[: len(ids)], "en")
    assert words == ["a", "dog", "face"] and np.array_equal(same, attention[:3])
