"""Stateless, deterministic batches of token windows from one or more shards.

Batch k is a pure function of (k, rank, world_size, and the seed for the random order): resuming at
batch k reproduces the run exactly, with no loader state to checkpoint. For global micro-batch k,
``world_size * batch_size`` rows are cut together and rank r takes its own slice, so ranks never
see the same rows and the global batch does not depend on the number of ranks. Where the rows lie
(random windows or the paper's sequential stream) is sweep.data.order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from specsweep.sweep.data.order import ORDERS, SequentialStream, eval_batch_rows, sequential_windows, window_positions, windows
from specsweep.sweep.data.shards import open_shard
from specsweep.sweep.errors import DataError

Source = Union[str, os.PathLike, np.ndarray]
Batch = tuple[torch.Tensor, torch.Tensor]
_TRAIN, _PROBE = 0, 1  # separate random streams for training batches and the probe batch


class TokenBatches:
    """(x, y) windows of ``seq_len`` tokens, y = x shifted by one, from a token stream.

    ``batch_size`` is this rank's rows; ``order`` is "random" or "sequential" (sweep.data.order);
    ``stream``: the sequential stream's layout (stream ranks, sequences per stream micro-batch),
    which must divide a global micro-batch; None: one stream rank holding the whole of it.
    """

    def __init__(self, source: Source | Sequence[Source], batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1, order: str = "random",
                 stream: Optional[tuple[int, int]] = None) -> None:
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if order not in ORDERS:
            raise DataError(f"data.order: {' | '.join(ORDERS)}, got {order!r}")
        sources = [source] if isinstance(source, (str, os.PathLike, np.ndarray)) else list(source)
        self.shards = [s if isinstance(s, np.ndarray) else open_shard(Path(s)) for s in sources]
        self.batch_size, self.seq_len, self.seed, self.order = batch_size, seq_len, seed, order
        self.rank, self.world_size = rank, world_size
        rows = world_size * batch_size
        per_shard = np.array([windows(s.size, seq_len) for s in self.shards], dtype=np.int64)
        self._window_ends = np.cumsum(per_shard)
        self.n_windows = int(self._window_ends[-1]) if per_shard.size else 0
        if order == "sequential":
            ranks, per_rank = stream if stream is not None else (1, rows)
            if ranks < 1 or per_rank < 1 or rows % (ranks * per_rank):
                raise DataError(f"data.stream_ranks x data.stream_rows = {ranks} x {per_rank} must divide the "
                                f"{rows} sequences of a step (or of a global micro-batch)")
            self.stream = SequentialStream([s.size for s in self.shards], per_rank, seq_len, ranks=ranks,
                                           accum=rows // (ranks * per_rank))
            if self.stream.n_batches == 0:
                longest = max((s.size for s in self.shards), default=0)
                raise DataError(f"data.order=sequential: no shard holds one global micro-batch of the stream: "
                                f"{ranks} x {per_rank} sequences of {seq_len} (data.stream_ranks x stream_rows) "
                                f"need a shard of {self.stream.stride + 1} tokens; the longest has {longest}")
        elif self.n_windows < rows:
            raise DataError(f"token stream too short: {self.n_tokens} tokens give {self.n_windows} windows of "
                            f"{seq_len + 1}, a global batch needs {rows}")

    @property
    def n_tokens(self) -> int:
        return int(sum(s.size for s in self.shards))

    def get(self, k: int, part: int | None = None) -> Batch:
        """Global micro-batch ``k``, this rank's rows: int64 tensors x, y of shape [batch_size, seq_len].
        ``part``: take the rows of that slice of the global micro-batch instead of this rank's."""
        part = self.rank if part is None else part
        if self.order == "sequential":  # this part's sequences of block k, in the paper's order
            return self._cut(*self.stream.block_rows(k, np.arange(part * self.batch_size, (part + 1) * self.batch_size)))
        rng = np.random.default_rng([self.seed, _TRAIN, int(k)])
        picked = rng.choice(self.n_windows, size=self.world_size * self.batch_size, replace=False)
        return self._rows(self._mine(picked, part), shift=int(rng.integers(self.seq_len)))

    def probe_batch(self, n_rows: int | None = None) -> Batch:
        """A fixed random set of ``n_rows`` windows (default batch_size), identical on every call."""
        n_rows = n_rows or self.batch_size
        total = self.world_size * n_rows
        if total > self.n_windows:
            raise DataError(f"probe needs {total} windows, the stream has {self.n_windows}")
        picked = np.random.default_rng([self.seed, _PROBE]).choice(self.n_windows, size=total, replace=False)
        return self._rows(picked[self.rank * n_rows:(self.rank + 1) * n_rows], shift=0)

    def eval_batches(self, n: int) -> list[Batch]:
        """The first ``n`` global batches of consecutive windows (this rank's rows), identical on every call."""
        rows = self.world_size * self.batch_size
        if n * rows > self.n_windows:
            raise DataError(f"{n} eval batches need {n * rows} windows, the stream has {self.n_windows}")
        out = []
        for i in range(n):
            picked = np.arange(i * rows, (i + 1) * rows)
            out.append(self._rows(self._mine(picked), shift=0))
        return out

    def first_tokens(self, n_tokens: int) -> list[Batch]:
        """Consecutive windows whose inputs are the first ``n_tokens`` tokens of the stream (targets
        one token further), in global batches of at most ``world_size * batch_size`` rows, this
        rank's slice of each; the same windows at every call and for any number of ranks.

        Every batch and every rank get equally many rows (sweep.data.order.eval_batch_rows), so the
        mean of the batch losses is the mean over all ``n_tokens`` tokens. Windows never cross a
        shard: in a split of one shard (every preparer writes one) they cover exactly tokens [0, n_tokens].
        """
        T, W = self.seq_len, self.world_size
        if n_tokens <= 0 or n_tokens % T:
            raise DataError(f"data.eval_tokens={n_tokens} must be a positive multiple of the sequence length {T}")
        n_seq = n_tokens // T
        have = sum(sequential_windows(s.size, T) for s in self.shards)
        if have < n_seq:
            raise DataError(f"data.eval_tokens={n_tokens}: the validation split holds {self.n_tokens} tokens, "
                            f"{have} windows of {T} (+1); {n_seq} are needed")
        if n_seq % W:
            raise DataError(f"data.eval_tokens={n_tokens}: its {n_seq} sequences do not split evenly over {W} ranks")
        rows = eval_batch_rows(n_seq, W * self.batch_size, W)
        mine = rows // W
        shard_of, start_of = window_positions([s.size for s in self.shards], T, np.arange(n_seq))
        out = []
        for b in range(n_seq // rows):
            idx = np.arange(b * rows + self.rank * mine, b * rows + (self.rank + 1) * mine)
            out.append(self._cut(shard_of[idx], start_of[idx]))
        return out

    def _mine(self, picked: np.ndarray, part: int | None = None) -> np.ndarray:
        part = self.rank if part is None else part
        return picked[part * self.batch_size:(part + 1) * self.batch_size]

    def _rows(self, picked: np.ndarray, shift: int) -> Batch:
        """Random-order windows number ``picked`` (each shard's aligned grid), moved by ``shift``."""
        shard_idx = np.searchsorted(self._window_ends, picked, side="right")
        first = np.concatenate([[0], self._window_ends[:-1]])
        return self._cut(shard_idx, shift + (picked - first[shard_idx]) * self.seq_len)

    def _cut(self, shard_idx: np.ndarray, starts: np.ndarray) -> Batch:
        buf = np.empty((len(starts), self.seq_len + 1), dtype=np.int64)  # [rows, seq_len + 1]
        for row, (s, start) in enumerate(zip(shard_idx, starts)):
            buf[row] = self.shards[s][int(start):int(start) + self.seq_len + 1]
        return torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())


