"""A datastore of captioned image features beside a model, searched to caption new images
better without retraining: consensus reranking (Devlin et al. 2015, "Exploring nearest
neighbor approaches for image captioning") and the neighbours' agreement as a confidence
signal.

``datastore.safetensors`` in a model folder holds, in one file (one atomic write):

- ``keys`` (rows, dims) float16 — each image's pooled encoder feature, centred and projected
  onto ``projection`` (pooled_dim, dims: the training features' principal axes, so a
  25,000-image store stays a few MB), then L2-normalised: a search is one matrix product;
- ``groups`` (rows,) int32 — which caption group each row has (the drawings of one emoji by
  several artists share one group);
- ``captions`` — the groups' captions by language, UTF-8 JSON (``[{"en": ["dog face"], …}, …]``);
- metadata naming the encoder, its weights' digest and the preprocessing it was built with:
  a model with another encoder or preprocessing refuses it.

``captioner datastore build`` makes one from a dataset, ``captioner datastore add`` adds a
user's own captioned images (their art style, their domain): :mod:`captioner.datastore`;
captioning uses it when present. A decoder that reads retrieved captions (SmallCap's, Ramos et
al. 2023: ``decoder.retrieved_shape``) gets its neighbours' captions from it
(:func:`with_retrieved`), so adding images changes what that model can copy.
Torch-free: the torch model and the exported runtime (which carries the file) search alike.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from array_api_compat import array_namespace, device as array_device

from .decoding import Features, host_array
from .errors import CaptionerError
from .io import atomic_write

DATASTORE_FILE = "datastore.safetensors"
DATASTORE_FORMAT = 1
DEFAULT_DIMS = 128  # 25,000 drawings × 128 fp16 = 6.4 MB (the bundled model's budget)
DEFAULT_NEIGHBOURS = 15
MAX_ROWS = 5_000_000  # past this an exact search is no longer what a CPU user wants (use an ANN index)
MAX_CAPTIONS_BYTES = 512 << 20


class DatastoreError(CaptionerError, ValueError):
    """A datastore that is unreadable, inconsistent, or made for another encoder or preprocessing."""


@dataclass(frozen=True)
class EncoderIdentity:
    """What makes two models' pooled features comparable: the encoder, its weights, the preprocessing."""

    name: str
    weights: str  # captioner.cache.weights_digest of the encoder
    preprocess: str  # captioner.data.images.PreprocessConfig.key()

    def mismatch(self, other: "EncoderIdentity") -> Optional[str]:
        for field, what in (("name", "encoder"), ("weights", "encoder weights"), ("preprocess", "preprocessing")):
            if getattr(self, field) != getattr(other, field):
                return f"{what} {getattr(self, field)[:60]!r} ≠ the model's {getattr(other, field)[:60]!r}"
        return None


@dataclass
class Neighbours:
    """The ``k`` nearest datastore rows of each image: (images, k) rows and cosine similarities."""

    rows: np.ndarray
    similarity: np.ndarray


