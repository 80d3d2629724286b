"""specsweep's application layer: configs, grids, runs, run directories, SLURM, W&B and the analysis.

The commands users type live here (``specsweep-train | prepare | plan | fit | status``); the
work is grouped by lifecycle into ``grid/`` (before a run), ``run/`` (one run), ``cluster/`` (SLURM and
the state of a sweep) and ``analysis/`` (after the runs), above ``data/`` and the floor-0 modules
(``rundir/``, ``errors``, ``credentials``, ``liveness``, ``wandb_keys``). docs/architecture.md says
what each package owns and what may import it; tests/test_architecture.py checks it.
"""
