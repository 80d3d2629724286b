"""One run: from a RunSpec to a finished run directory.

- trainer:      train_run: check the identity, skip a finished run, claim the directory, train
- state:        TrainingState: device, data, model (DDP), optimizer, position; resume and checkpoint
- loop:         TrainingLoop: the steps, evaluation, and the endings (done, diverged, stopped, failed)
- checkpoint:   the RNG states a checkpoint holds (files: sweep/rundir/checkpoints.py)
- telemetry:    when and on which tokens the spectra are measured, where the records go
- wandb_logger: W&B as a view of the local files
- signals, distributed, hold, logfile: stop signals, several ranks, test holds, the job's log file

Takes a RunSpec, never the Hydra config (sweep/train.py reads Hydra). May import: models, optim,
metrics, ``sweep/grid/``, ``sweep/data/`` and the floor-0 modules. Imported by ``sweep/train.py``.
"""