class Datastore:
    """Captioned features, searched exactly by cosine similarity (see the module docstring)."""

    def __init__(self, keys: np.ndarray, groups: np.ndarray, captions: list[dict[str, list[str]]],
                 mean: np.ndarray, projection: np.ndarray, identity: EncoderIdentity,
                 rerank: Optional["RerankConfig"] = None):
        self.keys = np.ascontiguousarray(keys, dtype=np.float16)  # (rows, dims)
        self.groups = np.asarray(groups, dtype=np.int32)  # (rows,)
        self.captions = captions  # per group: {language: [caption, ...]}
        self.mean = np.asarray(mean, dtype=np.float32)  # (pooled_dim,)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)  # (pooled_dim, dims)
        self.identity = identity
        self.rerank = rerank or RerankConfig()  # how captioning uses it (tuned on validation images)
        self._scorers: dict[str, object] = {}  # language → CiderD over the groups' captions
        self._memories: dict[tuple, dict[str, list[str]]] = {}  # (source, target) → translation memory
        self._languages: Optional[set[str]] = None
        self._keys32: Optional[tuple[np.ndarray, np.ndarray]] = None  # (keys, keys as float32)

    def __len__(self) -> int:
        return len(self.keys)

    # --- building ----------------------------------------------------------------------------
    @classmethod
    def build(cls, pooled: np.ndarray, captions: Sequence[dict[str, list[str]]], identity: EncoderIdentity,
              dims: int = DEFAULT_DIMS, groups: Optional[Sequence[int]] = None,
              rerank: Optional["RerankConfig"] = None) -> "Datastore":
        """A datastore of ``pooled`` features (rows, pooled_dim) and their ``captions`` (one
        ``{language: [captions]}`` per row, or per group with ``groups`` giving each row's group),
        projected onto the ``dims`` principal axes of these features."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or len(pooled) < 2:
            raise DatastoreError(f"a datastore needs at least 2 images' features, got an array of shape {pooled.shape}")
        mean = pooled.mean(0)
        dims = min(dims, pooled.shape[1], len(pooled))
        # Principal axes from the SVD of the centred features (the top ``dims`` right singular vectors).
        _, _, axes = np.linalg.svd(pooled - mean, full_matrices=False)
        projection = axes[:dims].T.astype(np.float32)  # (pooled_dim, dims)
        groups = np.arange(len(pooled)) if groups is None else np.asarray(groups)
        if len(groups) != len(pooled) or (len(groups) and groups.max() >= len(captions)):
            raise DatastoreError(f"{len(pooled)} features, {len(groups)} group ids and {len(captions)} caption groups "
                                 "do not fit together")
        store = cls(np.zeros((0, dims), np.float16), np.zeros(0, np.int32), list(captions), mean, projection, identity,
                    rerank)
        store.keys = store._project(pooled).astype(np.float16)
        store.groups = groups.astype(np.int32)
        return store

    def add(self, pooled: np.ndarray, captions: Sequence[dict[str, list[str]]]) -> None:
        """Append images (their pooled features and captions, one group each), projected as the
        rest were; the projection is not refitted, so earlier rows keep their keys."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != len(self.mean) or len(pooled) != len(captions):
            raise DatastoreError(f"add: {pooled.shape} features for {len(captions)} captions; the datastore's "
                                 f"features have {len(self.mean)} dimensions")
        if len(self) + len(pooled) > MAX_ROWS:
            raise DatastoreError(f"a datastore holds at most {MAX_ROWS:,} images (exact search)")
        first = len(self.captions)
        self.captions.extend(captions)
        self.keys = np.concatenate([self.keys, self._project(pooled).astype(np.float16)])
        self.groups = np.concatenate([self.groups, np.arange(first, first + len(pooled), dtype=np.int32)])
        self._scorers.clear()
        self._memories.clear()
        self._languages = None

    def without(self, rows: np.ndarray) -> "Datastore":
        """This datastore less the ``rows`` (bool, one per row) — searched as if they had never
        been added (same projection, same caption groups): what a new artist's drawings find when
        the datastore holds none of theirs."""
        keep = ~np.asarray(rows, dtype=bool)
        return Datastore(self.keys[keep], self.groups[keep], self.captions, self.mean, self.projection,
                         self.identity, self.rerank)

    def _project(self, pooled: np.ndarray) -> np.ndarray:
        keys = (np.asarray(pooled, dtype=np.float32) - self.mean) @ self.projection  # (images, dims)
        return keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)

    # --- searching ---------------------------------------------------------------------------
    def search(self, pooled, k: int = DEFAULT_NEIGHBOURS, exclude: Optional[np.ndarray] = None) -> Neighbours:
        """The ``k`` most similar rows of each image's pooled feature (a torch tensor or numpy array).
        ``exclude`` (images, rows) bool: rows an image may not find (they come last, at similarity
        -inf, only when fewer than ``k`` others are left)."""
        queries = self._project(host_array(pooled))  # (images, dims)
        if self._keys32 is None or self._keys32[0] is not self.keys:  # numpy multiplies fp16 slowly: convert once
            self._keys32 = (self.keys, self.keys.astype(np.float32))
        similarity = queries @ self._keys32[1].T  # (images, rows)
        if exclude is not None:
            similarity[exclude] = -np.inf
        k = min(k, len(self))
        rows = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, rows, axis=1), axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        return Neighbours(rows, np.take_along_axis(similarity, rows, axis=1))

    def neighbour_captions(self, neighbours: Neighbours, language: str) -> list[list[tuple[str, float]]]:
        """Each image's neighbours' captions in ``language`` with the neighbour's similarity, nearest
        first (a neighbour without a caption in ``language`` gives none)."""
        return [[(c, float(similarity)) for row, similarity in zip(image_rows, image_similarity)
                 for c in self.captions[self.groups[row]].get(language, [])]
                for image_rows, image_similarity in zip(neighbours.rows, neighbours.similarity)]

    def scorer(self, language: str, tokenize):
        """CIDEr-D with document frequencies over the groups' captions in ``language``."""
        if language not in self._scorers:
            from .metrics.cider import CiderD

            documents = [[" ".join(tokenize(c)) for c in group.get(language, [])] for group in self.captions]
            self._scorers[language] = CiderD.from_corpus([d for d in documents if d] or [["-"]])
        return self._scorers[language]

    def languages(self) -> set[str]:
        """The languages the groups' captions are in."""
        if self._languages is None:
            self._languages = {language for group in self.captions for language in group}
        return self._languages

    def translations(self, captions: Sequence[str], source: str, target: str, key) -> list[list[str]]:
        """The datastore as a translation memory: each group holds one image's captions in several
        languages, so a caption in ``source`` that some groups hold (compared as ``key``: its words)
        has those groups' captions in ``target`` as translations. Per caption, its translations,
        those of the most groups first (none for a caption no group holds)."""
        if (source, target) not in self._memories:
            votes: dict[str, Counter] = {}
            for group in self.captions:
                for caption in group.get(source, []):
                    votes.setdefault(key(caption), Counter()).update(group.get(target, []))
            self._memories[source, target] = {k: [c for c, _ in v.most_common()] for k, v in votes.items() if v}
        memory = self._memories[source, target]
        return [memory.get(key(caption), []) for caption in captions]

    # --- the file ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        text = json.dumps(self.captions, ensure_ascii=False).encode("utf-8")
        arrays = {"keys": self.keys, "groups": self.groups, "mean": self.mean, "projection": self.projection,
                  "captions": np.frombuffer(text, dtype=np.uint8)}
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # safetensors writes the raw buffer
        metadata = {"format": str(DATASTORE_FORMAT), "encoder": self.identity.name,
                    "encoder_weights": self.identity.weights, "preprocess": self.identity.preprocess,
                    "captions_sha256": hashlib.sha256(text).hexdigest(), "rerank": json.dumps(self.rerank.to_dict())}
        path = Path(directory) / DATASTORE_FILE
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, directory: str | Path, identity: Optional[EncoderIdentity] = None) -> Optional["Datastore"]:
        """The model folder's datastore, or ``None`` when it has none; checked against the
        model's encoder ``identity`` when given."""
        from safetensors import SafetensorError, safe_open

        path = Path(directory) / DATASTORE_FILE
        if not path.is_file():
            return None
        fix = "delete it, or build it again with `captioner datastore build`"
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise DatastoreError(f"{path} is corrupt or truncated ({e}); {fix}") from None
        if metadata.get("format") != str(DATASTORE_FORMAT):
            raise DatastoreError(f"{path}: format {metadata.get('format')!r} is not {DATASTORE_FORMAT}; {fix}")
        try:
            text = arrays["captions"].tobytes()
            if len(text) > MAX_CAPTIONS_BYTES or hashlib.sha256(text).hexdigest() != metadata["captions_sha256"]:
                raise ValueError("the captions do not match their checksum")
            captions = json.loads(text.decode("utf-8"))
            store = cls(arrays["keys"], arrays["groups"], captions, arrays["mean"], arrays["projection"],
                        EncoderIdentity(metadata["encoder"], metadata["encoder_weights"], metadata["preprocess"]),
                        RerankConfig.from_dict(json.loads(metadata["rerank"])))
            _check_layout(store)
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
            raise DatastoreError(f"{path}: inconsistent datastore ({e}); {fix}") from None
        if identity is not None and (problem := store.identity.mismatch(identity)):
            raise DatastoreError(f"{path} was built with another encoder or preprocessing ({problem}); {fix}")
        return store


