"""Training objectives, separate from models and from the loop.

An objective is called on one batch, ``objective(model, inputs, targets)``, and returns an
``ObjectiveResult``: the loss to backpropagate, the weight that loss is a mean over (what DDP
and the epoch averages weight ranks and batches by), and the numbers to log. The train loop
reads nothing else, so it does not know which objective it runs. Objectives are created by
name (``create_objective("cross-entropy", vocab=..., config=...)``), as encoders and decoders are.

Two are registered: ``cross-entropy`` (teacher forcing, rows are captions) and ``self-critical``
(Rennie et al. 2017; rows are images, the reward is CIDEr-D of sampled captions).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data.tokenizer import ptb_tokenize
from .data.vocab import END
from .decoders.base import Features
from .decoding import greedy, sample
from .errors import InvalidInputError
from .metrics.cider import CiderD


@dataclass
class ObjectiveResult:
    """What one batch of an objective gives the train loop."""

    loss: torch.Tensor  # scalar to backpropagate: a mean over ``weight`` units
    weight: torch.Tensor | int  # how many units (target tokens, images) ``loss`` is a mean over
    # Numbers to log (detached scalars), each a mean over ``weight`` units.
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Objective:
    """What the train loop optimises.

    Subclasses implement ``__call__`` and ``from_run`` and may set:
    ``log_names``, the keys of every result's ``logs`` (fixed, so that every rank reduces the same
    numbers; ``"loss"`` must be one);
    ``weight_unit``, what the weight counts (it names the epoch's ``<unit>_per_second``);
    ``rows``, what a batch row is: ``"captions"`` (targets: padded token ids) or ``"images"``
    (targets: the images' indices into ``train_captions``);
    and override ``best_model_score`` (without validation data it picks the best epoch).
    """

    log_names: tuple[str, ...] = ("loss",)
    weight_unit: str = "tokens"
    rows: str = "captions"

    @classmethod
    def from_run(cls, *, vocab, config, train_captions=None) -> "Objective":
        """This objective for a run with this vocabulary and ``TrainConfig`` (``create_objective``);
        ``train_captions``: every training image's reference captions, in image-index order."""
        raise NotImplementedError

    def __call__(self, model, inputs: Features | torch.Tensor, targets) -> ObjectiveResult:
        """One batch: ``inputs`` (features, pixels or cached activations) and ``targets`` as the run's batches yield them."""
        raise NotImplementedError

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """The numbers to report for weighted means of ``logs`` (an epoch's, or one batch's);
        objectives add what derives from them (perplexity from mean cross-entropy)."""
        return dict(means)

    def best_model_score(self, means: dict[str, float]) -> float:
        """Higher is better: picks the best epoch from the epoch's ``means`` when there is no
        validation data (with it, validation CIDEr-D does)."""
        return -means["loss"]


_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str):
    """Class decorator: ``create_objective(name, ...)`` builds this objective with its
    ``from_run``. A duplicate name raises."""

    def register(cls):
        if name in _OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        _OBJECTIVES[name] = cls.from_run
        return cls

    return register


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def create_objective(name: str, *, vocab, config, train_captions=None) -> Objective:
    """The objective ``name`` for a run with this vocabulary and ``TrainConfig``
    (``train_captions``: the training images' references, for objectives that score samples)."""
    if name not in _OBJECTIVES:
        raise InvalidInputError(f"unknown objective {name!r} (config key 'objective'); choose one of {list_objectives()}")
    return _OBJECTIVES[name](vocab=vocab, config=config, train_captions=train_captions)


@register_objective("cross-entropy")
class CaptionCrossEntropy(Objective):
    """Teacher forcing: predict token t+1 from tokens ≤ t; cross-entropy over non-pad targets
    (plus any regulariser the decoder returns, e.g. doubly stochastic attention).

    ``targets`` are captions (batch, L) = <start> w1 .. wn <end> <pad>..; the weight is the
    number of target tokens, and ``logs["loss"]`` the cross-entropy alone (no regulariser).
    """

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0):
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    @classmethod
    def from_run(cls, *, vocab, config, train_captions=None) -> "CaptionCrossEntropy":
        return cls(vocab.pad_id, config.optim.label_smoothing)

    def __call__(self, model, inputs: Features | torch.Tensor, targets: torch.Tensor) -> ObjectiveResult:
        output = model(inputs, targets[:, :-1])
        shifted = targets[:, 1:]  # (batch, L - 1)
        cross_entropy = F.cross_entropy(
            output.logits.flatten(0, 1).float(),
            shifted.flatten(),
            ignore_index=self.pad_id,
            label_smoothing=self.label_smoothing,
        )
        tokens = (shifted != self.pad_id).sum()
        loss = cross_entropy if output.aux_loss is None else cross_entropy + output.aux_loss
        return ObjectiveResult(loss, tokens, {"loss": cross_entropy.detach()})

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return {**means, "ppl": math.exp(min(means["loss"], 50))}


