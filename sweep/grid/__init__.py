"""The grid: compose, validate, name and record every run before any of them trains.

- spec:      RunSpec, the typed and validated run (GPTConfig, DataSpec, optimizer, train, telemetry,
             logger, resolved config, identity, axes); build_run_spec
- identity:  what identifies a run, and the check of a relaunch against its run directory's record
- run_id:    short deterministic run ids (prefix, tags of the sweeper's keys, hash of the rest)
- sweep_name: the default name of a grid launched without sweep_name=
- resolvers: the ``${run_id:}`` resolver of conf/, and what it reads of the job
- preflight: the whole grid checked before a multirun launches anything, and its summary

May import: models, optim, the floor-0 modules of ``sweep`` (rundir, credentials, errors,
wandb_keys) and ``sweep.data`` (DataSpec and the data checks). Imported by ``sweep/run/``,
``sweep/cluster/``, the commands and hydra_plugins/.
"""
