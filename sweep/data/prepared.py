"""The prepared data folder: its file names, its meta.json, and PreparedData to read it.

A prepared folder holds (every preparer writes the same layout)::

    *.bin                  token shards (sweep.data.shards format), or none when meta.json names
                           existing shards elsewhere by absolute path
    counts.npy             int64 [vocab_size] unigram counts over the training tokens
    frequency.json         HEAD/MID/TAIL thresholds and summary of those counts (sweep.data.frequency)
    tokenizer.json         BPE only
    meta.json              vocab_size, eot_id, tokenizer, token counts, the shard files of each split;
                           written last: its presence means "complete"
    progress.json          only while `specsweep-prepare` has not finished the folder
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from specsweep.sweep.data.frequency import FREQUENCY_FILE, frequency_table
from specsweep.sweep.data.shards import read_header
from specsweep.sweep.data.tokenizer import Tokenizer, load_tokenizer
from specsweep.sweep.errors import DataError

FORMAT_VERSION = 1
CORPUS_FORMAT = 1  # version of the prepare_key that `specsweep-prepare` records in meta.json
META_FILE = "meta.json"
COUNTS_FILE = "counts.npy"
PROGRESS_FILE = "progress.json"
_COUNT_CHUNK = 1 << 24  # tokens per bincount call, bounds memory


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` atomically (a temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def count_tokens(tokens: np.ndarray, vocab_size: int, where: str | Path) -> np.ndarray:
    """int64 [vocab_size] unigram counts of ``tokens``; an id past the vocabulary is a DataError naming ``where``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, tokens.size, _COUNT_CHUNK):
        c = np.bincount(tokens[i:i + _COUNT_CHUNK], minlength=vocab_size)
        if c.size > vocab_size:
            raise DataError(f"{where}: token id {c.size - 1} >= vocab_size {vocab_size} (set data.vocab_size)")
        counts += c
    return counts


def write_counts(folder: Path, counts: np.ndarray, splits: Mapping[str, Sequence[tuple[str, int]]]) -> dict:
    """Write the training ``counts`` (counts.npy) and their frequency.json into ``folder``; return the
    meta.json entries for them and for ``splits`` (each split's shard files as (name, tokens))."""
    np.save(folder / COUNTS_FILE, counts)
    write_json(folder / FREQUENCY_FILE, frequency_table(counts))
    return {**{split: {"files": [f for f, _ in files], "tokens": int(sum(n for _, n in files))}
               for split, files in splits.items()}, "counts": COUNTS_FILE, "frequency": FREQUENCY_FILE}


@dataclass(frozen=True)
class PreparedData:
    """A prepared data folder: paths, sizes and loaders, as described by its meta.json."""

    root: Path
    meta: dict

    @classmethod
    def load(cls, root: str | Path) -> "PreparedData":
        """Open a prepared folder, checking meta.json against the shards' headers."""
        root = Path(root)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise DataError(f"not a prepared data folder (no {META_FILE}): {root}")
        try:
            data = cls(root=root, meta=json.loads(meta_path.read_text()))
            splits = {split: (data._paths(split), int(data.meta[split]["tokens"])) for split in ("train", "val")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{meta_path} is unreadable or damaged ({type(e).__name__}: {e}); "
                            f"delete the folder to rebuild it") from None
        for split, (paths, tokens) in splits.items():
            found = sum(read_header(p).n_tokens for p in paths)
            if found != tokens:
                raise DataError(f"{root}: {split} shards hold {found} tokens, {META_FILE} says "
                                f"{tokens}; delete the folder to rebuild it")
        return data

    def _paths(self, split: str) -> list[Path]:
        return [self.root / f for f in self.meta[split]["files"]]  # absolute entries stay absolute

    @property
    def train_paths(self) -> list[Path]:
        return self._paths("train")

    @property
    def val_paths(self) -> list[Path]:
        return self._paths("val")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> Optional[int]:
        return self.meta.get("eot_id")

    @property
    def n_train_tokens(self) -> int:
        return int(self.meta["train"]["tokens"])

    @property
    def n_val_tokens(self) -> int:
        return int(self.meta["val"]["tokens"])

    @property
    def counts_path(self) -> Path:
        return self.root / self.meta.get("counts", COUNTS_FILE)

    def counts(self) -> np.ndarray:
        """int64 [vocab_size] unigram counts over the training tokens."""
        return np.load(self.counts_path)

    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer that produced the ids, or None (synthetic data, unknown shard tokenizer)."""
        info = self.meta.get("tokenizer")
        return load_tokenizer(info, self.root) if info else None
