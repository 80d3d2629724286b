"""From a run spec to prepared token data and the batch sources the training loop draws from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from specsweep.sweep.data.cache import prepare_dataset
from specsweep.sweep.data.loader import StepBatches, TokenBatches
from specsweep.sweep.data.prepared import PreparedData
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.errors import DataError

log = logging.getLogger("specsweep.data")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class RunData:
    prepared: PreparedData
    train: TokenBatches | StepBatches  # batch k is a pure function of k: the resume position is the step
    val: TokenBatches
    eval_batches: list[Batch]    # identical at every evaluation
    counts: Optional[np.ndarray]  # corpus unigram counts (training tokens), for HEAD/MID/TAIL

    @property
    def vocab_size(self) -> int:
        return self.prepared.vocab_size

    @property
    def n_eval_batches(self) -> int:
        """Batches of one evaluation: train.eval_batches, or what data.eval_tokens takes."""
        return len(self.eval_batches)

    def probe_batches(self, n: int) -> list[Batch]:
        """``n`` fixed held-out micro-batches for telemetry on a probe (identical every event)."""
        x, y = self.val.probe_batch(n * self.val.batch_size)
        return list(zip(x.split(self.val.batch_size), y.split(self.val.batch_size)))


def load_run_data(data: DataSpec, data_root: Path, *, seed: int, batch_size: int, seq_len: int,
                  eval_batches: int, rank: int = 0, world_size: int = 1,
                  step_accum: Optional[int] = None) -> RunData:
    """Prepare (or reuse) ``data`` under ``data_root`` and build this rank's batch sources
    (``batch_size``: this rank's rows of a micro-batch; ``seed``: the training order of
    ``data.order=random``; ``eval_batches``: used unless ``data.eval_tokens`` sets the eval set).
    ``step_accum``: a fixed global batch (``train.global_batch``) read one step at a time and cut
    into that many micro-batches per rank (StepBatches); None: batch k is global micro-batch k.

    ``spec.train.batch_size`` is this rank's share of the global micro-batch. Data that is missing
    or unusable here (deleted since the preflight, not mounted on this node, damaged) raises
    DataError, a short message naming the file.
    """
    try:
        prepared = prepare_dataset(data, data_root)
        if step_accum is None:
            train: TokenBatches | StepBatches = TokenBatches(prepared.train_paths, batch_size, seq_len, seed=seed,
                                                             rank=rank, world_size=world_size, order=data.order,
                                                             stream=data.stream())
        else:  # one [step_accum * world_size * batch_size]-row batch per step, cut into parts
            steps = TokenBatches(prepared.train_paths, batch_size, seq_len, seed=seed, rank=rank,
                                 world_size=step_accum * world_size, order=data.order, stream=data.stream())
            train = StepBatches(steps, step_accum, rank=rank, world_size=world_size)
        val = TokenBatches(prepared.val_paths, batch_size, seq_len, seed=0, rank=rank, world_size=world_size)
        evals = val.first_tokens(data.eval_tokens) if data.eval_tokens is not None else val.eval_batches(eval_batches)
    except DataError:
        raise
    except (OSError, ValueError) as e:  # e.g. a file that became unreadable
        raise DataError(f"data ({data.path or data.kind}): {e}") from e
    counts = prepared.counts() if prepared.counts_path.exists() else None
    log.info("data: %s (%d train / %d val tokens, vocab %d, %s order)", prepared.root, prepared.n_train_tokens,
             prepared.n_val_tokens, prepared.vocab_size, data.order)
    return RunData(prepared, train, val, evals, counts)
