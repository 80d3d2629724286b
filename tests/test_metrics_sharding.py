"""Rank-sharded pooling: owners, and 2 gloo ranks giving the all-reduce path's (and 1 rank's) records."""

import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specsweep.metrics import EventPipeline, SpectrumCollector, TelemetryOptions, finalize_snapshot, matrix_owners
from metrics_reference import activations

D = 12
LAYERS = (0, 1)
SITES = ("pre", "post")
OPTIONS = TelemetryOptions(min_bucket_rows=5)


def test_matrix_owners_round_robin_pairs_sites_and_balances():
    keys = [(l, s, b) for l in LAYERS for s in SITES for b in ("global", "head", "mid", "tail")]
    dims = {(l, s): 64 for l in LAYERS for s in SITES}
    owners = matrix_owners(keys, dims, 4)
    # one D everywhere: round-robin over (layer, bucket) in order; both sites with one owner
    assert [owners[(l, "pre", b)] for l in LAYERS for b in ("global", "head", "mid", "tail")] == [0, 1, 2, 3] * 2
    assert all(owners[(l, "pre", b)] == owners[(l, "post", b)] for l, _, b in keys)
    assert matrix_owners(list(reversed(keys)), dims, 4) == owners  # a pure function of the set
    assert set(matrix_owners(keys, dims, 1).values()) == {0}
    # unequal widths, balanced by D³ (round-robin would give rank 0 the wide layer and half the
    # rest): one 256-wide layer costs as much as eight 128-wide ones
    dims = {(l, s): (256 if l == 0 else 128) for l in range(9) for s in SITES}
    keys = [(l, s, "global") for l in range(9) for s in SITES]
    owners = matrix_owners(keys, dims, 2)
    assert {owners[k] for k in keys if k[0] == 0} == {0} and {owners[k] for k in keys if k[0] > 0} == {1}


def _shard(rank: int):
    """One rank's rows: bucket labels [N] and activations per (layer, site) [N, D]; rank 1 has no
    HEAD rows and a shifted mean (only the between-means correction makes ranks agree)."""
    rng = np.random.default_rng(10 + rank)
    n = (300, 200)[rank]
    labels = rng.choice(3, size=n, p=[0.3, 0.3, 0.4]) if rank == 0 else rng.choice([1, 2], size=n)
    rows = {
        (l, s): activations("relu2" if s == "post" else "random", n, D, seed=100 * rank + 10 * l + (s == "post"))
        + 3.0 * rank
        for l in LAYERS for s in SITES
    }
    return labels, rows


def _collector(shards) -> SpectrumCollector:
    keys = [(l, s) for l in LAYERS for s in SITES]
    collector = SpectrumCollector(keys, dims={k: D for k in keys}, buckets=True, accum_dtype=torch.float64,
                                  keep_rows=False)
    for labels, rows in shards:  # each shard = one micro-batch, rows grouped by bucket
        order = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels, minlength=3).tolist()
        for (layer, site), x in rows.items():
            collector.add(layer, site, torch.from_numpy(x[order]), sizes)
    return collector


def _event(collector, spectrum=True, on_device=False, **kwargs):
    with EventPipeline(collector, OPTIONS, **kwargs) as pipe:
        done = pipe.end_event(7, spectrum=spectrum, on_device=on_device) + pipe.drain()
    assert [e.step for e in done] == [7]
    return done[0]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = [_shard(rank)]
        out = {}
        # the all-reduce path: every matrix to every rank, decomposed on rank 0
        legacy = _collector(mine)
        legacy.all_reduce_()
        out["allreduce"] = finalize_snapshot(legacy.snapshot(7, OPTIONS, device=None))
        # the sharded path: each owner decomposes its share (count the matrices it saw)
        seen = []

        def counting(snapshot):
            seen.extend((e.layer, e.site, e.bucket) for e in snapshot.entries)
            return finalize_snapshot(snapshot)

        event = _event(_collector(mine), decompose_on="cpu", pool="thread", workers=2, decompose=counting)
        out["sharded"], out["cost"], out["seen"] = event.records, event.cost, seen
        out["device"] = _event(_collector(mine), decompose_on="device").records
        # a pool pipeline that decomposes one event in place (needed at once): the same records
        out["in_place"] = _event(_collector(mine), decompose_on="cpu", pool="thread", on_device=True)
        out["hard"] = _event(_collector(mine), spectrum=False, decompose_on="cpu", pool="thread").records
        out["rank0"] = _event(_collector(mine), decompose_on="device", bucket_scope="rank0").records
        try:  # a rank that decides differently: an error on every rank, not a hang
            _event(_collector(mine), spectrum=rank == 0, decompose_on="device")
            out["mismatch"] = None
        except ValueError as exc:
            out["mismatch"] = str(exc)
        try:  # ... also on where the event is decomposed
            _event(_collector(mine), decompose_on="cpu", pool="thread", on_device=rank == 1)
            out["place_mismatch"] = None
        except ValueError as exc:
            out["place_mismatch"] = str(exc)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        # fork: spawn would re-import torch in each rank (~10 s here)
        mp.start_processes(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True, start_method="fork")
        yield [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


def _assert_close(got, want, rtol=1e-9):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float) and key in ("min_eig", "neg_mass"):
                assert abs(a[key] - value) < 1e-9, key  # round-off around zero: absolute
            elif isinstance(value, float) and not math.isnan(value):
                assert a[key] == pytest.approx(value, rel=rtol), (a["layer"], a["site"], a["bucket"], key)
            else:
                assert a[key] == value, (a["layer"], a["site"], a["bucket"], key)


