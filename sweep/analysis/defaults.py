"""The analysis's defaults that ``specsweep-fit --help`` shows: the Δβ a sweep is asked to resolve and
the files of the W&B workspace view. Plain constants, so the command line loads nothing heavy."""

DEFAULT_RESOLVE = 0.1  # |Δβ| between two optimizers that the power block asks about (docs/power.md)
SPEC_FILE = "wandb_workspace.json"  # the workspace view's spec, in the analysis folder
SNIPPET_FILE = "wandb_workspace.py"  # the same view as a standalone script
