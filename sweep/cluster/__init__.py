"""The cluster: SLURM queries and the state of a sweep's runs (status, resubmission)."""
