"""W&B for the β analysis (``specsweep-fit``): push the analysis, read runs back from W&B.

- :func:`push_analysis`: one W&B run of job type ``analysis`` in the sweep's group: the β tables
  as W&B tables, the figures as images, ``beta/<label>/<site>/<bucket>/<soft|hard|delta>`` in its
  summary, and the whole analysis folder as an artifact.
- :func:`materialize`: rebuild run directories (status, metrics and spectra rows, completion
  marker; written by ``sweep.rundir.write_run_files``) from W&B, for sweeps whose local files are
  gone. Sources: ``ENTITY/PROJECT/GROUP`` through the W&B public API (needs network,
  ``WANDB_API_KEY`` or ``wandb login``, and ``WANDB_BASE_URL`` for a self-hosted server), or a
  local folder holding W&B run folders (offline runs, read with ``wandb leet inspect``). What comes
  back is what was logged: ok telemetry records with their rank metrics (no sampling diagnostics;
  from the per-layer scalar keys when the run has them, else from its per-event layer Tables),
  train/eval rows (today's keys and the older ``train/train_loss``), final losses; enough for the fit.

The local run directories remain the default source of ``sweep.fit``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from specsweep.sweep import rundir
from specsweep.sweep.errors import SweepError
from specsweep.sweep.credentials import redact_secrets
from specsweep.sweep.analysis import outdir
from specsweep.sweep.analysis.wandb_history import (api_file_reader, folder_file_reader, history_rows, num as _num,
                                          resolve_layer_tables)
from specsweep.sweep.wandb_keys import stable_wandb_id
LEET_TIMEOUT_S = 120
_WANDB_ERROR_STATES = ("crashed", "failed")  # W&B run states (its vocabulary) of a run that errored
LIVE_ANALYSIS = "live-analysis"  # name prefix and id seed of the one W&B run that --watch updates


# ---- reading W&B sources for ``specsweep-fit --from-wandb`` ----------------------------

def materialize_sources(sources: Sequence[str], out: Optional[str]) -> tuple[list[str], str]:
    """Rebuild the run directories of every ``--from-wandb`` source; returns (sweep dirs, out dir)."""
    first = sources[0].rstrip("/")
    out_dir = Path(out) if out else Path(f"wandb-{Path(first).name or 'sweep'}")
    outdir.check_replaceable(out_dir)  # before anything is fetched
    dirs = []
    for i, source in enumerate(sources):
        dest = out_dir / outdir.RUNS_DIR / (str(i) if len(sources) > 1 else "")
        try:
            n = materialize(source, dest)
        except Exception as e:  # noqa: BLE001 - reported like any other unusable input
            raise SweepError(f"--from-wandb {source}: {type(e).__name__}: {e}") from e
        print(f"rebuilt {n} run director{'y' if n == 1 else 'ies'} from W&B ({source}) in {dest}",
              file=sys.stderr)
        dirs.append(str(dest))
    return dirs, str(out_dir)


# ---- a W&B run, from the API or from offline files ----------------------------------------------

@dataclass
class RunRecord:
    """The parts of a W&B run that the fit needs."""

    name: str
    group: Optional[str]
    job_type: Optional[str]
    state: str
    config: dict
    summary: dict
    history: list[dict] = field(default_factory=list)


def _nested(config: Mapping[str, Any]) -> dict:
    """W&B API configs may come as {"k": {"value": v}} or with dotted keys; make them nested dicts."""
    out: dict = {}
    for k, v in config.items():
        if k.startswith("_"):
            continue
        if isinstance(v, Mapping) and set(v) == {"value"}:
            v = v["value"]
        node = out
        parts = str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = v
    return out


def api_runs(path: str, api: Any = None) -> Iterator[RunRecord]:
    """Training runs of ``ENTITY/PROJECT/GROUP`` (or ``PROJECT/GROUP``) through the public API."""
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"--from-wandb {path!r}: expected ENTITY/PROJECT/GROUP or PROJECT/GROUP")
    if api is None:
        import wandb

        api = wandb.Api(timeout=60)
    group = parts[-1]
    project = "/".join(parts[:-1])
    if len(parts) == 2 and getattr(api, "default_entity", None):
        project = f"{api.default_entity}/{project}"
    for run in api.runs(project, filters={"group": group}):
        if getattr(run, "job_type", "train") not in (None, "", "train"):
            continue
        history = list(run.scan_history(page_size=1000))
        with tempfile.TemporaryDirectory(prefix="specsweep-wandb-") as tmp:
            resolve_layer_tables(history, api_file_reader(run, Path(tmp)))
        yield RunRecord(name=run.name, group=getattr(run, "group", group), job_type=run.job_type,
                        state=str(run.state), config=_nested(dict(run.config)),
                        summary=dict(getattr(run.summary, "_json_dict", None) or dict(run.summary)),
                        history=history)


def _leet(path: Path, *extra: str) -> str:
    exe = shutil.which("wandb", path=os.path.dirname(sys.executable)) or shutil.which("wandb") or "wandb"
    proc = subprocess.run([exe, "leet", "inspect", "--json", *extra, str(path)], capture_output=True,
                          text=True, timeout=LEET_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"wandb leet inspect {path} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def read_offline_run(run_folder: Path) -> dict:
    """One W&B run folder (``offline-run-*`` or ``run-*``): its run record, summary and history."""
    summary = json.loads(_leet(run_folder, "--summary"))
    run: dict = {}
    history: list[dict] = []
    for line in _leet(run_folder).splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("type") == "run":
            run = rec["run"]
        elif rec.get("type") == "history":
            history.append(rec["history"]["item"])
    return {"run": run, "summary": summary, "history": history}


def offline_runs(folder: Path) -> Iterator[RunRecord]:
    """Training runs under a local folder: every W&B run folder below it, attempts of the same run
    (a resumed run has one folder per attempt) merged in start order. An attempt killed before W&B
    wrote anything to its file (it writes in blocks) has no run record and is left out."""
    by_id: dict[str, list[dict]] = {}
    for wandb_file in sorted(folder.rglob("*.wandb")):
        parsed = read_offline_run(wandb_file.parent)
        if not parsed["run"] and not parsed["history"]:
            continue
        resolve_layer_tables(parsed["history"], folder_file_reader(wandb_file.parent))
        rid = parsed["run"].get("run_id") or parsed["summary"].get("run_id") or wandb_file.stem
        by_id.setdefault(rid, []).append(parsed)
    for attempts in by_id.values():
        attempts.sort(key=lambda a: a["summary"].get("start_time") or "")
        last = attempts[-1]
        if (last["run"].get("job_type") or "train") != "train":
            continue
        summary: dict = {}
        history: list[dict] = []
        for a in attempts:
            summary.update(a["summary"].get("summary") or {})
            history += a["history"]
        yield RunRecord(name=last["summary"].get("name") or last["run"].get("display_name", ""),
                        group=last["run"].get("run_group"), job_type="train",
                        state=str(last["summary"].get("state", "unknown")),
                        config=_nested(last["summary"].get("config") or {}), summary=summary, history=history)


# ---- W&B run -> run directory -------------------------------------------------------------------

@dataclass
class RebuiltRun:
    """A run directory's contents rebuilt from a W&B run (see ``sweep.rundir.write_run_files``)."""

    status: dict[str, Any]
    metrics: list[dict[str, Any]]
    spectra: list[dict[str, Any]]
    done: Optional[dict[str, Any]]  # None: the run did not finish


