"""Where a run's batches lie in its token shards: pure arithmetic on shard lengths (no torch).

A window is ``seq_len + 1`` consecutive tokens of one shard (x = the first seq_len, y = the same
shifted by one); windows never cross a shard boundary. A global micro-batch is ``rows`` windows
(all ranks together: ``world_size * batch_size``); rank r takes rows ``[r*batch_size, (r+1)*batch_size)``.

Training order (``data.order``):

- ``random`` (default): global micro-batch k draws ``rows`` distinct windows out of every shard's
  aligned windows (starts ``i * seq_len``, keeping ``seq_len`` tokens spare) from the random stream
  (seed, k), all moved by one random shift below ``seq_len`` (sweep.data.loader).
- ``sequential``, the paper's stream (paper-notes §4 "Data order", §4b): the training shards in
  name order, read from the first, laid out as the paper's loader (modded-nanogpt's
  DistributedDataLoader) read them with ``ranks`` data-parallel ranks of ``rows`` sequences per
  micro-batch (``data.stream_ranks`` x ``data.stream_rows``; default one rank holding the whole
  block). Stream rank p starts at ``p * rows * seq_len`` in the first shard, takes ``rows * seq_len
  + 1`` contiguous tokens per micro-batch and moves on by ``stride = ranks * rows * seq_len``; each
  stream rank checks the shard end before its next micro-batch on its own (advance when ``pos +
  stride + 1`` passes the shard's end, the rest of the shard skipped, after the last shard the
  first again). Stream rank p thus reads ``max(1, (L - 1 - p * rows * seq_len) // stride)``
  micro-batches from a shard of L tokens: the same count for every rank except near a shard end,
  where a rank p > 0 may leave a shard one micro-batch before rank 0, exactly as the paper's ranks
  did (SequentialStream). A shard shorter than ``stride + 1`` tokens is skipped (the paper's loader
  would fail on it).

  One block (a step, or a global micro-batch without train.global_batch) of ``accum * ranks *
  rows`` sequences is numbered in the paper's order: stream rank p's sequences first (its ``accum``
  micro-batches in turn, ``rows`` sequences each), then rank p + 1's. The first ``accum * rows``
  sequences are therefore what the paper's rank 0 held (sweep.data.loader cuts the block into the
  run's own ranks and micro-batches in that order).

Both are stateless: block g is a pure function of g (and the seed, for random), so a resumed run
draws exactly the batches an uninterrupted one would, and a block does not depend on the number
of ranks or micro-batches it is split over (only on the stream's layout, a property of the data).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ORDERS = ("random", "sequential")


def windows(n_tokens: int, seq_len: int) -> int:
    """Random-order windows of one shard of ``n_tokens`` tokens (``seq_len`` spare for the shift)."""
    return max(0, (n_tokens - 1 - seq_len) // seq_len)


def sequential_windows(n_tokens: int, seq_len: int) -> int:
    """Consecutive windows (starts 0, seq_len, 2 seq_len, ...) of one shard of ``n_tokens`` tokens."""
    return max(0, (n_tokens - 1) // seq_len)


def sequential_batches(n_tokens: int, stride: int) -> int:
    """Micro-batches of stream rank 0 (``stride = ranks * rows * seq_len`` tokens, +1) in a shard of
    ``n_tokens`` tokens."""
    return max(0, (n_tokens - 1) // stride)


class SequentialStream:
    """The sequential order over shards of the given lengths, laid out as ``ranks`` stream ranks of
    ``rows`` sequences per micro-batch and ``accum`` micro-batches per block (module docstring).

    ``per_rank[p, i]``: micro-batches stream rank p reads from shard i; ``position(p, k)``: where
    its micro-batch k starts; ``block_rows(g, j)``: where sequence j of block g starts.
    """

    def __init__(self, shard_tokens: Sequence[int], rows: int, seq_len: int, ranks: int = 1, accum: int = 1) -> None:
        if min(rows, seq_len, ranks, accum) < 1:
            raise ValueError(f"rows, seq_len, ranks and accum must be >= 1, got {rows}, {seq_len}, {ranks}, {accum}")
        self.rows, self.seq_len, self.ranks, self.accum = rows, seq_len, ranks, accum
        self.stride = ranks * rows * seq_len
        lengths = np.array([int(n) for n in shard_tokens], dtype=np.int64)
        offsets = np.arange(ranks, dtype=np.int64)[:, None] * rows * seq_len  # [ranks, 1]
        usable = lengths > self.stride  # sequential_batches > 0: a shorter shard is skipped
        counts = np.maximum(1, (lengths[None, :] - 1 - offsets) // self.stride)  # [ranks, shards]
        self.per_rank = np.where(usable[None, :], counts, 0)
        self.per_shard = self.per_rank[0]  # stream rank 0's (that of a one-rank stream)
        self._ends = np.cumsum(self.per_rank, axis=1)  # [ranks, shards]
        self.n_batches = int(self.per_shard.sum())  # rank 0's, in one pass over the shards

    def position(self, rank: int | np.ndarray, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, first token) of stream rank ``rank``'s micro-batch ``k`` >= 0 (arrays broadcast)."""
        rank, k = np.broadcast_arrays(np.asarray(rank, dtype=np.int64), np.asarray(k, dtype=np.int64))
        if k.size and int(k.min()) < 0:
            raise ValueError(f"micro-batch index must be >= 0, got {int(k.min())}")
        ends = self._ends[rank]                      # [..., shards]
        c = k % ends[..., -1]                        # wrap after the last shard
        shard = (ends <= c[..., None]).sum(axis=-1)  # first shard whose end exceeds c
        first = np.take_along_axis(ends - self.per_rank[rank], shard[..., None], axis=-1)[..., 0]
        return shard, rank * self.rows * self.seq_len + (c - first) * self.stride

    def block_rows(self, g: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, first token) of sequences ``index`` (paper order) of block ``g`` >= 0."""
        index = np.asarray(index, dtype=np.int64)
        rank, rest = np.divmod(index, self.accum * self.rows)
        micro, row = np.divmod(rest, self.rows)
        shard, start = self.position(rank, int(g) * self.accum + micro)
        return shard, start + row * self.seq_len


def leading_rows(n: int, rank: int, micro: int, accum: int, rows: int) -> int:
    """How many of rank ``rank``'s ``rows`` sequences of micro-batch ``micro`` (of ``accum`` per step)
    are among the first ``n`` sequences of the step in the paper's order (rank-major: rank r holds
    sequences ``[r * accum * rows, (r + 1) * accum * rows)``, its micro-batch m the m-th ``rows`` of
    them); they are the leading rows of that micro-batch."""
    return max(0, min(rows, n - (rank * accum + micro) * rows))


def window_positions(shard_tokens: Sequence[int], seq_len: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard index, first token) of consecutive windows number ``index`` counted from the first shard's start."""
    per_shard = np.array([sequential_windows(int(n), seq_len) for n in shard_tokens], dtype=np.int64)
    ends = np.cumsum(per_shard)
    shard = np.searchsorted(ends, index, side="right")
    return shard, (index - (ends[shard] - per_shard[shard])) * seq_len


def eval_batch_rows(n_sequences: int, max_rows: int, world_size: int) -> int:
    """Rows of each global eval batch: the largest divisor of ``n_sequences`` that is at most
    ``max_rows`` and a multiple of ``world_size``, so every batch and every rank hold equally many
    rows (the mean of batch means is then the mean over all tokens). Needs world_size | n_sequences."""
    rows = max_rows - max_rows % world_size
    while rows > world_size and n_sequences % rows:
        rows -= world_size
    return rows
