"""The cluster: SLURM queries and the state of a sweep's runs (``specsweep-status``).

- slurm:  sinfo/sacct/squeue queries (what a launch may ask for, the state of jobs)
- states: every run of a sweep from its run directories, its sweep record and SLURM; resubmission

May import: the floor-0 modules of ``sweep`` and ``sweep.rundir.sweepdir``. Imported by
``sweep/status.py`` and hydra_plugins/specsweep_launcher.
"""
