"""Data inputs checked before any run directory exists: files there, readable, text, big enough.

The sweeper runs these checks for every job of a grid before launching one, so they only stat
files, read a sample of each text file and the headers of shard files. Every problem names the
file. Token counts are known exactly for synthetic data and prepared shards; for raw text the byte
count bounds them from above (a tokenizer emits at most one token per byte, plus one EOT per
document), so a corpus refused here could never have fed the run.
"""

from __future__ import annotations

import codecs
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from specsweep.sweep.data.order import ORDERS, sequential_batches, sequential_windows, windows
from specsweep.sweep.data.prepared import META_FILE, PROGRESS_FILE
from specsweep.sweep.data.shard_index import shards_in
from specsweep.sweep.data.shards import read_header
from specsweep.sweep.data.spec import KINDS, DataSpec, prepare_command
from specsweep.sweep.data.documents import find_text_files, local_text_path
from specsweep.sweep.errors import DataError

SAMPLE_BYTES = 1 << 16  # the head of each text file that is checked for binary content
UNSET = (None, "", "???")


@dataclass(frozen=True)
class TokenNeeds:
    """Smallest splits a run can draw its batches from (see sweep.data.loader.TokenBatches)."""

    seq_len: int
    train_rows: int   # windows of one global micro-batch (train.batch_size)
    val_rows: int     # windows of the eval batches (and of the telemetry probe)

    def tokens(self, rows: int) -> int:
        """Tokens of a stream that offers ``rows`` windows: (n - 1 - seq_len) // seq_len >= rows."""
        return (rows + 1) * self.seq_len + 1


def check_data(data: Mapping[str, Any], needs: Optional[TokenNeeds], files: bool = True) -> list[str]:
    """Problems with the data of a run config (``data.*``), each naming the key and the file;
    ``files=False``: the settings only (kind, reading options), no file looked at."""
    try:
        DataSpec.from_mapping({k: v for k, v in data.items() if v != "???"})
    except (TypeError, ValueError) as e:
        return [f"data: {e}"]
    kind = data.get("kind")
    if kind not in KINDS:
        return [f"data.kind: {' | '.join(KINDS)}, got {kind!r}"]
    errors = _check_reading(data, needs)
    if not files:
        return errors
    if errors:
        needs = None  # the sizes are checked against valid reading settings only
    return errors + {"synthetic": _check_synthetic, "text": _check_text, "shards": _check_shards}[kind](data, needs)


def _check_reading(data: Mapping[str, Any], needs: Optional[TokenNeeds]) -> list[str]:
    errors = []
    if data.get("order", "random") not in ORDERS:
        errors.append(f"data.order: {' | '.join(ORDERS)}, got {data.get('order')!r}")
    for key in ("stream_ranks", "stream_rows"):
        v = data.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            errors.append(f"data.{key}: a positive integer or null, got {v!r}")
    if (data.get("stream_ranks") is None) != (data.get("stream_rows") is None):
        errors.append("data.stream_ranks and data.stream_rows: set both (the paper's ranks x sequences per "
                      "micro-batch) or neither")
    elif needs is not None and not errors and data.get("stream_ranks") is not None:
        block = data["stream_ranks"] * data["stream_rows"]
        if needs.train_rows % block:
            errors.append(f"data.stream_ranks x data.stream_rows = {block} sequences must divide the "
                          f"{needs.train_rows} sequences of a step (train.global_batch)")
    n = data.get("eval_tokens")
    if n is not None:
        if not _is_int(n) or n <= 0:
            errors.append(f"data.eval_tokens: a positive integer or null, got {n!r}")
        elif needs is not None and n % needs.seq_len:
            errors.append(f"data.eval_tokens: {n} is not a multiple of the sequence length {needs.seq_len}")
    return errors


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_synthetic(data: Mapping[str, Any], needs: Optional[TokenNeeds]) -> list[str]:
    errors = [f"data.{k}: must be a positive integer, got {data.get(k)!r}"
              for k in ("vocab_size", "train_tokens", "val_tokens") if not _is_int(data.get(k)) or data[k] <= 0]
    if not errors and needs is not None:
        errors += _too_small("the synthetic corpus", [data["train_tokens"]], [data["val_tokens"]], needs, data,
                             exact=True)
    return errors


def _local_path(path: str) -> tuple[Optional[Path], list[str]]:
    """(the file or folder ``data.path`` names, []), or (None, [the problem]): an unknown ``builtin:`` corpus."""
    try:
        return local_text_path(path), []
    except DataError as e:
        return None, [f"data.path: {e}"]


# ---- text -----------------------------------------------------------------------------------------

def _check_text(data: Mapping[str, Any], needs: Optional[TokenNeeds]) -> list[str]:
    path = data.get("path")
    if path in UNSET:
        return ["data.path: required for data=text (a .txt file or a folder of .txt files)"]
    root, problem = _local_path(path)
    if problem:
        return problem
    if not root.exists():
        return [f"data.path: no such file or directory: {root} (relative to {Path.cwd()}; "
                f"give a .txt file or folder: data.path=/path/to/text.txt)"]
    try:
        files = find_text_files(root)
    except (DataError, OSError) as e:
        return [f"data.path: {e}"]
    n_bytes = 0
    for f in files:
        try:
            st = f.stat()
            problem = _text_problem(str(f), st.st_size, st.st_mtime_ns)
        except OSError as e:
            problem = f"cannot read it ({e.strerror or e})"
        if problem:
            return [f"data.path: {f} {problem}"]
        n_bytes += st.st_size
    where = str(root) if root.is_file() else f"{root} ({len(files)} .txt files)"
    if n_bytes == 0:
        return [f"data.path: {where} is empty: no text to train on"]
    if needs is None:
        return []
    total = n_bytes + len(files)  # at most one token per byte, and one EOT per document (file)
    val_tokens = data.get("val_tokens")
    if _is_int(val_tokens):
        n_val = val_tokens
    else:
        frac = data.get("val_fraction", 0.05)
        n_val = int(round(float(frac) * total)) if isinstance(frac, (int, float)) else 0
    if not 0 < n_val < total:
        return [f"data.path: {where} holds {n_bytes} bytes of text, at most {total} tokens: a validation "
                f"split of {n_val} tokens does not fit (data.val_tokens={val_tokens}, "
                f"data.val_fraction={data.get('val_fraction')})"]
    return _too_small(where, [total - n_val], [n_val], needs, data, exact=False, n_bytes=n_bytes)


