"""Typed view of a composed run config, validated before any work starts.

Hydra's struct mode already rejects unknown keys on the command line and unknown group options;
this module checks values (types, ranges, files) and turns the config into typed specs that the
library layers understand (GPTConfig, DataSpec, an optimizer name and its hyperparameters), plus
what the run records as plain data (resolved config, identity, axes). Every problem is collected
and reported at once; the model's problems are GPTConfig's own messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from specsweep.models import GPT, GPTConfig
from specsweep.optim import build_optimizer
from specsweep.sweep.credentials import config_credential_problems
from specsweep.sweep.data import DataSpec
from specsweep.sweep.data.checks import TokenNeeds, check_data
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.identity import container, identity_of, job_optimizer_hparams
from specsweep.sweep.grid.names import name_problems
from specsweep.sweep.grid.resolvers import sweeper_keys
from specsweep.sweep.grid.run_id import identity_overrides, run_id_parts_from_config


# train.objective: the run's final eval loss or final train loss (a diverged run returns +inf).
OBJECTIVES = ("eval_loss", "train_loss")


@dataclass
class TrainSpec:
    """The ``train.*`` section. A step's batch is either ``batch_size`` x ``grad_accum`` (the global
    micro-batch, split over the ranks, and the micro-batches per step) or, when ``global_batch`` is
    set, ``global_batch`` sequences cut into micro-batches of ``micro_batch`` sequences per rank: the
    accumulation then follows from the number of ranks (``split``), so a run keeps its global batch,
    and can resume, on any number of GPUs."""

    steps: int
    batch_size: Optional[int]
    grad_accum: Optional[int]
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
    # What the task returns to a Hydra sweeper that minimises a float (Optuna, Ax, ...): OBJECTIVES.
    objective: str = "eval_loss"
    global_batch: Optional[int] = None  # sequences per optimizer step, all ranks and micro-batches
    micro_batch: Optional[int] = None   # with global_batch: sequences per rank per forward (volatile)
    eval_at_start: bool = False         # also evaluate before the first step (a step-0 eval row)

    def split(self, world_size: int) -> "TrainSpec":
        """This spec with ``batch_size`` (the global micro-batch, all ranks) and ``grad_accum`` set
        for ``world_size`` ranks; ValueError when ``global_batch`` does not split evenly."""
        if self.global_batch is None:
            return self
        micro = self.micro_batch or max(1, self.global_batch // world_size)
        if self.global_batch % (micro * world_size):
            raise ValueError(f"train.global_batch={self.global_batch} does not split into micro-batches of "
                             f"train.micro_batch={micro} sequences on {world_size} ranks")
        return dataclasses.replace(self, batch_size=micro * world_size,
                                   grad_accum=self.global_batch // (micro * world_size))

    @property
    def sequences_per_step(self) -> int:
        """Sequences of one optimizer step (all ranks, all micro-batches)."""
        return self.global_batch if self.global_batch is not None else self.batch_size * self.grad_accum


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
    # At scale (issue 14; sweep/run/telemetry.py): which events carry full spectra, where and how
    # many decompose at once, and which rows the HEAD/MID/TAIL covariances pool.
    spectrum_every: Any = 1          # every k-th event before the fit's window carries spectra | "auto"
    decompose_on: str = "auto"       # auto (cost model) | cpu (process pool, fp64) | gpu
    decompose_workers: Any = "auto"  # CPU pool size | "auto" (free cores)
    max_in_flight: int = 1           # events being decomposed at once; the next one waits
    bucket_scope: str = "all"        # all: buckets pooled over ranks | rank0: rank 0's rows (paper)
    bucket_sequences: Optional[int] = None  # HEAD/MID/TAIL from the step's first N sequences (paper: 256/128) | all
    event_weights: str = "after_update"  # event s: weights after s updates (paper) | before_update (s-1)


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


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    hparams: dict  # exactly the builder's keyword arguments (conf/optim/<name>.yaml minus name and unused axes)


VOCAB_STAND_IN = 256
"""model.vocab_size while the data's vocabulary is not known yet (RunSpec.vocab_from_data)."""


