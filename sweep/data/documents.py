"""Local and hub documents, the one route from them to tokens: where a corpus's files are, how each
is read, how documents become one EOT-delimited token stream; and DocumentStream, their resumable order.

Both ways to prepare local text use these functions: ``data=text`` (sweep.data.cache, one .txt file
or a folder of them, read whole) and ``data=local`` (sweep.data.streaming, .txt/.jsonl/.parquet files
streamed into shards). A .txt file is one document, read here as UTF-8 without the optional
`datasets` package; .jsonl/.parquet rows and hub datasets are read with `datasets`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Optional, Sequence

import numpy as np

from specsweep.sweep.data.frequency import FREQUENCY_FILE
from specsweep.sweep.data.hub_bins import hub_repo, is_hub_bins
from specsweep.sweep.data.prepared import META_FILE, PROGRESS_FILE
from specsweep.sweep.data.shards import TOKEN_DTYPE
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.tokenizer import BPE_FILE, Tokenizer
from specsweep.sweep.errors import DataError

# Corpora shipped inside the package, named in configs as ``builtin:<file>`` so that a config (and
# so a run's identity) does not depend on where the package is installed.
BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent / "corpus"
BUILDER_OF_SUFFIX = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def local_text_path(path: str | Path) -> Path:
    """The file or folder a ``data.path`` names: ``builtin:<file>`` is a corpus shipped with the
    package (``sweep/data/corpus/``), anything else a local path (``~`` expanded)."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        shipped = sorted(p.name for p in BUILTIN_DIR.glob("*.txt"))
        if name not in shipped:
            raise DataError(f"no built-in corpus {name!r} (built-in: {', '.join(shipped)})")
        return BUILTIN_DIR / name
    return Path(text).expanduser()


