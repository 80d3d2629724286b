"""Turn a data spec into a cached folder of token shards, unigram counts and meta.json.

Folder layout (``cache_root/<kind>-<hash of the spec>/``)::

    train.bin, val.bin     token shards (sweep.data.shards format)
    counts.npy             int64 [vocab_size] unigram counts over the training tokens
    tokenizer.json         BPE only
    meta.json              vocab_size, eot_id, tokenizer, spec, token counts, shard file lists

meta.json lists the shard files of each split, so a preparer that writes many shards
(``train_000000.bin``, ...) or points at existing ones (absolute paths) needs no reader change.
Every folder also holds ``frequency.json`` (HEAD/MID/TAIL thresholds and summary, sweep.data.frequency).

Real corpora are prepared ahead of training by ``python -m sweep.prepare`` (sweep.data.corpus) into
the folder ``path`` of a kind "shards" spec; the trainer then only reads that folder.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from sweep.data.frequency import FREQUENCY_FILE, write_frequency
from sweep.data.shards import check_vocab_fits, open_shard, read_header, write_shard
from sweep.data.synthetic import GENERATOR_VERSION, SyntheticConfig, build_chain, entropy_stats, generate_tokens
from sweep.data.text import encode_documents, find_text_files, read_documents
from sweep.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, train_bpe

FORMAT_VERSION = 1
KINDS = ("synthetic", "text", "shards")
META_FILE = "meta.json"
COUNTS_FILE = "counts.npy"
PROGRESS_FILE = "progress.json"  # present while `python -m sweep.prepare` has not finished a folder
_COUNT_CHUNK = 1 << 24  # tokens per bincount call, bounds memory on 10B-token corpora
DEFAULT_BPE_VOCAB = 2048


@dataclass(frozen=True)
class DataSpec:
    """What to prepare. Fields irrelevant to ``kind`` are ignored (and do not change the hash)."""

    kind: str = "synthetic"
    # synthetic: vocabulary size; text+bpe: BPE vocabulary size; shards: counts length (default max id + 1)
    vocab_size: Optional[int] = None
    # synthetic
    train_tokens: int = 2_000_000
    zipf_exponent: float = 1.0
    branching: int = 2
    restart_prob: float = 0.1
    seed: int = 0
    # text: a .txt file or a folder of .txt files; shards: a folder of *train*.bin / *val*.bin shards
    path: Optional[str] = None
    # text: "byte" (default) | "bpe"; shards: name recorded in meta (e.g. "gpt2"), optional
    tokenizer: Optional[str] = None
    # validation split: val_tokens wins over val_fraction (ignored for shards, which bring their own)
    val_tokens: Optional[int] = None
    val_fraction: float = 0.05
    # Streaming preparation into the folder `path` (kind "shards", `python -m sweep.prepare`):
    # source: "hf:<dataset>" (streamed with `datasets`), a local .txt/.jsonl/.parquet file or folder,
    # or a folder of already-tokenized .bin shards (indexed, not re-tokenized). tokenizer: gpt2|bpe|byte.
    source: Optional[str] = None
    subset: Optional[str] = None        # dataset configuration, e.g. "sample-10BT"
    text_field: str = "text"            # document text column of .jsonl/.parquet/hub rows
    shard_tokens: int = 100_000_000     # tokens per shard file (the last train shard may be shorter)
    max_tokens: Optional[int] = None    # stop after this many tokens in all (val + train); None: all
    name: Optional[str] = None          # the conf/data option (for messages naming the prepare command)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "DataSpec":
        """Build from a config mapping; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown data spec keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(raw))

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig(vocab_size=self.vocab_size or SyntheticConfig.vocab_size,
                               zipf_exponent=float(self.zipf_exponent), branching=self.branching,
                               restart_prob=float(self.restart_prob), seed=self.seed)

    def n_val(self, total: int) -> int:
        """Validation tokens out of a ``total``-token stream."""
        n = self.val_tokens if self.val_tokens is not None else int(round(self.val_fraction * total))
        if not 0 < n < total:
            raise ValueError(f"validation split of {n} tokens does not fit a corpus of {total} tokens "
                             f"(val_tokens={self.val_tokens}, val_fraction={self.val_fraction})")
        return n


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
            raise FileNotFoundError(f"not a prepared data folder (no {META_FILE}): {root}")
        data = cls(root=root, meta=json.loads(meta_path.read_text()))
        for split in ("train", "val"):
            found = sum(read_header(p).n_tokens for p in data._paths(split))
            if found != data.meta[split]["tokens"]:
                raise ValueError(f"{root}: {split} shards hold {found} tokens, meta.json says "
                                 f"{data.meta[split]['tokens']}; delete the folder to rebuild it")
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