@dataclass
class RunSpec:
    """Everything one run needs, validated; the trainer takes nothing else."""

    run_id: str
    sweep_name: str
    seed: int
    model: GPTConfig       # vocab_size is VOCAB_STAND_IN when vocab_from_data: build from model_config()
    vocab_from_data: bool  # model.vocab_size left unset: the model takes the prepared data's vocabulary
    optimizer: OptimizerSpec
    data: DataSpec
    data_root: Path
    train: TrainSpec
    telemetry: TelemetrySpec
    logger: LoggerSpec
    config: dict           # the resolved task config (config.yaml, the W&B run config)
    identity: dict         # what identifies the run (sweep/grid/identity.py)
    axes: dict             # the run's coordinates in the grid (run.json, W&B): what the fits group by
    run_id_record: dict = field(default_factory=dict)  # the overrides behind the run id (RunIdParts.record)

    def model_config(self, data_vocab: int) -> GPTConfig:
        """The GPTConfig to build once the data is prepared (its vocabulary size known)."""
        if self.vocab_from_data:
            return dataclasses.replace(self.model, vocab_size=data_vocab)
        if self.model.vocab_size < data_vocab:
            raise ValueError(f"model.vocab_size={self.model.vocab_size} < data vocabulary {data_vocab}")
        return self.model

    def config_yaml(self) -> str:
        """The resolved config as config.yaml holds it."""
        return OmegaConf.to_yaml(OmegaConf.create(self.config))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _section(cls: type, raw: Mapping[str, Any], name: str, errors: list[str]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    missing = sorted(n for n in names if n not in raw and _required(cls, n))
    errors += [f"{name}.{k}: unknown key (known: {', '.join(sorted(names))})" for k in unknown]
    errors += [f"{name}.{k}: missing" for k in missing]
    return None if unknown or missing else cls(**{k: raw[k] for k in names if k in raw})


def _required(cls: type, fname: str) -> bool:
    return next(f.default is f.default_factory is dataclasses.MISSING for f in dataclasses.fields(cls) if f.name == fname)


def resource_ranks(resources: Optional[Mapping[str, Any]]) -> int:
    """Ranks (tasks) of one job as ``resources`` asks for them: nodes x tasks_per_node (1 if unset)."""
    nodes, tasks = (resources or {}).get("nodes", 1), (resources or {}).get("tasks_per_node", 1)
    return nodes * tasks if _is_int(nodes) and _is_int(tasks) and nodes > 0 and tasks > 0 else 1


def _check_train(t: TrainSpec, errors: list[str], ranks: int = 1) -> None:
    sizes = ("batch_size", "grad_accum") if t.global_batch is None else ("global_batch",)
    for k in ("steps", *sizes, "seq_len", "eval_every", "eval_batches",
              "log_every", "ckpt_every", "keep_checkpoints"):
        v = getattr(t, k)
        if not _is_int(v) or v <= 0:
            errors.append(f"train.{k}: must be a positive integer, got {v!r}")
    if t.global_batch is None:
        if t.micro_batch is not None:
            errors.append("train.micro_batch: only with train.global_batch (else train.batch_size is the micro-batch)")
    else:
        for k in ("batch_size", "grad_accum"):
            if getattr(t, k) is not None:
                errors.append(f"train.{k}: must be null with train.global_batch (the split into micro-batches "
                              f"follows from train.micro_batch and the number of ranks), got {getattr(t, k)!r}")
        if t.micro_batch is not None and (not _is_int(t.micro_batch) or t.micro_batch <= 0):
            errors.append(f"train.micro_batch: a positive integer or null, got {t.micro_batch!r}")
        elif _is_int(t.global_batch) and t.global_batch > 0:
            try:
                t.split(ranks)
            except ValueError as e:
                errors.append(f"{e} (resources: nodes x tasks_per_node = {ranks})")
    if not isinstance(t.eval_at_start, bool):
        errors.append(f"train.eval_at_start: true | false, got {t.eval_at_start!r}")
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
    if t.objective not in OBJECTIVES:
        errors.append(f"train.objective: {' | '.join(OBJECTIVES)}, got {t.objective!r}")


def _check_telemetry(t: TelemetrySpec, errors: list[str]) -> None:
    if not _is_int(t.every) or t.every <= 0:
        errors.append(f"telemetry.every: must be a positive integer, got {t.every!r}")
    for key, allowed in (("tokens", ("train", "probe")), ("decompose_on", ("auto", "cpu", "gpu")),
                         ("bucket_scope", ("all", "rank0")), ("event_weights", ("after_update", "before_update"))):
        if getattr(t, key) not in allowed:
            errors.append(f"telemetry.{key}: {' | '.join(allowed)}, got {getattr(t, key)!r}")
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
    if t.spectrum_every != "auto" and (not _is_int(t.spectrum_every) or t.spectrum_every < 1):
        errors.append(f"telemetry.spectrum_every: a positive integer or auto, got {t.spectrum_every!r}")
    if t.decompose_workers != "auto" and (not _is_int(t.decompose_workers) or t.decompose_workers < 1):
        errors.append(f"telemetry.decompose_workers: a positive integer or auto, got {t.decompose_workers!r}")
    if not _is_int(t.max_in_flight) or t.max_in_flight < 1:
        errors.append(f"telemetry.max_in_flight: must be a positive integer, got {t.max_in_flight!r}")
    if t.bucket_sequences is not None and (not _is_int(t.bucket_sequences) or t.bucket_sequences < 1 or t.tokens != "train"):
        errors.append(f"telemetry.bucket_sequences: a positive integer (with telemetry.tokens=train) or null, got {t.bucket_sequences!r}")


def _model(raw: Mapping[str, Any], errors: list[str]) -> Optional[GPTConfig]:
    """The architecture, checked by GPTConfig itself: its messages, which start with the field's
    name, become the error lines (``model.ffn_mult must be ...``)."""
    kwargs = dict(raw)
    if kwargs.get("vocab_size") is None:
        kwargs["vocab_size"] = VOCAB_STAND_IN
    try:
        return GPTConfig(**kwargs)
    except ValueError as e:
        errors.append(f"model.{e}")
    except TypeError as e:  # an unknown key, or a value of the wrong type in a comparison
        errors.append(f"model: {e}")
    return None


def _check_optim(name: str, hparams: dict, errors: list[str]) -> None:
    # Building the optimizer on a 1-layer toy GPT with the same parameter names checks the name,
    # every hyperparameter and the routing in milliseconds, whatever the real model's size.
    toy = GPT(GPTConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8, context_len=8, ffn_mult=2))
    try:
        build_optimizer(toy, name, **hparams)
    except (TypeError, ValueError) as e:
        errors.append(f"optim: {e}")


