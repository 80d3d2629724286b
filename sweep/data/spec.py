"""What a run's data is: the ``data.*`` config section as a frozen DataSpec, and its prepare command."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from specsweep.sweep.data.hub_bins import PREFIX as HUB_BINS
from specsweep.sweep.data.order import ORDERS
from specsweep.sweep.data.synthetic import SyntheticConfig
from specsweep.sweep.errors import DataError

__all__ = ["DEFAULT_BPE_VOCAB", "KINDS", "ORDERS", "DataSpec", "normalize_source", "prepare_command"]

KINDS = ("synthetic", "text", "shards")
DEFAULT_BPE_VOCAB = 2048


@dataclass(frozen=True)
class DataSpec:
    """What to prepare and how to read it. Fields irrelevant to ``kind`` are ignored (and do not
    change the prepared folder)."""

    kind: str = "synthetic"
    # synthetic: vocabulary size; text+bpe: BPE vocabulary size; shards: counts length (default: the
    # tokenizer's vocabulary, else the largest id + 1)
    vocab_size: Optional[int] = None
    # synthetic
    train_tokens: int = 2_000_000
    zipf_exponent: float = 1.0
    branching: int = 2
    restart_prob: float = 0.1
    seed: int = 0
    # text: a .txt file or a folder of .txt files; shards: the prepared folder, or a folder of
    # existing *train*.bin / *val*.bin shards
    path: Optional[str] = None
    # text: "byte" (default) | "bpe"; shards: gpt2 | bpe | byte (existing shards: gpt2 | byte | null)
    tokenizer: Optional[str] = None
    # validation split: val_tokens wins over val_fraction (ignored for existing shards, which bring their own)
    val_tokens: Optional[int] = None
    val_fraction: float = 0.05
    # Streamed preparation into the folder `path` (kind "shards", `specsweep-prepare`):
    # source: "hf:<dataset>" (streamed with `datasets`), a local .txt/.jsonl/.parquet file or folder,
    # or a folder of already-tokenized .bin shards (indexed, not re-tokenized).
    source: Optional[str] = None
    subset: Optional[str] = None        # dataset configuration, e.g. "sample-10BT"
    text_field: str = "text"            # document text column of .jsonl/.parquet/hub rows
    shard_tokens: int = 100_000_000     # tokens per shard file (the last train shard may be shorter)
    max_tokens: Optional[int] = None    # stop after this many tokens in all (val + train); None: all
    name: Optional[str] = None          # the conf/data option (for messages naming the prepare command)
    # Reading (sweep.data.loader; neither changes the prepared folder):
    # order: "random" windows drawn per step from (seed, step), or "sequential", the paper's stream
    # through the training shards sorted by name.
    order: str = "random"
    # The sequential stream's layout (sweep.data.order): the paper's data-parallel ranks and their
    # sequences per micro-batch (paper 160M: 4 x 64, 350M: 8 x 16); null: one rank, the whole step.
    # A property of the data order only: the run may use any number of ranks and micro-batches.
    stream_ranks: Optional[int] = None
    stream_rows: Optional[int] = None
    # Evaluate on the first eval_tokens tokens of the validation split (a multiple of the sequence
    # length), instead of train.eval_batches batches; None: train.eval_batches.
    eval_tokens: Optional[int] = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "DataSpec":
        """Build from a config mapping; unknown keys raise DataError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise DataError(f"unknown data spec keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(raw))

    def stream(self) -> Optional[tuple[int, int]]:
        """(stream ranks, sequences per stream micro-batch) of the sequential order; None: one block."""
        if self.stream_ranks is None and self.stream_rows is None:
            return None
        if self.stream_ranks is None or self.stream_rows is None:
            raise DataError("data.stream_ranks and data.stream_rows are set together (or both null)")
        return int(self.stream_ranks), int(self.stream_rows)

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig(vocab_size=self.vocab_size or SyntheticConfig.vocab_size,
                               zipf_exponent=float(self.zipf_exponent), branching=self.branching,
                               restart_prob=float(self.restart_prob), seed=self.seed)

    def n_val(self, total: int) -> int:
        """Validation tokens out of a ``total``-token stream."""
        n = self.val_tokens if self.val_tokens is not None else int(round(self.val_fraction * total))
        if not 0 < n < total:
            raise DataError(f"validation split of {n} tokens does not fit a corpus of {total} tokens "
                            f"(val_tokens={self.val_tokens}, val_fraction={self.val_fraction})")
        return n


def prepare_command(data: DataSpec | Mapping[str, Any]) -> str:
    """The ``specsweep-prepare`` command line that prepares the folder of a data config."""
    get = data.get if isinstance(data, Mapping) else (lambda k: getattr(data, k, None))
    name = get("name") or "<this data config>"
    parts = ["specsweep-prepare", f"data={name}"]
    for key in ("path", "source"):  # the folder to fill, and what to fill it from
        if get(key) not in (None, "", "???"):
            parts.append(f"data.{key}={get(key)}")
    return " ".join(parts) + "  (plus this run's other data.* overrides)"


def normalize_source(source: str) -> str:
    """``hf:<dataset>`` as it is, a local path made absolute."""
    if source.startswith(("hf:", HUB_BINS)):
        return source
    return str(Path(source).expanduser().resolve())
