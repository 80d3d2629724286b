"""Experiment loggers: W&B as a view of the local files, never a reason for a run to fail.

The local ``metrics.jsonl`` / ``spectra.jsonl`` are the source of truth. W&B gets the same rows;
if it cannot start or errors mid-run, the failure is logged once and the run goes on without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from sweep.spec import LoggerSpec

log = logging.getLogger("specsweep.logger")


def stable_wandb_id(sweep_name: str, run_id: str) -> str:
    """A W&B run id that is the same for every attempt of the same run (requeues, relaunches)."""
    return hashlib.sha1(f"{sweep_name}/{run_id}".encode()).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def record_key(record: Mapping[str, Any], metric: str) -> str:
    """W&B key of one telemetry metric, e.g. ``spectral/post/tail/hard_rank/L03``."""
    return f"spectral/{record['site']}/{record['bucket']}/{metric}/L{int(record['layer']):02d}"


class NullLogger:
    """Logs nothing; used for logger=none and after a W&B failure."""

    run_id: Optional[str] = None

    def log(self, row: Mapping[str, Any], step: int) -> None:
        pass

    def log_spectra(self, records: Iterable[Mapping[str, Any]], step: int, metrics: Iterable[str]) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per training run: group = sweep, name = run id, stable id, resume allowed."""

    def __init__(self, spec: LoggerSpec, *, sweep_name: str, run_id: str, run_dir: Path,
                 config: Mapping[str, Any], axes: Mapping[str, Any], wandb_id: str) -> None:
        import wandb

        self._wandb = wandb
        self._broken = False
        self.run_id = wandb_id
        os.environ.setdefault("WANDB_SILENT", "true")
        tags = list(spec.tags) + [f"{k}:{v}" for k, v in sorted(axes.items()) if v is not None]
        self._run = wandb.init(
            project=spec.project, entity=spec.entity, group=sweep_name, name=run_id, id=wandb_id,
            resume="allow", mode=spec.mode, dir=str(run_dir), job_type="train",
            config={**flatten(config), **{f"axis.{k}": v for k, v in axes.items()}},
            tags=tags[:64], reinit="finish_previous",
            settings=wandb.Settings(init_timeout=float(spec.init_timeout), console="off",
                                    x_disable_stats=True),
        )
        self._run.define_metric("*", step_metric="trainer/step")

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # W&B must never stop training
            self._broken = True
            log.warning("W&B %s failed (%s: %s); continuing with local files only", what, type(e).__name__, e)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        data = {f"train/{k}" if k not in ("step",) else "trainer/step": v for k, v in row.items()}
        data["trainer/step"] = step
        self._guard("log", self._run.log, data)

    def log_spectra(self, records: Iterable[Mapping[str, Any]], step: int, metrics: Iterable[str]) -> None:
        metrics = list(metrics)
        data: dict[str, Any] = {"trainer/step": step}
        for r in records:
            if r.get("status") != "ok":
                continue
            for m in metrics:
                if r.get(m) is not None:
                    data[record_key(r, m)] = r[m]
        self._guard("log", self._run.log, data)

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


def make_logger(spec: LoggerSpec, **kwargs: Any) -> NullLogger:
    """A W&B logger when configured and reachable, else a NullLogger (failure logged once)."""
    if spec.backend == "none" or spec.mode == "disabled":
        return NullLogger()
    try:
        return WandbLogger(spec, **kwargs)
    except Exception as e:
        log.warning("W&B could not start (%s: %s); training continues with local files only",
                    type(e).__name__, e)
        return NullLogger()
