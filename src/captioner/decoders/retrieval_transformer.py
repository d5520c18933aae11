"""A Transformer decoder that reads the captions of the image's nearest datastore images beside
the image (SmallCap: Ramos et al. 2023, "SmallCap: Lightweight Image Captioning Prompted with
Retrieval Augmentation").

SmallCap puts the retrieved captions in GPT-2's prompt and the image in cross-attention; here
both are the memory the decoder cross-attends to: the image slots of :mod:`.transformer` (the
projected grid, and the pooled vector) and one slot per token of the ``neighbours`` retrieved
captions, embedded with the decoder's own word embedding (a slot holds the word the decoder
would write to copy it) plus its position in its caption and its neighbour's rank; a segment
embedding tells image slots from caption slots. ``memory_layers`` self-attention layers mix the
slots before decoding, so a caption token knows the words around it and how well its caption
fits the image: copying a neighbour's next word is then one attention hop. Padding after a
caption's ``<end>`` is masked everywhere.

The retrieved captions are a per-image constant: ``init_state`` folds them into the static
memory, so beam search expands and reorders nothing new. Where they come from is not the
decoder's business (``Features.retrieved``): the model's datastore when captioning
(:func:`captioner.retrieval.with_retrieved`), the other training images when training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.vocab import Vocabulary
from ..errors import InvalidInputError
from .base import Features, register_decoder
from .transformer import MultiHeadAttention, TransformerConfig, TransformerDecoder, feed_forward


@dataclass
class RetrievalTransformerConfig(TransformerConfig):
    neighbours: int = 4  # captions read per image (SmallCap's k)
    retrieved_length: int = 20  # tokens kept of each: its words, then <end>
    memory_layers: int = 1  # self-attention layers over the image and caption slots before decoding


class MemoryLayer(nn.Module):
    """Pre-LN self-attention over the memory slots (padding masked), then a feed-forward."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.attention = MultiHeadAttention(config.d_model, config.num_heads)
        self.ff_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = feed_forward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (batch, slots, d), mask (batch, 1, 1, slots) → (batch, slots, d)."""
        h = self.norm(x)
        attended, _ = self.attention(h, *self.attention.keys_values(h), mask=mask)
        x = x + self.dropout(attended)
        return x + self.dropout(self.feed_forward(self.ff_norm(x)))


class RetrievalTransformerDecoder(TransformerDecoder):
    def __init__(self, name, config: RetrievalTransformerConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        if config.neighbours < 1 or config.retrieved_length < 2 or config.memory_layers < 0:
            raise InvalidInputError(
                f"retrieval-transformer reads at least 1 neighbour's caption of at least 2 tokens (a word and "
                f"<end>) through 0 or more memory layers; got neighbours={config.neighbours}, "
                f"retrieved_length={config.retrieved_length}, memory_layers={config.memory_layers}"
            )
        d = config.d_model
        self.segments = nn.Embedding(2, d)  # 0: image slots, 1: caption slots
        self.neighbour_ranks = nn.Embedding(config.neighbours, d)  # nearest first
        self.retrieved_positions = nn.Embedding(config.retrieved_length, d)
        self.memory_layers = nn.ModuleList(MemoryLayer(config) for _ in range(config.memory_layers))
        self.memory_final_norm = nn.LayerNorm(d) if config.memory_layers else None
        for module in (self.segments, self.neighbour_ranks, self.retrieved_positions, self.memory_layers):
            module.apply(self._init_weights)

    @property
    def retrieved_shape(self) -> tuple[int, int]:
        return self.config.neighbours, self.config.retrieved_length

    def _retrieved(self, features: Features) -> torch.Tensor:
        retrieved = features.retrieved
        if retrieved is None:
            raise InvalidInputError(
                f"decoder {self.name!r} reads the captions of each image's nearest datastore images "
                "(Features.retrieved) and none were given: caption with the model's datastore "
                "(datastore.safetensors in its folder; `captioner datastore build` makes one)"
            )
        expected = (features.pooled.shape[0], *self.retrieved_shape)
        if tuple(retrieved.shape) != expected:
            raise InvalidInputError(f"decoder {self.name!r} reads retrieved captions of shape (images, neighbours, "
                                    f"tokens) = {expected}, got {tuple(retrieved.shape)}")
        return retrieved

    def _memory(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        retrieved = self._retrieved(features)  # (batch, k, L)
        image = self._image_slots(features) + self.segments.weight[0]  # (batch, [1 +] R, d)
        words = (self.embed(retrieved) + self.neighbour_ranks.weight[:, None] + self.retrieved_positions.weight
                 + self.segments.weight[1])  # (batch, k, L, d)
        memory = self.dropout(self.memory_norm(torch.cat([image, words.flatten(1, 2)], dim=1)))  # (batch, S, d)
        readable = torch.cat([torch.ones_like(image[..., 0], dtype=torch.bool),
                              (retrieved != Vocabulary.pad_id).flatten(1)], dim=1)  # (batch, S)
        mask = torch.zeros_like(readable, dtype=torch.float32).masked_fill(~readable, float("-inf"))[:, None, None]
        for layer in self.memory_layers:
            memory = layer(memory, mask)
        if self.memory_final_norm is not None:
            memory = self.memory_final_norm(memory)
        return memory, mask  # mask (batch, 1, 1, S)

    def _region_attention(self, weights: torch.Tensor) -> torch.Tensor:
        """Cross-attention (batch, heads, T, slots) → head-averaged weights over the regions only."""
        caption_slots = self.config.neighbours * self.config.retrieved_length  # the last slots
        return super()._region_attention(weights[..., :-caption_slots])


register_decoder("retrieval-transformer", RetrievalTransformerConfig)(RetrievalTransformerDecoder)
