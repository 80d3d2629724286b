"""Typed view of a composed run config, validated before any work starts.

Hydra's struct mode already rejects unknown keys on the command line and unknown group options;
this module checks values (types, ranges, files) and turns the config into plain dataclasses that
the library layers understand. Every problem is collected and reported at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from sweep.errors import ConfigError  # noqa: F401 (raised here; importers find it here too)


@dataclass
class TrainSpec:
    steps: int
    batch_size: int
    grad_accum: int
    seq_len: int
    grad_clip: Optional[float]
    warmup_steps: int
    decay_frac: float
    eval_every: int
    eval_batches: int
    log_every: int
    ckpt_every: int
    keep_checkpoints: int
    diverge_loss: Optional[float]
    device: str
    compile: bool
    progress: Any
    num_threads: Optional[int]


@dataclass
class TelemetrySpec:
    enabled: bool
    every: int
    tokens: str
    probe_batches: int
    sites: list
    buckets: bool
    min_bucket_rows: int
    subsample: float
    renyi_alphas: list
    log_eigenvalues: bool


@dataclass
class LoggerSpec:
    backend: str
    project: str
    entity: Optional[str]
    mode: str
    tags: list = field(default_factory=list)
    init_timeout: float = 30
    finish_timeout: float = 0   # W&B: seconds run.finish() may wait for uploads (0: no limit)
    system_metrics: bool = True         # W&B: CPU/GPU utilisation and memory of the run
    system_metrics_interval: float = 15  # W&B: seconds between two system-metric samples
    console: str = "auto"               # W&B console log capture: auto | wrap | redirect | off
    per_layer_keys: bool = False        # W&B: one scalar key per layer and metric (slow workspace)


@dataclass
class RunSpec:
    run_id: str
    sweep_name: str
    seed: int
    model: dict          # GPTConfig keyword arguments (vocab_size filled from the data)
    optim_name: str
    optim_hparams: dict
    data: dict
    train: TrainSpec
    telemetry: TelemetrySpec
    logger: LoggerSpec
    data_root: Path


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _section(cls: type, raw: Mapping[str, Any], name: str, errors: list[str]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    missing = sorted(n for n in names if n not in raw and _required(cls, n))
    for k in unknown:
        errors.append(f"{name}.{k}: unknown key (known: {', '.join(sorted(names))})")
    for k in missing:
        errors.append(f"{name}.{k}: missing")
    if unknown or missing:
        return None
    return cls(**{k: raw[k] for k in names if k in raw})


def _required(cls: type, fname: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == fname)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_train(t: TrainSpec, errors: list[str]) -> None:
    for k in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_batches",
              "log_every", "ckpt_every", "keep_checkpoints"):
        v = getattr(t, k)
        if not _is_int(v) or v <= 0:
            errors.append(f"train.{k}: must be a positive integer, got {v!r}")
    if not _is_int(t.warmup_steps) or t.warmup_steps < 0:
        errors.append(f"train.warmup_steps: must be an integer >= 0, got {t.warmup_steps!r}")
    if not isinstance(t.decay_frac, (int, float)) or not 0 <= t.decay_frac <= 1:
        errors.append(f"train.decay_frac: must be in [0, 1], got {t.decay_frac!r}")
    if t.grad_clip is not None and (not isinstance(t.grad_clip, (int, float)) or t.grad_clip < 0):
        errors.append(f"train.grad_clip: must be >= 0 or null, got {t.grad_clip!r}")
    if t.device not in ("auto", "cpu", "cuda") and not str(t.device).startswith("cuda:"):
        errors.append(f"train.device: auto | cpu | cuda | cuda:N, got {t.device!r}")
    if t.progress not in ("auto", True, False):
        errors.append(f"train.progress: auto | true | false, got {t.progress!r}")


def _check_telemetry(t: TelemetrySpec, errors: list[str]) -> None:
    if not _is_int(t.every) or t.every <= 0:
        errors.append(f"telemetry.every: must be a positive integer, got {t.every!r}")
    if t.tokens not in ("train", "probe"):
        errors.append(f"telemetry.tokens: train | probe, got {t.tokens!r}")
    bad_sites = [s for s in t.sites if s not in ("pre", "post")]
    if bad_sites or not t.sites:
        errors.append(f"telemetry.sites: a non-empty subset of [pre, post], got {list(t.sites)!r}")
    if not isinstance(t.subsample, (int, float)) or not 0 < t.subsample <= 1:
        errors.append(f"telemetry.subsample: must be in (0, 1], got {t.subsample!r}")
    if not _is_int(t.min_bucket_rows) or t.min_bucket_rows < 2:
        errors.append(f"telemetry.min_bucket_rows: must be an integer >= 2, got {t.min_bucket_rows!r}")
    for a in t.renyi_alphas:
        if not isinstance(a, (int, float)) or a <= 0 or a == 1:
            errors.append(f"telemetry.renyi_alphas: each alpha must be > 0 and != 1 (1 is the soft rank), got {a!r}")


def _check_model(model: dict, errors: list[str]) -> None:
    from models import GPTConfig

    mult, width = model.get("ffn_mult"), model.get("ffn_width")
    if width is not None and (not _is_int(width) or width <= 0):
        errors.append(f"model.ffn_width: must be a positive integer (the FFN hidden width D), got {width!r}")
        return
    if width is None:
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult <= 0:
            errors.append(f"model.ffn_mult: must be a positive number, got {mult!r}")
            return
        d = model.get("d_model")
        if _is_int(d) and not math.isclose(mult * d, round(mult * d), abs_tol=1e-9):
            errors.append(
                f"model.ffn_mult: ffn_mult * d_model = {mult} * {d} = {mult * d} is not an integer width"
            )
            return
    try:
        GPTConfig(**{**model, "vocab_size": model.get("vocab_size") or 256})
    except (TypeError, ValueError) as e:
        errors.append(f"model: {e}")


def _check_optim(name: str, hparams: dict, errors: list[str]) -> None:
    # Building the optimizer on a 1-layer toy GPT with the same parameter names checks the name,
    # every hyperparameter and the routing in milliseconds, whatever the real model's size.
    from models import GPT, GPTConfig
    from optim import build_optimizer

    toy = GPT(GPTConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8, context_len=8, ffn_mult=2))
    try:
        build_optimizer(toy, name, **hparams)
    except (TypeError, ValueError) as e:
        errors.append(f"optim: {e}")


def _check_data(data: dict, errors: list[str], train: Optional[TrainSpec] = None,
                telemetry: Optional[TelemetrySpec] = None) -> None:
    """Data files there, readable, text, and big enough for the batches of ``train`` (when valid)."""
    from sweep.data.checks import TokenNeeds, check_data

    needs = None
    if train is not None:
        val_batches = train.eval_batches
        if (telemetry is not None and telemetry.enabled and telemetry.tokens == "probe"
                and _is_int(telemetry.probe_batches)):
            val_batches = max(val_batches, telemetry.probe_batches)
        needs = TokenNeeds(seq_len=train.seq_len, train_rows=train.batch_size,
                           val_rows=val_batches * train.batch_size)
    errors += check_data(data, needs)


# Grid axes that only some optimizers take: for the others the key is dropped, so grid points that
# differ only in it are the same run (the sweeper launches it once).
OPTIONAL_OPTIM_AXES = ("rank_fraction",)


def optimizer_hparams(name: str, raw: Mapping[str, Any]) -> dict:
    """The builder's hyperparameters from an optim config section (``name`` and unused axes removed)."""
    from optim import hparam_defaults, registered_optimizers

    hparams = {k: v for k, v in raw.items() if k != "name"}
    if name in registered_optimizers():
        accepted = hparam_defaults(name)
        for key in OPTIONAL_OPTIM_AXES:
            if key not in accepted:
                hparams.pop(key, None)
    return hparams