def find_files(root: Path, suffixes: Collection[str]) -> list[Path]:
    """The files below the folder ``root`` whose names end in one of ``suffixes``, hidden ones
    skipped, sorted by path (the order of their documents)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes and not p.name.startswith("."))


def find_text_files(path: str | Path) -> list[Path]:
    """The .txt files of ``data=text``: the file ``path`` names, or every .txt below that folder."""
    path = local_text_path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = find_files(path, (".txt",))
        if not files:
            raise DataError(f"no .txt files found in text data folder: {path}")
        return files
    raise DataError(f"text data not found: {path} (expected a .txt file or a folder of .txt files)")


def read_documents(files: Iterable[str | Path]) -> Iterator[str]:
    """Yield each file's text (UTF-8), one document per file; a file that is not UTF-8 raises
    DataError naming it."""
    for f in files:
        try:
            yield Path(f).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not valid UTF-8 text ({e})") from None


def encode_documents(docs: Sequence[str], tokenizer: Tokenizer, batch: int = 64) -> np.ndarray:
    """Token stream of ``docs`` with EOT before every document (the GPT-2/FineWeb convention)."""
    parts: list[np.ndarray] = []
    eot = np.array([tokenizer.eot_id], dtype=TOKEN_DTYPE)
    for i in range(0, len(docs), batch):
        for ids in tokenizer.encode_batch(docs[i:i + batch]):
            parts += [eot, np.asarray(ids, dtype=TOKEN_DTYPE)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


@dataclass
class Source:
    """Where documents (or finished shards) come from."""

    kind: str                    # "hub" | "files" | "bins" | "hub-bins"
    label: str                   # normalized source string (recorded in meta.json)
    root: Optional[Path] = None  # local folder or file
    files: list[Path] = field(default_factory=list)

    def fingerprint(self) -> list:
        """Names and sizes of local files (cheap; the resumed documents are also checked by hash)."""
        return [[self.rel(f), f.stat().st_size] for f in self.files]

    def rel(self, f: Path) -> str:
        return f.name if self.root is None or self.root.is_file() else str(f.relative_to(self.root))


def resolve_source(spec: DataSpec) -> Source:
    """Interpret ``spec.source`` (or, without one, ``spec.path`` as a folder of existing shards)."""
    raw = spec.source or spec.path
    if not raw:
        raise DataError("data.source is required: hf:<dataset>, a local .txt/.jsonl/.parquet file or folder, "
                           "or a folder of .bin shards")
    if is_hub_bins(raw):  # pre-tokenized .bin shards in a hub dataset repository (sweep.data.hub_bins)
        hub_repo(raw)
        return Source("hub-bins", raw)
    if raw.startswith("hf:"):
        if len(raw) <= 3:
            raise DataError(f"data.source {raw!r}: expected hf:<dataset name>")
        return Source("hub", raw)
    root = Path(raw).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data source not found: {root}")
    if root.is_file():
        if root.suffix == ".bin":
            return Source("bins", str(root.parent), root.parent, [root])
        if root.suffix not in BUILDER_OF_SUFFIX:
            raise DataError(f"{root}: unsupported file type (expected {', '.join(sorted(BUILDER_OF_SUFFIX))} or .bin)")
        return Source("files", str(root), root, [root])
    out = Path(spec.path).expanduser().resolve() if spec.path and spec.source else None

    bins = sorted(p for p in root.glob("*.bin") if not p.name.startswith("."))
    # No documents: the prepared folder's files (.json) when it lies inside the source, and beside
    # .bin shards the files a preparation writes (a folder indexed in place).
    own = {META_FILE, PROGRESS_FILE, FREQUENCY_FILE, BPE_FILE} if bins else set()
    docs = [p for p in find_files(root, BUILDER_OF_SUFFIX)
            if (out is None or out not in p.parents) and not (p.parent == root and p.name in own)]
    if docs and bins:
        raise DataError(f"{root} holds both text files and .bin shards; point data.source at one kind")
    if bins:
        return Source("bins", str(root), root, bins)
    if not docs:
        raise DataError(f"no .txt/.jsonl/.json/.parquet files or .bin shards found in {root}")
    return Source("files", str(root), root, docs)


@dataclass
class _Part:
    """A run of consecutive local files of one type (read together), or a hub dataset."""

    builder: str
    data_files: list[str]
    subset: Optional[str] = None

    def open(self) -> Any:
        """This part as a `datasets` streaming dataset (not for .txt files: read_documents reads those)."""
        import datasets

        if self.builder == "hub":
            try:
                return datasets.load_dataset(self.data_files[0], name=self.subset, split="train", streaming=True)
            except Exception as e:  # offline, unknown name or subset, hub errors
                raise DataError(f"cannot stream hf:{self.data_files[0]} (subset {self.subset!r}) from the "
                                   f"Hugging Face hub: {type(e).__name__}: {str(e)[:300]} -- the prepare step "
                                   f"needs internet access (run it on a login/transfer node)") from e
        return datasets.load_dataset(self.builder, data_files=self.data_files, split="train", streaming=True)


class DocumentStream:
    """The documents of a source in a fixed order, in batches, with a position that can be resumed.

    A position is ``{"part", "doc", "state"}``: the part (a run of same-type files), the documents
    already read from it, and the `datasets` iterator state there (None for .txt files and where a
    dataset has none; then the resume skips ``doc`` documents). Positions fall between batches;
    resuming a state needs the same batch size.
    """

    def __init__(self, source: Source, spec: DataSpec) -> None:
        self.text_field = spec.text_field
        self.label = source.label
        if source.kind == "hub":
            self.parts = [_Part("hub", [source.label[3:]], spec.subset)]
        else:
            self.parts = []
            for f in source.files:  # consecutive files of one type share a dataset
                builder = BUILDER_OF_SUFFIX[f.suffix]
                if self.parts and self.parts[-1].builder == builder:
                    self.parts[-1].data_files.append(str(f))
                else:
                    self.parts.append(_Part(builder, [str(f)]))
        self._ds: Any = None  # the dataset whose iterator state a position records (None: no state)
        self._start: dict = {"part": 0, "doc": 0, "state": None}
        self._part, self._doc, self._started = 0, 0, False

    def position(self) -> dict:
        """Where the next batch comes from (call before reading or between batches)."""
        if not self._started:  # where batches() will start
            return copy.deepcopy(self._start)
        state = None
        if self._ds is not None:
            try:
                state = copy.deepcopy(self._ds.state_dict())
                json.dumps(state)
            except Exception:  # no resumable state for this dataset: fall back to skipping
                state = None
        return {"part": self._part, "doc": self._doc, "state": state}

    def batches(self, batch_size: int, start: Optional[dict] = None) -> Iterator[list[str]]:
        """Lists of up to ``batch_size`` documents from position ``start`` (None: the beginning) on."""
        self._started, self._start = False, copy.deepcopy(start) if start else {"part": 0, "doc": 0, "state": None}
        return self._batches(batch_size, self._start)

    def _open(self, i: int, batch_size: int, start: Optional[dict]) -> Iterator[list]:
        """The batches of part ``i`` from the position ``start`` in it (None: its beginning)."""
        part = self.parts[i]
        skip = start["doc"] if start is not None and start.get("state") is None else 0
        if part.builder == "text":  # one .txt file = one document, read as data=text reads it
            self._ds, docs = None, read_documents(part.data_files[skip:])
            return iter(lambda: list(islice(docs, batch_size)), [])
        ds = part.open()
        try:
            ds = ds.select_columns([self.text_field])
        except ValueError as e:
            raise DataError(f"{self.label}: documents have no field {self.text_field!r} ({e}); "
                            f"set data.text_field") from None
        if skip:
            ds = ds.skip(skip)
        # Batching inside `datasets` keeps its iterator state exact at batch boundaries (and is
        # far faster than reading row by row).
        ds = ds.batch(batch_size)
        if start is not None and start.get("state") is not None:
            ds.load_state_dict(start["state"])
        self._ds = None if skip else ds  # the state of a skip()-wrapped dataset would not fit a fresh one
        return (batch[self.text_field] for batch in ds)

    def _batches(self, batch_size: int, start: dict) -> Iterator[list[str]]:
        first = start["part"]
        for i in range(first, len(self.parts)):
            resume = start if i == first and start["doc"] else None
            batches = self._open(i, batch_size, resume)
            self._part, self._doc, self._started = i, resume["doc"] if resume else 0, True
            for texts in batches:
                for j, text in enumerate(texts):
                    if not isinstance(text, str):
                        raise DataError(f"{self.label}: document {self._doc + j} of part {i} has a "
                                        f"{type(text).__name__} {self.text_field!r}, expected text")
                self._doc += len(texts)
                yield texts


def doc_sha(text: str) -> str:
    """Short hash of a document (compared when a preparation resumes)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
