"""Causal multi-head self-attention with optional RoPE and QK RMSNorm."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from specsweep.models.config import GPTConfig
from specsweep.models.norms import rms_norm
from specsweep.models.rotary import Rotary


class CausalSelfAttention(nn.Module):
    """Separate q, k, v, o projections (no biases) so optimizers see one matrix each."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qk_norm = config.qk_norm
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.rotary = (
            Rotary(self.head_dim, config.context_len, config.rope_base)
            if config.pos_encoding == "rope"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, d = x.shape
        # [B, S, d] -> [B, n_head, S, head_dim]
        q = self.q(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            # parameter-free RMSNorm commutes with the RoPE rotation, so the order is free
            q, k = rms_norm(q), rms_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, S, d)  # [B, n_head, S, hd] -> [B, S, d]
        return self.o(y)
