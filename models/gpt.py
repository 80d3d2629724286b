"""The GPT family: a modded-nanoGPT-style decoder whose FFN width, activation,
position encoding and norm placement are config knobs.

Default block (the paper's): x = x + attn(rmsnorm(x)); x = x + ffn(rmsnorm(x)),
with parameter-free RMSNorm, RoPE, QK RMSNorm, ReLU^2 FFN, no biases, untied LM head
and a final RMSNorm before the head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from specsweep.models.attention import CausalSelfAttention
from specsweep.models.config import GPTConfig
from specsweep.models.ffn import build_ffn
from specsweep.models.norms import rms_norm
from specsweep.models.rotary import Rotary


class Block(nn.Module):
    """One transformer block; pre-norm by default, post-norm when `post_norm`."""

    def __init__(self, config: GPTConfig, post_norm: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.attn = CausalSelfAttention(config)
        self.ffn = build_ffn(config)

    def extra_repr(self) -> str:
        return f"norm={'post' if self.post_norm else 'pre'}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = rms_norm(x + self.attn(x))
            x = rms_norm(x + self.ffn(x))
        else:
            x = x + self.attn(rms_norm(x))
            x = x + self.ffn(rms_norm(x))
        return x


class GPT(nn.Module):
    """Decoder-only language model; see GPTConfig for the knobs.

    Module names are a contract (docs/contracts.md): `wte`, `wpe` (learned positions only),
    `blocks.{i}.attn.{q,k,v,o}`, `blocks.{i}.ffn.{up,gate,down}`, `lm_head`.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = (
            nn.Embedding(config.context_len, config.d_model)
            if config.pos_encoding == "learned"
            else None
        )
        n_post = config.num_postln_layers
        self.blocks = nn.ModuleList(Block(config, post_norm=i < n_post) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.init_weights()

    # ---- initialization -------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialize every parameter by `config.init_std_rule`.

        "paper": Linear std = 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)) (every Linear,
        output projections and lm_head included, no zero-init, as in the paper's code);
        token embeddings N(0, 1) since the first block RMS-normalizes them anyway; learned
        positions N(0, 0.5) so that they start as a perturbation of the token signal.
        "gpt2": N(0, 0.02) everywhere, residual projections (attn.o, ffn.down) scaled by
        1/sqrt(2 * n_layer).
        """
        rule = self.config.init_std_rule
        residual_scale = 1.0 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if rule == "paper":
                    fan_out, fan_in = module.weight.shape
                    std = fan_in**-0.5 * min(1.0, math.sqrt(fan_out / fan_in))
                else:
                    is_residual_out = name.endswith(("attn.o", "ffn.down"))
                    std = 0.02 * (residual_scale if is_residual_out else 1.0)
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                std = 1.0 if rule == "paper" else 0.02
                if name == "wpe":
                    std *= 0.5
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, Rotary):
                module.reset_tables()

    # ---- forward --------------------------------------------------------------------

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx[B, S] (token ids) -> (logits[B, S, vocab], mean fp32 cross entropy or None).

        Targets equal to -1 are ignored in the loss.
        """
        B, S = idx.shape
        if S > self.config.context_len:
            raise ValueError(f"sequence length {S} exceeds context_len {self.config.context_len}")
        x = self.wte(idx)  # [B, S, d]
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(S, device=idx.device))  # [S, d] broadcasts over B
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(rms_norm(x))  # [B, S, vocab]
        loss = None
        if targets is not None:
            # fp32 logits for the loss even under bf16 autocast
            loss = F.cross_entropy(
                logits.float().view(B * S, -1), targets.reshape(B * S), ignore_index=-1
            )
        return logits, loss

    # ---- introspection --------------------------------------------------------------

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; `exclude_embeddings` drops wte/wpe (lm_head is untied, so it counts)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.wte.weight.numel()
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
        return total

    def ffn_modules(self) -> Iterator[tuple[int, nn.Module]]:
        """Yield (layer_index, ffn_module) for every block."""
        for i, block in enumerate(self.blocks):
            yield i, block.ffn