def _check_layout(store: Datastore) -> None:
    rows, dims = store.keys.shape
    if rows > MAX_ROWS or store.groups.shape != (rows,) or store.projection.shape != (len(store.mean), dims):
        raise ValueError(f"keys {store.keys.shape}, groups {store.groups.shape}, projection {store.projection.shape}")
    if not isinstance(store.captions, list) or (rows and not 0 <= store.groups.min() <= store.groups.max()
                                                < len(store.captions)):
        raise ValueError("group ids out of range of the captions")
    for group in store.captions:
        if not isinstance(group, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                                  for v in group.values()):
            raise ValueError("captions must be {language: [caption, ...]} per group")


# --- consensus reranking -------------------------------------------------------------------
@dataclass(frozen=True)
class RerankConfig:
    """How the datastore reranks a caption's candidates: the ``neighbours`` nearest images vote
    with their captions; a candidate's consensus is its CIDEr-D against them (Devlin et al.
    2015); the best candidate maximises its length-normalised log-probability + ``weight`` ×
    consensus. With ``neighbour_captions``, the neighbours' own captions (those the model can
    write) are candidates beside the beam's n-best, scored by the model too."""

    neighbours: int = DEFAULT_NEIGHBOURS
    weight: float = 1.0
    neighbour_captions: bool = True
    most_candidates: int = 8  # of the neighbours' captions, the nearest this many distinct ones are scored

    @property
    def keeps_order(self) -> bool:
        """Weight 0 without the neighbours' captions: the beam's own order (the datastore then
        only informs the confidence)."""
        return self.weight == 0 and not self.neighbour_captions

    def to_dict(self) -> dict:
        return {"neighbours": self.neighbours, "weight": self.weight, "neighbour_captions": self.neighbour_captions,
                "most_candidates": self.most_candidates}

    @classmethod
    def from_dict(cls, data: dict) -> "RerankConfig":
        config = cls(int(data["neighbours"]), float(data["weight"]), bool(data["neighbour_captions"]),
                     int(data["most_candidates"]))
        if not (1 <= config.neighbours <= 1000 and 0 <= config.most_candidates <= 1000 and math.isfinite(config.weight)):
            raise ValueError(f"rerank settings out of range: {data}")
        return config


