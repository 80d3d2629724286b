"""Spectral telemetry of FFN activations: plain PyTorch/NumPy, no configs, files or logging.

- spectral:   metrics of one spectrum (entropy, soft/hard/Rényi ranks, EEE, JS)
- covariance: streaming, exactly mergeable centred covariance (micro-batches, DDP ranks)
- buckets:    HEAD/MID/TAIL token-frequency regimes by occurrence-mass tertiles
- probes:     hooks on any nn.Module by module-name pattern (pre/post sites, buckets)
- records:    telemetry records (docs/contracts.md keys), one-shot and from snapshots
- background: finalize snapshots in a worker thread/process (unbounded; kept for one-off use)
- schedule:   which steps are events, which events carry full spectra (window, cadence)
- sharding:   owner rank of every matrix, exact reduce-to-owner under torch.distributed
- pipeline:   EventPipeline: pool, snapshot, hard ranks, bounded decomposition, cost per event
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
from metrics.collector import CaptureTimer, SpectrumCollector
from metrics.covariance import CovarianceAccumulator
from metrics.pipeline import DECOMPOSE_ON, EventCost, EventPipeline, FinishedEvent, split_snapshot
from metrics.probes import DEFAULT_POST_PATTERNS, DEFAULT_PRE_PATTERNS, FFNProbe, attach_probes
from metrics.records import (
    TRACE_METRICS,
    finalize_snapshot,
    metric_keys,
    record_order_key,
    sampling_label,
    spectral_records,
)
from metrics.schedule import (
    AGGREGATION_EVENTS,
    SpectrumCadence,
    aggregation_window,
    event_steps,
    is_event,
    keep_up_every,
    spectrum_steps,
)
from metrics.sharding import BUCKET_SCOPES, collective_device, matrix_owners, reduce_to_owners
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
    "AGGREGATION_EVENTS",
    "BUCKETS",
    "BUCKET_SCOPES",
    "DECOMPOSE_ON",
    "TRACE_METRICS",
    "CaptureTimer",
    "EventCost",
    "EventPipeline",
    "FinishedEvent",
    "SpectrumCadence",
    "SpectrumCollector",
    "aggregation_window",
    "event_steps",
    "is_event",
    "keep_up_every",
    "matrix_owners",
    "reduce_to_owners",
    "collective_device",
    "spectrum_steps",
    "split_snapshot",
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