def container(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """A resolved plain-dict copy of a config (or a config section)."""
    if isinstance(cfg, DictConfig):
        # Section by section, skipping `hydra`: its runtime fields are only set once a job runs,
        # while the task keys (run_id included) resolve against the whole composed config.
        out = {}
        for key in cfg:
            if key == "hydra":
                continue
            node = cfg[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        return out
    return dict(cfg)


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a nested config."""
    if isinstance(node, Mapping):
        return [kv for k, v in node.items() for kv in _leaves(v, f"{prefix}{k}.")]
    if isinstance(node, (list, tuple)):
        return [kv for i, v in enumerate(node) for kv in _leaves(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)] if isinstance(node, str) else []


def build_run_spec(cfg: DictConfig | Mapping[str, Any]) -> RunSpec:
    """Validate a composed task config; raise ConfigError listing every problem found."""
    raw = container(cfg)
    errors: list[str] = []
    from sweep.credentials import secrets_in  # credentials never go into configs or run dirs

    errors += [f"{key}: holds the value of ${names[0]}; credentials stay in the environment"
               for key, names in ((k, secrets_in(v)) for k, v in _leaves(raw)) if names]
    seed = raw.get("seed")
    if not _is_int(seed) or seed < 0:
        errors.append(f"seed: must be an integer >= 0, got {seed!r}")
    model = dict(raw["model"])
    _check_model(model, errors)
    optim_name = raw["optim"].get("name")
    optim_raw: dict = {}
    if not isinstance(optim_name, str):
        errors.append("optim.name: missing")
    else:
        optim_raw = optimizer_hparams(optim_name, raw["optim"])
        _check_optim(optim_name, optim_raw, errors)
    train = _section(TrainSpec, raw["train"], "train", errors)
    n_errors = len(errors)
    if train is not None:
        _check_train(train, errors)
    train_ok = train is not None and len(errors) == n_errors
    telemetry = _section(TelemetrySpec, raw["telemetry"], "telemetry", errors)
    n_errors = len(errors)
    if telemetry is not None:
        _check_telemetry(telemetry, errors)
    telemetry_ok = telemetry is not None and len(errors) == n_errors
    data = dict(raw["data"])
    # The data's size is only checked against valid batch settings (else the data is not the problem).
    _check_data(data, errors, train if train_ok else None, telemetry if telemetry_ok else None)
    logger = _section(LoggerSpec, raw["logger"], "logger", errors)
    if logger is not None and logger.backend not in ("none", "wandb"):
        errors.append(f"logger.backend: none | wandb, got {logger.backend!r}")
    if logger is not None and logger.mode not in ("online", "offline", "disabled"):
        errors.append(f"logger.mode: online | offline | disabled, got {logger.mode!r}")
    if errors:
        run_id = raw.get("run_id", "?")
        raise ConfigError(f"invalid config for run {run_id}:\n  - " + "\n  - ".join(errors))
    return RunSpec(
        run_id=raw["run_id"], sweep_name=raw["sweep_name"], seed=seed, model=model,
        optim_name=optim_name, optim_hparams=optim_raw, data=data, train=train,
        telemetry=telemetry, logger=logger, data_root=Path(raw["paths"]["data_root"]),
    )


def identity_of(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """The part of the resolved config that defines the run (volatile keys removed)."""
    raw = container(cfg)
    optim_cfg = raw.get("optim")
    if isinstance(optim_cfg, dict) and isinstance(optim_cfg.get("name"), str):
        raw["optim"] = {"name": optim_cfg["name"], **optimizer_hparams(optim_cfg["name"], optim_cfg)}
    for dotted in raw.get("volatile_keys") or []:
        node: Any = raw
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return raw
