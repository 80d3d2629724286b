"""Rank-sharded pooling: every (layer, site, bucket) covariance is reduced to one owner rank.

Instead of all-reducing every D×D scatter to every rank, each matrix goes to one owner, which
snapshots and decomposes it; only the per-record scalars travel on (metrics.pipeline gathers them
to rank 0). The pooling is exact (Chan's between-means correction):

    n = Σ_r n_r,   mean = Σ_r n_r·mean_r / n                    (all-reduced: O(D) per matrix)
    M2 = Σ_r [M2_r + n_r (mean_r − mean)(mean_r − mean)ᵀ]       (reduced to the owner: D² per matrix)

With HEAD/MID/TAIL buckets the global matrix is the merge of all rows of all buckets of all ranks.
Each rank folds its buckets straight into its global contribution,

    Σ_b [M2_b + n_b (mean_b − mean)(mean_b − mean)ᵀ]    with mean the pooled global mean,

so no per-rank global accumulator is ever built. bucket_scope="rank0" (the paper's
`rank0_local`): bucket matrices from rank 0's rows only, sent to their owner point-to-point;
the global matrix still pools every rank's rows of every bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from specsweep.metrics.buckets import BUCKETS, GLOBAL, SITES
from specsweep.metrics.collector import SpectrumCollector
from specsweep.metrics.covariance import CovarianceAccumulator

MatrixKey = tuple[int, str, str]  # (layer, site, bucket)
BUCKET_SCOPES: tuple[str, ...] = ("all", "rank0")
_GROUP_ORDER = (GLOBAL, *BUCKETS)


def decomposition_cost(dim: int | None) -> float:
    """Relative cost of one eigendecomposition of a D×D matrix (∝ D³; unknown D counts as 1)."""
    return float(dim) ** 3 if dim else 1.0


def matrix_owners(
    keys: Iterable[MatrixKey], dims: Mapping[tuple[int, str], int | None], world_size: int
) -> dict[MatrixKey, int]:
    """Owner rank of every (layer, site, bucket) matrix, balanced by decomposition cost.

    Both sites of a (layer, bucket) share an owner: JS(pre ‖ post) needs both spectra, so the owner
    finishes complete records and only scalars leave it. These units are dealt largest cost first
    to the least-loaded rank (ties: the lowest rank), in the stable order (layer, bucket
    global/head/mid/tail): with one D everywhere that is round-robin. Pure: every rank computes the
    same map from the same keys and dims.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}")
    units: dict[tuple[int, str], float] = {}
    for layer, site, bucket in keys:
        if site not in SITES or bucket not in _GROUP_ORDER:
            raise ValueError(f"bad matrix key {(layer, site, bucket)}")
        units[(layer, bucket)] = units.get((layer, bucket), 0.0) + decomposition_cost(dims.get((layer, site)))
    order = sorted(units, key=lambda u: (-units[u], u[0], _GROUP_ORDER.index(u[1])))
    load = [0.0] * world_size
    unit_owner: dict[tuple[int, str], int] = {}
    for unit in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        unit_owner[unit] = rank
        load[rank] += units[unit]
    return {(layer, site, bucket): unit_owner[(layer, bucket)] for layer, site, bucket in keys}


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where a tensor sent through a collective of `group` must live: the current CUDA device
    under NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def reduce_to_owners(
    collector: SpectrumCollector,
    owners: Mapping[MatrixKey, int],
    *,
    bucket_scope: str = "all",
    group: dist.ProcessGroup | None = None,
) -> dict[MatrixKey, CovarianceAccumulator]:
    """Pool the collector's accumulators over the ranks of `group` onto their owner ranks.

    Collective: every rank calls it with the same owners (ranks of `group`). Returns the pooled
    accumulators this rank owns, keyed (layer, site, bucket) with GLOBAL included, in
    `collector.matrix_keys` order; the collector is reset (owned tensors are reused in place,
    the rest freed). The Gram-path rows are dropped, as by `CovarianceAccumulator.all_reduce_`.
    Communication: one all-reduce of every count and n-weighted mean (O(ΣD)), then one reduce
    per matrix with rows (scope "rank0": one send per bucket matrix from rank 0 to its owner).
    """
    if bucket_scope not in BUCKET_SCOPES:
        raise ValueError(f"bucket_scope must be one of {BUCKET_SCOPES}, got {bucket_scope!r}")
    rank = dist.get_rank(group)
    keys = collector.matrix_keys
    dims = collector.dims()
    missing = [k for k in dims if dims[k] is None]
    if missing:
        raise ValueError(f"reduce_to_owners needs every site's D on every rank; unknown for {missing}")
    first = next(iter(collector.acc.values()))
    device = first.device if first.device is not None else torch.device("cpu")
    rank0_buckets = bucket_scope == "rank0" and collector.buckets

    # -- local statistics per matrix: (n, Σx = n·mean), the per-rank global from its buckets
    def local(key: MatrixKey) -> list[CovarianceAccumulator]:
        layer, site, bucket = key
        if collector.buckets and bucket == GLOBAL:
            return [collector.acc[(layer, site, b)] for b in collector.groups]  # HEAD/MID/TAIL (and REST)
        if rank0_buckets and rank != 0:
            return []  # these rows stay out of the bucket matrices (they are in the global one)
        return [collector.acc[key]]

    stats = []
    for key in keys:
        d = dims[key[:2]]
        n = torch.zeros(1, dtype=torch.float64, device=device)
        total = torch.zeros(d, dtype=torch.float64, device=device)  # [D]
        for acc in local(key):
            if acc.n:
                n += acc.n
                total += acc.mean.to(device) * acc.n
        stats += [n, total]
    flat = torch.cat(stats)  # [Σ (1 + D)]
    dist.all_reduce(flat, group=group)
    starts, offset = [], 0
    for key in keys:
        starts.append(offset)
        offset += 1 + dims[key[:2]]
    counts = flat[torch.tensor(starts, device=device)].tolist()  # one host sync for all counts
    pooled: dict[MatrixKey, tuple[int, torch.Tensor]] = {}
    for key, start, count in zip(keys, starts, counts):
        n = int(round(count))
        pooled[key] = (n, flat[start + 1: start + 1 + dims[key[:2]]] / max(n, 1))  # pooled mean [D]

    # -- the D×D part, one matrix at a time (at most one extra D² buffer alive per rank)
    out: dict[MatrixKey, CovarianceAccumulator] = {}
    for key in keys:
        n_total, mean = pooled[key]
        owner = owners[key]
        if n_total == 0:
            if owner == rank:  # an empty pooled accumulator that still knows its D
                out[key] = _pooled_like(first, dims[key[:2]], 0, None, None, device)
            continue
        d = dims[key[:2]]
        dtype = first.dtype
        if rank0_buckets and key[2] != GLOBAL:
            # rank 0's matrix as it is: no other rank contributes, nothing to correct
            if rank == 0:
                acc = collector.acc[key]
                buf = acc.m2 if acc.m2 is not None else torch.zeros(d, d, dtype=dtype, device=device)
                if owner != 0:
                    dist.send(buf, dst=_global_rank(group, owner), group=group)
            elif rank == owner:
                buf = torch.empty(d, d, dtype=dtype, device=device)
                dist.recv(buf, src=_global_rank(group, 0), group=group)
        else:
            buf = torch.zeros(d, d, dtype=dtype, device=device) if collector.buckets and key[2] == GLOBAL else None
            for acc in local(key):
                if acc.n == 0:
                    continue
                delta = (acc.mean.to(device) - mean).to(dtype)  # [D]
                if buf is None:
                    buf = acc.m2  # reused in place: the collector is reset below
                else:
                    buf.add_(acc.m2)
                buf.addr_(delta, delta, alpha=float(acc.n))
            if buf is None:
                buf = torch.zeros(d, d, dtype=dtype, device=device)
            dist.reduce(buf, dst=_global_rank(group, owner), group=group)
        if owner == rank:
            out[key] = _pooled_like(first, d, n_total, mean.clone(), buf, device)
        buf = None  # non-owners drop their contribution now
    collector.reset()
    return out


def _pooled_like(
    template: CovarianceAccumulator, dim: int, n: int, mean: torch.Tensor | None, m2: torch.Tensor | None,
    device: torch.device,
) -> CovarianceAccumulator:
    """An accumulator with the template's settings holding already-pooled statistics."""
    acc = CovarianceAccumulator(dim, device=device, dtype=template.dtype, keep_rows=False)
    if n:
        acc.n, acc.mean, acc.m2 = n, mean, m2
    return acc
