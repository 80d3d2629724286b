"""Deterministic run ids built from a run's swept axes.

A run id names a run directory, a checkpoint lineage and a W&B run, so it must depend only on
what makes the run different from its siblings, never on time. It is built from the model name,
the optimizer tag, the FFN width and the seed, plus a short tag for every other override given to
the job (``train.steps=12000`` -> ``steps12000``) unless that key is declared non-identifying in
``run_id_exclude`` (logging, paths, cadence of checkpoints, ...).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from sweep.credentials import secrets_in

# Keys that the base of the id already encodes (model, optimizer, width, seed).
_BASE_KEYS = {
    "model", "optim", "model.ffn_mult", "model.ffn_width", "optim.rank_fraction", "optim.name",
    "seed", "sweep", "run_id",
}

# Short, readable names for common axes; any other key uses its last dotted component.
_SHORT = {
    "model.n_head": "h",
    "model.n_layer": "L",
    "model.d_model": "d",
    "model.pos_encoding": "pos",
    "model.activation": "act",
    "model.norm_placement": "norm",
    "model.postln_frac": "postln",
    "model.context_len": "ctx",
    "train.steps": "steps",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
    "data": "data",
    "preset": "",      # +preset=smoke -> "smoke"
}

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")


def format_number(value: Any) -> str:
    """Compact text for a number: 4.0 -> '4', 0.0625 -> '0.0625', 1e-3 -> '0.001'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


def _clean(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-")


def parse_override(override: str) -> tuple[str, str]:
    """Split a Hydra override 'key=value' (with optional +, ++, ~ prefixes) into key and value."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _excluded(key: str, exclude: Iterable[str]) -> bool:
    for pattern in exclude:
        if key == pattern or key.startswith(pattern + "."):
            return True
        if pattern.endswith("*") and key.startswith(pattern[:-1]):
            return True
    return False


def width_tag(ffn_mult: float | None, ffn_width: int | None) -> str:
    """'w4' for a multiple of d_model, 'D3072' when the hidden width is given directly."""
    if ffn_width is not None:
        return f"D{int(ffn_width)}"
    return f"w{format_number(ffn_mult)}"


def _refuse_credentials(key: str, value: str) -> None:
    """A credential never goes into a config, a run id or a run directory: refuse it at once."""
    names = secrets_in(value)
    if names:
        raise ValueError(f"override {key}=... carries the value of ${names[0]}: credentials stay in "
                         "the environment (e.g. WANDB_API_KEY), never in configs or overrides")


def identity_overrides(overrides: Sequence[str], exclude: Iterable[str]) -> dict[str, str]:
    """Overrides that identify a run beyond the id's base (key -> value), sorted by key."""
    exclude = list(exclude)
    found: dict[str, str] = {}
    for override in overrides:
        key, value = parse_override(override)
        _refuse_credentials(key, value)
        if key in _BASE_KEYS or key.startswith("hydra.") or _excluded(key, exclude):
            continue
        found[key] = value
    return dict(sorted(found.items()))


def extra_tags(overrides: Sequence[str], exclude: Iterable[str]) -> list[str]:
    """Short tags (``h6``, ``lr0.001``) for the identifying overrides, sorted by key."""
    tags = []
    for key, value in identity_overrides(overrides, exclude).items():
        short = _SHORT.get(key, key.rsplit(".", 1)[-1].rsplit("/", 1)[-1])
        value = value.rstrip("/").rsplit("/", 1)[-1]  # a path is named by its last component
        tags.append(_clean(f"{short}{value}"))
    return tags


def make_run_id(
    model_name: str,
    optim_tag: str,
    ffn_mult: float | None,
    ffn_width: int | None,
    seed: int,
    overrides: Sequence[str] = (),
    exclude: Iterable[str] = (),
) -> str:
    """Build e.g. ``gpt-tiny_adamw_w4_s0`` or ``gpt2-160m_muon_w2_h6_s1337``."""
    parts = [_clean(model_name), _clean(optim_tag), width_tag(ffn_mult, ffn_width)]
    parts += extra_tags(overrides, exclude)
    parts.append(f"s{seed}")
    return "_".join(parts)


def run_id_from_config(cfg: Mapping[str, Any], overrides: Sequence[str]) -> str:
    """Run id of a composed task config (a DictConfig or nested dict) and its job overrides."""
    from optim import optimizer_tag  # torch: kept out of `sweep.prepare` and `sweep.train --help`

    optim_cfg = dict(cfg["optim"])
    name = optim_cfg.pop("name")
    model = cfg["model"]
    return make_run_id(
        model_name=model["name"],
        optim_tag=optimizer_tag(name, optim_cfg),
        ffn_mult=model.get("ffn_mult"),
        ffn_width=model.get("ffn_width"),
        seed=int(cfg["seed"]),
        overrides=overrides,
        exclude=list(cfg.get("run_id_exclude") or []),
    )