def run_files(record: RunRecord) -> RebuiltRun:
    """The run directory contents: status, metrics rows, spectra records, completion summary."""
    train, evals, spectra = history_rows(record.history)
    cfg = record.config
    axes = dict(cfg.get("axis") or {})
    run_id = str(cfg.get("run_id") or record.name)
    summary = record.summary
    final_eval = _num(summary.get("final/eval_loss"))
    done = None
    if record.state == "finished" and final_eval is not None and math.isfinite(final_eval):
        done = {"run_id": run_id, "final_step": int(_num(summary.get("final/step")) or max(train, default=0)),
                "final_train_loss": _num(summary.get("final/train_loss")), "final_eval_loss": final_eval,
                "source": "wandb"}
    status = (rundir.STATUS_DONE if done else
              rundir.STATUS_FAILED if record.state in _WANDB_ERROR_STATES else rundir.STATUS_RUNNING)
    info = {"run_id": run_id, "sweep": record.group or cfg.get("sweep_name"), "status": status,
            "config_hash": None, "axes": axes, "step": max(train, default=0), "error": None,
            "wandb_id": None, "source": "wandb"}
    rows = sorted(train.values(), key=lambda r: r["step"]) + sorted(evals.values(), key=lambda r: r["step"])
    return RebuiltRun(info, sorted(rows, key=lambda r: r["step"]), [spectra[k] for k in sorted(spectra)], done)


