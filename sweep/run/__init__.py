"""One run: the training loop, its telemetry, checkpoints, stop signals, ranks and W&B logger."""
