"""The run directory: the one owner of its format (docs/contracts.md); its modules follow."""

from sweep.rundir.layout import (ENDED_STATUSES, EXCLUDED_STATUSES, HEARTBEAT_EVERY_S, RUN_MARKER,  # noqa: F401
                                 STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_REQUEUED,
                                 STATUS_RUNNING, TERMINAL_STATUSES, Heartbeat, JsonlAppender, JsonlError,
                                 RunConfigChanged, RunDir, RunDirError, atomic_write_bytes, atomic_write_text,
                                 config_hash, find_run_dirs, iter_jsonl, json_safe, load_done, load_status,
                                 now_iso, numbered_jsonl, read_jsonl_rows, run_has_ended, slurm_job_id,
                                 write_run_files)
