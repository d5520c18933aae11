"""Every registered decoder: shapes, gradients, step-vs-teacher-forcing agreement, decoding,
save/load — plus learning runs for the attention decoders, attention pictures, pretrained
word vectors and encoder fine-tuning. Every decoder is given retrieved captions (and a model
a datastore): those that do not read them ignore them."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import Captioner, create_decoder, list_decoders
from captioner.data.images import PreprocessConfig
from captioner.data.tokenizer import ptb_tokenize
from captioner.data.vocab import Vocabulary
from captioner.decoders import Features
from captioner.decoding import DecodingConfig, beam_search, greedy
from captioner.errors import InvalidInputError
from captioner.objectives import CaptionCrossEntropy
from captioner.model import ModelDirectoryError
from captioner.retrieval import DATASTORE_FILE, Datastore, DatastoreError

from conftest import train_tiny

VOCAB = 30
POOLED_DIM, GRID_DIM, REGIONS = 20, 12, 4

TINY_OPTIONS = {
    "show-tell": {"embed_dim": 16, "hidden_dim": 24},
    "show-attend-tell": {"embed_dim": 16, "hidden_dim": 24, "attention_dim": 12},
    "transformer": {"d_model": 16, "num_layers": 2, "num_heads": 2, "ff_dim": 32, "max_positions": 24},
    "merge": {"embed_dim": 16, "hidden_dim": 24},
    "one-shot": {"hidden_dim": 24, "max_length": 24},
    "retrieval-transformer": {"d_model": 16, "num_layers": 2, "num_heads": 2, "ff_dim": 32, "max_positions": 24,
                              "neighbours": 3, "retrieved_length": 5},
}
NEIGHBOURS, RETRIEVED_LENGTH = 3, 5
DECODERS = list_decoders()


def tiny_decoder(name: str, **overrides):
    return create_decoder(name, VOCAB, POOLED_DIM, GRID_DIM, **{**TINY_OPTIONS.get(name, {}), **overrides})


def random_features(batch: int = 3, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(batch, POOLED_DIM, generator=g), torch.randn(batch, REGIONS, GRID_DIM, generator=g),
                    retrieved=random_retrieved(batch, g))


def random_retrieved(batch: int, g: torch.Generator) -> torch.Tensor:
    """Retrieved captions (batch, neighbours, length): words, <end>, <pad>; the last neighbour has none."""
    tokens = torch.randint(4, VOCAB, (batch, NEIGHBOURS, RETRIEVED_LENGTH), generator=g)
    lengths = torch.randint(2, RETRIEVED_LENGTH + 1, (batch, NEIGHBOURS, 1), generator=g)
    lengths[:, -1] = 0
    position = torch.arange(RETRIEVED_LENGTH)
    tokens = torch.where(position == lengths - 1, Vocabulary.end_id, tokens)
    return torch.where(position >= lengths, Vocabulary.pad_id, tokens)


def random_tokens(batch: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (batch, length), generator=g)
    tokens[:, 0] = Vocabulary.start_id
    return tokens


def teacher_forced(decoder, features, tokens):
    kwargs = {"return_attention": True} if decoder.has_attention else {}
    return decoder(features, tokens, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models multiply small matrices: one thread is faster than two fighting over a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DECODING = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1, 3), max_length=8)


# --- the interface, for every decoder ---------------------------------------------------
@pytest.mark.parametrize("name", DECODERS)
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    decoder = tiny_decoder(name).train()
    features, tokens = random_features(), random_tokens()
    output = teacher_forced(decoder, features, tokens)
    assert output.logits.shape == (3, 9, VOCAB)
    if decoder.has_attention:
        assert output.attention.shape == (3, 9, REGIONS)
        assert (output.attention >= 0).all() and (output.attention.sum(-1) <= 1 + 1e-5).all()
    loss = output.logits.logsumexp(-1).mean() + (output.aux_loss if output.aux_loss is not None else 0)
    loss.backward()
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable), "every parameter takes part in the forward pass"
    assert any(p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("name", DECODERS)
def test_trains_under_cpu_bf16_autocast(name):
    """What ``cpu_amp`` runs (and CUDA's amp, in bf16): the objective's loss under bf16 autocast
    is within a few percent of fp32's and its gradients reach every (fp32) parameter — on CPUs
    without a bf16 LSTM in oneDNN too (AVX2), where the LSTM stacks used to raise."""
    decoder = tiny_decoder(name).train()
    features, tokens = random_features(), random_tokens()
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)  # the same dropout masks
        decoder.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            losses[amp] = CaptionCrossEntropy(Vocabulary.pad_id)(decoder, features, tokens).loss
        losses[amp].backward()
    torch.testing.assert_close(losses[True], losses[False], rtol=3e-2, atol=0)
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in trainable)


@pytest.mark.parametrize("name", DECODERS)
def test_step_matches_teacher_forcing(name):
    torch.manual_seed(0)
    decoder = tiny_decoder(name).eval()
    features, tokens = random_features(), random_tokens()
    with torch.no_grad():
        output = teacher_forced(decoder, features, tokens)
        expected = output.logits.log_softmax(-1)  # (batch, T, vocab)
        state = decoder.init_state(features)
        for t in range(tokens.shape[1]):
            log_probs, state = decoder.step(tokens[:, t], state)
            torch.testing.assert_close(log_probs, expected[:, t], atol=1e-5, rtol=0)
            if decoder.has_attention:
                torch.testing.assert_close(state["attention"], output.attention[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", DECODERS)
def test_beam_of_one_is_greedy(name):
    torch.manual_seed(0)
    decoder = tiny_decoder(name).eval()
    features = random_features(batch=4)
    greedy_hypotheses = greedy(decoder, features, DECODING)
    beam_hypotheses = beam_search(decoder, features, DECODING, beam_size=1)
    for g, b in zip(greedy_hypotheses, beam_hypotheses):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-4)
        if decoder.has_attention:
            torch.testing.assert_close(g[0].attention, b[0].attention)


@pytest.mark.parametrize("name", DECODERS)
def test_beam_search_batches_independently(name):
    """A batch of images decodes as each image alone (state expansion and reordering are right)."""
    torch.manual_seed(0)
    decoder = tiny_decoder(name).eval()
    features = random_features(batch=3)
    together = beam_search(decoder, features, DECODING, beam_size=3)
    for i in range(3):
        alone = beam_search(decoder, Features(*(f[i : i + 1] if f is not None else None for f in features)),
                            DECODING, 3)
        assert alone[0][0].tokens == together[i][0].tokens


@pytest.fixture(scope="module")
def random_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random-images")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        pixels = (torch.rand(48, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        path = folder / f"random{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def small_captioner(decoder: str, words=("a", "cat", "dog", "on", "red", "mat")) -> Captioner:
    """A tiny random model; with a datastore of a few captioned random features when its decoder
    reads retrieved captions."""
    vocab = Vocabulary(words)
    model = Captioner.build(
        "efficientnet_lite0",
        decoder,
        vocab,
        encoder_options={"pretrained": False},
        decoder_options=TINY_OPTIONS.get(decoder, {}),
        preprocess=PreprocessConfig(crop_size=64, resize_size=64, mean=(0.5,) * 3, std=(0.5,) * 3),
        max_length=8,
    )
    if model.decoder.retrieved_shape is not None:
        pooled = np.random.default_rng(0).normal(size=(5, model.encoder.pooled_dim)).astype(np.float32)
        captions = [{"en": [c]} for c in ("a cat", "a red dog on a mat", "dog", "red mat", "a cat on a red mat")]
        model.datastore = Datastore.build(pooled, captions, model.encoder_identity(), dims=4)
    return model


@pytest.mark.parametrize("name", DECODERS)
def test_save_load_same_captions(name, random_images, tmp_path):
    torch.manual_seed(0)
    model = small_captioner(name).eval()
    before = model.caption(random_images, beam_size=2, n_best=2)
    model.save_pretrained(tmp_path / "model")
    loaded = Captioner.from_pretrained(tmp_path / "model")
    after = loaded.caption(random_images, beam_size=2, n_best=2)
    assert [c.text for c in after] == [c.text for c in before]
    for b, a in zip(before, after):
        assert [x.text for x in a.alternatives] == [x.text for x in b.alternatives]
        assert a.score == pytest.approx(b.score, abs=1e-4)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["decoder"]["name"] == name
    assert TINY_OPTIONS.get(name, {}).items() <= config["decoder"]["options"].items()


# --- decoder-specific behaviour -------------------------------------------------------
def test_transformer_variants_agree_with_their_steps():
    for options in ({"positions": "sinusoidal", "tie_embeddings": True}, {"pooled_token": False}):
        decoder = tiny_decoder("transformer", **options).eval()
        features, tokens = random_features(), random_tokens()
        with torch.no_grad():
            output = decoder(features, tokens, return_attention=True)
            assert output.attention.shape == (3, 9, REGIONS)
            state = decoder.init_state(features)
            for t in range(tokens.shape[1]):
                log_probs, state = decoder.step(tokens[:, t], state)
                torch.testing.assert_close(log_probs, output.logits[:, t].log_softmax(-1), atol=1e-5, rtol=0)
        assert decoder(features, tokens).attention is None  # fused kernels unless weights are asked for
    tied = tiny_decoder("transformer", tie_embeddings=True)
    assert not any("head.weight" in k for k in tied.state_dict())  # the embedding is the output weight


def test_doubly_stochastic_regulariser_ignores_padding():
    decoder = tiny_decoder("show-attend-tell", doubly_stochastic_weight=2.0).eval()
    features, tokens = random_features(batch=1), random_tokens(batch=1, length=5)
    padded = torch.cat([tokens, torch.tensor([[Vocabulary.end_id, 0, 0]])], dim=1)
    with torch.no_grad():
        short, long = decoder(features, tokens), decoder(features, padded)
        coverage = short.attention.sum(dim=1)  # (1, regions)
    assert short.aux_loss == pytest.approx(float(2.0 * ((1 - coverage) ** 2).mean()), abs=1e-6)
    assert long.aux_loss == pytest.approx(float(short.aux_loss), abs=1e-6)
    assert tiny_decoder("show-attend-tell", doubly_stochastic_weight=0.0)(features, tokens).aux_loss is None


def test_one_shot_ignores_the_words():
    decoder = tiny_decoder("one-shot").eval()
    features = random_features()
    with torch.no_grad():
        a = decoder(features, random_tokens(seed=1)).logits
        b = decoder(features, random_tokens(seed=2)).logits
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="max_length"):
        decoder(features, random_tokens(length=25))


def test_retrieval_transformer_reads_the_retrieved_captions_padding_masked():
    decoder = tiny_decoder("retrieval-transformer").eval()
    features, tokens = random_features(), random_tokens()
    with torch.no_grad():
        logits = decoder(features, tokens).logits
        other = features._replace(retrieved=random_retrieved(3, torch.Generator().manual_seed(5)))
        assert not torch.allclose(decoder(other, tokens).logits, logits)
        decoder.neighbour_ranks.weight[-1] += 1.0  # the last neighbour is all <pad>: never read
        torch.testing.assert_close(decoder(features, tokens).logits, logits)
        decoder.neighbour_ranks.weight[0] += 1.0
        assert not torch.allclose(decoder(features, tokens).logits, logits)


def test_retrieval_transformer_refuses_without_retrieved_captions(random_images):
    decoder = tiny_decoder("retrieval-transformer")
    features, tokens = random_features(), random_tokens()
    with pytest.raises(InvalidInputError, match=r"Features\.retrieved\) and none were given"):
        decoder(features._replace(retrieved=None), tokens)
    with pytest.raises(InvalidInputError, match=r"\(3, 3, 5\), got \(3, 2, 5\)"):
        decoder.init_state(features._replace(retrieved=features.retrieved[:, :2]))
    model = small_captioner("retrieval-transformer")
    model.datastore = None
    with pytest.raises(DatastoreError, match="has no datastore: make one with `captioner datastore build"):
        model.caption(random_images[0])


def test_a_retrieval_model_folder_without_its_datastore_is_refused(tmp_path):
    folder = small_captioner("retrieval-transformer").save_pretrained(tmp_path / "model")
    (folder / DATASTORE_FILE).unlink()
    with pytest.raises(ModelDirectoryError, match=f"{DATASTORE_FILE} is missing"):
        Captioner.from_pretrained(folder)
    assert Captioner.from_pretrained(folder, with_datastore=False).datastore is None  # to build one


def test_retrieval_transformer_learns_to_copy_its_nearest_neighbours_caption():
    """SmallCap's mechanism alone: the images are noise and the caption to write is the nearest
    neighbour's, a new one every time; only reading the retrieved captions can learn that."""
    torch.manual_seed(0)
    decoder = tiny_decoder("retrieval-transformer", d_model=32, ff_dim=64, dropout=0.0)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for step in range(400):
        features = random_features(batch=32, seed=100 + step)
        nearest = features.retrieved[:, 0]  # (batch, length): words, <end>, <pad>
        tokens = torch.cat([torch.full((32, 1), Vocabulary.start_id), nearest], dim=1)  # <start> words <end>
        logits = decoder(features, tokens[:, :-1]).logits  # (batch, length, vocab)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                                 ignore_index=Vocabulary.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features = random_features(batch=50, seed=1)  # unseen captions
    with torch.no_grad():
        written = [h[0].tokens for h in greedy(decoder.eval(), features, DECODING)]
    nearest = [[t for t in row if t not in (Vocabulary.end_id, Vocabulary.pad_id)]
               for row in features.retrieved[:, 0].tolist()]
    copied = sum(w == n for w, n in zip(written, nearest)) / len(nearest)
    assert copied >= 0.9, f"copied the nearest neighbour's caption for {copied:.0%} of the images"


# --- learning on real images ----------------------------------------------------------
def exact_matches(model_dir, data) -> dict[int, float]:
    rows = list(csv.DictReader(open(data)))
    model = Captioner.from_pretrained(model_dir)
    shares = {}
    for beam_size in (1, 3):
        captions = model.caption([r["image"] for r in rows], beam_size=beam_size)
        hits = sum(ptb_tokenize(c.text) == ptb_tokenize(r["caption"]) for c, r in zip(captions, rows))
        shares[beam_size] = hits / len(rows)
    return shares


# Small widths and a high learning rate: each run memorises the 31 captions in well under a minute.
LEARNING_RUNS = {
    "show-attend-tell": (
        30,
        ["--set", "optim.lr=3e-3",
         "--set", "model.decoder_options={embed_dim: 64, hidden_dim: 128, attention_dim: 64, dropout: 0.1}"],
    ),
    "transformer": (
        60,
        ["--set", "optim.lr=3e-3",
         "--set", "model.decoder_options={d_model: 64, num_layers: 2, num_heads: 4, ff_dim: 128, dropout: 0.1}"],
    ),
    # Trains with its training images' datastore (each image reads 2 others' captions) and
    # captions with the datastore written beside it.
    "retrieval-transformer": (
        60,
        ["--set", "optim.lr=3e-3",
         "--set", "model.decoder_options={d_model: 64, num_layers: 2, num_heads: 4, ff_dim: 128, dropout: 0.1, "
                  "neighbours: 2, retrieved_length: 12}"],
    ),
}


@pytest.fixture(scope="module")
def trained_attention_models(tiny_one_caption, tmp_path_factory):
    models = {}
    for name, (epochs, extra) in LEARNING_RUNS.items():
        models[name] = train_tiny(tiny_one_caption, tmp_path_factory.mktemp(name), name, epochs, extra)
    return models


@pytest.mark.parametrize("name", sorted(LEARNING_RUNS))
def test_attention_decoder_learns_tiny_set(name, trained_attention_models, tiny_one_caption):
    shares = exact_matches(trained_attention_models[name], tiny_one_caption)
    assert shares[1] >= 0.9, f"greedy exact match {shares[1]:.2f}"
    assert shares[3] >= 0.9, f"beam-3 exact match {shares[3]:.2f}"


@pytest.mark.parametrize("name", sorted(LEARNING_RUNS))
def test_attention_pictures_via_cli(name, trained_attention_models, tiny_one_caption, tmp_path, capsys):
    from captioner.cli import main

    images = [r["image"] for r in csv.DictReader(open(tiny_one_caption))]
    out = tmp_path / "attention"
    code = main(["caption", *images, "--model", str(trained_attention_models[name]), "--attention-out", str(out),
                 "--beam-size", "1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(images)
    for png in pngs:
        with Image.open(png) as picture:
            picture.verify()
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.width > 100 and picture.height > 100


def test_a_trained_retrieval_model_exports_with_its_datastore(trained_attention_models, tiny_one_caption, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from captioner.export import export_model
    from captioner.exported import OnnxCaptioner

    model = Captioner.from_pretrained(trained_attention_models["retrieval-transformer"])
    runtime = OnnxCaptioner(export_model(model, tmp_path / "onnx"), threads=1)
    assert len(runtime.datastore) == len(model.datastore) == 31  # the training images
    images = [r["image"] for r in csv.DictReader(open(tiny_one_caption))][:6]
    assert [c.text for c in runtime.caption(images, beam_size=3)] == [c.text for c in model.caption(images, beam_size=3)]


def test_attention_pictures_refused_without_attention(random_images, tmp_path, capsys):
    from captioner.cli import main

    model_dir = small_captioner("show-tell").save_pretrained(tmp_path / "show-tell")
    code = main(["caption", *random_images, "--model", str(model_dir), "--attention-out", str(tmp_path / "att")])
    assert code == 2
    assert "has no attention" in capsys.readouterr().err
    assert not (tmp_path / "att").exists()


def test_attention_figure_layout(random_images, tmp_path):
    from captioner.model import Caption
    from captioner.visualize import save_attention_figure

    words = ["a", "red", "cat", "on", "a", "mat", "again"]  # 8 panels → two rows
    attention = torch.softmax(torch.randn(len(words), 4), dim=-1)
    caption = Caption(" ".join(words), -1.0, attention=attention, grid_shape=(2, 2), words=words)
    preprocess = PreprocessConfig(crop_size=32, resize_size=40)
    path = save_attention_figure(random_images[0], caption, tmp_path, preprocess)
    assert path == tmp_path / "random0.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width > picture.height


# --- pretrained word vectors ----------------------------------------------------------
@pytest.fixture
def glove_file(tmp_path):
    path = tmp_path / "glove.4d.txt"
    path.write_text("cat 0.1 0.2 0.3 0.4\nDog 1 2 3 4\nzebra 9 9 9 9\nmat -1 -2 -3 -4\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [False, True])
def test_word_vectors_rows_copied(glove_file, header):
    from captioner.data.word_vectors import load_word_vectors

    if header:  # word2vec text format
        glove_file.write_text("4 4\n" + glove_file.read_text(encoding="utf-8"), encoding="utf-8")
    vocab = Vocabulary(["a", "cat", "dog", "mat"])
    decoder = create_decoder("show-tell", len(vocab), POOLED_DIM, embed_dim=4, hidden_dim=8)
    before = decoder.embedding.weight.detach().clone()
    found = load_word_vectors(decoder.embedding, vocab, glove_file)
    assert found == 3  # cat, dog (from "Dog"), mat; "a" has none
    weight = decoder.embedding.weight.detach()
    torch.testing.assert_close(weight[vocab.stoi["cat"]], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(weight[vocab.stoi["dog"]], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(weight[vocab.stoi["a"]], before[vocab.stoi["a"]])
    assert decoder.embedding.weight.requires_grad


def test_word_vectors_frozen(glove_file):
    from captioner.data.word_vectors import load_word_vectors

    vocab = Vocabulary(["cat"])
    decoder = create_decoder("merge", len(vocab), POOLED_DIM, embed_dim=4, hidden_dim=8)
    load_word_vectors(decoder.embedding, vocab, glove_file, freeze=True)
    assert not decoder.embedding.weight.requires_grad


def test_word_vectors_dimension_mismatch(glove_file):
    from captioner.data.word_vectors import load_word_vectors

    vocab = Vocabulary(["cat"])
    decoder = create_decoder("show-tell", len(vocab), POOLED_DIM, embed_dim=6, hidden_dim=8)
    with pytest.raises(ValueError, match=r"dimension 4 .*dimension 6"):
        load_word_vectors(decoder.embedding, vocab, glove_file)


def test_word_vectors_through_training(tiny_one_caption, tmp_path):
    """``--word-vectors`` with freezing: the trained model keeps the file's rows."""
    vectors = {"cat": torch.linspace(-1, 1, 256), "astronaut": torch.linspace(1, -1, 256)}
    path = tmp_path / "vectors.txt"
    path.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in v.tolist()) + "\n" for w, v in vectors.items()))
    model_dir = train_tiny(tiny_one_caption, tmp_path / "run", "show-tell", 1,
                           ["--word-vectors", str(path), "--set", "model.freeze_word_vectors=true"])
    model = Captioner.from_pretrained(model_dir)
    for word, vector in vectors.items():
        torch.testing.assert_close(model.decoder.embedding.weight[model.vocab.stoi[word]], vector, atol=1e-6, rtol=0)


def test_one_shot_has_no_word_embedding():
    with pytest.raises(ValueError, match="no word embedding"):
        tiny_decoder("one-shot").embedding


# --- encoder fine-tuning --------------------------------------------------------------
def test_fine_tuning_changes_only_the_last_stage(tiny_one_caption, tmp_path):
    """Fine-tuning (from the cached activations of the frozen stages) changes the last stage's
    weights, not its BatchNorm statistics; the model folder then holds a frozen encoder with those
    weights, which captions in ONNX Runtime as in torch; rebased on the pretrained source, a
    folder stores that stage alone."""
    from safetensors.torch import load_file

    from captioner import create_encoder

    model_dir = train_tiny(tiny_one_caption, tmp_path / "fine-tuned", "show-tell", 1, ["--trainable-blocks", "1"])
    config = json.loads((model_dir / "config.json").read_text())
    assert config["encoder"]["options"]["trainable_blocks"] == 0 and not config["encoder"]["options"]["pretrained"]
    assert config["encoder"]["options"]["tuned_blocks"] == 1  # what the untuned stages see: the head's input
    assert config["encoder_weights_saved"]
    saved = load_file(str(model_dir / "model.safetensors"))
    original = create_encoder("efficientnet_lite0").state_dict()
    assert {k for k in saved if k.startswith("encoder.")} == {f"encoder.{k}" for k in original}
    changed = [k for k in original if not torch.equal(saved[f"encoder.{k}"], original[k])]
    assert changed and all(k.startswith("head.") and not k.endswith(("running_mean", "running_var")) for k in changed)
    with open(tiny_one_caption) as f:
        images = [row["image"] for row in csv.DictReader(f)][:4]
    model = Captioner.from_pretrained(model_dir)
    assert model.encoder.frozen and model.encode_images(images).untuned.shape == (4, 320)
    by_onnx = [c.text for c in model.use_runtime("onnx").caption(images)]
    assert by_onnx == [c.text for c in model.use_runtime("torch").caption(images)]

    # Rebased on its source, the folder stores the tuned stage alone (in fp32 beside an fp16
    # decoder) and rebuilds the same encoder from the pretrained weights and it.
    assert model.encoder.rebase_on_source() == 1
    small = model.save_pretrained(tmp_path / "rebased", weights_dtype=torch.float16)
    config = json.loads((small / "config.json").read_text())
    assert config["encoder"]["options"]["tuned_blocks"] == 1 and config["encoder"]["options"]["pretrained"]
    assert config["encoder_weights_saved"] is False
    stored = load_file(str(small / "model.safetensors"))
    assert {k for k in stored if k.startswith("encoder.")} == {f"encoder.{k}" for k in original if k.startswith("head.")}
    assert all(stored[k].dtype == (torch.float16 if k.startswith("decoder.") else torch.float32)
               for k in stored if stored[k].is_floating_point())
    rebuilt = Captioner.from_pretrained(small)
    assert rebuilt.encoder_identity() == model.encoder_identity()
    mine = model.encoder.state_dict()
    assert all(torch.equal(tensor, mine[name]) for name, tensor in rebuilt.encoder.state_dict().items())

    # Its tuned stage rounded to fp16 (the bundled model's), the folder stores it in fp16 and
    # rebuilds it exactly; the datastore (and confidence) of the fp32 weights are left behind.
    assert model.datastore is not None
    model.round_tuned_stages(torch.float16)
    assert model.datastore is None and model.confidence is None
    assert model.encoder_identity() != rebuilt.encoder_identity()
    half = model.save_pretrained(tmp_path / "half", weights_dtype=torch.float16)
    stored = load_file(str(half / "model.safetensors"))
    assert all(stored[k].dtype == torch.float16 for k in stored if stored[k].is_floating_point())
    assert not {"datastore.safetensors", "confidence.safetensors"} & {p.name for p in half.iterdir()}
    again = Captioner.from_pretrained(half)
    assert again.encoder_identity() == model.encoder_identity()
    assert again.caption(images[:1])[0].text == model.caption(images[:1])[0].text
