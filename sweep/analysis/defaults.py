"""The analysis's defaults that ``specsweep-fit --help`` and ``specsweep-plan`` show: the Δβ a sweep is
asked to resolve, the name of the published fits, and the files of the W&B workspace view. Plain
constants, so the command line loads nothing heavy."""

PAPER = "paper"  # --compare paper, plan.pilot=paper: the β tables released with paper 1 (published/)
DEFAULT_RESOLVE = 0.1  # |Δβ| between two optimizers that the power block asks about (docs/power.md)
SPEC_FILE = "wandb_workspace.json"  # the workspace view's spec, in the analysis folder
SNIPPET_FILE = "wandb_workspace.py"  # the same view as a standalone script
