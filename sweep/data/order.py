"""Where a run's batches lie in its token shards: pure arithmetic on shard lengths (no torch).

A window is ``seq_len + 1`` consecutive tokens of one shard (x = the first seq_len, y = the same
shifted by one); windows never cross a shard boundary. A global micro-batch is ``rows`` windows
(all ranks together: ``world_size * batch_size``); rank r takes rows ``[r*batch_size, (r+1)*batch_size)``.

Training order (``data.order``):

- ``random`` (default): global micro-batch k draws ``rows`` distinct windows out of every shard's
  aligned windows (starts ``i * seq_len``, keeping ``seq_len`` tokens spare) from the random stream
  (seed, k), all moved by one random shift below ``seq_len`` (sweep.data.loader).
- ``sequential``, the paper's stream (paper-notes §4 "Data order"): the training shards in name
  order, read from the first. Global micro-batch g is ONE contiguous run of ``rows * seq_len + 1``
  tokens cut into ``rows`` sequences (row i starts ``i * seq_len`` into it). The next one starts
  ``rows * seq_len`` further; when it would pass the end of the shard, the rest of that shard is
  skipped and the next shard starts; after the last shard the stream wraps to the first. A shard of
  L tokens thus holds ``(L - 1) // (rows * seq_len)`` global micro-batches (SequentialStream).

Both are stateless: batch g is a pure function of g (and the seed, for random), so a resumed run
draws exactly the batches an uninterrupted one would, and the global batch does not depend on the
number of ranks it is split over.

The paper's loader (modded-nanogpt's DistributedDataLoader) keeps a position per rank
(``r * batch_size * seq_len`` into the global run) and advances to the next shard when
``position + rows * seq_len + 1`` passes the shard's end. Rank 0 then advances after exactly
``(L - 1) // (rows * seq_len)`` global micro-batches, as here, but rank r > 0 advances one earlier
whenever ``(L - 1) % (rows * seq_len) < r * batch_size * seq_len``, and from then on the ranks read
different shards. Here the whole global micro-batch is checked, so the ranks never desynchronise;
with one rank the two streams are identical (except that a shard too short for even one global
micro-batch is skipped here, where the paper's loader would fail on it).
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
    """Global micro-batches of ``stride = rows * seq_len`` tokens (+1) the sequential stream reads from one shard."""
    return max(0, (n_tokens - 1) // stride)


class SequentialStream:
    """The sequential order over shards of the given lengths: where global micro-batch g starts."""

    def __init__(self, shard_tokens: Sequence[int], rows: int, seq_len: int) -> None:
        self.stride = rows * seq_len
        self.per_shard = np.array([sequential_batches(int(n), self.stride) for n in shard_tokens], dtype=np.int64)
        self._ends = np.cumsum(self.per_shard)
        self.n_batches = int(self._ends[-1]) if self.per_shard.size else 0  # in one pass over the shards

    def position(self, g: int) -> tuple[int, int]:
        """(shard index, first token) of global micro-batch ``g`` >= 0."""
        if g < 0:
            raise ValueError(f"micro-batch index must be >= 0, got {g}")
        c = int(g) % self.n_batches  # wrap after the last shard
        s = int(np.searchsorted(self._ends, c, side="right"))
        return s, int(c - (self._ends[s] - self.per_shard[s])) * self.stride


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
