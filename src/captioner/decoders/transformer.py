"""A pre-LayerNorm Transformer decoder over the image regions (Vaswani et al. 2017, as most
modern captioners use it).

The projected region grid (plus, by default, the pooled vector as one more slot) is the memory
every layer cross-attends to; causal self-attention reads the caption so far. Training scores
all positions in parallel; ``step`` decodes one token at a time with cached keys and values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .base import Decoder, DecoderOutput, Features, State, register_decoder
from .layers import sinusoidal_positions


@dataclass
class TransformerConfig:
    d_model: int = 512
    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    positions: str = "learned"  # learned | sinusoidal
    max_positions: int = 64  # longest token sequence (words + <start>) the model reads
    tie_embeddings: bool = False  # the output projection reuses the word embedding
    pooled_token: bool = True  # the pooled vector as one more memory slot beside the regions


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over keys/values that the caller may cache."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise InvalidInputError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)  # (batch, heads, L, d_head)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.key_value(x).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)  # each (batch, heads, L, d_head)

    def forward(self, x, keys, values, causal: bool = False, need_weights: bool = False, mask=None):
        """x (batch, T, d_model) attends to keys/values (batch, heads, S, d_head)
        → (batch, T, d_model), and the weights (batch, heads, T, S) when asked for. ``mask``
        (batch, 1, 1, S): 0 where a key may be read, -inf where not (padding)."""
        query = self._heads(self.query(x))  # (batch, heads, T, d_head)
        weights = None
        if mask is not None:
            mask = mask.to(query.dtype)  # under autocast the scores are bf16
        if need_weights:
            scores = query @ keys.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (batch, heads, T, S)
            if mask is not None:
                scores = scores + mask
            if causal:
                t, s = scores.shape[-2:]
                future = torch.ones(t, s, dtype=torch.bool, device=x.device).triu(s - t + 1)
                scores = scores.masked_fill(future, float("-inf"))
            weights = scores.softmax(dim=-1)
            mixed = weights @ values
        else:
            mixed = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=causal)
        batch, _, length, _ = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(batch, length, -1)), weights


def feed_forward(config: TransformerConfig) -> nn.Sequential:
    """The position-wise feed-forward block of a layer: d_model → ff_dim → d_model."""
    return nn.Sequential(nn.Linear(config.d_model, config.ff_dim), nn.GELU(), nn.Dropout(config.dropout),
                         nn.Linear(config.ff_dim, config.d_model))


class DecoderLayer(nn.Module):
    """Pre-LN: x + SelfAttn(LN x), + CrossAttn(LN x, memory), + FeedForward(LN x)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.self_norm = nn.LayerNorm(d)
        self.self_attention = MultiHeadAttention(d, config.num_heads)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attention = MultiHeadAttention(d, config.num_heads)
        self.ff_norm = nn.LayerNorm(d)
        self.feed_forward = feed_forward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, past: tuple | None, memory: tuple, causal: bool, need_weights: bool = False,
                memory_mask=None):
        """x (batch, T, d); ``past`` cached self-attention (keys, values) or None; ``memory`` the
        cross-attention (keys, values), ``memory_mask`` which of them to read (see
        ``MultiHeadAttention``; None: all). Returns x, this layer's self (keys, values), cross weights."""
        h = self.self_norm(x)
        keys, values = self.self_attention.keys_values(h)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        attended, _ = self.self_attention(h, keys, values, causal=causal)
        x = x + self.dropout(attended)
        attended, weights = self.cross_attention(self.cross_norm(x), *memory, need_weights=need_weights,
                                                 mask=memory_mask)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.ff_norm(x)))
        return x, (keys, values), weights


