"""Short, deterministic run ids built from what identifies a run.

A run id names a run directory, a checkpoint lineage and a W&B run, so it depends only on what
makes the run different from its siblings, never on time or on how the run is watched::

    <model>_<optimizer>_<width>[_<tags>]_s<seed>[_<hash>]

    gpt-tiny_adamw_w4_s0                   no other identifying override
    gpt2-160m_dion-r0.0625_w8_s1337        Dion's rank fraction is part of the optimizer tag
    gpt2-160m_adamw_w1_h6_s1337            a named grid sweeps model.n_head: spelled out (h6)
    gpt-tiny_adamw_w4_s0_7c1e2a            any other identifying override: a 6-hex hash

- model name, optimizer tag, FFN width (``w<mult>``, or ``D<width>`` when given directly), seed;
- a readable tag for each key that the config's sweeper declares in ``hydra.sweeper.params`` (the
  axes of a named grid, an Optuna search space): ``h6``, ``lr0.001``;
- a 6-hex hash of every other identifying override (key -> value), and of a tagged key whose tag
  cannot show its value exactly (a rounded number, a path); no hash when there is none.

Overrides of keys listed in ``run_id_exclude`` (logging, paths, cadences, cluster, resources, ...)
never enter the id. Values are hashed as the composed config holds them (``optim.lr=1e-3`` and
``optim.lr=0.001`` are the same run); a config-group choice (``data=text``, ``+preset=smoke``) by its
name. The mapping behind an id (:class:`RunIdParts`) is recorded in identity.json and grid.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from specsweep.sweep.credentials import secrets_in

# Keys that the prefix of the id already encodes (model, optimizer, width, seed), or that name the
# grid rather than the run.
_BASE_KEYS = {
    "model", "optim", "model.ffn_mult", "model.ffn_width", "optim.rank_fraction", "optim.name",
    "seed", "sweep", "run_id",
}

# Short, readable names of common axes in tags; any other key uses its last dotted component.
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
    "preset": "",      # a swept +preset=smoke -> "smoke"
}

HASH_CHARS = 6
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")
_ABSENT = object()


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


def excluded(key: str, exclude: Iterable[str]) -> bool:
    """Whether ``key`` is covered by a ``run_id_exclude`` entry (the key, a parent, or a ``prefix*``)."""
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
    """Overrides that identify a run beyond the id's prefix (key -> value text), sorted by key."""
    exclude = list(exclude)
    found: dict[str, str] = {}
    for override in overrides:
        key, value = parse_override(override)
        _refuse_credentials(key, value)
        if key in _BASE_KEYS or key.startswith("hydra.") or excluded(key, exclude):
            continue
        found[key] = value
    return dict(sorted(found.items()))


def foreign_optim_overrides(optimizer: str, overrides: Sequence[str]) -> dict[str, list[str]]:
    """The ``optim.K=...`` overrides whose key K optimizer ``optimizer`` does not take but another
    registered one does (-> the optimizers that take it): the arms of a grid without K ignore them
    (conf/optim_shared/keys.yaml holds a slot for K), and they are no part of such a run's id."""
    from specsweep.optim import hparam_owners, registered_optimizers  # torch: kept out of `sweep.prepare` and `--help`

    if optimizer not in registered_optimizers():
        return {}
    owners = hparam_owners()
    found: dict[str, list[str]] = {}
    for override in overrides:
        key = parse_override(override)[0]
        head, _, rest = key.partition(".")
        name = rest.split(".", 1)[0]
        if head == "optim" and name in owners and optimizer not in owners[name]:
            found[key] = owners[name]
    return found


@dataclass(frozen=True)
class RunIdParts:
    """A run id and the mapping behind it."""

    run_id: str
    tags: dict[str, Any] = field(default_factory=dict)    # key -> value spelled out in the id
    hashed: dict[str, Any] = field(default_factory=dict)  # key -> value the hash covers
    digest: str = ""                                      # the hash ('' when ``hashed`` is empty)

    def record(self) -> dict[str, Any]:
        """What identity.json, grid.json and ``sweep.status --ids`` show."""
        return {"hash": self.digest, "tags": dict(self.tags), "hashed": dict(self.hashed)}

    def overrides(self) -> dict[str, Any]:
        """Every identifying override behind the id beyond its prefix, tagged or hashed."""
        return dict(sorted({**self.tags, **self.hashed}.items()))


