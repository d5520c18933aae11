"""Self-critical sequence training: the reward, the baseline, learning, DDP, the errors."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from captioner import Captioner, list_decoders
from captioner.data.sources import read_dataset
from captioner.data.vocab import Vocabulary
from captioner.decoders.base import Features
from captioner.metrics import compute_cider_d, evaluate_captions
from captioner.objectives import Draws, SelfCritical, mean_of_others, reward_document_frequencies
from captioner import distributed as dist_utils
from captioner.train.batchnorm import sync_batchnorm

from conftest import TINY, train_tiny

REFERENCES = [
    ["a dog runs on the grass", "a brown dog running"],
    ["a cat sleeps on a sofa", "a sleeping cat"],
    ["a red car on a street"],
]


def _prepared(captions_per_image):
    """A reward scorer and its prepared references for these images."""
    scorer, references = reward_document_frequencies(captions_per_image)
    return scorer, scorer.prepare_references(references)


def _objective(vocab: Vocabulary, samples: int = 3, baseline: str = "mean-of-others") -> SelfCritical:
    return SelfCritical(*_prepared(REFERENCES), vocab, samples, baseline)


def test_reward_is_cider_d_of_the_sample_with_end_against_its_references():
    vocab = Vocabulary.build((c for refs in REFERENCES for c in refs), min_count=1)
    words = [["a", "dog", "runs"], ["a", "cat", "on", "a", "sofa"], ["a", "red", "car", "on", "a", "street"]]
    captions = [[vocab.stoi[w] for w in caption] for caption in words]
    max_length = 6  # the third caption reaches the limit: it did not end, so it earns no "<end>" n-grams
    rewards = _objective(vocab).rewards(captions, [0, 1, 2], max_length)
    candidates = {0: "a dog runs <end>", 1: "a cat on a sofa <end>", 2: "a red car on a street"}
    references = {i: [f"{r} <end>" for r in refs] for i, refs in enumerate(REFERENCES)}
    # compute_cider_d takes its document frequencies from these references: the training corpus here.
    _, expected = compute_cider_d(candidates, references)
    np.testing.assert_allclose(rewards, expected, rtol=1e-9)
    ended = _objective(vocab).rewards(captions[2:], [2], max_length=7)  # the same words, ended this time
    assert 0 < rewards[2] < ended[0]


def test_mean_of_others_baseline_on_three_samples():
    reward = torch.tensor([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(mean_of_others(reward), [[4.0, 3.5, 1.5]])
    assert float((reward - mean_of_others(reward)).mean()) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("decoder", list_decoders())
def test_rescoring_gives_the_sampling_distributions_log_probs_for_every_decoder(decoder):
    """The teacher-forced rescoring equals stepping the decoder along each sample with the
    sampler's bans, renormalised (what torch.multinomial draws from): the policy gradient is exact."""
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(30)])
    model = Captioner.build("efficientnet_lite0", decoder, vocab, encoder_options={"pretrained": False},
                            max_length=6).eval()
    shape = model.decoder.retrieved_shape  # a decoder that reads retrieved captions is given some
    retrieved = torch.randint(4, len(vocab), (5, *shape)) if shape is not None else None
    features = Features(torch.randn(5, model.encoder.pooled_dim), torch.randn(5, 4, model.encoder.grid_dim),
                        retrieved=retrieved)
    objective = SelfCritical(*_prepared([["w1 w2"]] * 5), vocab, samples=1, baseline="greedy")
    captions = objective.draw(model, features).samples
    rescored = objective.sequence_log_probs(model, model, features, [c[0] for c in captions])
    # What each step scores: the caption's words, then <end> if it ended within the limit.
    scored = [c[0] + [vocab.end_id] * (len(c[0]) < model.max_length) for c in captions]
    config = model.decoding_config()
    with torch.no_grad():
        state = model.decoder.init_state(features)
        tokens, expected = torch.full((5,), vocab.start_id), torch.zeros(5)
        for step in range(model.max_length):
            log_probs, state = model.decoder.step(tokens, state)
            log_probs[:, list(config.banned_ids)] = float("-inf")
            if step < config.min_length:
                log_probs[:, vocab.end_id] = float("-inf")
            log_probs = log_probs.log_softmax(-1)
            tokens = torch.tensor([s[step] if step < len(s) else vocab.pad_id for s in scored])
            live = tokens != vocab.pad_id  # a finished caption scores nothing more
            expected += torch.where(live, log_probs.gather(1, tokens[:, None])[:, 0], torch.zeros(5))
    torch.testing.assert_close(rescored.detach(), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def under_trained(tiny_one_caption, tmp_path_factory):
    """A show-tell model that has seen the tiny set for a few cross-entropy epochs only."""
    return train_tiny(tiny_one_caption, tmp_path_factory.mktemp("under-trained"), epochs=10)


def _greedy_cider(model_dir, data) -> float:
    examples = read_dataset(data)
    captions = Captioner.from_pretrained(model_dir).caption([e.path for e in examples], beam_size=1, retrieval=False)
    predictions = {e.image_id: c.text for e, c in zip(examples, captions)}
    return evaluate_captions(predictions, {e.image_id: e.captions for e in examples}, metrics=("CIDEr",))["CIDEr"]


def test_self_critical_raises_the_cider_of_its_own_greedy_captions(under_trained, tiny_one_caption, tmp_path):
    out = train_tiny(tiny_one_caption, tmp_path / "scst", epochs=8,
                     extra=["--objective", "self-critical", "--init-from", str(under_trained), "--lr", "3e-4"])
    before, after = _greedy_cider(under_trained, tiny_one_caption), _greedy_cider(out / "last", tiny_one_caption)
    assert after > 1.1 * before, (before, after)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_reward", "train_baseline", "train_advantage_std", "train_sample_length", "train_bad_ending"):
        assert all(key in r for r in records), key
    assert records[-1]["train_reward"] > records[0]["train_reward"]
    assert "images_per_second" in records[0]
    cider_df = json.loads((out / "cider_df.json").read_text())
    assert cider_df["tokenizer"] == "ptb" and cider_df["end_token"] == "<end>"
    assert "<end>" in cider_df["df"] and all(g == g.lower() for g in cider_df["df"])
    config = (out / "train_config.yaml").read_text()
    assert "objective: self-critical" in config and "decoder: show-tell" in config


def test_self_critical_resume_continues_exactly(under_trained, tiny_one_caption, tmp_path):
    """Sampling draws from the restored random state: an interrupted run ends where a straight one does."""
    from safetensors.torch import load_file

    scst = ["--objective", "self-critical", "--init-from", str(under_trained), "--scst-baseline", "greedy"]
    straight = train_tiny(tiny_one_caption, tmp_path / "straight", epochs=2, extra=scst)
    resumed = train_tiny(tiny_one_caption, tmp_path / "resumed", epochs=1, extra=scst)
    train_tiny(tiny_one_caption, resumed, epochs=2, extra=[*scst, "--resume"])
    a, b = load_file(str(straight / "last/model.safetensors")), load_file(str(resumed / "last/model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_self_critical_without_init_from_says_so(tiny_one_caption, tmp_path, capsys):
    from captioner.cli import main

    assert main(["train", "--data", str(tiny_one_caption), "--out", str(tmp_path / "run"), "--objective",
                 "self-critical", "--no-progress"]) == 2  # the default ResNet-152 weights are not even looked for
    error = capsys.readouterr().err.strip()
    assert "--init-from MODEL_DIR" in error and "\n" not in error


def test_init_from_a_model_whose_vocabulary_misses_the_data_says_which_words(under_trained, tmp_path, capsys):
    from captioner.cli import main

    data = tmp_path / "other.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image, caption in [("astronaut.jpg", "a xylophone beside quantum zebras"), ("coffee.jpg", "zebras")]:
            writer.writerow([str(TINY / "images" / image), caption])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--objective", "self-critical",
                 "--init-from", str(under_trained), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "does not cover" in error and "'zebras'" in error and "\n" not in error


# --- DDP: two ranks' self-critical step is one process's step on the union batch -------------
def _tiny_model_and_batch():
    torch.manual_seed(0)
    vocab = Vocabulary.build((c for refs in REFERENCES for c in refs), min_count=1)
    model = Captioner.build("efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False},
                            decoder_options={"embed_dim": 16, "hidden_dim": 16}, max_length=6)
    features = Features(torch.randn(6, model.encoder.pooled_dim), None)
    images = torch.tensor([0, 1, 2, 2, 0, 1])  # image index of each row (references repeat: fine)
    objective = _objective(vocab, samples=4)
    torch.manual_seed(1)
    model.eval()  # as the objective runs both passes
    draws = objective.draw(model, features)  # every rank draws the same union batch
    return model, features, images, objective, draws


def _share(rows, features, images, draws):
    return Features(features.pooled[rows], None), images[rows], Draws([draws.samples[i] for i in rows])


def _scst_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = dist_utils.DistInfo(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    model, features, images, objective, draws = _tiny_model_and_batch()
    ddp = torch.nn.parallel.DistributedDataParallel(sync_batchnorm(model, torch.device("cpu")))
    ddp.eval()
    rows = [0, 2] if rank == 0 else [1, 3, 4, 5]  # ranks hold images (not captions), in unequal numbers
    result = objective.policy_loss(ddp, *_share(rows, features, images, draws))
    (result.loss * dist_utils.rank_weight(result.weight, info, torch.device("cpu"))).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.decoder.named_parameters()}, result_file)
    dist.destroy_process_group()


def test_two_process_self_critical_step_equals_one_process_on_the_union(tmp_path):
    mp.spawn(_scst_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "grads.pt")), nprocs=2)
    ddp = torch.load(tmp_path / "grads.pt")
    model, features, images, objective, draws = _tiny_model_and_batch()
    result = objective.policy_loss(model, features, images, draws)
    result.loss.backward()
    assert result.weight == 6 and float(result.logs["advantage_std"]) > 0
    for name, parameter in model.decoder.named_parameters():
        torch.testing.assert_close(ddp[name], parameter.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert sum(float(g.abs().sum()) for g in ddp.values()) > 0  # a real gradient, not two zeros