def write_run_dir(record: RunRecord, dest: Path) -> Path:
    """Write the run directory of one W&B run under ``dest`` (named after its run id)."""
    files = run_files(record)
    run_dir = dest / re.sub(r"[^A-Za-z0-9_.=-]", "_", files.status["run_id"])
    return rundir.write_run_files(run_dir, files.status, files.metrics, files.spectra, files.done)


def materialize(source: str, dest: Path, api: Any = None) -> int:
    """Write one run directory per training run of ``source`` under ``dest``; returns how many."""
    local = Path(source)
    runs = offline_runs(local) if local.exists() else api_runs(source, api)
    dest.mkdir(parents=True, exist_ok=True)
    return sum(1 for record in runs if write_run_dir(record, dest))


# ---- pushing the analysis -----------------------------------------------------------------------

def _runs_logger_config(sweep_dirs: Iterable[str | Path]) -> tuple[list[str], dict]:
    """(W&B groups = the runs' sweep names, logger config of one run) from the run directories."""
    import yaml

    groups: list[str] = []
    logger_cfg: dict = {}
    for d in sweep_dirs:
        d = Path(d)
        run_dirs = rundir.find_run_dirs(d)[0] if d.is_dir() else []
        for run in map(rundir.RunDir, run_dirs):
            try:
                info = rundir.load_status(run)
            except (OSError, json.JSONDecodeError):
                continue
            if info.get("sweep") and info["sweep"] not in groups:
                groups.append(str(info["sweep"]))
            cfg_file = run.config_file
            if not logger_cfg and cfg_file.is_file():
                try:
                    logger_cfg = dict((yaml.safe_load(cfg_file.read_text()) or {}).get("logger") or {})
                except yaml.YAMLError:
                    pass
    return groups, logger_cfg


def wandb_target(sweep_dirs: Iterable[str | Path], project: Optional[str] = None,
                 entity: Optional[str] = None, fallback: str = "analysis"
                 ) -> tuple[list[str], str, str, Optional[str]]:
    """(W&B groups of the runs, the analysis run's group, project, entity): the runs' sweep names
    and ``logger.project`` / ``logger.entity`` unless given."""
    groups, logger_cfg = _runs_logger_config(sweep_dirs)
    group = groups[0] if len(groups) == 1 else ("+".join(groups) if groups else fallback)
    return (groups, group, project or logger_cfg.get("project") or "specsweep",
            entity or logger_cfg.get("entity") or None)


def _key(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_=+-]+", "_", str(text)).strip("_") or "all"


def beta_summary_values(summary: Any) -> dict[str, float]:
    """``beta/<label>/<site>/<bucket>/<soft|hard|delta>[_lower|_upper]`` from the β summary table."""
    out: dict[str, float] = {}
    if summary is None or getattr(summary, "empty", True):
        return out
    cols = {"beta_soft": "soft", "soft_lower": "soft_lower", "soft_upper": "soft_upper",
            "beta_hard": "hard", "hard_lower": "hard_lower", "hard_upper": "hard_upper",
            "beta_delta": "delta", "delta_lower": "delta_lower", "delta_upper": "delta_upper"}
    for _, row in summary.iterrows():
        base = f"beta/{_key(row.get('label', 'all'))}/{row['site']}/{row['bucket']}"
        for col, name in cols.items():
            v = _num(row.get(col))
            if v is not None and math.isfinite(v):
                out[f"{base}/{name}"] = v
    return out


def live_step(result: Any) -> Optional[int]:
    """The step an analysis describes: the live fit's common step, else the latest window end."""
    step = (getattr(result, "status", {}) or {}).get("as_of_step")
    if step is None and "window_end" in getattr(result.points, "columns", ()):
        ends = result.points["window_end"].dropna()
        step = int(ends.max()) if len(ends) else None
    return None if step is None else int(step)


