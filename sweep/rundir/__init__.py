"""The run directory: the one owner of its format (docs/contracts.md).

Only this package spells the file names (run.json, DONE, metrics.jsonl, spectra.jsonl,
identity.json, heartbeat.json, checkpoints/) and the run statuses, and knows how each file is
written and read. Everything else goes through these names.

- layout:      RunDir (paths, run.json, DONE, identity record), the statuses, RunConfigChanged
- files:       atomic writes, JSON-safe values, config_hash, now_iso, os_error_in (the OSError of a failed write)
- jsonl:       metrics.jsonl / spectra.jsonl: append, read (torn last line skipped), truncate
- heartbeat:   heartbeat.json of a live run (a daemon thread)
- claim:       claim.lock, the exclusive claim of a run by one process (fcntl.lockf)
- checkpoints: write, prune, read (weights_only) checkpoints; torch imported only there, when called
- reading:     finding and reading run directories for the analysis and sweep.status
- sweepdir:    the sweep record (SWEEP_DIR/.specsweep/: launches, grid points, SLURM job ids)

May import: the standard library, OmegaConf, ``sweep.errors``, ``sweep.credentials``, ``sweep.liveness``
(and torch inside the checkpoint functions). Imported by every other part of ``sweep``.
"""

from specsweep.sweep.rundir.checkpoints import load_checkpoint, load_latest_checkpoint, prune_checkpoints, write_checkpoint
from specsweep.sweep.rundir.files import atomic_write_text, config_hash, json_safe, now_iso
from specsweep.sweep.rundir.claim import RunClaimed
from specsweep.sweep.rundir.heartbeat import HEARTBEAT_EVERY_S, Heartbeat
from specsweep.sweep.rundir.jsonl import JsonlAppender, JsonlError, iter_jsonl, read_jsonl_rows
from specsweep.sweep.rundir.layout import (STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_REQUEUED,
                                 STATUS_RUNNING, RunConfigChanged, RunDir, RunDirError)
from specsweep.sweep.rundir.reading import (ENDED_STATUSES, EXCLUDED_STATUSES, RUN_MARKER, find_run_dirs, load_done,
                                  load_status, run_has_ended, write_run_files)

__all__ = [
    "ENDED_STATUSES", "EXCLUDED_STATUSES", "HEARTBEAT_EVERY_S", "RUN_MARKER",
    "STATUS_DIVERGED", "STATUS_DONE", "STATUS_FAILED", "STATUS_INTERRUPTED", "STATUS_REQUEUED", "STATUS_RUNNING",
    "Heartbeat", "JsonlAppender", "JsonlError", "RunClaimed", "RunConfigChanged", "RunDir", "RunDirError",
    "atomic_write_text", "config_hash", "find_run_dirs", "iter_jsonl", "json_safe", "load_checkpoint",
    "load_done", "load_latest_checkpoint", "load_status", "now_iso", "prune_checkpoints", "read_jsonl_rows",
    "run_has_ended", "write_checkpoint", "write_run_files",
]