@functools.lru_cache(maxsize=4096)
def _text_problem(path: str, size: int, mtime_ns: int) -> Optional[str]:
    """Why the file is not UTF-8 text, from its first SAMPLE_BYTES (cached per file version)."""
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
    nul = head.find(b"\0")
    if nul >= 0:
        return f"is not a text file (NUL byte at offset {nul}); data=text reads UTF-8 .txt files"
    try:
        # Not final: a multi-byte character cut by the sample's end is fine.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=size <= SAMPLE_BYTES)
    except UnicodeDecodeError as e:
        return (f"is not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start}); "
                "data=text reads UTF-8 .txt files")
    return None


# ---- prepared shards --------------------------------------------------------------------------------

def _check_shards(data: Mapping[str, Any], needs: Optional[TokenNeeds]) -> list[str]:
    path = data.get("path")
    if data.get("source") == "???":
        return [f"data.source: missing (data={data.get('name') or 'local'} needs the corpus it was prepared "
                f"from: data.source=<file or folder> data.path=<prepared folder>)"]
    hint = f"prepare it first: {prepare_command(data)}"
    if path in UNSET:
        return [f"data.path: missing: the folder of prepared shards (training never downloads; {hint})"]
    root, problem = _local_path(path)
    if problem:
        return problem
    if not root.exists():
        return [f"data.path: prepared shard folder not found: {root} (training never downloads; {hint})"]
    if not root.is_dir():
        return [f"data.path: {root} is a file; it must be the folder of prepared shards ({hint})"]
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            splits = {s: [root / f for f in meta[s]["files"]] for s in ("train", "val")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"data.path: {meta_path} is unreadable or damaged ({type(e).__name__}: {e}); "
                    f"delete the folder and {hint}"]
    elif (root / PROGRESS_FILE).is_file():
        return [f"data.path: {root}: its preparation is not finished (no {META_FILE} yet); rerun the same "
                f"command to complete it: {prepare_command(data)}"]
    elif data.get("source") not in UNSET:
        return [f"data.path: {root} is not a prepared data folder (no {META_FILE}); {hint}"]
    else:  # a folder of existing .bin shards, indexed into the cache by the run
        try:
            splits = dict(zip(("train", "val"), shards_in(root)))
        except DataError as e:
            return [f"data.path: {e}"]
    sizes: dict[str, list[int]] = {}
    for split, files in splits.items():
        try:
            sizes[split] = [_shard_tokens(str(f)) for f in files]
        except (DataError, OSError) as e:
            return [f"data.path: {e}"]
    if needs is None:
        return []
    return _too_small(str(root), sizes["train"], sizes["val"], needs, data, exact=True)


def _shard_tokens(path: str) -> int:
    return read_header(path).n_tokens  # raises naming the file (missing, truncated, not a shard)


# ---- size -------------------------------------------------------------------------------------------

def _too_small(where: str, train: Sequence[int], val: Sequence[int], needs: TokenNeeds, data: Mapping[str, Any],
               *, exact: bool, n_bytes: Optional[int] = None) -> list[str]:
    """A problem for each split (token counts per shard) that cannot give the batches the run draws
    (sweep.data.loader: random windows, the sequential stream, the first data.eval_tokens tokens)."""
    T = needs.seq_len
    have = "holds" if exact else "holds at most"
    problems = []

    def problem(split: str, shards: Sequence[int], need: str) -> None:
        unit = f"{n_bytes} bytes of text: " if n_bytes is not None and not problems else ""
        problems.append(f"data: {where} is too small for this run: {unit}its {split} split {have} "
                        f"{sum(shards)} tokens, {need}")

    rows = needs.train_rows
    if data.get("order", "random") == "sequential":
        stride = (data.get("stream_ranks") or 1) * (data.get("stream_rows") or rows)  # sequences per stream stride
        if not sum(sequential_batches(n, stride * T) for n in train):
            problem("training", train, f"data.order=sequential needs a shard of {stride * T + 1} tokens for one "
                                       f"micro-batch of {stride} sequences of {T} (all stream ranks)")
    elif sum(windows(n, T) for n in train) < rows:
        problem("training", train, f"{needs.tokens(rows)} are needed for {rows} windows of {T + 1} tokens "
                                   f"(train.batch_size)")
    if sum(windows(n, T) for n in val) < needs.val_rows:
        problem("validation", val, f"{needs.tokens(needs.val_rows)} are needed for {needs.val_rows} windows of "
                                   f"{T + 1} tokens (train.eval_batches x train.batch_size)")
    n_eval = data.get("eval_tokens")
    if n_eval is not None and sum(sequential_windows(n, T) for n in val) * T < n_eval:
        problem("validation", val, f"data.eval_tokens={n_eval} needs {n_eval // T} windows of {T + 1} tokens "
                                   f"from its start ({n_eval + 1} tokens in one shard: the targets reach one further)")
    return problems