def test_sharded_equals_all_reduce_on_two_gloo_ranks(two_ranks):
    rank0, rank1 = two_ranks
    want = rank0["allreduce"]
    assert len(want) == len(LAYERS) * len(SITES) * 4 and {r["status"] for r in want} == {"ok"}
    _assert_close(rank0["sharded"], want)
    _assert_close(rank0["device"], want)
    assert rank1["sharded"] == rank1["device"] == []  # records come back on rank 0 only
    # the work was split: both ranks decomposed a share, together every matrix once
    assert rank0["seen"] and rank1["seen"]
    assert sorted(rank0["seen"] + rank1["seen"]) == sorted((r["layer"], r["site"], r["bucket"]) for r in want)
    # costs agree over ranks (maximum): the same on both
    assert rank0["cost"] == rank1["cost"] and rank0["cost"].matrices == max(len(rank0["seen"]), len(rank1["seen"]))


def test_ranks_that_disagree_on_an_event_fail_clearly(two_ranks):
    assert all("ranks disagree" in (r["mismatch"] or "") for r in two_ranks)
    assert all("on_device False..True" in (r["place_mismatch"] or "") for r in two_ranks)


def test_an_event_decomposed_in_place_by_a_pool_pipeline_equals_the_pool(two_ranks):
    rank0, rank1 = two_ranks
    _assert_close(rank0["in_place"].records, rank0["sharded"])
    assert rank1["in_place"].records == []
    assert rank0["in_place"].cost.sync_decompose_s > 0 and rank0["in_place"].cost.decompose_s == 0


def test_two_ranks_equal_one_rank_with_all_rows(two_ranks):
    rank0 = two_ranks[0]
    one = _event(_collector([_shard(0), _shard(1)]), decompose_on="device").records
    _assert_close(rank0["sharded"], one)
    assert {r["n_rows"] for r in one if r["bucket"] == "global"} == {500}


def test_hard_rank_only_sharded_event(two_ranks):
    rank0 = two_ranks[0]
    for a, b in zip(rank0["sharded"], rank0["hard"]):
        assert b["spectrum"] is False and b["soft_rank"] is None and b["js"] is None
        assert b["hard_rank"] == pytest.approx(a["hard_rank"], rel=1e-12) and b["n_rows"] == a["n_rows"]


def test_bucket_scope_rank0_uses_only_rank0_rows(two_ranks):
    rank0 = two_ranks[0]
    got = {(r["layer"], r["site"], r["bucket"]): r for r in rank0["rank0"]}
    pooled = {(r["layer"], r["site"], r["bucket"]): r for r in rank0["sharded"]}
    alone = _event(_collector([_shard(0)]), decompose_on="device").records  # rank 0's rows, one process
    local = {(r["layer"], r["site"], r["bucket"]): r for r in alone}
    labels = _shard(0)[0]
    for key, rec in got.items():
        if key[2] == "global":  # the global matrix still pools both ranks
            _assert_close([rec], [pooled[key]])
        else:  # HEAD/MID/TAIL: exactly rank 0's rows
            _assert_close([rec], [local[key]])
            assert rec["n_rows"] == int((labels == ("head", "mid", "tail").index(key[2])).sum())
            if key[2] != "head":  # rank 1 has MID/TAIL rows: pooling them would change the matrix
                assert rec["n_rows"] < pooled[key]["n_rows"]
