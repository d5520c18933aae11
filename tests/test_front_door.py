"""One value for how to decode, one interface for both engines, and training and export from the
top-level package: ``DecodeOptions``, ``load_model``, ``train_model``, ``export_model``."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import captioner
from captioner import CaptionModel, Captioner, DecodeOptions
from captioner.cli import build_parser
from captioner.decoders import Features, create_decoder
from captioner.decoding import MAX_DECODE_LENGTH, DecodingConfig, _Engine, beam_search, decode, greedy
from captioner.errors import InvalidInputError

CONFIG = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1), max_length=10)


# --- DecodeOptions -------------------------------------------------------------------------
def test_decode_options_defaults_are_the_cli_defaults():
    args = build_parser().parse_args(["caption", "x.png"])
    defaults = DecodeOptions()
    assert (args.beam_size, args.n_best, args.length_penalty, args.no_repeat_ngram_size, args.max_length) == (
        defaults.beam_size, defaults.n_best, defaults.length_penalty, defaults.no_repeat_ngram_size,
        defaults.max_length)
    assert defaults.beam_size == 3 and not defaults.is_greedy and DecodeOptions(beam_size=1).is_greedy


@pytest.mark.parametrize("changes, message", [
    ({"beam_size": 0}, "beam_size must be at least 1"),
    ({"beam_size": 2, "n_best": 3}, "n_best"),
    ({"max_length": MAX_DECODE_LENGTH + 1}, "max_length"),
    ({"max_length": 2.5}, "max_length"),
    ({"temperature": 0.0}, "temperature"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"sample": True, "beam_size": 3, "n_best": 2}, "one caption per image"),
    ({"beam_width": 3}, "unknown decoding option"),
])
def test_decode_options_refuse_what_cannot_work(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        DecodeOptions.of(**changes)


# --- one search for both engines ------------------------------------------------------------
class NumpyDecoder:
    """A torch decoder's init_state / step run through numpy: what an exported decoder hands decoding."""

    def __init__(self, decoder):
        self.decoder, self.vocab_size, self.static_state = decoder, decoder.vocab_size, decoder.static_state

    @torch.no_grad()
    def init_state(self, features):
        state = self.decoder.init_state(Features(torch.from_numpy(features.pooled)))
        return {k: v.numpy() for k, v in state.items()}

    @torch.no_grad()
    def step(self, tokens, state):
        log_probs, new = self.decoder.step(torch.from_numpy(tokens), {k: torch.from_numpy(v) for k, v in state.items()})
        return log_probs.numpy(), {k: v.numpy() for k, v in new.items()}


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    dec = create_decoder("show-tell", vocab_size=14, pooled_dim=16, embed_dim=8, hidden_dim=16).eval()
    with torch.no_grad():
        dec.head.weight.mul_(6)
    return dec


@pytest.mark.parametrize("options", [DecodeOptions(beam_size=1), DecodeOptions(), DecodeOptions(beam_size=4, n_best=3),
                                     DecodeOptions(beam_size=3, length_penalty=0.8, no_repeat_ngram_size=2)])
def test_the_same_search_decodes_torch_tensors_and_numpy_arrays(decoder, options):
    pooled = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    on_torch = decode(decoder, Features(pooled), CONFIG, options)
    on_numpy = decode(NumpyDecoder(decoder), Features(pooled.numpy()), CONFIG, options)
    for a, b in zip(on_torch, on_numpy):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5)
        np.testing.assert_allclose(a[0].token_log_probs, b[0].token_log_probs, rtol=1e-5, atol=1e-6)


def test_checking_for_the_end_every_few_steps_changes_nothing(decoder, monkeypatch):
    """On an accelerator the search asks whether every caption ended only every few steps (each
    ask is a host sync): the steps after the end leave ended captions as they were."""
    pooled = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    every_step = greedy(decoder, Features(pooled), CONFIG), beam_search(decoder, Features(pooled), CONFIG, 3, 3)

    class Lazy(_Engine):
        def __init__(self, like):
            super().__init__(like)
            self.check_every = 4

    monkeypatch.setattr("captioner.decoding._Engine", Lazy)
    lazily = greedy(decoder, Features(pooled), CONFIG), beam_search(decoder, Features(pooled), CONFIG, 3, 3)
    for a, b in zip(every_step, lazily):
        assert [[(h.tokens, round(h.score, 5), len(h.token_log_probs)) for h in x] for x in a] == \
               [[(h.tokens, round(h.score, 5), len(h.token_log_probs)) for h in x] for x in b]


# --- load_model, train_model, export_model ----------------------------------------------------
def test_load_model_gives_the_torch_model_behind_the_common_interface():
    model = captioner.load_model()
    assert isinstance(model, Captioner) and isinstance(model, CaptionModel)
    assert model.caption("examples/emoji-dog-face.png", DecodeOptions(beam_size=1)).text == \
           model.caption("examples/emoji-dog-face.png", beam_size=1).text


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="exporting needs onnx")
def test_train_then_export_from_the_package_and_load_either(tiny_one_caption, tmp_path):
    run = captioner.train_model(data=str(tiny_one_caption), out=str(tmp_path / "run"), encoder="efficientnet_lite0",
                                decoder="show-tell", epochs=2, batch_size=8, min_word_count=1, progress=False,
                                log_every=0, optim={"schedule": "cosine"})
    trained = captioner.load_model(run)
    assert isinstance(trained, Captioner)
    exported = captioner.load_model(captioner.export_model(run, tmp_path / "exported"))
    assert isinstance(exported, captioner.OnnxCaptioner) and isinstance(exported, CaptionModel)
    images = [line.split(",")[0] for line in tiny_one_caption.read_text().splitlines()[1:4]]
    assert [c.text for c in trained.caption(images)] == [c.text for c in exported.caption(images)]
    with pytest.raises(InvalidInputError, match="training needs data"):
        captioner.train_model(epochs=1)
