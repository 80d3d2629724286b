"""The analysis of sweeps: run directories -> points -> β -> tables, figures, report, W&B.

- pipeline:  one analysis start to end (run_fit): read, choose runs, fit, write, publish
- read:      the runs of a sweep (through sweep.rundir, the owner of the run-directory format)
- live:      which runs a fit uses while the sweep runs (latest common step), the run census
- points:    one value per run × metric × bucket × site (the points table), grouping keys, labels
- result:    FitResult, everything one analysis computed and wrote
- fitting:   β tables, optimizer comparisons, matched loss, gain vs shift (no files, no figures)
- report:    the CSV tables, the printed β table and report.md
- power:     what a sweep can resolve: Δβ of every optimizer pair, interval, MDD (power.csv,
             docs/power.md); power_plan: sweep.plan's prediction from a pilot or the published fits
- compare:   ``--compare paper|FILE.csv``: our β beside published β (published/: the tables
             released with paper 1, README there)
- figures:   the PNG/PDF figures (matplotlib, imported only when drawing); style: their colours,
             titles and offsets
- outdir:    the analysis folder, written to a staging folder and swapped in whole; status.json
- watch:     ``sweep.fit --watch``: refit until every run has ended
- wandb_io:  push an analysis to W&B; rebuild run directories from W&B runs
- workspace: the W&B comparison view as a spec (wandb-workspaces, online only)
- rules:     the command line's aggregation-rule parser

May import: the standard library, numpy/pandas/scipy/matplotlib/wandb, ``metrics`` (the
statistics live in ``metrics.fit``) and the floor-0 modules of ``sweep`` (rundir, wandb_keys,
secrets). Imported by the command ``specsweep-fit`` (sweep/fit.py) and by tests; never by
the training side of ``sweep``.
"""
