"""The speed benchmark compares like with like: with the seed's weights copied in, captioner's
show-tell computes the seed's loss, gradients and greedy steps on the same batch.

One convention differs, by design: the seed also scores ``<start>`` from the image (its first
LSTM output); captioner starts decoding after ``<start>`` and leaves that term out. Everything
else is compared exactly, and the seed's loss is rebuilt from captioner's plus that term.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from captioner.data.vocab import Vocabulary
from captioner.objectives import CaptionCrossEntropy

BENCH = Path(__file__).parents[1] / "benchmarks" / "timing" / "bench_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["resnet152", "efficientnet_lite0"])
def models(request, bench):
    vocab = Vocabulary(f"w{i}" for i in range(60))
    encoder, decoder, model = bench.build_pair(request.param, vocab, torch.device("cpu"))
    return encoder, decoder, model


@pytest.fixture(scope="module")
def batch():
    """Captions sorted by length, descending (the seed packs them), padded with <pad> = 0."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)  # small: any size pools to one vector
    lengths = [9, 7, 7, 4]  # <start> w.. <end>
    captions = torch.zeros(4, max(lengths), dtype=torch.long)
    for i, length in enumerate(lengths):
        captions[i, 0], captions[i, length - 1] = 1, 2
        captions[i, 1 : length - 1] = torch.randint(4, 64, (length - 2,), generator=g)
    return images, captions, lengths


def test_same_loss_and_gradients_on_the_same_batch(bench, models, batch):
    encoder, decoder, model = models
    images, captions, lengths = batch
    encoder.train(), decoder.train(), model.train()

    seed_loss = bench.seed_loss(encoder, decoder, images, captions, lengths)
    seed_scores = decoder(encoder(images), captions, lengths)  # (sum(lengths), vocab), packed time-major
    targets = pack_padded_sequence(captions, lengths, batch_first=True)[0]
    per_token = F.cross_entropy(seed_scores, targets, reduction="none")
    start_terms = per_token[: len(lengths)]  # packed step 0: each caption's <start>, scored from the image

    result = CaptionCrossEntropy(pad_id=0)(model, images, captions)
    loss, ce, tokens = result.loss, result.logs["loss"], result.weight
    assert int(tokens) == sum(lengths) - len(lengths)
    torch.testing.assert_close(ce, per_token[len(lengths):].mean(), rtol=1e-5, atol=1e-6)
    rebuilt = (ce * tokens + start_terms.sum()) / sum(lengths)
    torch.testing.assert_close(seed_loss, rebuilt, rtol=1e-5, atol=1e-6)

    decoder.zero_grad(), encoder.zero_grad(), model.zero_grad()
    per_token[len(lengths):].mean().backward()  # the seed's graph, on captioner's tokens
    loss.backward()
    pairs = {"lstm.weight_ih_l0": decoder.lstm.weight_ih_l0, "lstm.weight_hh_l0": decoder.lstm.weight_hh_l0,
             "head.weight": decoder.linear.weight, "embed.weight": decoder.embed.weight,
             "image_proj.0.weight": encoder.linear.weight, "image_proj.1.weight": encoder.bn.weight}
    ours = dict(model.decoder.named_parameters())
    for name, seed_parameter in pairs.items():
        torch.testing.assert_close(ours[name].grad, seed_parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_decoding_steps_follow_the_seeds_greedy_sample(models, batch):
    """Seed ``sample`` emits s0 (scored from the image), s1, ..; captioner's ``init_state`` runs
    the same image step, and ``step(s_t)`` must rank s_{t+1} first, with the same scores."""
    encoder, decoder, model = models
    images, _, _ = batch
    encoder.eval(), decoder.eval(), model.eval()
    with torch.no_grad():
        seed_ids = decoder.sample(encoder(images))  # (batch, 20)
        features = model.encode(images)
        state = model.decoder.init_state(features)
        for t in range(seed_ids.shape[1] - 1):
            log_probs, state = model.decoder.step(seed_ids[:, t], state)
            assert torch.equal(log_probs.argmax(-1), seed_ids[:, t + 1])


def test_json_out_has_the_speedups_of_the_default_and_forced_paths(bench, tmp_path, monkeypatch):
    """A tiny run end to end: the JSON table's speedups are seed time / captioner time, from the
    same run's raw timings, for the default path and each forced runtime."""
    import json

    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))  # the benchmark points it at its temp folder
    out = tmp_path / "bench.json"
    bench.main(["--encoder", "efficientnet_lite0", "--images", "2", "--batch-size", "2", "--vocab-size", "40",
                "--cached-epochs", "1", "--latency-repeats", "1", "--json-out", str(out)])
    table = json.loads(out.read_text())
    raw, speedup = table["raw"], table["speedup"]
    paths = ["", "_torch"] + (["_onnx"] if importlib.util.find_spec("onnxruntime") else [])
    assert set(speedup) == {f"{k}{p}" for k in ("train_epoch1", "caption_beam5", "latency_beam5") for p in paths} | {
        "train_later"}
    seed, ours = raw["seed_training"], raw["captioner_training"]
    assert speedup["train_later"] == pytest.approx(ours["cached_epoch_pairs_per_s"] / seed["pairs_per_s"])
    assert speedup["train_epoch1"] == pytest.approx(ours["first_epoch_pairs_per_s_auto"] / seed["pairs_per_s"])
    assert speedup["latency_beam5_torch"] == pytest.approx(
        raw["seed_greedy"]["latency_ms"] / raw["captioner_beam5_torch"]["latency_ms"])
    assert raw["captioner_beam5_torch"]["engine"] == "torch"
    assert raw["captioner_beam5_auto"]["engine"] == ("onnx" if "_onnx" in paths else "torch")
    efficiency = table["encoder_efficiency"]
    assert 0.5 < efficiency["gflop_per_image"] < 1.0  # EfficientNet-Lite0 at 224: ~0.4 GMAC
    assert efficiency["matmul_peak"]["fp32"]["cpu_gflop_per_s"] > 0 and efficiency["auto_batch1"]["cpu_gflop_per_s"] > 0
    assert {row["label"] for row in table["rows"]} >= {"bundled model, one image load → caption, beam 5, default path"}
    extraction = table["extraction"]  # against the slower of its two ceilings, each measured alone
    slower = min(extraction["input_images_per_s"], extraction["encoder_images_per_s"])
    assert extraction["of_slower_ceiling"] == pytest.approx(extraction["images_per_s"] / slower)
