"""The one indexer of existing token shards (e.g. modded-nanogpt's FineWeb10B ``.bin`` files).

Indexing reads shards as they are: headers checked, unigram counts and the frequency table
computed, nothing re-tokenized. It serves both ways of pointing at such a folder:
``specsweep-prepare`` with ``data.source`` = the folder (the description goes to ``data.path``,
sweep.data.streaming) and a run whose ``data.path`` is the folder itself (the description goes to
the run's data cache, sweep.data.cache).

Split rule: a shard whose file name contains "val" is validation, one whose name contains "train"
is training; each split is read in name order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from specsweep.sweep.data.documents import Source
from specsweep.sweep.data.frequency import FREQUENCY_FILE, format_frequency
from specsweep.sweep.data.prepared import (
    CORPUS_FORMAT, FORMAT_VERSION, META_FILE, PreparedData, count_tokens, write_counts, write_json,
)
from specsweep.sweep.data.shards import check_vocab_fits, open_shard, read_header
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.tokenizer import load_tokenizer
from specsweep.sweep.errors import DataError

log = logging.getLogger("specsweep.prepare")

SHARD_TOKENIZERS = ("gpt2", "byte")  # the tokenizers whose ids are known without files of their own
_COUNT_TOKENS = 1 << 26              # tokens per bincount task (bounds memory on 10B-token corpora)


def split_shards(files: Sequence[Path], where: str | Path) -> tuple[list[Path], list[Path]]:
    """(train, val) shard files by name (see the module docstring), each sorted by name.

    A ``.bin`` file that names neither split, or a split left empty, is a DataError naming ``where``.
    """
    val = sorted((p for p in files if "val" in p.name), key=lambda p: p.name)
    train = sorted((p for p in files if "train" in p.name and "val" not in p.name), key=lambda p: p.name)
    other = sorted(p.name for p in files if "val" not in p.name and "train" not in p.name)
    if other:
        raise DataError(f"{where}: shard {other[0]} names neither split (train or val in the file name)")
    if not train or not val:
        raise DataError(f"{where}: needs *train*.bin and *val*.bin shards (found {len(train)} train, {len(val)} val)")
    return train, val


def shards_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(train, val) shards of a folder of ``.bin`` files (hidden files skipped)."""
    return split_shards([p for p in folder.glob("*.bin") if not p.name.startswith(".")], folder)


def shard_tokenizer(name: Optional[str], vocab_size: Optional[int],
                    out: Path) -> tuple[Optional[dict], Optional[int], Optional[int]]:
    """(meta.json tokenizer entry, EOT id, vocabulary size) for shards tokenized by ``name``.

    The vocabulary is ``vocab_size`` if given, else the tokenizer's; None when neither is known
    (then the largest id decides, see index_shards).
    """
    if not name:
        return None, None, vocab_size
    if name not in SHARD_TOKENIZERS:
        raise DataError(f"existing shards: data.tokenizer must be {', '.join(SHARD_TOKENIZERS)} or null, got {name!r}")
    tok = load_tokenizer({"name": name}, out)  # gpt2: ids and EOT are known without the vocabulary
    return tok.save(out), tok.eot_id, vocab_size or tok.vocab_size


def _count_range(args: tuple[str, int, int, int]) -> np.ndarray:
    path, lo, hi, vocab = args
    return count_tokens(open_shard(path)[lo:hi], vocab, path)


def index_shards(train: Sequence[Path], val: Sequence[Path], out: Path, *, tokenizer: Optional[str] = None,
                 vocab_size: Optional[int] = None, workers: int = 1) -> dict:
    """Describe existing shards in the folder ``out``: counts.npy and frequency.json written there,
    the meta.json entries returned (file lists, token counts, vocabulary, tokenizer, timing).

    Files stay where they are: the file lists name them relative to ``out`` when they live there,
    by absolute path otherwise. Unigram counts cover the training shards; ``workers`` > 1 counts
    in that many processes.
    """
    out.mkdir(parents=True, exist_ok=True)
    sizes = {p: read_header(p).n_tokens for p in [*train, *val]}  # DataError naming a damaged file
    info, eot, vocab = shard_tokenizer(tokenizer, vocab_size, out)
    if vocab is None:  # the largest id of either split decides
        vocab = 1 + max(int(open_shard(p).max()) for p in sizes if sizes[p])
    check_vocab_fits(vocab)
    tasks = [(str(p), lo, min(lo + _COUNT_TOKENS, sizes[p]), vocab) for p in train
             for lo in range(0, sizes[p], _COUNT_TOKENS)]
    t0 = time.perf_counter()
    counts = np.zeros(vocab, dtype=np.int64)
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        for c in pool.imap(_count_range, tasks) if pool is not None else map(_count_range, tasks):
            counts += c
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    files = {split: [(p.name if p.parent == out else str(p), sizes[p]) for p in paths]
             for split, paths in (("train", train), ("val", val))}
    return {
        **write_counts(out, counts, files), "vocab_size": vocab, "eot_id": eot, "tokenizer": info,
        "timing": {"count_s": round(time.perf_counter() - t0, 3), "workers": workers},
    }


def index_source(spec: DataSpec, source: Source, out: Path, workers: int) -> PreparedData:
    """``specsweep-prepare`` with a source of existing shards: describe them in the folder ``out``.

    Indexing again with the same settings returns the folder as it is; other settings are refused.
    """
    label = source.label
    train, val = split_shards(source.files, label)
    _, _, vocab = shard_tokenizer(spec.tokenizer, spec.vocab_size, out)
    key = {"format": CORPUS_FORMAT, "source": label, "files": source.fingerprint(), "tokenizer": spec.tokenizer,
           "vocab_size": vocab}
    if (out / META_FILE).is_file():
        data = PreparedData.load(out)
        if data.meta.get("prepare_key") != key:
            raise DataError(f"{out} already holds a prepared corpus with other settings; delete its "
                            f"{META_FILE} (or the folder) or choose another data.path")
        log.info("%s is already indexed", out)
        return data
    meta = {"format_version": FORMAT_VERSION, "kind": "shards",
            **index_shards(train, val, out, tokenizer=spec.tokenizer, vocab_size=spec.vocab_size, workers=workers),
            "source": {"source": label, "subset": spec.subset, "tokenizer": spec.tokenizer},
            "prepare_key": key, "spec": dataclasses.asdict(spec), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(out / META_FILE, meta)
    data = PreparedData.load(out)
    table = format_frequency(json.loads((out / FREQUENCY_FILE).read_text()))
    log.info("indexed %s: %d val + %d train tokens in %d + %d existing shards\n%s", label, data.n_val_tokens,
             data.n_train_tokens, len(val), len(train), table)
    return data
