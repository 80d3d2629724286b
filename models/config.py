"""GPTConfig: every architecture knob of the GPT family, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

ACTIVATIONS = ("relu2", "gelu", "relu", "swiglu", "geglu")
GATED_ACTIVATIONS = ("swiglu", "geglu")
POS_ENCODINGS = ("rope", "learned", "none")
NORM_PLACEMENTS = ("pre", "post")
INIT_STD_RULES = ("paper", "gpt2")


def _is_int(value: object) -> bool:
    # bool is a subclass of int; a width of True is a config bug, not 1
    return isinstance(value, int) and not isinstance(value, bool)


def ffn_hidden_dim(d_model: int, ffn_mult: float | None, ffn_width: int | None) -> int:
    """FFN hidden width D: ``ffn_width`` if given, else ``round(ffn_mult * d_model)``.

    The one place that turns the config's FFN knobs into D (GPTConfig, and readers of run records
    that only kept the knobs).
    """
    if ffn_width is not None:
        return int(ffn_width)
    if ffn_mult is None:
        raise ValueError("ffn_mult and ffn_width are both None; set one of them")
    return round(ffn_mult * d_model)


@dataclass
class GPTConfig:
    """Shape and architecture of a GPT (defaults: the paper's modded-nanoGPT block).

    The FFN hidden width D is `ffn_width` when given, else `ffn_mult * d_model`
    (which must come out an integer). For gated FFNs (swiglu, geglu) D is the width
    of each of `gate` and `up`, so a gated FFN holds 1.5x the parameters of an
    ungated one at the same D.

    `postln_frac` follows MixLN (Li et al., 2024) and the paper's code: the FIRST
    `int(n_layer * postln_frac)` blocks are post-norm, the rest pre-norm. It only
    applies when `norm_placement == "pre"`; `"post"` makes every block post-norm.

    `init_std_rule`: "paper" = N(0, 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)))
    for every Linear and N(0, 1) embeddings; "gpt2" = N(0, 0.02) everywhere with
    residual output projections scaled by 1/sqrt(2 * n_layer).
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    context_len: int
    ffn_mult: float | None = 4
    ffn_width: int | None = None
    activation: str = "relu2"
    pos_encoding: str = "rope"
    rope_base: float = 10000.0
    qk_norm: bool = True
    norm_placement: str = "pre"
    postln_frac: float = 0.0
    init_std_rule: str = "paper"
    name: str = "gpt"

    def __post_init__(self) -> None:
        for field in ("vocab_size", "n_layer", "n_head", "d_model", "context_len"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        self._validate_ffn_width()
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}"
            )
        if self.pos_encoding == "rope":
            if self.head_dim % 2 != 0:
                raise ValueError(
                    f"pos_encoding='rope' needs an even head dim (d_model / n_head), "
                    f"got {self.head_dim}"
                )
            if not self.rope_base > 0:
                raise ValueError(f"rope_base must be > 0, got {self.rope_base!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}"
            )
        if not 0.0 <= self.postln_frac <= 1.0:
            raise ValueError(f"postln_frac must be in [0, 1], got {self.postln_frac!r}")
        if self.init_std_rule not in INIT_STD_RULES:
            raise ValueError(
                f"init_std_rule must be one of {INIT_STD_RULES}, got {self.init_std_rule!r}"
            )

    def _validate_ffn_width(self) -> None:
        if self.ffn_width is not None:
            if not _is_int(self.ffn_width):
                raise ValueError(f"ffn_width must be an int, got {self.ffn_width!r}")
            if self.ffn_width <= 0:
                raise ValueError(f"ffn_width must be > 0, got {self.ffn_width}")
            return
        if self.ffn_mult is None:
            raise ValueError("ffn_mult and ffn_width are both None; set one of them")
        if isinstance(self.ffn_mult, bool) or not isinstance(self.ffn_mult, (int, float)) or not self.ffn_mult > 0:
            raise ValueError(f"ffn_mult must be a number > 0, got {self.ffn_mult!r}")
        width = self.ffn_mult * self.d_model
        if not math.isclose(width, round(width), rel_tol=0.0, abs_tol=1e-6):
            raise ValueError(
                f"ffn_mult * d_model = {self.ffn_mult} * {self.d_model} = {width} is not an "
                f"integer width (the FFN hidden width D); pick another ffn_mult or set ffn_width"
            )

    @property
    def ffn_hidden_dim(self) -> int:
        """FFN hidden width D (see models.config.ffn_hidden_dim)."""
        return ffn_hidden_dim(self.d_model, self.ffn_mult, self.ffn_width)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    @property
    def num_postln_layers(self) -> int:
        """How many blocks (counted from block 0) use post-norm."""
        if self.norm_placement == "post":
            return self.n_layer
        # the epsilon keeps e.g. 100 * 0.29 = 28.999... from rounding down to 28
        return int(self.n_layer * self.postln_frac + 1e-9)