def _tag(key: str, value: Any) -> tuple[str, bool]:
    """The tag of ``key=value`` and whether it shows the value exactly."""
    short = _SHORT.get(key, key.rsplit(".", 1)[-1].rsplit("/", 1)[-1])
    if isinstance(value, bool) or isinstance(value, int):
        return _clean(f"{short}{format_number(value)}"), True
    if isinstance(value, float):
        text = format_number(value)
        exact = math.isfinite(value) and float(text) == value
        return _clean(f"{short}{text}"), exact
    text = str(value)
    shown = _clean(text.rstrip("/").rsplit("/", 1)[-1])  # a path is named by its last component
    return _clean(f"{short}{shown}"), shown == text and shown != ""


def digest_of(mapping: Mapping[str, Any]) -> str:
    """Short stable hash of a key -> value mapping (sorted JSON, SHA-256)."""
    blob = json.dumps(dict(mapping), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_CHARS]


def run_id_parts(
    model_name: str,
    optim_tag: str,
    ffn_mult: float | None,
    ffn_width: int | None,
    seed: int,
    overrides: Sequence[str] = (),
    exclude: Iterable[str] = (),
    tag_keys: Iterable[str] = (),
    value_of: Optional[Callable[[str, str], Any]] = None,
) -> RunIdParts:
    """Build the id (see the module doc). ``tag_keys``: keys spelled out as tags (the sweeper's
    params); ``value_of(key, text)``: the value an override gave its key (default: the text)."""
    value_of = value_of or (lambda key, text: text)
    wanted = {parse_override(k)[0] for k in tag_keys}
    tags: dict[str, Any] = {}
    tag_text: list[str] = []
    hashed: dict[str, Any] = {}
    for key, text in identity_overrides(overrides, exclude).items():
        value = value_of(key, text)
        if key in wanted:
            tag, exact = _tag(key, value)
            tags[key] = value
            tag_text.append(tag)
            if exact:
                continue
        hashed[key] = value
    digest = digest_of(hashed) if hashed else ""
    parts = [_clean(model_name), _clean(optim_tag), width_tag(ffn_mult, ffn_width), *tag_text, f"s{seed}"]
    if digest:
        parts.append(digest)
    return RunIdParts("_".join(parts), tags, hashed, digest)


def make_run_id(*args: Any, **kwargs: Any) -> str:
    """The id of :func:`run_id_parts` (same arguments), e.g. ``gpt-tiny_adamw_w4_s0``."""
    return run_id_parts(*args, **kwargs).run_id


def _config_value(cfg: Any, key: str, text: str) -> Any:
    """The value the composed config holds at ``key`` (a scalar), else the override's text (a
    config-group choice such as ``data=text``, a key the config does not have)."""
    node: Any = cfg
    try:
        for part in key.split("."):
            node = node[part] if part in node else _ABSENT
            if node is _ABSENT:
                return text
    except Exception:  # noqa: BLE001 - an unresolvable value: the text still identifies it
        return text
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    return text


def run_id_parts_from_config(cfg: Mapping[str, Any], overrides: Sequence[str],
                             tag_keys: Iterable[str] = ()) -> RunIdParts:
    """Run id (and its mapping) of a composed task config (a DictConfig or nested dict), its job
    overrides and the keys its sweeper declares."""
    from specsweep.optim import optimizer_tag  # torch: kept out of `sweep.prepare` and `sweep.train --help`

    optim_cfg = dict(cfg["optim"])
    name = optim_cfg.pop("name")
    model = cfg["model"]
    foreign = foreign_optim_overrides(name, overrides)
    overrides = [o for o in overrides if parse_override(o)[0] not in foreign]
    return run_id_parts(
        model_name=model["name"],
        optim_tag=optimizer_tag(name, optim_cfg),
        ffn_mult=model.get("ffn_mult"),
        ffn_width=model.get("ffn_width"),
        seed=int(cfg["seed"]),
        overrides=overrides,
        exclude=list(cfg.get("run_id_exclude") or []),
        tag_keys=tag_keys,
        value_of=lambda key, text: _config_value(cfg, key, text),
    )
