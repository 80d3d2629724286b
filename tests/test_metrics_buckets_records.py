"""Occurrence-mass tertiles by hand, bucketed records, and degenerate inputs flagged."""

import math

import numpy as np
import pytest
import torch

from specsweep.metrics import (
    assign_buckets,
    bucket_summary,
    frequency_buckets,
    occurrence_tertiles,
    spectral_records,
    token_counts,
)
from metrics_reference import activations, cov_two_pass, exact_metrics

# Worked by hand (paper-notes §3). counts by vocab id:
#   id:     0   1   2  3   4  5   6  7  8  9        total = 100
#   count: 30   2  25  1  12  0  10  8  7  5
# sorted descending: 30 25 12 10 8 7 5 2 1 0; cumulative: 30 55 67 77 85 92 97 99 100 100
# h = #{c ≤ 33} = 1 -> head_min = 30;  m = #{c ≤ 67} = 3 -> mid_min = 12
# HEAD = {0} (30%), MID = {2, 4} (37%), TAIL = the other 7 ids (33%)
COUNTS = np.array([30, 2, 25, 1, 12, 0, 10, 8, 7, 5])


def test_occurrence_tertiles_by_hand():
    assert occurrence_tertiles(COUNTS) == (30.0, 12.0)
    buckets = frequency_buckets(COUNTS)
    assert buckets.tolist() == [0, 2, 1, 2, 1, 2, 2, 2, 2, 2]
    assert (assign_buckets(COUNTS, 30, 12) == buckets).all()
    summary = bucket_summary(COUNTS, buckets)
    assert summary["head"] == {"tokens": 1, "share": pytest.approx(0.30), "min_count": 30.0}
    assert summary["mid"] == {"tokens": 2, "share": pytest.approx(0.37), "min_count": 12.0}
    assert summary["tail"] == {"tokens": 7, "share": pytest.approx(0.33), "min_count": 0.0}


def test_tertile_edge_cases():
    # one token holds more than a third of the mass: HEAD is that token (not a wrapped index)
    assert occurrence_tertiles([90, 5, 5]) == (90.0, 90.0)
    assert frequency_buckets([90, 5, 5]).tolist() == [0, 2, 2]
    # ties at the threshold all go to the higher bucket
    assert frequency_buckets([10, 10, 10, 10, 1]).tolist() == [0, 0, 0, 0, 2]
    assert token_counts(torch.tensor([[0, 2, 2], [3, 2, 0]]), 5).tolist() == [2, 0, 3, 1, 0]
    with pytest.raises(ValueError):
        token_counts(np.array([7]), 5)
    with pytest.raises(ValueError):
        occurrence_tertiles([0, 0])


def test_bucketed_records_equal_reference_per_bucket():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, size=(6, 200))  # [B, S]
    acts = activations("relu2", 1200, 32, seed=3).reshape(6, 200, 32)  # [B, S, D]
    table = frequency_buckets(COUNTS)
    records = spectral_records(torch.from_numpy(acts), torch.from_numpy(ids), table, min_bucket_rows=50)
    assert [r["bucket"] for r in records] == ["global", "head", "mid", "tail"]
    rows = acts.reshape(-1, 32)
    labels = table[ids.reshape(-1)]
    for rec in records:
        sel = rows if rec["bucket"] == "global" else rows[labels == ("head", "mid", "tail").index(rec["bucket"])]
        assert rec["n_rows"] == len(sel)
        ref, _ = exact_metrics(cov_two_pass(sel), (0.5, 2.0, 3.0, math.inf))
        for key, value in ref.items():
            assert rec[key] == pytest.approx(value, rel=1e-6), (rec["bucket"], key)


def _assert_flagged(rec, status):
    assert rec["status"] == status
    for key in ("soft_rank", "hard_rank", "entropy", "eee", "js", "renyi_0.5", "renyi_inf", "min_eig", "neg_mass"):
        assert rec[key] is None, key


def test_degenerate_inputs_give_flagged_records():
    _assert_flagged(spectral_records(torch.zeros(0, 8))[0], "empty")
    _assert_flagged(spectral_records(torch.randn(1, 8))[0], "too_few_rows")
    _assert_flagged(spectral_records(torch.zeros(50, 8))[0], "all_zero")
    _assert_flagged(spectral_records(torch.full((50, 8), 0.1), accum_dtype=torch.float32)[0], "all_zero")
    x = torch.randn(50, 8)
    x[3, 2] = float("nan")
    _assert_flagged(spectral_records(x)[0], "nonfinite")
    x[3, 2] = float("inf")
    _assert_flagged(spectral_records(x)[0], "nonfinite")
    # a NaN on one site must not leak a JS value into the other site's record
    recs = spectral_records({"pre": torch.randn(50, 8), "post": x})
    assert recs[0]["status"] == "ok" and recs[0]["js"] is None


def test_empty_and_small_buckets_are_flagged_not_dropped():
    ids = torch.full((2, 40), 3)  # every token is TAIL: HEAD and MID see no rows
    recs = spectral_records(torch.randn(2, 40, 8), ids, frequency_buckets(COUNTS), min_bucket_rows=100)
    by = {r["bucket"]: r for r in recs}
    assert by["global"]["status"] == "ok" and by["global"]["n_rows"] == 80
    _assert_flagged(by["head"], "empty")
    _assert_flagged(by["mid"], "empty")
    _assert_flagged(by["tail"], "too_few_rows")  # 80 < min_bucket_rows
    assert by["head"]["n_rows"] == 0 and by["head"]["dim"] == 8
    assert by["tail"]["sampling"] == "well" and by["tail"]["n_over_d"] == 10.0
