"""The data a run reads: ``prepare_dataset`` turns a DataSpec into a prepared folder, once.

Synthetic data and local text are built into the run's data cache, ``cache_root/<kind>-<hash of
what determines the bytes>/`` (folder layout: sweep.data.prepared), by the first run that needs
them; later runs, and runs racing for the same folder, reuse it. Local text is found, read,
tokenized and encoded by the functions ``specsweep-prepare data=local`` uses (sweep.data.documents,
sweep.data.tokenizer); only its layout differs: train.bin, then val.bin holding the stream's end.
Kind "shards" is read where ``path`` points: a folder prepared by ``specsweep-prepare``
(sweep.data.streaming) is used as it is; a folder of existing ``.bin`` shards without meta.json is
indexed (sweep.data.shard_index) into the cache, next to nothing but its counts and meta.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from specsweep.sweep.data.documents import encode_documents, find_text_files, local_text_path, read_documents
from specsweep.sweep.data.prepared import (
    FORMAT_VERSION, META_FILE, PROGRESS_FILE, PreparedData, count_tokens, write_counts, write_json,
)
from specsweep.sweep.data.shard_index import index_shards, shards_in
from specsweep.sweep.data.shards import write_shard
from specsweep.sweep.data.spec import DEFAULT_BPE_VOCAB, KINDS, DataSpec, normalize_source, prepare_command
from specsweep.sweep.data.synthetic import GENERATOR_VERSION, build_chain, entropy_stats, generate_tokens
from specsweep.sweep.data.tokenizer import BPE_TRAIN_CHARS, make_tokenizer
from specsweep.sweep.errors import DataError


def prepare_dataset(spec: DataSpec, cache_root: str | Path) -> PreparedData:
    """Prepare ``spec`` under ``cache_root`` once; later calls (and racing processes) reuse it."""
    if spec.kind not in KINDS:
        raise DataError(f"data kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.kind == "shards":
        src = _existing_path(spec)
        if (src / META_FILE).is_file():  # a prepared folder (specsweep-prepare)
            return _check_source(spec, PreparedData.load(src))
        if (src / PROGRESS_FILE).is_file():
            raise DataError(f"{src}: its preparation is not finished (no {META_FILE} yet); "
                            f"rerun the same prepare command to complete it: {prepare_command(spec)}")
        if spec.source:
            raise DataError(f"{src} is not a prepared data folder (no {META_FILE}); prepare it first "
                            f"with: {prepare_command(spec)}")
    key = _spec_key(spec)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache_root = Path(cache_root).expanduser().resolve()
    final = cache_root / f"{spec.kind}-{digest}"
    if (final / META_FILE).is_file():
        return PreparedData.load(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    with _lock(cache_root / ".locks" / f"{final.name}.lock"):
        if (final / META_FILE).is_file():  # another process finished while we waited
            return PreparedData.load(final)
        tmp = cache_root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = _BUILDERS[spec.kind](spec, tmp)
            meta.update(format_version=FORMAT_VERSION, kind=spec.kind, spec=dataclasses.asdict(spec),
                        spec_hash=digest, key=key, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_json(tmp / META_FILE, meta)
            try:
                # Renaming a complete folder is the commit; a non-empty target makes it fail.
                os.rename(tmp, final)
            except OSError as e:
                if not (final / META_FILE).is_file():
                    raise DataError(f"cannot create {final} ({e}); if it is a leftover without "
                                    f"{META_FILE}, delete it and retry") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return PreparedData.load(final)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so racing processes wait instead of building twice.

    Correctness does not depend on it (the final rename decides); on filesystems without flock
    we simply go ahead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_source(spec: DataSpec, data: PreparedData) -> PreparedData:
    """Refuse a prepared folder whose source or tokenizer differs from what the data config says."""
    made = data.meta.get("source")
    if not spec.source or not isinstance(made, dict):
        return data
    want = {"source": normalize_source(spec.source), "subset": spec.subset, "tokenizer": spec.tokenizer}
    diff = [f"{k}: folder {made.get(k)!r}, config {v!r}" for k, v in want.items()
            if v is not None and made.get(k) != v]
    if diff:
        raise DataError(f"{data.root} was prepared from other data than data.* asks for ({'; '.join(diff)}); "
                        f"point data.path at another folder or fix the data overrides")
    return data


def _existing_path(spec: DataSpec) -> Path:
    if not spec.path:
        raise DataError(f"data kind {spec.kind!r} needs a path")
    path = local_text_path(spec.path).resolve()  # builtin:<file> for any kind, as the run's data check reads it
    if not path.exists():
        hint = f"; prepare it first with: {prepare_command(spec)}" if spec.kind == "shards" else ""
        raise DataError(f"{spec.kind} data path not found: {path}{hint}")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _spec_key(spec: DataSpec) -> dict:
    """Everything that determines the prepared bytes, and nothing else (the cache folder's name
    hashes it: keep it stable, or folders prepared before are built again)."""
    key: dict[str, Any] = {"format": FORMAT_VERSION, "kind": spec.kind}
    split = {"val_tokens": spec.val_tokens} if spec.val_tokens is not None else {"val_fraction": spec.val_fraction}
    if spec.kind == "synthetic":
        cfg = spec.synthetic_config()
        cfg.validate()
        key.update(dataclasses.asdict(cfg), generator=GENERATOR_VERSION, train_tokens=spec.train_tokens, **split)
    elif spec.kind == "text":
        root = _existing_path(spec)
        files = find_text_files(root)
        tok = spec.tokenizer or "byte"
        # Content digests, not paths or mtimes: moving or touching the text keeps the cache valid.
        key.update(files=[[str(f.relative_to(root)) if f != root else f.name, _file_digest(f)] for f in files],
                   tokenizer=tok, **split)
        if tok == "bpe":
            key["vocab_size"] = spec.vocab_size or DEFAULT_BPE_VOCAB
            if sum(f.stat().st_size for f in files) > BPE_TRAIN_CHARS:  # only then can the BPE's sample be
                key["bpe_train_chars"] = BPE_TRAIN_CHARS                 # less than all of the text
    else:
        src = _existing_path(spec)
        train, val = shards_in(src)
        key.update(path=str(src), tokenizer=spec.tokenizer, vocab_size=spec.vocab_size,
                   train=[[p.name, p.stat().st_size] for p in train], val=[[p.name, p.stat().st_size] for p in val])
    return key


def _write_splits(folder: Path, tokens: np.ndarray, n_val: int, vocab_size: int) -> dict:
    """The last ``n_val`` tokens are the validation split, the rest the training split."""
    train, val = tokens[:-n_val], tokens[-n_val:]
    write_shard(folder / "train.bin", train)
    write_shard(folder / "val.bin", val)
    return write_counts(folder, count_tokens(train, vocab_size, folder / "train.bin"),
                        {"train": [("train.bin", train.size)], "val": [("val.bin", val.size)]})


def _build_synthetic(spec: DataSpec, folder: Path) -> dict:
    cfg = spec.synthetic_config()
    if not isinstance(spec.train_tokens, int) or spec.train_tokens <= 0:
        raise DataError(f"data.train_tokens must be a positive integer, got {spec.train_tokens!r}")
    n_val = spec.val_tokens if spec.val_tokens is not None else max(1, int(round(spec.val_fraction * spec.train_tokens)))
    if n_val <= 0:
        raise DataError(f"data.val_tokens must be positive, got {n_val}")
    tokens = generate_tokens(cfg, spec.train_tokens + n_val)
    meta = _write_splits(folder, tokens, n_val, cfg.vocab_size)
    meta.update(vocab_size=cfg.vocab_size, eot_id=None, tokenizer=None,
                stats=entropy_stats(build_chain(cfg)))  # entropy_rate = the best achievable loss
    return meta


def _build_text(spec: DataSpec, folder: Path) -> dict:
    files = find_text_files(_existing_path(spec))
    docs = list(read_documents(files))
    if not any(docs):
        raise DataError(f"{spec.path}: no text to prepare (empty)")
    # A BPE is trained on the text's start (val included): it is a vocabulary, not model weights.
    tok = make_tokenizer(spec.tokenizer or "byte", spec.vocab_size or DEFAULT_BPE_VOCAB, lambda: docs,
                         names=("byte", "bpe"))
    tokens = encode_documents(docs, tok)
    try:
        n_val = spec.n_val(tokens.size)
    except DataError as e:
        raise DataError(f"{spec.path}: {e}") from None
    meta = _write_splits(folder, tokens, n_val, tok.vocab_size)
    meta.update(vocab_size=tok.vocab_size, eot_id=tok.eot_id, tokenizer=tok.save(folder),
                sources=[str(f) for f in files], documents=len(docs))
    return meta


def _index_existing(spec: DataSpec, folder: Path) -> dict:
    train, val = shards_in(_existing_path(spec))
    # Absolute paths: the shards stay where they are, only counts and meta live in the cache.
    return index_shards(train, val, folder, tokenizer=spec.tokenizer, vocab_size=spec.vocab_size)


_BUILDERS: dict[str, Callable[[DataSpec, Path], dict]] = {
    "synthetic": _build_synthetic, "text": _build_text, "shards": _index_existing,
}