class TransformerDecoder(Decoder):
    needs_grid = True
    has_attention = True
    static_state = ("memory_keys", "memory_values", "memory_mask")

    def __init__(self, name, config: TransformerConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        if config.positions not in ("learned", "sinusoidal"):
            raise InvalidInputError(f"transformer positions must be 'learned' or 'sinusoidal', got {config.positions!r}")
        d = config.d_model
        self.grid_proj = nn.Linear(grid_dim, d)
        self.pooled_proj = nn.Linear(pooled_dim, d) if config.pooled_token else None
        self.memory_norm = nn.LayerNorm(d)
        self.embed = nn.Embedding(vocab_size, d)
        if config.positions == "learned":
            self.positions = nn.Embedding(config.max_positions, d)
        else:
            self.register_buffer("position_table", sinusoidal_positions(config.max_positions, d), persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d)
        # Tied: the embedding matrix is the output weight, only a bias is separate (and nothing
        # is stored twice, which safetensors would refuse).
        self.head = None if config.tie_embeddings else nn.Linear(d, vocab_size)
        self.head_bias = nn.Parameter(torch.zeros(vocab_size)) if config.tie_embeddings else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2 style: small normal weights keep the pre-LN residual stream well scaled at the start.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- pieces -----------------------------------------------------------------------
    def _image_slots(self, features: Features) -> torch.Tensor:
        """The image as memory slots before normalisation: (batch, [1 +] R, d)."""
        if features.grid is None:
            raise ValueError(f"decoder {self.name!r} needs the region grid (Features.grid), got None")
        memory = self.grid_proj(features.grid)  # (batch, R, d)
        if self.pooled_proj is not None:
            memory = torch.cat([self.pooled_proj(features.pooled)[:, None], memory], dim=1)  # (batch, 1 + R, d)
        return memory

    def _memory(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What every layer cross-attends to: (batch, slots, d), and the mask of the slots it may
        read (batch, 1, 1, slots), or None when it reads them all."""
        return self.dropout(self.memory_norm(self._image_slots(features))), None

    def _position(self, start: int, length: int) -> torch.Tensor:
        if start + length > self.config.max_positions:
            raise ValueError(
                f"transformer reads at most max_positions={self.config.max_positions} tokens, asked for "
                f"{start + length}; build it with a larger max_positions"
            )
        if self.config.positions == "learned":
            return self.positions.weight[start : start + length]  # (length, d)
        return self.position_table[start : start + length]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(x)
        if self.head is not None:
            return self.head(x)
        return F.linear(x, self.embed.weight, self.head_bias)

    def _region_attention(self, weights: torch.Tensor) -> torch.Tensor:
        """Cross-attention (batch, heads, T, slots) → head-averaged weights over the regions only."""
        skip = 1 if self.pooled_proj is not None else 0
        return weights.mean(dim=1)[..., skip:]  # (batch, T, R)

    # --- the decoder interface -----------------------------------------------------------
    def forward(self, features: Features, tokens: torch.Tensor, return_attention: bool = False) -> DecoderOutput:
        """Teacher forcing, all positions at once. ``return_attention``: also compute the last
        layer's cross-attention weights explicitly (otherwise fused attention kernels are used)."""
        memory, mask = self._memory(features)
        x = self.dropout(self.embed(tokens) + self._position(0, tokens.shape[1]))  # (batch, T, d)
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            memory_kv = layer.cross_attention.keys_values(memory)
            x, _, weights = layer(x, None, memory_kv, causal=True, need_weights=return_attention and last,
                                  memory_mask=mask)
        attention = self._region_attention(weights) if weights is not None else None
        return DecoderOutput(self._logits(x), attention)

    def init_state(self, features: Features) -> State:
        memory, mask = self._memory(features)
        memory_kv = [layer.cross_attention.keys_values(memory) for layer in self.layers]
        batch, heads = memory.shape[0], self.config.num_heads
        empty = memory.new_zeros(batch, heads, 0, self.config.d_model // heads)  # (batch, heads, 0, d_head)
        state = {
            "memory_keys": [k for k, _ in memory_kv],  # per layer (batch, heads, slots, d_head)
            "memory_values": [v for _, v in memory_kv],
            "keys": [empty] * len(self.layers),  # per layer (batch, heads, steps so far, d_head)
            "values": [empty] * len(self.layers),
        }
        if mask is not None:
            state["memory_mask"] = mask  # (batch, 1, 1, slots), a per-image constant as the memory is
        return state

    def step(self, tokens: torch.Tensor, state: State):
        position = state["keys"][0].shape[2]  # tokens read so far
        x = self.dropout(self.embed(tokens)[:, None] + self._position(position, 1))  # (batch, 1, d)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            memory = (state["memory_keys"][i], state["memory_values"][i])
            x, (k, v), weights = layer(
                x, (state["keys"][i], state["values"][i]), memory, causal=False, need_weights=last,
                memory_mask=state.get("memory_mask"),
            )
            keys.append(k)
            values.append(v)
        log_probs = F.log_softmax(self._logits(x[:, 0]), dim=-1)  # (batch, vocab)
        attention = self._region_attention(weights)[:, 0]  # (batch, R)
        return log_probs, {**state, "keys": keys, "values": values, "attention": attention}


register_decoder("transformer", TransformerConfig)(TransformerDecoder)
