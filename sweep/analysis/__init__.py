"""The analysis of finished sweeps: run directories -> points -> β -> tables, figures, report, W&B.

- read:      finished runs of a sweep (through sweep.rundir, the owner of the run-directory format)
- points:    one value per run × metric × bucket × site (the points table), grouping keys, labels
- result:    FitResult, everything one analysis computed and wrote
- fitting:   β tables, optimizer comparisons, matched loss, gain vs shift (no files, no figures)
- report:    the CSV tables, the printed β table and report.md
- figures:   the PNG/PDF figures (matplotlib, imported only when drawing)
- wandb_io:  push an analysis to W&B; rebuild run directories from W&B runs
- rules:     the command line's aggregation-rule parser

May import: the standard library, numpy/pandas/scipy/matplotlib/wandb, ``metrics`` (the
statistics live in ``metrics.fit``) and the floor-0 modules of ``sweep`` (rundir, wandb_keys,
secrets). Imported by the command ``python -m sweep.fit`` (sweep/fit.py) and by tests; never by
the training side of ``sweep``.
"""
