"""Experiment loggers: W&B as a view of the local files, never a reason for a run to fail.

The local ``metrics.jsonl`` / ``spectra.jsonl`` are the source of truth. W&B gets the same rows;
if it cannot start or errors mid-run, the failure is logged once and the run goes on without it.

W&B key scheme (x-axis ``trainer/step`` for every key; W&B makes one workspace section per
prefix before the last ``/``):

- ``train/{loss,lr,tokens_per_s,grad_norm}``, ``eval/{loss,ppl}``, ``trainer/{step,tokens,elapsed_s}``
  (summary of ``eval/loss``: its minimum; of ``train/loss``: its last value)
- ``spectral_median/<site>/<bucket>/<metric>``: median over layers of one telemetry event
- ``tables/spectral_layers``: one W&B Table per event, a row per (layer, site, bucket) record
- ``spectral/<site>/<bucket>/<metric>/L<layer>``: one scalar per record and metric, only with
  ``logger.per_layer_keys`` (the key count grows with depth: ~1,800 per run at 24 layers)
- ``spectrum/<site>/<bucket>/L<layer>``: histogram of log10 eigenvalues (telemetry.log_eigenvalues)
- ``spectrum_plot/<site>/<bucket>``: log10 eigenvalue vs index for the selected layers
- summary: ``final/eval_loss``, ``final/train_loss``, ``final/<site>/<bucket>/<rank>``
- config: the resolved config, ``axis.*`` (swept axes), ``provenance.*`` (SLURM job, git commit)

System metrics (``logger.system_metrics``, sampled every ``logger.system_metrics_interval`` s) and
the console log (``logger.console``) are W&B's own, on by default.

Metric names never contain ``.`` in W&B (it means nesting there): ``renyi_0.5`` becomes
``renyi_0p5``; :func:`sweep.wandb_keys.metric_from_wandb` undoes it. Key names and run ids live in
``sweep.wandb_keys``, credential redaction in ``sweep.credentials``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from specsweep.sweep.credentials import redact_secrets
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.spec import LoggerSpec
from specsweep.sweep.run.provenance import run_provenance
from specsweep.sweep.run.wandb_reach import wandb_server_unreachable
from specsweep.sweep.run.wandb_attempts import logged_up_to
from specsweep.sweep.rundir import iter_jsonl
from specsweep.sweep.wandb_keys import LAYER_TABLE_COLUMNS, LAYER_TABLE_KEY, median_key, metric_to_wandb, record_key, train_key

log = logging.getLogger("specsweep.logger")

# Config sections that only steer run ids / relaunch checks: noise in the W&B run table.
_CONFIG_NOISE = ("run_id_exclude", "volatile_keys")
_EIGEN_KEY = re.compile(r"^L(\d+)_([a-z]+)_([a-z]+)$")
_MAX_PLOT_POINTS = 256
CONSOLE_MODES = ("auto", "wrap", "redirect", "off")  # W&B console capture (auto: wrap)


def wandb_config(config: Mapping[str, Any], axes: Mapping[str, Any], run_dir: Optional[Path] = None,
                 provenance: Optional[Mapping[str, Any]] = None) -> dict:
    """The run's W&B config: the resolved config (nested; W&B shows ``model.ffn_mult``), the swept
    axes under ``axis`` (``axis.optimizer``, ``axis.ffn_width``, ... for group-by and filters),
    the run directory and ``provenance`` (SLURM job, git commit); run-id bookkeeping dropped,
    credentials redacted."""
    cfg = {k: v for k, v in config.items() if k not in _CONFIG_NOISE}
    cfg["axis"] = dict(axes)
    if run_dir is not None:
        cfg["run_dir"] = str(run_dir)
    if provenance is not None:
        cfg["provenance"] = dict(provenance)
    return redact_secrets(cfg)


# ---- keys ---------------------------------------------------------------------------------------

def spectral_rows(records: Iterable[Mapping[str, Any]], metrics: Iterable[str],
                  per_layer: bool = True) -> dict[str, float]:
    """Per-event medians over layers and (``per_layer``) per-layer values, keyed for W&B (ok
    records only)."""
    metrics = list(metrics)
    data: dict[str, float] = {}
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        for m in metrics:
            v = r.get(m)
            if v is None:
                continue
            if per_layer:
                data[record_key(r, m)] = float(v)
            groups.setdefault((r["site"], r["bucket"], m), []).append(float(v))
    for (site, bucket, m), values in groups.items():
        data[median_key(site, bucket, m)] = float(np.median(values))
    return data


def layer_table(records: Iterable[Mapping[str, Any]], metrics: Iterable[str]) -> tuple[list[str], list[list]]:
    """(columns, rows) of the per-layer Table of one event: step, layer, site, bucket and the
    metrics (W&B names), one row per ok record; a metric a record lacks is None."""
    metrics = list(metrics)
    columns = [*LAYER_TABLE_COLUMNS, *(metric_to_wandb(m) for m in metrics)]
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        values = [None if r.get(m) is None else float(r[m]) for m in metrics]
        rows.append([int(r["step"]), int(r["layer"]), str(r["site"]), str(r["bucket"]), *values])
    return columns, rows


def settings_for(spec: LoggerSpec) -> dict[str, Any]:
    """``wandb.Settings`` arguments of a logger config; a bad value is a ConfigError."""
    console, stats, interval = spec.console, spec.system_metrics, spec.system_metrics_interval
    if console not in CONSOLE_MODES:
        raise ConfigError(f"logger.console: {' | '.join(CONSOLE_MODES)}, got {console!r}")
    for name in ("system_metrics", "per_layer_keys"):
        if not isinstance(getattr(spec, name), bool):
            raise ConfigError(f"logger.{name}: true | false, got {getattr(spec, name)!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise ConfigError(f"logger.system_metrics_interval: seconds > 0, got {interval!r}")
    settings: dict[str, Any] = {"init_timeout": float(spec.init_timeout), "console": console,
                                "x_disable_stats": not stats}
    if stats:
        settings["x_stats_sampling_interval"] = float(interval)
    finish_timeout = getattr(spec, "finish_timeout", None)
    if finish_timeout:
        settings["finish_timeout"] = float(finish_timeout)
    return settings


def selected_layers(layers: Iterable[int]) -> list[int]:
    """First, middle and last layer: the ones whose spectrum is plotted."""
    ls = sorted(set(int(x) for x in layers))
    if not ls:
        return []
    return sorted({ls[0], ls[len(ls) // 2], ls[-1]})


def _log10_positive(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    return np.log10(v)


def _plot_indices(n: int) -> np.ndarray:
    if n <= _MAX_PLOT_POINTS:
        return np.arange(n)
    return np.unique(np.round(np.geomspace(1, n, _MAX_PLOT_POINTS)).astype(int) - 1)


# ---- loggers ------------------------------------------------------------------------------------

class NullLogger:
    """Logs nothing; used for logger=none and after a W&B failure."""

    run_id: Optional[str] = None
    mode: str = "disabled"

    def log(self, row: Mapping[str, Any], step: int) -> None:
        pass

    def log_spectra(self, records: Iterable[Mapping[str, Any]], step: int, metrics: Iterable[str]) -> None:
        pass

    def log_eigenvalues(self, step: int, eigen: Mapping[str, np.ndarray]) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def resolve_mode(configured: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """``WANDB_MODE`` in the environment wins over the config (a cluster profile can force offline)."""
    environ = os.environ if environ is None else environ
    env = (environ.get("WANDB_MODE") or "").strip().lower()
    if env == "dryrun":
        env = "offline"
    return env if env in ("online", "offline", "disabled") else configured


class WandbLogger(NullLogger):
    """One W&B run per training run: group = sweep, name = run id, stable id, resume allowed."""

    per_layer_keys = False

    def __init__(self, spec: LoggerSpec, *, sweep_name: str, run_id: str, run_dir: Path,
                 config: Mapping[str, Any], axes: Mapping[str, Any], wandb_id: str,
                 mode: Optional[str] = None) -> None:
        import wandb

        self._wandb = wandb
        self._broken = False
        self.run_id = wandb_id
        self.mode = mode or spec.mode
        self.per_layer_keys = spec.per_layer_keys
        os.environ.setdefault("WANDB_SILENT", "true")
        tags = list(spec.tags) + [f"{k}:{v}" for k, v in sorted(axes.items()) if v is not None]
        self._run = wandb.init(
            project=spec.project, entity=spec.entity, group=sweep_name, name=run_id, id=wandb_id,
            resume="allow", mode=self.mode, dir=str(run_dir), job_type="train",
            config=wandb_config(config, axes, run_dir, run_provenance()), tags=[t[:64] for t in tags][:64],
            reinit="finish_previous", settings=wandb.Settings(**settings_for(spec)),
        )
        step = train_key("step")
        self._run.define_metric(step)
        self._run.define_metric("*", step_metric=step)
        # A key's own definition replaces the glob's, so each repeats the x-axis.
        for column, summary in (("eval_loss", "min"), ("eval_ppl", "min"), ("train_loss", "last")):
            self._run.define_metric(train_key(column), step_metric=step, summary=summary)

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # W&B must never stop training
            self._broken = True
            log.warning("W&B %s failed (%s: %s); continuing with local files only", what, type(e).__name__, e)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        data = {train_key(k): v for k, v in row.items() if v is not None and not isinstance(v, str)}
        data["trainer/step"] = step
        self._guard("log", self._run.log, data)

    def log_spectra(self, records: Iterable[Mapping[str, Any]], step: int, metrics: Iterable[str]) -> None:
        """Medians over layers and one Table of the per-layer values (plus a scalar per layer
        and metric with ``logger.per_layer_keys``): a key count independent of depth by default."""
        records, metrics = list(records), list(metrics)

        def _log() -> None:
            data: dict[str, Any] = spectral_rows(records, metrics, per_layer=self.per_layer_keys)
            # "updates" rides along so that --from-wandb knows which events saw the untrained model
            extra = ["updates"] if records and "updates" in records[0] else []
            columns, rows = layer_table(records, [*metrics, *extra])
            if rows:
                data[LAYER_TABLE_KEY] = self._wandb.Table(columns=columns, data=rows)
            data["trainer/step"] = step
            self._run.log(data)

        self._guard("log", _log)

    def log_eigenvalues(self, step: int, eigen: Mapping[str, np.ndarray]) -> None:
        """Histograms of log10 eigenvalues, and one line plot per site/bucket, of the first,
        middle and last layer (global bucket; all buckets when there is no global one)."""
        if self._broken:
            return
        parsed: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        for name, values in eigen.items():
            m = _EIGEN_KEY.match(name)
            if m:
                parsed.setdefault((m.group(2), m.group(3)), {})[int(m.group(1))] = np.asarray(values)
        if any(b == "global" for _, b in parsed):
            parsed = {k: v for k, v in parsed.items() if k[1] == "global"}

        def _log() -> None:
            wandb = self._wandb
            data: dict[str, Any] = {"trainer/step": step}
            for (site, bucket), by_layer in sorted(parsed.items()):
                xs, ys, keys = [], [], []
                for layer in selected_layers(by_layer):
                    logs = _log10_positive(by_layer[layer])
                    if logs.size == 0:
                        continue
                    data[f"spectrum/{site}/{bucket}/L{layer:02d}"] = wandb.Histogram(logs.tolist(), num_bins=64)
                    idx = _plot_indices(logs.size)
                    xs.append((idx + 1).tolist())
                    ys.append(logs[idx].tolist())
                    keys.append(f"L{layer:02d}")
                if keys:
                    data[f"spectrum_plot/{site}/{bucket}"] = wandb.plot.line_series(
                        xs=xs, ys=ys, keys=keys, xname="eigenvalue index",
                        title=f"log10 eigenvalues, {site} {bucket}, step {step}")
            if len(data) > 1:
                self._run.log(data)

        self._guard("eigenvalue log", _log)

    def summary(self, values: Mapping[str, Any]) -> None:
        def _set() -> None:
            for k, v in values.items():
                self._run.summary[k] = v
        self._guard("summary", _set)

    def finish(self, exit_code: int = 0) -> None:
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as e:
            log.warning("W&B finish failed (%s); local files are complete", e)


def replay_after_resume(logger: NullLogger, metrics_file: Path, spectra_file: Path, *,
                        after_step: int, metrics: Iterable[str]) -> int:
    """Log again to W&B the local rows that an earlier attempt may not have written: those after
    ``after_step`` (the last checkpoint interval) or from the last step that the earlier attempts'
    W&B files hold, whichever is earlier (W&B writes its file in blocks, about every 15 s: a killed
    process loses its last seconds of rows, all of them if it died young; when no earlier file
    holds a step, everything is logged again). Rows W&B did get appear twice with the same step
    and values. Returns the number of rows replayed.
    """
    if not isinstance(logger, WandbLogger):
        return 0
    try:
        current: Optional[Path] = Path(logger._run.dir).parent
    except Exception:  # noqa: BLE001 - only used to skip the attempt's own folder
        current = None
    held = logged_up_to(metrics_file.parent, logger.run_id, current)
    # rows of the last step held may be only partly written: that step is logged again too
    after_step = min(after_step, held - 1) if held is not None else 0
    metrics = list(metrics)
    by_step: dict[int, tuple[list[dict], list[dict]]] = {}
    for path, slot in ((metrics_file, 0), (spectra_file, 1)):
        if path.exists():
            for row in iter_jsonl(path):
                step = row.get("step")
                if isinstance(step, int) and step > after_step:
                    by_step.setdefault(step, ([], []))[slot].append(row)
    n = 0
    for step in sorted(by_step):
        rows, records = by_step[step]
        for row in rows:
            logger.log(row, step)
        if records:
            logger.log_spectra(records, step, metrics)
        n += len(rows) + bool(records)
    return n


# Why W&B online could not start earlier in this process (None: it never failed). A grid run by the
# local launcher trains all its runs in one process: once the server is unreachable, the later runs
# go offline at once instead of each waiting `logger.init_timeout` again.
_online_failure: Optional[str] = None


def _remove_failed_attempt(run_dir: Optional[Path], wandb_id: Optional[str], before: set[Path]) -> None:
    """Delete the ``wandb/run-*`` folder that a failed online start left (its offline twin holds the rows)."""
    if run_dir is None or not wandb_id:
        return
    for folder in Path(run_dir, "wandb").glob(f"run-*-{wandb_id}"):
        if folder not in before and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def make_logger(spec: LoggerSpec, **kwargs: Any) -> NullLogger:
    """A W&B logger when configured and reachable, else a NullLogger (failure logged once).

    An online run that cannot start (no API key, server unreachable after ``init_timeout``) falls
    back to an offline W&B run in the same run directory, to be uploaded later with ``wandb sync``;
    the later runs of the same process then start offline at once (one warning in all).
    """
    global _online_failure
    if spec.backend == "none":
        return NullLogger()
    settings_for(spec)  # a bad logger option is a config error, raised before any W&B start
    mode = resolve_mode(spec.mode)
    if mode == "disabled":
        return NullLogger()
    run_dir = kwargs.get("run_dir")
    sync_hint = f"`wandb sync {run_dir or 'RUN_DIR'}/wandb/offline-run-*`"
    if mode == "online" and _online_failure is not None:
        log.info("W&B online failed earlier in this process (%s); this run logs offline (upload later "
                 "with %s)", _online_failure, sync_hint)
        mode = "offline"
    before = set(Path(run_dir, "wandb").glob("run-*")) if run_dir is not None else set()
    # a server that refuses connections fails at once, not after init_timeout (sweep/run/wandb_reach.py)
    why = wandb_server_unreachable() if mode == "online" else None
    try:
        if why is not None:
            raise ConnectionError(f"W&B server unreachable: {why}")
        return WandbLogger(spec, mode=mode, **kwargs)
    except Exception as e:
        if mode != "online":
            log.warning("W&B could not start (%s: %s); training continues with local files only",
                        type(e).__name__, e)
            return NullLogger()
        first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    _online_failure = first
    try:
        import wandb

        wandb.teardown()  # the service still holds the failed run's id ("run ID is in use")
    except Exception:  # noqa: BLE001
        pass
    _remove_failed_attempt(run_dir, kwargs.get("wandb_id"), before)
    try:
        logger = WandbLogger(spec, mode="offline", **kwargs)
        log.warning("W&B online could not start (%s); logging offline instead, and so will the later runs "
                    "of this process (upload later with %s)", first, sync_hint)
        return logger
    except Exception as e:
        log.warning("W&B could not start (%s; offline: %s: %s); training continues with local files only",
                    first, type(e).__name__, e)
        return NullLogger()