@dataclass
class Reranked:
    """One image's candidates after reranking, best first, with what confidence reads of them."""

    hypotheses: list  # captioner.decoding.Hypothesis, best first; .score is the rerank score
    consensus: float  # the best candidate's CIDEr-D against the neighbours' captions
    agreement: float  # the share of the neighbours one of whose captions is the best candidate
    similarity: float  # the nearest neighbour's cosine similarity
    margin: float  # the best candidate's rerank score minus the second's (0 when alone)


def rerank(model, features, results: Sequence[Sequence], language: Optional[str], config: RerankConfig,
           preferred: Optional[Sequence[Sequence[str]]] = None, keep: int = 2) -> list[Reranked]:
    """Rerank each image's n-best ``results`` (decoding's hypotheses) with ``model.datastore``:
    add the neighbours' captions the model can write (scored by ``model.score_captions``),
    then order every candidate by length-normalised log-probability + weight × consensus.
    ``preferred``: per image, captions in ``language`` that join as candidates and rank ahead of
    every other (the translations of the caption in the model's first language: ``Datastore.translations``).
    The ``keep`` best places come out as a full scoring would give them; a neighbour's caption
    that provably ranks below the beam's ``keep``-th is dropped while it is scored (``floors``
    of :func:`captioner.decoding.score_captions`): most are, after a token or two."""
    store, vocab = model.datastore, model.vocab
    language = vocab.check_language(language)
    neighbours = store.search(features.pooled, config.neighbours)
    voted = store.neighbour_captions(neighbours, language)  # per image: (caption, similarity), nearest first
    tokenize = lambda text: vocab.tokenize(text, language)  # noqa: E731
    key = functools.lru_cache(maxsize=None)(lambda text: " ".join(tokenize(text)))  # captions compare as words
    preferred = preferred or [[] for _ in results]
    candidates, first = [], []
    for hypotheses, captions, translations in zip(results, voted, preferred):
        seen = {key(vocab.decode(h.tokens, language)) for h in hypotheses}
        extra = []
        for caption in translations:
            words = word_ids(vocab, caption, language)
            if key(caption) not in seen and vocab.unk_id not in words and words:
                seen.add(key(caption))
                extra.append(words)
        first.append({key(c) for c in translations})
        extra_from_neighbours = 0
        for caption, _ in captions:
            if not config.neighbour_captions or extra_from_neighbours >= config.most_candidates:
                break
            words = word_ids(vocab, caption, language)
            if key(caption) not in seen and vocab.unk_id not in words and words:
                seen.add(key(caption))
                extra.append(words)
                extra_from_neighbours += 1
        candidates.append(extra)
    scorer = store.scorer(language, tokenize)
    own = [[vocab.decode(h.tokens, language) for h in hypotheses] for hypotheses in results]
    texts = [o + [vocab.decode(words, language) for words in extra] for o, extra in zip(own, candidates)]
    agree = consensus(texts, [[c for c, _ in captions] for captions in voted],
                      [[w for _, w in captions] for captions in voted], scorer, tokenize)
    rank = lambda h, c: length_normalised(h.log_prob, len(h.token_log_probs)) + config.weight * c  # noqa: E731
    floors = []  # a neighbour's caption that cannot reach the beam's `keep`-th place is not scored to the end
    for hypotheses, agreed, translated in zip(results, agree, first):
        beam = sorted((rank(h, c) for h, c in zip(hypotheses, agreed) if math.isfinite(h.log_prob)), reverse=True)
        bar = beam[keep - 1] if len(beam) >= keep and not translated else -math.inf
        floors.append([bar - config.weight * c for c in agreed[len(hypotheses):]])
    scored = model.score_captions(features, candidates, language, floors)
    out = []
    for i, hypotheses in enumerate(results):
        every = list(zip([*hypotheses, *scored[i]], agree[i], texts[i]))
        pool = [(h, c, t) for h, c, t in every if math.isfinite(h.log_prob)] or every[: len(hypotheses)]
        if config.keeps_order and not first[i]:
            ranked = [(h.score, c, h, t) for h, c, t in pool]
        else:
            ranked = sorted(((rank(h, c), c, h, t) for h, c, t in pool),
                            key=lambda item: (key(item[3]) not in first[i], -item[0]))
        best_words = key(ranked[0][3])
        rows = neighbours.rows[i]
        agreeing = sum(any(key(c) == best_words for c in store.captions[store.groups[r]].get(language, []))
                       for r in rows)
        hypotheses_out = []
        for score, _, h, _ in ranked:
            h = copy.copy(h)
            h.score = float(score)
            hypotheses_out.append(h)
        out.append(Reranked(hypotheses_out, float(ranked[0][1]), agreeing / max(len(rows), 1),
                            float(neighbours.similarity[i, 0]) if len(rows) else 0.0,
                            float(ranked[0][0] - ranked[1][0]) if len(ranked) > 1 else 0.0))
    return out


