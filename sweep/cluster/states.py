"""The state of every run of a sweep, from its run directories, its sweep record and SLURM.

What ``specsweep-status`` shows and resubmits (see that command for the states and the stale
rule). Display states are this module's vocabulary; run.json statuses come from specsweep.sweep.rundir.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from specsweep.sweep import liveness
from specsweep.sweep.cluster import slurm
from specsweep.sweep.rundir import sweepdir
from specsweep.sweep.rundir.claim import describe as describe_claim
from specsweep.sweep.rundir import (STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_REQUEUED,
                          STATUS_RUNNING, RunDir, RunDirError, find_run_dirs)

RESUBMITTABLE = (STATUS_FAILED, "stale", STATUS_INTERRUPTED, "not started")
STALE_AFTER_S = 600.0  # a heartbeat this old (seconds) from another host means the run is dead


@dataclass
class RunState:
    run_id: str
    state: str
    step: Optional[int] = None
    steps: Optional[int] = None
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    detail: str = ""
    launch: Optional[int] = field(default=None, repr=False)
    # The overrides behind the run id (sweep/grid/run_id.py RunIdParts.record): {"hash", "tags", "hashed"}
    id: dict = field(default_factory=dict, repr=False)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "exception" in ln.lower() or "killed" in ln.lower():
            return ln
    return lines[-1] if lines else ""


def _job_log_tail(sweep_dir: Path, job_id: str) -> str:
    """Last error-looking line of the SLURM job's stderr (submitit's log), if any."""
    folder = sweep_dir / ".submitit" / job_id
    err = folder / f"{job_id}_0_log.err"
    if not err.exists():
        return ""
    try:
        return _last_error_line(err.read_text(errors="replace")[-20000:])
    except OSError:
        return ""


def _age(updated: Optional[str]) -> str:
    if not updated:
        return ""
    try:
        then = _dt.datetime.fromisoformat(updated)
    except ValueError:
        return ""
    seconds = (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()
    return f"{_seconds(seconds)} ago"


def _seconds(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def why_stale(beat: Mapping[str, Any], job_id: Optional[str], job_state: Optional[str], stale_after: float,
              now: float) -> Optional[str]:
    """Why a run whose run.json says running/requeued is dead, or None if it may be alive.

    ``beat`` is its heartbeat.json ({} if none), ``job_id``/``job_state`` its SLURM job (if any) and
    the job's state (None if unknown), ``now`` unix seconds.
    """
    if job_state in slurm.LIVE_STATES or (job_id and job_state is None):
        return None  # a live job, or one whose state cannot be read: never taken for dead
    if not beat:
        return None  # no heartbeat (written before heartbeats existed): see --stale
    where = f"pid {beat.get('pid')} on {beat.get('host')}"
    gone = liveness.process_gone(beat)
    if gone:
        return f"its process ({where}) is gone"
    if gone is False:
        return None
    age = now - float(beat.get("unix") or 0.0)
    return f"no heartbeat for {_seconds(age)} ({where})" if age > stale_after else None


def _heartbeat_note(beat: Mapping[str, Any], now: float) -> str:
    if not beat:
        return "no heartbeat"
    age = max(0.0, now - float(beat.get("unix") or 0.0))
    return f"heartbeat {_seconds(age)} ago ({beat.get('host')} pid {beat.get('pid')})"


def _run_dirs(sweep_dir: Path) -> list[str]:
    """Names of the run directories of a sweep (also those only claimed: identity recorded)."""
    if not sweep_dir.is_dir():
        return []
    runs, _ = find_run_dirs(sweep_dir)
    claimed = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
               and _claimed_or_unreadable(RunDir(p))]
    return sorted({p.name for p in runs if p != sweep_dir} | {p.name for p in claimed})


def _claimed_or_unreadable(run: RunDir) -> bool:
    try:
        return run.identity_file.exists()
    except OSError:  # a folder that cannot be searched: listed as unreadable
        return True


def _unreadable(run: RunDir, error: Exception) -> str:
    """``<file>: <reason>`` for a run whose files cannot be read (RunDirError already says it)."""
    if isinstance(error, OSError):
        return f"{error.filename or run.path}: {error.strerror or error}"
    return str(error) if isinstance(error, RunDirError) else f"{run.path}: {error}"


def collect(sweep_dir: Path, stale_after: float = STALE_AFTER_S, now: Optional[float] = None) -> list[RunState]:
    """One RunState per run of the sweep (grid points in launch order, then other run directories).

    ``stale_after``: seconds without a heartbeat after which a run on another host counts as dead.
    """
    sweep_dir = Path(sweep_dir)
    now = time.time() if now is None else now
    grid = sweepdir.read_grid(sweep_dir)
    # A grid point lives in SWEEP_DIR/<run id> unless its folder is recorded (hydra.sweep.subdir).
    folders = {r: sweepdir.run_folder(sweep_dir, r, grid) for r in grid["runs"]}
    recorded = {f.name for f in folders.values() if f.parent == sweep_dir}
    order = list(grid["runs"]) + [r for r in _run_dirs(sweep_dir) if r not in grid["runs"] and r not in recorded]
    folders.update({r: sweep_dir / r for r in order if r not in folders})
    jobs = sweepdir.latest_jobs(sweep_dir)
    beats = {r: RunDir(folders[r]).read_heartbeat() for r in order}
    # The job a run's heartbeat names counts when jobs.jsonl has none (a job submitted by hand).
    job_ids = {r: (jobs.get(r) or {}).get("job_id") or beats[r].get("slurm_job") for r in order}
    wanted = [j for j in job_ids.values() if j]
    states = slurm.job_states(wanted) if wanted and slurm.available() else {}
    out = []
    for run_id in order:
        point = grid["runs"].get(run_id) or {}
        try:
            out.append(_run_state(sweep_dir, folders[run_id], run_id, point, beats[run_id], job_ids[run_id], states,
                                  stale_after, now))
        except (OSError, ValueError, RunDirError) as e:  # one bad run does not hide the others
            out.append(RunState(run_id, "unreadable", job_id=job_ids[run_id], launch=point.get("launch"),
                                id=point.get("id") or {},
                                detail=f"unreadable: {_unreadable(RunDir(folders[run_id]), e)}"))
    return out


def _run_state(sweep_dir: Path, run_dir: Path, run_id: str, point: Mapping[str, Any], beat: Mapping[str, Any],
               job_id: Optional[str], states: Mapping[str, str], stale_after: float, now: float) -> RunState:
    """The state of one run in ``run_dir`` (see collect)."""
    rd = RunDir(run_dir)
    status = rd.read_status()
    js = states.get(job_id) if job_id else None
    steps = (status.get("axes") or {}).get("steps")
    rs = RunState(run_id, "not started", status.get("step"), steps, job_id, js, launch=point.get("launch"),
                  id=point.get("id") or rd.read_run_id_record() or {})
    s = status.get("status")
    lost = not status and rd.status_file.exists()  # an empty run.json (a power cut)
    done = rd.is_done()
    if lost and not done:
        if not rd.checkpoints():
            raise RunDirError(f"{rd.status_file}: empty")
        # reported from its checkpoints: running while its heartbeat says so, else resumable
        rs.step = rd.checkpoint_step()
        s = STATUS_RUNNING if beat else STATUS_INTERRUPTED
    if done:
        summary = rd.read_done()
        rs.state, rs.step = STATUS_DONE, summary.get("final_step", rs.step)
        loss = summary.get("final_eval_loss")
        rs.detail = f"eval loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
    elif s == STATUS_DIVERGED:
        rs.state, rs.detail = STATUS_DIVERGED, _last_error_line(status.get("error") or "")
    elif (holder := rd.claim_holder()) is not None:  # a live process holds the run: never stale
        rs.state, rs.detail = STATUS_RUNNING, f"claimed by {describe_claim(holder)}, {_heartbeat_note(beat, now)}"
    elif js in slurm.LIVE_STATES:
        if js == "RUNNING" and s != STATUS_REQUEUED:
            rs.state = STATUS_RUNNING
            rs.detail = f"updated {_age(status.get('updated'))}" if status else "starting"
        elif s == STATUS_REQUEUED or js.startswith("REQUEUE"):
            rs.state, rs.detail = STATUS_REQUEUED, f"resumes from step {rs.step} (job {js.lower()})"
        else:
            rs.state = "pending"
            rs.detail = f"queued; resumes from step {rs.step}" if rs.step else "queued"
    elif s == STATUS_FAILED:
        rs.state, rs.detail = STATUS_FAILED, _last_error_line(status.get("error") or "")
    elif js is not None and s in (STATUS_RUNNING, STATUS_REQUEUED, STATUS_INTERRUPTED, None):
        # The job ended and the run neither finished nor recorded an error: killed by SLURM
        # (time limit with no requeue left, out of memory, cancelled, node failure).
        tail = _job_log_tail(sweep_dir, job_id)
        rs.state, rs.detail = STATUS_FAILED, f"SLURM job {job_id} ended {js}" + (f": {tail}" if tail else "")
    elif s in (STATUS_RUNNING, STATUS_REQUEUED) and (why := why_stale(beat, job_id, js, stale_after, now)):
        rs.state, rs.detail = "stale", f"{why}; relaunch resumes from its newest checkpoint"
    elif s == STATUS_INTERRUPTED:
        rs.state, rs.detail = STATUS_INTERRUPTED, f"checkpoint at step {rs.step}; relaunch resumes it"
    elif s == STATUS_REQUEUED:
        rs.state, rs.detail = STATUS_REQUEUED, f"resumes from step {rs.step}"
    elif s == STATUS_RUNNING:
        rs.state = STATUS_RUNNING
        rs.detail = f"updated {_age(status.get('updated'))}, {_heartbeat_note(beat, now)}" + (
            f" (SLURM job {job_id}: state unknown)" if job_id and js is None else "")
    if lost:
        rs.detail = f"{rd.status_file.name} is empty; {rs.detail}"
    return rs


def format_table(rows: Sequence[RunState]) -> str:
    if not rows:
        return "no runs"
    width = max(len(r.run_id) for r in rows)
    lines = [f"{'STATE':<12} {'STEP':>11}  {'RUN':<{width}}  {'JOB':<10} DETAIL"]
    for r in rows:
        step = f"{r.step if r.step is not None else '-'}/{r.steps if r.steps is not None else '?'}"
        lines.append(f"{r.state:<12} {step:>11}  {r.run_id:<{width}}  {r.job_id or '-':<10} {r.detail}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def _id_prefix(run_id: str) -> str:
    """What the fixed part of a run id says (``<model>_<optimizer>_<width>..._s<seed>``), in words."""
    parts = run_id.split("_")
    seed = next((p[1:] for p in reversed(parts) if p[:1] == "s" and p[1:].isdigit()), "?")
    if len(parts) < 4:
        return f"seed {seed}"
    width = parts[2]
    width = f"D={width[1:]}" if width.startswith("D") else f"ffn_mult={width[1:]}"
    return f"model {parts[0]}, optimizer {parts[1]}, {width}, seed {seed};"


def format_ids(rows: Sequence[RunState]) -> str:
    """One line per run: its id, then every identifying override behind it (tags and hash)."""
    if not rows:
        return "no runs"
    width = max(len(r.run_id) for r in rows)
    lines = [f"{'RUN':<{width}}  {'HASH':<6}  WHAT THE ID STANDS FOR: ITS PREFIX; THE TAGGED AND HASHED OVERRIDES"]
    for r in rows:
        if not r.id:
            lines.append(f"{r.run_id:<{width}}  {'?':<6}  (not recorded: run claimed before ids were recorded)")
            continue
        shown = {**(r.id.get("tags") or {}), **(r.id.get("hashed") or {})}
        text = " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(no other override)"
        lines.append(f"{r.run_id:<{width}}  {r.id.get('hash') or '-':<6}  {_id_prefix(r.run_id)} {text}")
    return "\n".join(lines)


def resubmit(sweep_dir: Path, rows: Sequence[RunState], extra: Sequence[str], dry_run: bool = False,
             stale_running: bool = False) -> int:
    """Relaunch the runs that are not done (and not running or queued); returns an exit code."""
    wanted = set(RESUBMITTABLE) | ({STATUS_RUNNING, STATUS_REQUEUED} if stale_running else set())
    targets = [r for r in rows if r.state in wanted and not (r.job_state in slurm.LIVE_STATES)]
    if not targets:
        print("nothing to resubmit")
        return 0
    grid = sweepdir.read_grid(sweep_dir)
    by_launch: dict[int, list[str]] = {}
    orphans = []
    for r in targets:
        if r.launch is None or r.launch >= len(grid["launches"]):
            orphans.append(r.run_id)
        else:
            by_launch.setdefault(r.launch, []).append(r.run_id)
    if orphans:
        print(f"cannot resubmit {len(orphans)} runs with no recorded launch ({sweepdir.grid_file(sweep_dir)}): "
              + ", ".join(orphans), file=sys.stderr)
    code = 0
    for index, run_ids in by_launch.items():
        launch = grid["launches"][index]
        args = sweepdir.relaunch_command(launch, sweep_dir, run_ids, extra)
        cmd = [sys.executable, "-m", "specsweep.sweep.train", *args]
        cwd = launch.get("cwd") if launch.get("cwd") and Path(launch["cwd"]).is_dir() else None
        print(f"resubmitting {len(run_ids)} runs: {' '.join(cmd[1:])}" + (f"  (in {cwd})" if cwd else ""), flush=True)
        if dry_run:
            continue
        env = {**os.environ, **launch.get("env", {})}
        code = max(code, subprocess.run(cmd, cwd=cwd, env=env).returncode)
    return 1 if orphans and not code else code
