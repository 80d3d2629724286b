"""Rotary position embedding (RoPE) for query/key heads."""

import torch
import torch.nn as nn


class Rotary(nn.Module):
    """Precomputed cos/sin tables for `max_len` positions; rotates the two halves of each head.

    The tables are non-persistent buffers: they follow `.to(device)` but stay out of
    checkpoints, so changing `max_len` never breaks loading.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_len = max_len
        self.base = base
        cos, sin = self._tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.outer(torch.arange(self.max_len).float(), inv_freq)  # [max_len, head_dim/2]
        return freqs.cos(), freqs.sin()

    def reset_tables(self) -> None:
        """Recompute the tables (needed after building the model on the meta device)."""
        cos, sin = self._tables()
        self.cos = cos.to(self.cos.device)
        self.sin = sin.to(self.sin.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x[B, n_head, S, head_dim] by its position along S."""
        seq_len = x.size(-2)
        cos = self.cos[:seq_len].to(x.dtype)  # [S, head_dim/2], broadcasts over B and heads
        sin = self.sin[:seq_len].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
