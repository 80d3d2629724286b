"""Position-wise feed-forward blocks: plain (up -> act -> down) and gated (act(gate) * up -> down).

Telemetry probes rely on the names: pre-activation = output of `up` (gated: of `gate`),
post-activation = input of `down`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from specsweep.models.config import GPTConfig


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared (So et al., 2021), the modded-nanoGPT FFN activation."""
    return F.relu(x).square()


_ACTIVATIONS = {"relu2": relu2, "relu": F.relu, "gelu": F.gelu, "swiglu": F.silu, "geglu": F.gelu}


class FFN(nn.Module):
    """d_model -> D -> d_model MLP without biases."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.act = _ACTIVATIONS[config.activation]
        self.up = nn.Linear(config.d_model, config.ffn_hidden_dim, bias=False)
        self.down = nn.Linear(config.ffn_hidden_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class GatedFFN(nn.Module):
    """GLU-style FFN: down(act(gate(x)) * up(x)); act is SiLU for swiglu, GELU for geglu."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.act = _ACTIVATIONS[config.activation]
        self.gate = nn.Linear(config.d_model, config.ffn_hidden_dim, bias=False)
        self.up = nn.Linear(config.d_model, config.ffn_hidden_dim, bias=False)
        self.down = nn.Linear(config.ffn_hidden_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def build_ffn(config: GPTConfig) -> nn.Module:
    """The FFN that `config.activation` asks for."""
    return GatedFFN(config) if config.gated else FFN(config)