def _token_needs(train: TrainSpec, telemetry: Optional[TelemetrySpec], ranks: int) -> TokenNeeds:
    val_batches = train.eval_batches
    if (telemetry is not None and telemetry.enabled and telemetry.tokens == "probe"
            and _is_int(telemetry.probe_batches)):
        val_batches = max(val_batches, telemetry.probe_batches)
    rows = train.split(ranks).batch_size  # the global micro-batch (eval batches have as many rows)
    # with train.global_batch the loader cuts each step's whole batch at once (sweep.data.loader.StepBatches)
    return TokenNeeds(seq_len=train.seq_len, train_rows=train.global_batch or rows, val_rows=val_batches * rows)


def data_file_problems(spec: "RunSpec") -> list[str]:
    """What ``build_run_spec(..., check_files=False)`` left out: the data files of a validated run
    (there, readable, big enough for its batches on the ranks its resources ask for)."""
    needs = _token_needs(spec.train, spec.telemetry, resource_ranks(spec.config.get("resources")))
    return check_data(dict(spec.config["data"]), needs)


def _data(raw: Mapping[str, Any], errors: list[str], train: Optional[TrainSpec] = None,
          telemetry: Optional[TelemetrySpec] = None, ranks: int = 1, files: bool = True) -> Optional[DataSpec]:
    """Data files there, readable, text, and big enough for the batches of ``train`` (when valid);
    ``files=False`` checks the data settings only (sweep.plan before the data is prepared)."""
    needs = _token_needs(train, telemetry, ranks) if train is not None else None
    problems = check_data(raw, needs, files=files)
    if problems:
        errors += problems
        return None
    try:
        return DataSpec.from_mapping(raw)
    except (TypeError, ValueError) as e:
        errors.append(f"data: {e}")
        return None


def run_axes(model: GPTConfig, optimizer: OptimizerSpec, train: TrainSpec, seed: int,
             overrides: Sequence[str], exclude: Sequence[str]) -> dict[str, Any]:
    """The run's coordinates in the grid: what the fits group and plot by."""
    axes: dict[str, Any] = {
        "model": model.name, "optimizer": optimizer.name, "rank_fraction": optimizer.hparams.get("rank_fraction"),
        "ffn_width": model.ffn_hidden_dim, "ffn_mult": model.ffn_hidden_dim / model.d_model,
        "d_model": model.d_model, "n_layer": model.n_layer, "n_head": model.n_head, "activation": model.activation,
        "pos_encoding": model.pos_encoding, "norm_placement": model.norm_placement,
        "postln_frac": model.postln_frac, "steps": train.steps, "seed": seed,
    }
    # Other identifying overrides (e.g. optim.lr) become axes too, under their dotted name.
    for key, value in identity_overrides(overrides, exclude).items():
        if key.rsplit(".", 1)[-1] not in axes:  # train.steps is already the axis "steps"
            axes[key] = yaml.safe_load(value) if value else value
    return axes