def consensus(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
              weights: Sequence[Sequence[float]], scorer, tokenize) -> list[np.ndarray]:
    """Per image, each candidate's CIDEr-D against each of the image's neighbour captions, averaged
    with the ``weights`` of those captions (their neighbours' similarity); 0 without any."""
    words = functools.lru_cache(maxsize=None)(lambda text: " ".join(tokenize(text)))  # each caption split once
    flat, index, singles = [], [], []
    for cands, refs, w in zip(candidates, references, weights):
        for c in cands:
            for r in refs:
                flat.append(words(c))
                index.append(len(singles))
                singles.append([words(r)])
    scores = scorer.score(flat, singles, index=index) if flat else np.zeros(0)
    out, position = [], 0
    for cands, refs, w in zip(candidates, references, weights):
        pairs = scores[position : position + len(cands) * len(refs)].reshape(len(cands), len(refs))
        position += len(cands) * len(refs)
        w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
        out.append(pairs @ w / w.sum() if len(refs) and w.sum() > 0 else np.zeros(len(cands)))
    return out


def length_normalised(log_prob: float, tokens: int) -> float:
    """A caption's mean log-probability per token (its words and ``<end>``)."""
    return log_prob / max(tokens, 1)


def word_ids(vocab, caption: str, language: str) -> list[int]:
    """A caption's token ids without the markers (``<start>``, the language token, ``<end>``)."""
    ids = vocab.encode(caption, language=language)
    return ids[2 if vocab.language_token_id(language) is not None else 1 : -1]