# A caption that ends in one of these was cut off ("a dog sitting on a") — what CIDEr-D
# optimisation is known to produce when <end> is not scored (Luo 2020). One list, for the
# training logs and for validation.
FUNCTION_WORDS = frozenset(
    "a an the and or but nor with without of in on at to for from by into onto over under "
    "near next about above below behind between through its their his her is are".split()
)


def ends_badly(words: list[str]) -> bool:
    """Whether a caption (its words) ends in a function word (empty captions count as bad)."""
    return not words or words[-1] in FUNCTION_WORDS


def bad_ending_rate(captions) -> float:
    """Share of ``captions`` (strings) that end in a function word, after PTB tokenization."""
    captions = list(captions)
    return sum(ends_badly(ptb_tokenize(c)) for c in captions) / max(len(captions), 1)


def reward_references(captions_per_image, tokenize: Callable[[str], list[str]] = ptb_tokenize) -> list[list[str]]:
    """Reference captions as the self-critical reward scores them: their words (PTB tokens unless
    ``tokenize`` says otherwise: the vocabulary's word tokenizer) with ``<end>`` appended, as
    self-critical.pytorch's ``prepro_ngrams`` does for the document frequencies and its
    ``array_to_str`` for references and samples — so stopping in the right place earns n-grams
    ("skin tone <end>") and a caption cut off at the length limit does not."""
    return [[" ".join([*tokenize(c), END]) for c in captions] for captions in captions_per_image]


def reward_document_frequencies(captions_per_image, tokenize: Callable[[str], list[str]] = ptb_tokenize):
    """The CIDEr-D scorer whose document frequencies come from these images' references,
    prepared as the reward scores them (``reward_references``); and those references."""
    references = reward_references(captions_per_image, tokenize)
    return CiderD.from_corpus(references), references


@dataclass
class Draws:
    """What self-critical training sampled for a batch of images, without gradients: K word-id
    lists per image (no markers; shorter than the length limit iff the caption ended) and, for
    the greedy baseline, each image's greedy caption."""

    samples: list[list[list[int]]]  # (images, K, words)
    greedy: list[list[int]] | None = None  # (images, words)


BASELINES = ("mean-of-others", "greedy")


def mean_of_others(reward: torch.Tensor) -> torch.Tensor:
    """Each sample's baseline: the mean reward of its image's other samples, (images, K) → (images, K)."""
    k = reward.shape[1]
    return (reward.sum(1, keepdim=True) - reward) / (k - 1)