def prepare_dataset(spec: DataSpec, cache_root: str | Path) -> PreparedData:
    """Prepare ``spec`` under ``cache_root`` once; later calls (and racing processes) reuse it."""
    if spec.kind not in KINDS:
        raise ValueError(f"data kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.kind == "shards":
        src = _existing_path(spec)
        if (src / META_FILE).is_file():  # already a prepared folder (e.g. by a shard preparer)
            return _check_source(spec, PreparedData.load(src))
        if (src / PROGRESS_FILE).is_file():
            raise RuntimeError(f"{src}: its preparation is not finished (no {META_FILE} yet); "
                               f"rerun the same prepare command to complete it: {prepare_command(spec)}")
        if spec.source:
            raise FileNotFoundError(f"{src} is not a prepared data folder (no {META_FILE}); prepare it first "
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
                        spec_hash=digest, key=key, counts=COUNTS_FILE,
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            try:
                # Renaming a complete folder is the commit; a non-empty target makes it fail.
                os.rename(tmp, final)
            except OSError as e:
                if not (final / META_FILE).is_file():
                    raise RuntimeError(f"cannot create {final} ({e}); if it is a leftover without "
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


def prepare_command(data: DataSpec | Mapping[str, Any]) -> str:
    """The ``python -m sweep.prepare`` command line that prepares the folder of a data config."""
    get = data.get if isinstance(data, Mapping) else (lambda k: getattr(data, k, None))
    name = get("name") or "<this data config>"
    parts = ["python -m sweep.prepare", f"data={name}"]
    for key in ("path", "source"):  # the folder to fill, and what to fill it from
        if get(key) not in (None, "", "???"):
            parts.append(f"data.{key}={get(key)}")
    return " ".join(parts) + "  (plus this run's other data.* overrides)"


def _check_source(spec: DataSpec, data: PreparedData) -> PreparedData:
    """Refuse a prepared folder whose source or tokenizer differs from what the data config says."""
    made = data.meta.get("source")
    if not spec.source or not isinstance(made, dict):
        return data
    want = {"source": normalize_source(spec.source), "subset": spec.subset, "tokenizer": spec.tokenizer}
    diff = [f"{k}: folder {made.get(k)!r}, config {v!r}" for k, v in want.items()
            if v is not None and made.get(k) != v]
    if diff:
        raise ValueError(f"{data.root} was prepared from other data than data.* asks for ({'; '.join(diff)}); "
                         f"point data.path at another folder or fix the data overrides")
    return data


def normalize_source(source: str) -> str:
    """``hf:<dataset>`` as it is, a local path made absolute."""
    if source.startswith("hf:"):
        return source
    return str(Path(source).expanduser().resolve())


def _existing_path(spec: DataSpec) -> Path:
    if not spec.path:
        raise ValueError(f"data kind {spec.kind!r} needs a path")
    path = Path(spec.path).expanduser().resolve()
    if not path.exists():
        hint = f"; prepare it first with: {prepare_command(spec)}" if spec.kind == "shards" else ""
        raise FileNotFoundError(f"{spec.kind} data path not found: {path}{hint}")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _spec_key(spec: DataSpec) -> dict:
    """Everything that determines the prepared bytes, and nothing else."""
    key: dict[str, Any] = {"format": FORMAT_VERSION, "kind": spec.kind}
    split = {"val_tokens": spec.val_tokens} if spec.val_tokens is not None else {"val_fraction": spec.val_fraction}
    if spec.kind == "synthetic":
        cfg = spec.synthetic_config()
        cfg.validate()
        key.update(dataclasses.asdict(cfg), generator=GENERATOR_VERSION, train_tokens=spec.train_tokens, **split)
    elif spec.kind == "text":
        files = find_text_files(_existing_path(spec))
        root = Path(spec.path).expanduser().resolve()
        tok = spec.tokenizer or "byte"
        # Content digests, not paths or mtimes: moving or touching the text keeps the cache valid.
        key.update(files=[[str(f.relative_to(root)) if f != root else f.name, _file_digest(f)] for f in files],
                   tokenizer=tok, **split)
        if tok == "bpe":
            key["vocab_size"] = spec.vocab_size or DEFAULT_BPE_VOCAB
    else:
        src = _existing_path(spec)
        train, val = _shard_files(src)
        key.update(path=str(src), tokenizer=spec.tokenizer, vocab_size=spec.vocab_size,
                   train=[[p.name, p.stat().st_size] for p in train], val=[[p.name, p.stat().st_size] for p in val])
    return key


def _count(shards: list[np.ndarray], vocab_size: Optional[int]) -> np.ndarray:
    counts = np.zeros(vocab_size or 0, dtype=np.int64)
    for tokens in shards:
        for i in range(0, tokens.size, _COUNT_CHUNK):
            c = np.bincount(tokens[i:i + _COUNT_CHUNK], minlength=counts.size)
            if vocab_size is not None and c.size > vocab_size:
                raise ValueError(f"token id {c.size - 1} >= vocab_size {vocab_size}")
            if c.size > counts.size:
                counts = np.concatenate([counts, np.zeros(c.size - counts.size, dtype=np.int64)])
            counts += c
    return counts


def _write_splits(folder: Path, tokens: np.ndarray, n_val: int, vocab_size: int) -> dict:
    train, val = tokens[:-n_val], tokens[-n_val:]
    write_shard(folder / "train.bin", train)
    write_shard(folder / "val.bin", val)
    counts = _count([train], vocab_size)
    np.save(folder / COUNTS_FILE, counts)
    write_frequency(folder, counts)
    return {"train": {"files": ["train.bin"], "tokens": int(train.size)},
            "val": {"files": ["val.bin"], "tokens": int(val.size)}, "frequency": FREQUENCY_FILE}


def _build_synthetic(spec: DataSpec, folder: Path) -> dict:
    cfg = spec.synthetic_config()
    if not isinstance(spec.train_tokens, int) or spec.train_tokens <= 0:
        raise ValueError(f"train_tokens must be a positive integer, got {spec.train_tokens!r}")
    n_val = spec.val_tokens if spec.val_tokens is not None else max(1, int(round(spec.val_fraction * spec.train_tokens)))
    if n_val <= 0:
        raise ValueError(f"val_tokens must be positive, got {n_val}")
    tokens = generate_tokens(cfg, spec.train_tokens + n_val)
    meta = _write_splits(folder, tokens, n_val, cfg.vocab_size)
    meta.update(vocab_size=cfg.vocab_size, eot_id=None, tokenizer=None,
                stats=entropy_stats(build_chain(cfg)))  # entropy_rate = the best achievable loss
    return meta


def _build_text(spec: DataSpec, folder: Path) -> dict:
    files = find_text_files(_existing_path(spec))
    docs = list(read_documents(files))
    if not any(docs):
        raise ValueError(f"{spec.path}: no text to prepare (empty)")
    name = spec.tokenizer or "byte"
    if name == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif name == "bpe":
        # Trained on all the text (val included): it is a vocabulary, not model weights.
        tok = train_bpe(docs, spec.vocab_size or DEFAULT_BPE_VOCAB)
    else:
        raise ValueError(f"text tokenizer must be 'byte' or 'bpe', got {name!r}")
    tokens = encode_documents(docs, tok)
    try:
        n_val = spec.n_val(tokens.size)
    except ValueError as e:
        raise ValueError(f"{spec.path}: {e}") from None
    meta = _write_splits(folder, tokens, n_val, tok.vocab_size)
    meta.update(vocab_size=tok.vocab_size, eot_id=tok.eot_id, tokenizer=tok.save(folder),
                sources=[str(f) for f in files], documents=len(docs))
    return meta


def _shard_files(src: Path) -> tuple[list[Path], list[Path]]:
    train = sorted(src.glob("*train*.bin"))
    val = sorted(src.glob("*val*.bin"))
    if not train or not val:
        raise FileNotFoundError(f"shard folder {src} needs *train*.bin and *val*.bin files "
                                f"(found {len(train)} train, {len(val)} val)")
    return train, val


def _build_shards(spec: DataSpec, folder: Path) -> dict:
    train, val = _shard_files(_existing_path(spec))
    if spec.vocab_size is not None:
        check_vocab_fits(spec.vocab_size)
    counts = _count([open_shard(p) for p in train], spec.vocab_size)
    np.save(folder / COUNTS_FILE, counts)
    write_frequency(folder, counts)
    info, eot = None, None
    if spec.tokenizer:
        info = {"name": spec.tokenizer}
        try:
            eot = load_tokenizer(info, folder).eot_id
        except (ValueError, FileNotFoundError):
            pass  # a tokenizer we cannot load here: keep its name only
    # Absolute paths: the shards stay where they are, only counts and meta live in the cache.
    return {"train": {"files": [str(p) for p in train], "tokens": sum(read_header(p).n_tokens for p in train)},
            "val": {"files": [str(p) for p in val], "tokens": sum(read_header(p).n_tokens for p in val)},
            "vocab_size": int(counts.size), "eot_id": eot, "tokenizer": info, "frequency": FREQUENCY_FILE}


_BUILDERS = {"synthetic": _build_synthetic, "text": _build_text, "shards": _build_shards}
