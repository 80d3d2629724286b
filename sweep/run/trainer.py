"""One training run: check and claim its directory, train it, and record how it ended.

``train_run`` takes a validated RunSpec (sweep/grid/spec.py) and nothing else of the config: the
entry point (sweep/train.py) reads Hydra. The set-up of what trains lives in sweep/run/state.py,
the step loop and its endings in sweep/run/loop.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Mapping, Optional

from specsweep.sweep.grid.identity import check_identity, claim
from specsweep.sweep.grid.spec import RunSpec
from specsweep.sweep.run import distributed
from specsweep.sweep.run.distributed import DistEnv
from specsweep.sweep.run.loop import RunResult, TrainingLoop, record_stop
from specsweep.sweep.run.state import TrainingState
from specsweep.sweep.rundir import STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, RunClaimed, RunDir, config_hash

log = logging.getLogger("specsweep.train")


def objective(result: RunResult, name: str) -> float:
    """The number a Hydra sweeper that minimises a float (Optuna, Ax, Nevergrad) gets for a run.

    ``name`` is train.objective: ``eval_loss`` or ``train_loss``, the run's final value (of its DONE
    record when it had finished before); +inf for a diverged run (worse than any finished one), NaN
    for a run that stopped before its end or never evaluated (a sweeper fails such a trial).
    """
    if result.status == STATUS_DIVERGED:
        return math.inf
    value = result.final_eval_loss if name == "eval_loss" else result.final_train_loss
    if result.status != STATUS_DONE or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


STATUS_CLAIMED = "claimed"  # RunResult only: another live process trains the run (never written to run.json)


def _ended(spec: RunSpec, run_dir: RunDir) -> Optional[RunResult]:
    """The result of a run that has ended before (done or diverged: skipped), else None."""
    if run_dir.is_done():
        done = run_dir.read_done()
        log.info("run %s is already done (%s); skipped", spec.run_id, run_dir.path)
        return RunResult(spec.run_id, STATUS_DONE, done.get("final_step", spec.train.steps),
                         done.get("final_train_loss"), done.get("final_eval_loss"))
    status = run_dir.read_status()
    if status.get("status") == STATUS_DIVERGED:
        log.warning("run %s diverged at step %s earlier; skipped (delete %s to retry)",
                    spec.run_id, status.get("step"), run_dir.path)
        return RunResult(spec.run_id, STATUS_DIVERGED, int(status.get("step", 0)))
    return None


def train_run(spec: RunSpec, run_path: Path, job_record: Optional[Mapping[str, str]] = None) -> RunResult:
    """Train (or resume, or skip) the run ``spec`` in ``run_path``.

    Nothing is written before the directory's recorded identity matches (a refused launch leaves
    the directory as it was, and removes it if Hydra just made it empty); a finished or diverged run
    is skipped without writing. ``job_record``: Hydra's record of the job (file name -> text),
    written into the directory once the launch is accepted. Any failure after that is recorded in
    run.json (``failed`` with the error, or ``interrupted`` on Ctrl-C) before it propagates.
    One process trains a run: rank 0 locks its claim.lock before set-up (sweep/rundir/claim.py);
    a run that another live process holds is skipped with one line naming it (the result's status
    is ``claimed``; the run's files are left to their holder, only train.log gets that line).
    """
    run_dir = RunDir(run_path)
    try:
        check_identity(run_dir, spec.identity)
    except BaseException:
        run_dir.remove_if_empty()
        raise
    ended = _ended(spec, run_dir)
    if ended is not None:
        return ended

    claimed = False
    state: Optional[TrainingState] = None

    def peer_failed(env: DistEnv, reason: str) -> None:  # another rank crashed, died or hung
        if claimed:
            run_dir.update_status(status=STATUS_FAILED, error=reason, final=True)

    # Several tasks of one job (one per GPU) train the run together; rank 0 alone writes its files.
    with distributed.session(spec.train.device, on_peer_failure=peer_failed) as dist_env, \
            contextlib.ExitStack() as beating:
        # One process per run: rank 0 claims the directory (a lock held until this process ends);
        # a run another live process holds is skipped, by every rank of this job.
        taken: Optional[RunClaimed] = None
        if dist_env.is_main:
            try:
                beating.enter_context(run_dir.claim())
            except RunClaimed as e:
                taken = e
        busy = taken is not None
        if dist_env.enabled:
            busy = distributed.any_rank(busy, distributed.pick_device(spec.train.device, dist_env))
        if busy:
            log.warning("run %s", taken or "is claimed by another process (see rank 0); skipped")
            return RunResult(spec.run_id, STATUS_CLAIMED, run_dir.checkpoint_step())
        ended = _ended(spec, run_dir)  # the holder before us may have finished it meanwhile
        if ended is not None:
            return ended
        try:
            if dist_env.is_main:
                digest = claim(run_dir, spec.identity, spec.config_yaml(), spec.run_id_record)
                run_dir.write_job_record(job_record or {})
                claimed = True
                # heartbeat.json lets sweep.status tell this live run from a killed one
                # (its step reads as None until `state` below exists)
                beating.enter_context(run_dir.heartbeat(dist_env.world_size, step=lambda: state.step))
            else:
                digest = check_identity(run_dir, spec.identity)
            state = TrainingState(spec, run_dir, digest, dist_env)
        except BaseException as e:  # set-up failed (disk, data, model, device): `sweep.status` shows why
            if dist_env.is_main:
                record_stop(run_dir, e, run_id=spec.run_id, sweep=spec.sweep_name,
                            config_hash=config_hash(spec.identity))
            raise
        try:
            return TrainingLoop(state).run()
        finally:
            state.release()