# --- retrieved captions for a decoder that reads them ----------------------------------------
def retrieved_tokens(store: Datastore, neighbours: Neighbours, vocab, language: str,
                     shape: tuple[int, int]) -> np.ndarray:
    """The captions of each image's ``shape[0]`` nearest ``neighbours``, nearest first, as token
    ids (images, neighbours, length) int64: each neighbour's first caption in ``language``, its
    words cut to ``length - 1`` then ``<end>``, ``<pad>`` after. A neighbour that is missing (a
    store of fewer rows, an excluded row) or has no caption in ``language`` is all ``<pad>``."""
    count, length = shape
    tokens = np.full((len(neighbours.rows), count, length), vocab.pad_id, dtype=np.int64)
    for i, (rows, similarity) in enumerate(zip(neighbours.rows, neighbours.similarity)):
        for j, (row, near) in enumerate(zip(rows[:count], similarity[:count])):
            captions = store.captions[store.groups[row]].get(language) if np.isfinite(near) else None
            if captions:
                ids = [*word_ids(vocab, captions[0], language)[: length - 1], vocab.end_id]
                tokens[i, j, : len(ids)] = ids
    return tokens


def with_retrieved(model, features: Features, language: Optional[str] = None) -> Features:
    """``features`` with ``retrieved`` filled when ``model``'s decoder reads retrieved captions
    (``decoder.retrieved_shape``): the captions in ``language`` (default: the model's first) of
    each image's nearest images in ``model.datastore``, as arrays of the features' engine and
    device. Other decoders' features, and features that already carry them (training's, which
    leave each image itself out), come back unchanged."""
    shape = model.decoder.retrieved_shape
    if shape is None or features.retrieved is not None:
        return features
    if model.datastore is None:
        raise DatastoreError(f"decoder {model.decoder.name!r} reads the captions of each image's nearest datastore "
                             "images, and this model has no datastore: make one with `captioner datastore build "
                             "--model DIR --data CAPTIONS`")
    language = model.vocab.check_language(language)
    neighbours = model.datastore.search(features.pooled, shape[0])
    tokens = retrieved_tokens(model.datastore, neighbours, model.vocab, language, shape)
    xp = array_namespace(features.pooled)
    return features._replace(retrieved=xp.asarray(tokens, device=array_device(features.pooled)))


__all__ = ["DATASTORE_FILE", "Datastore", "DatastoreError", "EncoderIdentity", "Neighbours", "RerankConfig",
           "Reranked", "consensus", "length_normalised", "rerank", "retrieved_tokens", "with_retrieved",
           "word_ids"]
