"""Spectral telemetry of FFN activations: plain PyTorch/NumPy, no configs, files or logging.

- spectral:   metrics of one spectrum (entropy, soft/hard/Rényi ranks, EEE, JS)
- covariance: streaming, exactly mergeable centred covariance (micro-batches, DDP ranks)
- buckets:    HEAD/MID/TAIL token-frequency regimes by occurrence-mass tertiles
- probes:     hooks on any nn.Module by module-name pattern (pre/post sites, buckets)
- records:    telemetry records (docs/contracts.md keys), one-shot and from snapshots
- background: finalize snapshots in a worker thread/process
"""

from metrics.background import BackgroundFinalizer
from metrics.buckets import (
    BUCKETS,
    assign_buckets,
    bucket_summary,
    frequency_buckets,
    occurrence_tertiles,
    token_counts,
)
from metrics.covariance import CovarianceAccumulator
from metrics.probes import DEFAULT_POST_PATTERNS, DEFAULT_PRE_PATTERNS, FFNProbe, attach_probes
from metrics.records import finalize_snapshot, metric_keys, record_order_key, sampling_label, spectral_records
from metrics.snapshot import TelemetryOptions, TelemetrySnapshot
from metrics.spectral import (
    DEFAULT_RENYI_ALPHAS,
    eee,
    hard_rank_of_matrix,
    js_divergence,
    participation_ratio,
    renyi_key,
    renyi_rank,
    soft_rank,
    spectral_entropy,
    spectrum_metrics,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_POST_PATTERNS",
    "DEFAULT_PRE_PATTERNS",
    "DEFAULT_RENYI_ALPHAS",
    "BackgroundFinalizer",
    "CovarianceAccumulator",
    "FFNProbe",
    "TelemetryOptions",
    "TelemetrySnapshot",
    "assign_buckets",
    "attach_probes",
    "bucket_summary",
    "eee",
    "finalize_snapshot",
    "frequency_buckets",
    "hard_rank_of_matrix",
    "js_divergence",
    "metric_keys",
    "occurrence_tertiles",
    "participation_ratio",
    "record_order_key",
    "renyi_key",
    "renyi_rank",
    "sampling_label",
    "soft_rank",
    "spectral_entropy",
    "spectral_records",
    "spectrum_metrics",
    "token_counts",
]