def push_analysis(result: Any, sweep_dirs: Sequence[str | Path], *, mode: str = "online",
                  project: Optional[str] = None, entity: Optional[str] = None,
                  init_timeout: float = 60, live: bool = False) -> Optional[Path]:
    """Log a fit result as a job_type=analysis W&B run in the sweep's group; returns the W&B run
    folder (upload it with ``wandb sync`` when offline), or None when W&B failed (the local
    analysis is complete either way).

    ``live`` (``sweep.fit --watch``): every refit goes to ONE run (a W&B id derived from the
    group, resumed), with ``live/{step,n_runs,n_total}`` and the β values as history against
    ``live/step``, so a line plot of ``beta/<label>/post/global/soft`` shows β(t) emerging."""
    import wandb

    groups, group, project, entity = wandb_target(sweep_dirs, project, entity, Path(result.out_dir).name)
    config = redact_secrets({"rule": result.rule, "ci_method": result.ci_method, "sweeps": groups,
                             "sweep_dirs": [str(Path(d).resolve()) for d in sweep_dirs],
                             "group_cols": list(result.group_cols), "n_points": int(len(result.points)),
                             "excluded": [f"{Path(p).name}: {r}" for p, r in result.excluded]})
    os.environ.setdefault("WANDB_SILENT", "true")
    out_dir = Path(result.out_dir)
    run = None
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            ident = {"id": stable_wandb_id(group, LIVE_ANALYSIS), "resume": "allow"} if live else {}
            run = wandb.init(project=project, entity=entity, group=group, job_type="analysis",
                             name=f"{LIVE_ANALYSIS if live else 'analysis'}-{group}", dir=str(out_dir),
                             mode=attempt, config=config, **ident,
                             tags=["analysis", *(f"sweep:{g}" for g in groups)][:64], reinit="finish_previous",
                             settings=wandb.Settings(init_timeout=float(init_timeout), console="off",
                                                     x_disable_stats=True))
            break
        except Exception as e:  # noqa: BLE001 - W&B never costs the local analysis
            print(f"warning: W&B {attempt} run could not start ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''})", file=sys.stderr)
    if run is None:
        return None
    try:
        tables = {"beta_summary": result.summary, "beta_table": result.beta_table,
                  "points": result.points, "optimizer_comparison": result.comparisons,
                  "beta_steps": result.beta_steps,
                  "paper_comparison": result.comparison.table if result.comparison is not None else None}
        data: dict[str, Any] = {}
        for name, frame in tables.items():
            if frame is not None and not frame.empty:
                data[f"tables/{name}"] = wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))
        for fig in result.figures:
            if Path(fig).suffix == ".png":
                data[f"figures/{Path(fig).stem}"] = wandb.Image(str(fig))
        betas = beta_summary_values(result.summary)
        if live:
            run.define_metric("live/step")
            for prefix in ("beta/*", "live/*"):
                run.define_metric(prefix, step_metric="live/step")
            status = getattr(result, "status", {}) or {}
            data |= {"live/step": live_step(result), "live/n_runs": status.get("n_runs"),
                     "live/n_total": status.get("n_total"), **betas}
        if data:
            run.log(data)
        for k, v in betas.items():
            run.summary[k] = v
        artifact = wandb.Artifact(f"analysis-{_key(group)}", type="analysis",
                                  description=f"sweep.fit output ({result.rule})")
        for path in result.files:
            path = Path(path)
            if path.is_file():
                artifact.add_file(str(path), name=str(path.relative_to(out_dir)) if path.is_relative_to(out_dir)
                                  else path.name)
        run.log_artifact(artifact)
        folder = Path(run.dir).parent
        run.finish()
        return folder
    except Exception as e:  # noqa: BLE001
        print(f"warning: W&B analysis push failed ({type(e).__name__}: {e}); local files are complete",
              file=sys.stderr)
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass
        return None


__all__ = ["RebuiltRun", "RunRecord", "api_runs", "beta_summary_values", "live_step", "materialize",
           "materialize_sources", "offline_runs", "push_analysis", "read_offline_run", "resolve_layer_tables",
           "run_files", "wandb_target"]
