"""Stateless, deterministic batches of token windows from one or more shards.

Batch k is a pure function of (seed, k, rank, world_size): resuming at batch k reproduces the run
exactly, with no loader state to checkpoint. Windows never cross a shard boundary. For global
batch k, ``world_size * batch_size`` non-overlapping windows are drawn together and rank r takes
its own slice, so ranks never see the same rows of a batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from sweep.data.shards import open_shard

Source = Union[str, os.PathLike, np.ndarray]
_TRAIN, _PROBE = 0, 1  # separate random streams for training batches and the probe batch


class TokenBatches:
    """Random (x, y) windows of ``seq_len`` tokens, y = x shifted by one, from a token stream."""

    def __init__(self, source: Source | Sequence[Source], batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        sources = [source] if isinstance(source, (str, os.PathLike, np.ndarray)) else list(source)
        self.shards = [s if isinstance(s, np.ndarray) else open_shard(Path(s)) for s in sources]
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        # Each shard offers (n - 1 - seq_len) // seq_len aligned windows of seq_len + 1 tokens,
        # keeping seq_len tokens spare so a per-batch random shift moves the whole grid.
        per_shard = np.array([max(0, (s.size - 1 - seq_len) // seq_len) for s in self.shards], dtype=np.int64)
        self._window_ends = np.cumsum(per_shard)
        self.n_windows = int(self._window_ends[-1]) if per_shard.size else 0
        rows = world_size * batch_size
        if self.n_windows < rows:
            raise ValueError(f"token stream too short: {sum(s.size for s in self.shards)} tokens give "
                             f"{self.n_windows} windows of {seq_len + 1}, a global batch needs {rows}")

    @property
    def n_tokens(self) -> int:
        return int(sum(s.size for s in self.shards))

    @property
    def tokens_per_batch(self) -> int:
        """Tokens per rank per batch."""
        return self.batch_size * self.seq_len

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``k`` for this rank: int64 tensors x, y of shape [batch_size, seq_len]."""
        rng = np.random.default_rng([self.seed, _TRAIN, int(k)])
        windows = rng.choice(self.n_windows, size=self.world_size * self.batch_size, replace=False)
        return self._rows(self._mine(windows), shift=int(rng.integers(self.seq_len)))

    def probe_batch(self, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random set of ``n_rows`` windows (default batch_size), identical on every call."""
        n_rows = n_rows or self.batch_size
        total = self.world_size * n_rows
        if total > self.n_windows:
            raise ValueError(f"probe needs {total} windows, the stream has {self.n_windows}")
        windows = np.random.default_rng([self.seed, _PROBE]).choice(self.n_windows, size=total, replace=False)
        return self._rows(windows[self.rank * n_rows:(self.rank + 1) * n_rows], shift=0)

    def eval_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` global batches of consecutive windows (this rank's rows), identical on every call."""
        rows = self.world_size * self.batch_size
        if n * rows > self.n_windows:
            raise ValueError(f"{n} eval batches need {n * rows} windows, the stream has {self.n_windows}")
        out = []
        for i in range(n):
            windows = np.arange(i * rows, (i + 1) * rows)
            out.append(self._rows(self._mine(windows), shift=0))
        return out

    def _mine(self, windows: np.ndarray) -> np.ndarray:
        return windows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _rows(self, windows: np.ndarray, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard_idx = np.searchsorted(self._window_ends, windows, side="right")
        first = np.concatenate([[0], self._window_ends[:-1]])
        buf = np.empty((windows.size, self.seq_len + 1), dtype=np.int64)
        for row, (s, w) in enumerate(zip(shard_idx, windows - first[shard_idx])):
            start = shift + int(w) * self.seq_len
            buf[row] = self.shards[s][start:start + self.seq_len + 1]
        return torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())