class StepBatches:
    """The batches of a run with a fixed global batch (``train.global_batch``): step s reads ONE
    global batch of ``grad_accum * world_size * batch_size`` rows (``steps.get(s)``), cut into
    ``grad_accum`` micro-batches of ``world_size * batch_size`` rows; rank r takes its
    ``batch_size`` rows of each. Which rows a step reads depends only on the step, never on how it
    is split, so the run means the same thing (and resumes) on any number of ranks.

    ``get(k)`` with ``k = s * grad_accum + micro``: the indexing of TokenBatches, so the training
    loop draws from either the same way. Rank r's micro-batch m is part ``r * grad_accum + m`` of
    the step, i.e. its rows ``[(r * grad_accum + m) * batch_size, ...)`` in the step's order
    (sweep.data.order: the paper's, rank-major), so a run with the paper's ranks and micro-batch
    gives each rank exactly the paper rank's sequences (leading_rows counts them).
    """

    def __init__(self, steps: TokenBatches, grad_accum: int, rank: int = 0, world_size: int = 1) -> None:
        if steps.world_size != grad_accum * world_size:
            raise ValueError(f"the step batches are cut into {steps.world_size} parts, "
                             f"not grad_accum x world_size = {grad_accum} x {world_size}")
        self.steps, self.grad_accum, self.rank, self.world_size = steps, grad_accum, rank, world_size
        self.batch_size, self.seq_len = steps.batch_size, steps.seq_len

    @property
    def n_tokens(self) -> int:
        return self.steps.n_tokens

    def get(self, k: int) -> Batch:
        """Micro-batch ``k % grad_accum`` of step ``k // grad_accum``, this rank's rows [batch_size, seq_len]."""
        step, micro = divmod(int(k), self.grad_accum)
        return self.steps.get(step, part=self.rank * self.grad_accum + micro)