@register_objective("self-critical")
class SelfCritical(Objective):
    """Self-critical sequence training: maximise the CIDEr-D of the model's own sampled captions.

    Per image, K captions are sampled (no gradients) and rescored with gradients through the
    model's teacher-forced forward — so every decoder trains without decoder-specific code.
    Reward: CIDEr-D of each sample against that image's references (``reward_references``);
    baseline: the mean reward of the image's other K−1 samples, or its greedy caption's reward.
    Loss: −(reward − baseline) × the sample's summed log-probability (to its ``<end>``), averaged
    over the K samples and then over the images; the weight is the number of images.

    Both passes run the model in eval mode (no dropout) and the rescoring applies the sampler's
    temperature and banned tokens, so the log-probabilities are those of the distribution the
    samples came from: the policy gradient is unbiased.

    ``targets`` are the images' indices into the references given at construction.
    """

    log_names = ("loss", "reward", "baseline", "advantage_std", "sample_length", "bad_ending")
    weight_unit = "images"
    rows = "images"

    def __init__(self, scorer, references, vocab, samples: int = 5, baseline: str = "mean-of-others",
                 temperature: float = 1.0):
        if baseline not in BASELINES:
            raise InvalidInputError(f"scst.baseline must be one of {BASELINES}, got {baseline!r}")
        minimum = 2 if baseline == "mean-of-others" else 1
        if samples < minimum:
            raise InvalidInputError(f"scst.samples: the {baseline} baseline needs at least {minimum} samples per image, "
                             f"got {samples}")
        if temperature <= 0:
            raise InvalidInputError(f"scst.temperature must be positive, got {temperature}")
        self.scorer, self.references, self.vocab = scorer, references, vocab
        self.samples, self.baseline, self.temperature = samples, baseline, temperature

    @classmethod
    def from_run(cls, *, vocab, config, train_captions=None) -> "SelfCritical":
        if not config.init_from:
            raise InvalidInputError("--objective self-critical fine-tunes a trained model: pass --init-from MODEL_DIR "
                             "(a model directory trained with cross-entropy, config key init_from)")
        if train_captions is None:
            raise InvalidInputError("self-critical needs the training images' references (train_captions)")
        scorer, references = reward_document_frequencies(train_captions, vocab.tokenize)
        s = config.scst
        return cls(scorer, scorer.prepare_references(references), vocab, s.samples, s.baseline, s.temperature)

    def best_model_score(self, means: dict[str, float]) -> float:
        return means["reward"]

    # --- a step: draw (no gradients), then the loss of the draws (with gradients) ------------
    def __call__(self, model, inputs: Features | torch.Tensor, targets: torch.Tensor) -> ObjectiveResult:
        with _eval_mode(model):
            draws = self.draw(_unwrap(model), inputs)
            return self.policy_loss(model, inputs, targets, draws)

    @torch.no_grad()
    def draw(self, captioner, inputs: Features | torch.Tensor) -> Draws:
        """K samples per image (multinomial at ``temperature``, the model's decoding limits) and,
        for the greedy baseline, the greedy captions."""
        features = captioner.features_of(inputs)
        config = captioner.decoding_config()
        drawn = sample(captioner.decoder, _repeat(features, self.samples), config, temperature=self.temperature)
        k = self.samples
        samples = [[drawn[i * k + j][0].tokens for j in range(k)] for i in range(len(drawn) // k)]
        best = None
        if self.baseline == "greedy":
            best = [h[0].tokens for h in greedy(captioner.decoder, features, config)]
        return Draws(samples, best)

    def rewards(self, captions: list[list[int]], image_index, max_length: int) -> np.ndarray:
        """CIDEr-D of each caption (token ids, no markers) against the references of its image
        (``image_index[i]``), scored on its words (subword pieces joined); ``<end>`` counts when the
        caption ended within ``max_length`` tokens."""
        texts = [" ".join([*self.vocab.words(c), *([END] if len(c) < max_length else [])]) for c in captions]
        return self.scorer.score(texts, self.references, index=np.asarray(image_index))

    def policy_loss(self, model, inputs: Features | torch.Tensor, targets: torch.Tensor,
                    draws: Draws) -> ObjectiveResult:
        """The loss of these draws: rewards, baselines, and log-probabilities with gradients."""
        captioner = _unwrap(model)
        k, images, limit = self.samples, len(draws.samples), captioner.max_length
        image_index = targets.detach().cpu().numpy()
        flat = [c for per_image in draws.samples for c in per_image]
        reward = torch.from_numpy(self.rewards(flat, np.repeat(image_index, k), limit)).float().view(images, k)
        if self.baseline == "greedy":
            greedy_reward = torch.from_numpy(self.rewards(draws.greedy, image_index, limit)).float()
            baseline = greedy_reward[:, None].expand(images, k)
        else:
            baseline = mean_of_others(reward)
        advantage = (reward - baseline).to(targets.device)  # (images, K)
        log_prob = self.sequence_log_probs(model, captioner, inputs, flat).view(images, k)
        loss = -(advantage * log_prob).mean()
        lengths = torch.tensor([len(c) for c in flat], dtype=torch.float).view(images, k)
        bad = torch.tensor([ends_badly(self.vocab.words(c)) for c in flat], dtype=torch.float)
        logs = {
            "loss": loss.detach(),
            "reward": reward.mean(),
            "baseline": baseline.mean(),
            "advantage_std": (reward - baseline).std(1, unbiased=False).mean(),
            "sample_length": lengths.mean(),
            "bad_ending": bad.mean(),
        }
        return ObjectiveResult(loss, images, logs)

    def sequence_log_probs(self, model, captioner, inputs, captions: list[list[int]]) -> torch.Tensor:
        """Summed log-probability of each caption and its ``<end>`` (when it ended) under the
        sampling distribution, with gradients, from one teacher-forced forward of ``model``."""
        v, device = self.vocab, captioner.device
        longest = max(len(c) for c in captions) + 2
        tokens = torch.full((len(captions), longest), v.pad_id, dtype=torch.long)
        for i, c in enumerate(captions):
            ended = [v.end_id] if len(c) < captioner.max_length else []
            tokens[i, : len(c) + 1 + len(ended)] = torch.tensor([v.start_id, *c, *ended])
        tokens = tokens.to(device)
        logits = model(_repeat(inputs, self.samples), tokens[:, :-1]).logits.float()  # (rows, T, vocab)
        config = captioner.decoding_config()
        banned = torch.zeros(logits.shape[1:], dtype=torch.bool, device=device)  # (T, vocab), as decoding bans
        banned[:, list(config.banned_ids)] = True
        banned[: config.min_length, config.end_id] = True
        log_probs = (logits.masked_fill(banned, float("-inf")) / self.temperature).log_softmax(-1)
        targets = tokens[:, 1:]  # (rows, T)
        chosen = log_probs.gather(2, targets[:, :, None])[:, :, 0]
        return torch.where(targets != v.pad_id, chosen, torch.zeros_like(chosen)).sum(1)  # (rows,)


def _unwrap(model):
    """The Captioner inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _repeat(inputs, times: int):
    """Each image's features (or pixels, or cached activations) ``times`` times in a row (image-major)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.repeat_interleave(times, 0)
    return type(inputs)(*(t.repeat_interleave(times, 0) if isinstance(t, torch.Tensor) else t for t in inputs))


@contextmanager
def _eval_mode(model):
    """The model in eval mode inside the block, its own mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
