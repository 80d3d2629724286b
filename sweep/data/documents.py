"""Where a corpus's documents come from: a hub dataset, local .txt/.jsonl/.parquet files, or
already-tokenized .bin shards; and DocumentStream, their documents in a fixed, resumable order.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from specsweep.sweep.data.frequency import FREQUENCY_FILE
from specsweep.sweep.data.hub_bins import hub_repo, is_hub_bins
from specsweep.sweep.data.prepared import META_FILE, PROGRESS_FILE
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.tokenizer import BPE_FILE
from specsweep.sweep.errors import DataError

BUILDER_OF_SUFFIX = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
    # Beside .bin shards, the files a preparation writes (a folder indexed in place) are no documents.
    own = {META_FILE, PROGRESS_FILE, FREQUENCY_FILE, BPE_FILE} if bins else set()

    def wanted(p: Path) -> bool:  # not hidden, not inside the prepared folder (its .json files)
        return (p.is_file() and p.suffix in BUILDER_OF_SUFFIX and not p.name.startswith(".")
                and (out is None or out not in p.parents) and not (p.parent == root and p.name in own))

    docs = sorted(p for p in root.rglob("*") if wanted(p))
    if docs and bins:
        raise DataError(f"{root} holds both text files and .bin shards; point data.source at one kind")
    if bins:
        return Source("bins", str(root), root, bins)
    if not docs:
        raise DataError(f"no .txt/.jsonl/.json/.parquet files or .bin shards found in {root}")
    return Source("files", str(root), root, docs)


@dataclass
class _Part:
    """One `datasets` streaming dataset: a hub dataset, or a run of local files of one type."""

    builder: str
    data_files: list[str]
    subset: Optional[str] = None

    def open(self) -> Any:
        import datasets

        if self.builder == "hub":
            try:
                return datasets.load_dataset(self.data_files[0], name=self.subset, split="train", streaming=True)
            except Exception as e:  # offline, unknown name or subset, hub errors
                raise DataError(f"cannot stream hf:{self.data_files[0]} (subset {self.subset!r}) from the "
                                   f"Hugging Face hub: {type(e).__name__}: {str(e)[:300]} -- the prepare step "
                                   f"needs internet access (run it on a login/transfer node)") from e
        kwargs = {"sample_by": "document"} if self.builder == "text" else {}  # one .txt file = one document
        return datasets.load_dataset(self.builder, data_files=self.data_files, split="train", streaming=True,
                                     **kwargs)


class DocumentStream:
    """The documents of a source in a fixed order, in batches, with a position that can be resumed.

    A position is ``{"part", "doc", "state"}``: the part (a run of same-type files), the documents
    already read from it, and the `datasets` iterator state there (None if unavailable; then the
    resume skips ``doc`` documents). Positions fall between batches; resuming a state needs the
    same batch size.
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
        self._ds = None
        self._start: dict = {"part": 0, "doc": 0, "state": None}
        self._part, self._doc, self._skipped = 0, 0, False

    def position(self) -> dict:
        """Where the next batch comes from (call before reading or between batches)."""
        if self._ds is None:  # not started yet: where batches() will start
            return copy.deepcopy(self._start)
        state = None
        if not self._skipped:  # the state of a skip()-wrapped dataset would not fit a fresh one
            try:
                state = copy.deepcopy(self._ds.state_dict())
                json.dumps(state)
            except Exception:  # no resumable state for this dataset: fall back to skipping
                state = None
        return {"part": self._part, "doc": self._doc, "state": state}

    def batches(self, batch_size: int, start: Optional[dict] = None) -> Iterator[list[str]]:
        """Lists of up to ``batch_size`` documents from position ``start`` (None: the beginning) on."""
        self._ds, self._start = None, copy.deepcopy(start) if start else {"part": 0, "doc": 0, "state": None}
        return self._batches(batch_size, self._start)

    def _open(self, i: int, batch_size: int, start: Optional[dict]) -> tuple[Any, str]:
        part = self.parts[i]
        field = "text" if part.builder == "text" else self.text_field
        ds = part.open()
        try:
            ds = ds.select_columns([field])
        except ValueError as e:
            raise DataError(f"{self.label}: documents have no field {field!r} ({e}); set data.text_field") from None
        self._skipped = False
        if start is not None and start.get("state") is None:
            ds, self._skipped = ds.skip(start["doc"]), True
        # Batching inside `datasets` keeps its iterator state exact at batch boundaries (and is
        # far faster than reading row by row).
        ds = ds.batch(batch_size)
        if start is not None and start.get("state") is not None:
            ds.load_state_dict(start["state"])
        return ds, field

    def _batches(self, batch_size: int, start: dict) -> Iterator[list[str]]:
        first = start["part"]
        for i in range(first, len(self.parts)):
            resume = start if i == first and start["doc"] else None
            ds, field = self._open(i, batch_size, resume)
            self._part, self._doc, self._ds = i, resume["doc"] if resume else 0, ds
            for batch in ds:
                texts = batch[field]
                for j, text in enumerate(texts):
                    if not isinstance(text, str):
                        raise DataError(f"{self.label}: document {self._doc + j} of part {i} has a "
                                           f"{type(text).__name__} {field!r}, expected text")
                self._doc += len(texts)
                yield texts


def doc_sha(text: str) -> str:
    """Short hash of a document (compared when a preparation resumes)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
