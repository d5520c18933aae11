"""Model directories: save → load → identical captions; broken directories → clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from captioner import Captioner, create_encoder, list_encoders
from captioner.data.vocab import Vocabulary
from captioner.model import ModelDirectoryError

from conftest import TINY

IMAGES = [TINY / "images/chelsea.jpg", TINY / "images/emoji_1f436.png", TINY / "images/rocket.jpg"]


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    vocab = Vocabulary(["a", "cat", "dog", "on", "the", "mat"])
    return Captioner.build("efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False},
                           decoder_options={"embed_dim": 16, "hidden_dim": 32}).eval()


def test_save_load_gives_identical_captions(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    loaded = Captioner.from_pretrained(tmp_path / "m")
    a = random_model.caption(IMAGES, beam_size=3, n_best=2)
    b = loaded.caption(IMAGES, beam_size=3, n_best=2)
    assert [c.to_dict() for c in a] == [c.to_dict() for c in b]
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert config["encoder_weights_saved"] is True  # random encoder weights must travel


def test_trained_model_saves_decoder_only(trained_show_tell):
    config = json.loads((trained_show_tell / "config.json").read_text())
    assert config["encoder"]["name"] == "efficientnet_lite0" and config["encoder_weights_saved"] is False
    assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    model = Captioner.from_pretrained(trained_show_tell)
    assert model.caption(TINY / "images/emoji_1f436.png", beam_size=3).text == "dog face"


def test_truncated_weights_give_a_clear_error(random_model, tmp_path):
    path = random_model.save_pretrained(tmp_path / "m")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirectoryError, match="corrupt or truncated|does not match"):
        Captioner.from_pretrained(path)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: (p / "vocab.json").unlink(), "vocab.json is missing"),
        (lambda p: (p / "config.json").write_text("{"), "config.json: unreadable JSON"),
        (lambda p: (p / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "<start>", "<end>", "<unk>"]})),
         "vocab.json has 4 words"),
        (lambda p: _edit_config(p, lambda c: c["decoder"]["options"].update(hidden_dim=64)), "does not match"),
        (lambda p: _edit_config(p, lambda c: c["decoder"].update(name="no-such-decoder")), "buildable"),
        (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format 99"),
    ],
)
def test_tampered_directory_gives_a_clear_error(random_model, tmp_path, tamper, message):
    path = random_model.save_pretrained(tmp_path / "m")
    tamper(path)
    with pytest.raises(ModelDirectoryError, match=message):
        Captioner.from_pretrained(path)


def _edit_config(path, change):
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="not found"):
        Captioner.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_builds_offline_and_yields_pooled_and_grid(name):
    encoder = create_encoder(name, pretrained=False).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 64, 64))
    assert out.pooled.shape == (2, encoder.pooled_dim)
    assert out.grid.shape[0] == 2 and out.grid.shape[2] == encoder.grid_dim
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen by default


def test_trainable_blocks_unfreeze_only_the_last_stages():
    encoder = create_encoder("resnet50", pretrained=False, trainable_blocks=1)
    assert all(p.requires_grad for p in encoder.layer4.parameters())
    assert not any(p.requires_grad for p in encoder.layer3.parameters())
    encoder.train()
    assert encoder.layer4.training and not encoder.layer3.training


def test_pretrained_weights_offline_give_the_fix():
    from captioner.encoders import PretrainedWeightsUnavailable

    try:
        create_encoder("resnet50")
    except PretrainedWeightsUnavailable as e:
        assert "pretrained=false" in str(e) and "efficientnet_lite0" in str(e)
    # (With internet or a warm torch hub cache the weights load, and that is fine too.)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1"])
def test_efficientnet_lite_weights_are_real_imagenet_weights(name):
    from torchvision.models import ResNet50_Weights

    from captioner.data.images import preprocess

    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    encoder = create_encoder(name).eval()  # Lite1's blocks per stage differ: the renaming follows them
    pixels = preprocess([TINY / "images/chelsea.jpg", TINY / "images/coffee.jpg"], encoder.default_preprocess)
    with torch.no_grad():
        top = encoder.classifier(encoder(pixels).pooled).topk(3).indices
    assert {"tabby", "tiger cat", "Egyptian cat"} & {categories[i] for i in top[0]}
    assert "espresso" in {categories[i] for i in top[1]}


def test_half_precision_weights_load_into_a_float_model(random_model, tmp_path):
    """weights_dtype halves the decoder's weights; the encoder's are cast only where that loses
    nothing (a datastore and the caches are keyed by their exact digest): here the BatchNorm
    layers' fresh ones and zeros, not the random convolutions."""
    from safetensors.torch import load_file

    path = random_model.save_pretrained(tmp_path / "m16", weights_dtype=torch.float16)
    stored = load_file(str(path / "model.safetensors"))
    assert {v.dtype for k, v in stored.items() if k.startswith("decoder.") and v.is_floating_point()} == {torch.float16}
    mine = random_model.state_to_save()
    encoder = {k: v for k, v in stored.items() if k.startswith("encoder.") and v.is_floating_point()}
    assert {v.dtype for v in encoder.values()} == {torch.float16, torch.float32}
    assert all(torch.equal(v.to(mine[k].dtype), mine[k]) for k, v in encoder.items())
    loaded = Captioner.from_pretrained(path)
    assert loaded.encoder_identity() == random_model.encoder_identity()
    assert next(loaded.decoder.parameters()).dtype == torch.float32
    assert loaded.caption(IMAGES[0], beam_size=2).text == random_model.caption(IMAGES[0], beam_size=2).text


def test_tied_embeddings_are_saved_once_and_tied_again(tmp_path):
    """tie_embeddings: the output layer is the embedding (one tensor), stored once in model.safetensors,
    tied again on load; a decoder whose widths differ refuses it in one line."""
    from safetensors import safe_open

    from captioner.data.vocab import Vocabulary
    from captioner.errors import InvalidInputError

    vocab = Vocabulary([f"w{i}" for i in range(50)])
    options = {"embed_dim": 32, "hidden_dim": 32, "attention_dim": 16, "tie_embeddings": True}
    model = Captioner.build("efficientnet_lite0", "show-attend-tell", vocab, encoder_options={"pretrained": False},
                            decoder_options=options)
    assert model.decoder.head.weight is model.decoder.embed.weight
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "decoder.embed.weight" in f.keys() and "decoder.head.weight" not in f.keys()
    again = Captioner.from_pretrained(tmp_path)
    assert again.decoder.head.weight is again.decoder.embed.weight
    assert torch.equal(again.decoder.head.weight, model.decoder.embed.weight)
    with pytest.raises(InvalidInputError, match="set embed_dim equal to hidden_dim"):
        Captioner.build("efficientnet_lite0", "show-attend-tell", vocab, encoder_options={"pretrained": False},
                        decoder_options={**options, "embed_dim": 16})