def build_run_spec(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] = (), *,
                   check_files: bool = True, grid: bool = False) -> RunSpec:
    """Validate a composed task config; raise ConfigError listing every problem found.

    ``overrides``: the job's task overrides (Hydra's ``overrides.task``); those that identify the
    run beyond its id's base become axes. ``check_files=False`` leaves out the checks of the data
    files (there, readable, big enough): ``sweep.plan`` reports those apart.
    """
    raw = container(cfg)
    errors: list[str] = []
    errors += config_credential_problems(raw)  # credentials never go into configs or run dirs
    errors += name_problems([("sweep_name", raw.get("sweep_name")), ("run_id", raw.get("run_id"))],
                            (raw.get("paths") or {}).get("runs_root", "."))  # folder names in paths.runs_root
    seed = raw.get("seed")
    if not _is_int(seed) or seed < 0:
        errors.append(f"seed: must be an integer >= 0, got {seed!r}")
    model = _model(raw["model"], errors)
    optim_name = raw["optim"].get("name")
    optim_raw: dict = {}
    if not isinstance(optim_name, str):
        errors.append("optim.name: missing")
    else:
        optim_raw, overrides = job_optimizer_hparams(optim_name, raw["optim"], overrides, grid=grid, errors=errors)
        _check_optim(optim_name, optim_raw, errors)
    train = _section(TrainSpec, raw["train"], "train", errors)
    n_errors = len(errors)
    ranks = resource_ranks(raw.get("resources"))
    if train is not None:
        _check_train(train, errors, ranks)
    train_ok = train is not None and len(errors) == n_errors
    telemetry = _section(TelemetrySpec, raw["telemetry"], "telemetry", errors)
    n_errors = len(errors)
    if telemetry is not None:
        _check_telemetry(telemetry, errors)
    telemetry_ok = telemetry is not None and len(errors) == n_errors
    if telemetry_ok and train_ok and telemetry.decompose_on == "gpu" and train.device == "cpu":
        errors.append("telemetry.decompose_on: gpu needs a CUDA device, but train.device=cpu (use cpu or auto)")
    if telemetry_ok and train_ok and (telemetry.bucket_sequences or 0) > train.sequences_per_step:
        errors.append(f"telemetry.bucket_sequences: {telemetry.bucket_sequences} > the step's {train.sequences_per_step} sequences")
    # The data's size is only checked against valid batch settings (else the data is not the problem).
    data = _data(dict(raw["data"]), errors, train if train_ok else None, telemetry if telemetry_ok else None,
                 ranks=ranks, files=check_files)
    logger = _section(LoggerSpec, raw["logger"], "logger", errors)
    if logger is not None and logger.backend not in ("none", "wandb"):
        errors.append(f"logger.backend: none | wandb, got {logger.backend!r}")
    if logger is not None and logger.mode not in ("online", "offline", "disabled"):
        errors.append(f"logger.mode: online | offline | disabled, got {logger.mode!r}")
    if errors:
        run_id = raw.get("run_id", "?")
        raise ConfigError(f"invalid config for run {run_id}:\n  - " + "\n  - ".join(errors))
    optimizer = OptimizerSpec(optim_name, optim_raw)
    try:
        axes = run_axes(model, optimizer, train, seed, overrides, list(raw.get("run_id_exclude") or []))
    except ValueError as e:  # an override carrying a credential
        raise ConfigError(f"invalid config for run {raw.get('run_id', '?')}:\n  - {e}") from None
    return RunSpec(
        run_id=raw["run_id"], sweep_name=raw["sweep_name"], seed=seed, model=model,
        vocab_from_data=raw["model"].get("vocab_size") is None, optimizer=optimizer, data=data,
        data_root=Path(raw["paths"]["data_root"]), train=train, telemetry=telemetry, logger=logger,
        config=raw, identity=identity_of(cfg), axes=axes,
        run_id_record=run_id_parts_from_config(raw, overrides, sweeper_keys(cfg)).record(),
    )
