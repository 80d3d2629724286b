"""The corpus token-frequency table of a prepared folder: HEAD/MID/TAIL thresholds and a summary.

``frequency.json`` sits next to ``counts.npy`` (unigram counts over the training shards) and records
what telemetry will bucket by (paper-notes §3: occurrence-mass tertiles, computed with
metrics.buckets): the two count thresholds and, per regime, how many vocabulary entries it holds
and its share of all occurrences.
"""

from __future__ import annotations

import numpy as np

from specsweep.metrics.buckets import BUCKETS, assign_buckets, bucket_summary, occurrence_tertiles  # NumPy only

FREQUENCY_FILE = "frequency.json"
HEAD_MASS, MID_MASS = 0.33, 0.67


def frequency_table(counts: np.ndarray) -> dict:
    """Thresholds and per-regime summary of unigram ``counts`` (int array indexed by token id)."""
    counts = np.asarray(counts, dtype=np.int64)
    head_min, mid_min = occurrence_tertiles(counts, HEAD_MASS, MID_MASS)
    bucket_of = assign_buckets(counts, head_min, mid_min)
    summary = bucket_summary(counts, bucket_of)
    buckets = {}
    for i, name in enumerate(BUCKETS):
        s = summary[name]
        buckets[name] = {"tokens": s["tokens"], "occurrences": int(counts[bucket_of == i].sum()),
                         "share": s["share"], "min_count": None if s["min_count"] is None else int(s["min_count"])}
    return {
        "total_tokens": int(counts.sum()), "vocab_size": int(counts.size),
        "zero_count_tokens": int((counts == 0).sum()),
        "head_mass": HEAD_MASS, "mid_mass": MID_MASS,
        "head_min": int(head_min), "mid_min": int(mid_min),  # HEAD: count >= head_min; MID: >= mid_min
        "buckets": buckets,
    }


def format_frequency(table: dict) -> str:
    """A small text table like the paper's (regime, tokens, share of occurrences, threshold)."""
    rows = [f"{'regime':<6} {'tokens':>8} {'share':>7}  threshold",]
    thresholds = {"head": f">= {table['head_min']:,}", "mid": f">= {table['mid_min']:,}",
                  "tail": f"< {table['mid_min']:,}"}
    for name, b in table["buckets"].items():
        rows.append(f"{name.upper():<6} {b['tokens']:>8,} {100 * b['share']:>6.1f}%  {thresholds[name]}")
    rows.append(f"{table['total_tokens']:,} training tokens, vocabulary {table['vocab_size']:,} "
                f"({table['zero_count_tokens']:,} ids never occur)")
    return "\n".join(rows)
