"""Spectral telemetry of FFN activations and the statistics of its fits: plain PyTorch/NumPy, no
configs, files or logging.

The statistics (fit, power, schedule) import NumPy/pandas/SciPy only, never torch, so the analysis
(`sweep.fit`, `sweep.status`, `sweep.plan`) starts without it; this package therefore imports its
modules lazily (`from specsweep.metrics import fit` loads the fit module alone).

- spectral:   metrics of one spectrum (entropy, soft/hard/Rényi ranks, EEE, JS)
- covariance: streaming, exactly mergeable centred covariance (micro-batches, DDP ranks)
- buckets:    HEAD/MID/TAIL token-frequency regimes by occurrence-mass tertiles
- probes:     hooks on any nn.Module by module-name pattern (pre/post sites, buckets)
- records:    telemetry records (docs/contracts.md keys), one-shot and from snapshots
- schedule:   which steps are events, which events carry full spectra (window, cadence), checkpoint steps
- sharding:   owner rank of every matrix, exact reduce-to-owner under torch.distributed
- pipeline:   EventPipeline: pool, snapshot, hard ranks, bounded decomposition, cost per event
"""

from importlib import import_module
from typing import Any

# name -> the module that holds it
_HOME = {
    "BUCKETS": "buckets", "assign_buckets": "buckets", "bucket_summary": "buckets",
    "frequency_buckets": "buckets", "occurrence_tertiles": "buckets", "token_counts": "buckets",
    "CaptureTimer": "collector", "SpectrumCollector": "collector",
    "CovarianceAccumulator": "covariance",
    "DECOMPOSE_ON": "pipeline", "EventCost": "pipeline", "EventPipeline": "pipeline",
    "FinishedEvent": "pipeline", "split_snapshot": "pipeline",
    "DEFAULT_POST_PATTERNS": "probes", "DEFAULT_PRE_PATTERNS": "probes", "FFNProbe": "probes",
    "attach_probes": "probes",
    "TRACE_METRICS": "records", "finalize_snapshot": "records", "metric_keys": "records",
    "record_order_key": "records", "sampling_label": "records", "spectral_records": "records",
    "AGGREGATION_EVENTS": "schedule", "SpectrumCadence": "schedule",
    "aggregation_window": "schedule", "event_steps": "schedule", "is_event": "schedule",
    "keep_up_every": "schedule", "spectrum_steps": "schedule",
    "BUCKET_SCOPES": "sharding", "collective_device": "sharding", "matrix_owners": "sharding",
    "reduce_to_owners": "sharding",
    "TelemetryOptions": "snapshot", "TelemetrySnapshot": "snapshot",
    "DEFAULT_RENYI_ALPHAS": "spectral", "eee": "spectral", "hard_rank_of_matrix": "spectral",
    "js_divergence": "spectral", "participation_ratio": "spectral", "renyi_key": "spectral",
    "renyi_rank": "spectral", "soft_rank": "spectral", "spectral_entropy": "spectral",
    "spectrum_metrics": "spectral",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'metrics' has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)
