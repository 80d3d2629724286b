"""Token-frequency regimes HEAD / MID / TAIL by occurrence-mass tertiles (paper-notes §3).

Not vocabulary tertiles: HEAD is the few most frequent tokens that together hold ~1/3 of all
occurrences, MID the next ~1/3 of occurrences, TAIL the rest (most of the vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BUCKETS: tuple[str, ...] = ("head", "mid", "tail")  # bucket id = index here
GLOBAL = "global"  # the "bucket" of all rows
SITES: tuple[str, ...] = ("pre", "post")  # FFN probe sites: up-projection output, down-projection input
HEAD, MID, TAIL = 0, 1, 2
REST = "rest"  # bucket id 3: rows pooled into the global covariance only (metrics.collector)


def occurrence_tertiles(
    counts: np.ndarray | Sequence[int], head_mass: float = 0.33, mid_mass: float = 0.67
) -> tuple[float, float]:
    """(head_min, mid_min) count thresholds, as the paper computes them.

    Sort counts descending, c = cumulative sum; h = #{c ≤ head_mass·total}, m = #{c ≤ mid_mass·total};
    head_min = sorted[h−1], mid_min = sorted[m−1]. When a single token already exceeds the head
    mass (h = 0) we take h = 1 (the paper's indexing would wrap around to the rarest token).
    """
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("counts is empty")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("counts must be finite and non-negative")
    ordered = np.sort(c)[::-1]
    cum = np.cumsum(ordered)
    total = cum[-1]
    if total <= 0:
        raise ValueError("counts sum to zero")
    h = max(int(np.count_nonzero(cum <= head_mass * total)), 1)
    m = max(int(np.count_nonzero(cum <= mid_mass * total)), h)
    return float(ordered[h - 1]), float(ordered[m - 1])


def assign_buckets(counts: np.ndarray | Sequence[int], head_min: float, mid_min: float) -> np.ndarray:
    """Bucket id per vocabulary id (int8: 0 HEAD if count ≥ head_min, 1 MID if ≥ mid_min, else 2 TAIL)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    out = np.full(c.shape, TAIL, dtype=np.int8)
    out[c >= mid_min] = MID
    out[c >= head_min] = HEAD
    return out


def frequency_buckets(
    counts: np.ndarray | Sequence[int], head_mass: float = 0.33, mid_mass: float = 0.67
) -> np.ndarray:
    """counts -> per-vocab-id bucket array in one call (occurrence_tertiles + assign_buckets)."""
    head_min, mid_min = occurrence_tertiles(counts, head_mass, mid_mass)
    return assign_buckets(counts, head_min, mid_min)


def bucket_summary(counts: np.ndarray | Sequence[int], bucket_of_token: np.ndarray) -> dict[str, dict]:
    """Per bucket: number of vocabulary entries, share of occurrences, smallest count in it."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    b = np.asarray(bucket_of_token).ravel()
    if b.shape != c.shape:
        raise ValueError(f"bucket_of_token has shape {b.shape}, counts {c.shape}")
    total = c.sum()
    out: dict[str, dict] = {}
    for i, name in enumerate(BUCKETS):
        members = c[b == i]
        out[name] = {
            "tokens": int(members.size),
            "share": float(members.sum() / total) if total > 0 else 0.0,
            "min_count": float(members.min()) if members.size else None,
        }
    return out


def token_counts(token_ids: Any, vocab_size: int) -> np.ndarray:
    """Unigram counts (int64, [vocab_size]) of a token-id array or tensor, e.g. a training corpus shard."""
    # A torch tensor is read through .detach().cpu() without importing torch (analysis runs without it).
    ids = np.asarray(token_ids.detach().cpu()) if hasattr(token_ids, "detach") else np.asarray(token_ids)
    ids = ids.ravel().astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    return np.bincount(ids, minlength=vocab_size).astype(np.int64)
