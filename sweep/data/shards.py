"""Token shard files: a 256 x int32 header followed by uint16 token ids.

The layout is the one used by the modded-nanogpt / FineWeb10B ``.bin`` shards (header[0] = magic
20240520, header[1] = version 1, header[2] = token count, the rest zero), so those shards are read
as they are, and shards we write can be read by their tools.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from specsweep.sweep.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16  # token ids 0..65535 fit in uint16

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    version: int
    n_tokens: int


def check_vocab_fits(vocab_size: int) -> None:
    """Raise DataError when token ids of a ``vocab_size`` vocabulary do not fit in uint16."""
    if vocab_size > MAX_VOCAB:
        raise DataError(
            f"vocabulary of {vocab_size} tokens does not fit the uint16 shard format "
            f"(token ids must be <= {MAX_VOCAB - 1})"
        )


def write_shard(path: PathLike, tokens: np.ndarray) -> Path:
    """Write ``tokens`` (1-D integer array, ids < 65536) as a shard at ``path``, atomically.

    The file is written under a temporary name in the same folder and renamed, so a reader sees
    either no file or a complete one, also when the writer is killed mid-way.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"{path}: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0:
            raise DataError(f"{path}: negative token id {lo}")
        if hi >= MAX_VOCAB:
            raise DataError(
                f"{path}: token id {hi} does not fit the uint16 shard format "
                f"(vocabulary must be <= {MAX_VOCAB} tokens)"
            )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_header(path: PathLike) -> ShardHeader:
    """Read and validate a shard's header and file size; raise DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard ({size} bytes, the header alone is {HEADER_BYTES})")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise DataError(f"{path}: not a token shard (magic {int(header[0])}, expected {MAGIC})")
    if int(header[1]) != VERSION:
        raise DataError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    n_tokens = int(header[2])
    if n_tokens < 0:
        raise DataError(f"{path}: corrupt header (negative token count {n_tokens})")
    expected = HEADER_BYTES + n_tokens * TOKEN_DTYPE.itemsize
    if size < expected:
        raise DataError(
            f"{path}: truncated shard (header says {n_tokens} tokens = {expected} bytes, file has {size})"
        )
    if size > expected:
        raise DataError(
            f"{path}: corrupt shard ({size - expected} bytes after the {n_tokens} tokens its header announces)"
        )
    return ShardHeader(path=path, version=int(header[1]), n_tokens=n_tokens)


def open_shard(path: PathLike) -> np.ndarray:
    """Memory-map a shard's tokens as a read-only uint16 array after validating its header and size."""
    h = read_header(path)
    if h.n_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)  # np.memmap cannot map zero bytes
    return np.memmap(h.path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(h.n_tokens,))
