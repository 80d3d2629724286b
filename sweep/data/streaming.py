"""Streamed preparation of a corpus into fixed-size token shards (what ``specsweep-prepare`` runs).

Output folder (the ``path`` of a kind "shards" data spec; layout: sweep.data.prepared)::

    val_000000.bin ...     the first ``val_tokens`` tokens of the stream (the validation split)
    train_000000.bin ...   the rest, ``shard_tokens`` per file (the last one may be shorter)
    counts.npy, frequency.json, tokenizer.json (BPE only), meta.json (written last)
    progress.json          only while unfinished: the committed shards and where to resume

The token stream is, for every document in source order, EOT followed by the document's tokens
(sweep.data.documents finds, reads and encodes them, as for data=text); shards cut it at fixed
positions, mid-document (as modded-nanogpt does).
Documents are tokenized in chunks by a pool of worker processes and collected in submission order,
so the bytes never depend on the number of workers. Each shard is written under a temporary name
and renamed; then progress.json records the committed shards and the first chunk not entirely
inside them (its document index, stream position and the `datasets` iterator state), so a
restarted preparation re-reads from there, drops the tokens already written and ends with the same
bytes as an uninterrupted one.

A source that is a folder of already-tokenized ``.bin`` shards (modded-nanogpt FineWeb10B) is
indexed instead (sweep.data.shard_index): nothing re-tokenized.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from specsweep.sweep.data.documents import DocumentStream, Source, doc_sha, encode_documents, resolve_source
from specsweep.sweep.data.frequency import FREQUENCY_FILE, format_frequency
from specsweep.sweep.data.prepared import (
    CORPUS_FORMAT, FORMAT_VERSION, META_FILE, PROGRESS_FILE, PreparedData, count_tokens, write_counts, write_json,
)
from specsweep.sweep.data.hub_bins import download_bins, local_bins
from specsweep.sweep.data.shard_index import index_source
from specsweep.sweep.data.shards import check_vocab_fits, open_shard, read_header, write_shard
from specsweep.sweep.data.spec import DEFAULT_BPE_VOCAB, DataSpec
from specsweep.sweep.data.tokenizer import (
    BPE_FILE, BPE_TRAIN_CHARS, BPETokenizer, TiktokenTokenizer, Tokenizer, load_tokenizer, make_tokenizer,
)
from specsweep.sweep.errors import DataError

log = logging.getLogger("specsweep.prepare")

# ---------------------------------------------------------------------------------------- encoding

_WORKER: dict[str, Tokenizer] = {}


def _init_worker(info: dict, folder: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the pool is the parallelism
    os.environ["RAYON_NUM_THREADS"] = "1"
    _WORKER["tok"] = _load(info, Path(folder))


def _load(info: dict, folder: Path) -> Tokenizer:
    tok = load_tokenizer(info, folder)
    return tok.load() if isinstance(tok, TiktokenTokenizer) else tok


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return encode_documents(texts, _WORKER["tok"])


class _Encoder:
    """Ordered, bounded parallel encoding: at most ``window`` chunks in flight."""

    def __init__(self, tok: Tokenizer, info: dict, folder: Path, workers: int) -> None:
        self.tok, self.workers = tok, workers
        self.pool = None
        if workers > 0:
            self.pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(info, str(folder)))
        self.window = max(2, 3 * workers)

    def submit(self, texts: list[str]) -> Callable[[], np.ndarray]:
        if self.pool is None:
            result = encode_documents(texts, self.tok)
            return lambda: result
        return self.pool.apply_async(_encode_in_worker, (texts,)).get

    def close(self, ok: bool) -> None:
        if self.pool is not None:
            if ok:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()


# ---------------------------------------------------------------------------------------- progress

def _shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def _next_cut(written: int, n_val: int, size: int) -> tuple[str, int, int]:
    """(split, index in split, stream position where the shard starting at ``written`` ends)."""
    if written < n_val:
        i = written // size
        return "val", i, min((i + 1) * size, n_val)
    i = (written - n_val) // size
    return "train", i, n_val + (i + 1) * size


@dataclass
class _Mark:
    pos: int       # stream position of the chunk's first token
    doc: int       # global index of the chunk's first document
    stream: dict   # DocumentStream position before the chunk
    sha: str       # hash of the chunk's first document (checked when resuming)


# ---------------------------------------------------------------------------------------- preparation

def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def prepare_corpus(spec: DataSpec, workers: Optional[int] = None, docs_per_task: int = 256) -> PreparedData:
    """Prepare (or finish preparing, or index) the folder ``spec.path`` from ``spec.source``.

    ``workers``: tokenizing processes (None: all CPU cores; 0: tokenize in this process).
    Calling it again on a complete folder of the same spec returns it unchanged.
    """
    if not spec.path:
        raise DataError("data.path (the prepared folder to write) is required")
    out = Path(spec.path).expanduser().resolve()
    source = resolve_source(spec)
    workers = default_workers() if workers is None else int(workers)
    if source.kind == "hub-bins":  # pre-tokenized shards on the hub: downloaded into data.path, then indexed
        prepared = (out / META_FILE).is_file()  # index_source returns it as it is: nothing to download
        files = local_bins(out) if prepared else download_bins(source.label, out)
        source = Source("bins", source.label, out, files)
    if source.kind == "bins":
        return index_source(spec, source, out, workers)
    return _CorpusBuild(spec, source, out, workers, docs_per_task).run()


class _CorpusBuild:
    def __init__(self, spec: DataSpec, source: Source, out: Path, workers: int, docs_per_task: int) -> None:
        for name in ("val_tokens", "shard_tokens"):
            v = getattr(spec, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise DataError(f"data.{name} must be a positive integer for a streamed corpus, got {v!r}")
        if spec.max_tokens is not None and (not isinstance(spec.max_tokens, int) or spec.max_tokens <= spec.val_tokens):
            raise DataError(f"data.max_tokens={spec.max_tokens!r} must be an integer above "
                               f"data.val_tokens={spec.val_tokens}")
        if docs_per_task <= 0:
            raise DataError(f"docs_per_task must be positive, got {docs_per_task}")
        self.spec, self.source, self.out = spec, source, out
        self.workers, self.docs_per_task = workers, docs_per_task
        self.tok_name = spec.tokenizer or "gpt2"
        self.key = {
            "format": CORPUS_FORMAT, "source": source.label, "subset": spec.subset, "text_field": spec.text_field,
            "files": source.fingerprint(), "tokenizer": self.tok_name,
            "shard_tokens": spec.shard_tokens, "val_tokens": spec.val_tokens, "max_tokens": spec.max_tokens,
        }
        if self.tok_name == "bpe":
            self.key.update(vocab_size=spec.vocab_size or DEFAULT_BPE_VOCAB, bpe_train_chars=BPE_TRAIN_CHARS)

    # ---- folder state -----------------------------------------------------------------------------
    def _start(self) -> Optional[dict]:
        """The progress to resume from (None: fresh start); raises on a folder of something else."""
        out = self.out
        if (out / META_FILE).is_file():
            return {"complete": True}
        progress_path = out / PROGRESS_FILE
        if progress_path.is_file():
            progress = json.loads(progress_path.read_text())
            if progress.get("key") != self.key:
                changed = sorted(k for k in set(self.key) | set(progress.get("key", {}))
                                 if self.key.get(k) != progress.get("key", {}).get(k))
                raise DataError(f"{out} holds an unfinished preparation of other settings "
                                   f"(differs in: {', '.join(changed)}); delete the folder or choose another data.path")
            return progress
        if out.is_dir() and any(p.suffix == ".bin" for p in out.iterdir()):
            raise DataError(f"{out} already holds .bin files but no {PROGRESS_FILE} or {META_FILE}: "
                               f"to use existing shards pass their folder as data.source; otherwise choose "
                               f"an empty data.path")
        return None

    def _tokenizer(self, resuming: bool) -> tuple[Tokenizer, dict]:
        if resuming and self.tok_name == "bpe":
            tok: Tokenizer = BPETokenizer.from_file(self.out / BPE_FILE)
        else:
            t0 = time.perf_counter()
            tok = make_tokenizer(self.tok_name, self.key.get("vocab_size"), lambda: (
                text for texts in DocumentStream(self.source, self.spec).batches(64) for text in texts))
            log.info("%s tokenizer of %d ids ready in %.1f s", self.tok_name, tok.vocab_size, time.perf_counter() - t0)
        check_vocab_fits(tok.vocab_size)
        self.out.mkdir(parents=True, exist_ok=True)
        return tok, tok.save(self.out)

    def _verify_shards(self, progress: dict) -> None:
        listed = {s["file"] for s in progress["shards"]}
        for s in progress["shards"]:
            n = read_header(self.out / s["file"]).n_tokens  # DataError naming a damaged file
            if n != s["tokens"]:
                raise DataError(f"{self.out / s['file']}: holds {n} tokens, {PROGRESS_FILE} says {s['tokens']}; "
                                 f"delete the folder and prepare again")
        for p in self.out.iterdir():  # shards written after the last progress record, temp files
            if (p.suffix == ".bin" and p.name not in listed) or ".tmp-" in p.name:
                p.unlink()

    # ---- main -------------------------------------------------------------------------------------
    def run(self) -> PreparedData:
        progress = self._start()
        if progress and progress.get("complete"):
            data = PreparedData.load(self.out)
            if data.meta.get("prepare_key") != self.key:
                raise DataError(f"{self.out} already holds a prepared corpus with other settings; "
                                   f"delete it or choose another data.path")
            log.info("%s is already prepared", self.out)
            return data
        resuming = progress is not None
        t0 = time.perf_counter()
        tok, info = self._tokenizer(resuming)
        t_tok = time.perf_counter() - t0
        self.vocab_size = tok.vocab_size
        self.counts = np.zeros(self.vocab_size, dtype=np.int64)
        if resuming:
            self._verify_shards(progress)
            self.shards = list(progress["shards"])
            for path in (self.out / s["file"] for s in self.shards if s["split"] == "train"):
                self.counts += count_tokens(open_shard(path), self.vocab_size, path)
            resume = progress["resume"]
            # The saved `datasets` state is one of batches of this size.
            self.docs_per_task = int(progress.get("docs_per_task", self.docs_per_task))
            log.info("resuming %s after %d shards (%d tokens), at document %d", self.out, len(self.shards),
                     sum(s["tokens"] for s in self.shards), resume["doc"])
        else:
            self.shards = []
            resume = {"pos": 0, "doc": 0, "stream": None, "sha": None}
            self._save_progress(_Mark(0, 0, {"part": 0, "doc": 0, "state": None}, ""), info)
        self.written = sum(s["tokens"] for s in self.shards)
        t1 = time.perf_counter()
        start_written = self.written
        docs = self._stream(tok, info, resume)
        t_stream = time.perf_counter() - t1
        t2 = time.perf_counter()
        meta = self._finish(info, tok, docs, timing={
            "tokenizer_s": round(t_tok, 3), "stream_s": round(t_stream, 3),
            "streamed_tokens": self.written - start_written, "workers": self.workers})
        meta["timing"]["finish_s"] = round(time.perf_counter() - t2, 3)
        write_json(self.out / META_FILE, meta)
        (self.out / PROGRESS_FILE).unlink(missing_ok=True)
        data = PreparedData.load(self.out)
        log.info("prepared %s: %d val + %d train tokens in %d + %d shards, %d documents\n%s", self.out,
                 data.n_val_tokens, data.n_train_tokens, len(data.val_paths), len(data.train_paths), docs,
                 format_frequency(json.loads((self.out / FREQUENCY_FILE).read_text())))
        return data

    def _stream(self, tok: Tokenizer, info: dict, resume: dict) -> int:
        """Tokenize from the resume point to the end (or max_tokens), writing shards; return #documents."""
        spec = self.spec
        cap = spec.max_tokens
        stream = DocumentStream(self.source, spec)
        batches = stream.batches(self.docs_per_task, resume["stream"])
        check_sha = resume.get("sha")
        cursor, doc_index = resume["pos"], resume["doc"]
        marks: deque[_Mark] = deque()
        buf: list[np.ndarray] = []
        self._buffered = 0
        encoder = _Encoder(tok, info, self.out, self.workers)
        inflight: deque = deque()
        exhausted = done = False
        ok = False
        t_last, tokens_last = time.perf_counter(), self.written
        try:
            while True:
                while not (exhausted or done) and len(inflight) < encoder.window:
                    position = stream.position()
                    texts = next(batches, None)
                    if texts is None:
                        exhausted = True
                        break
                    if not texts:
                        continue
                    sha = doc_sha(texts[0])
                    if check_sha is not None:
                        if sha != check_sha:
                            raise DataError(f"{self.source.label}: the documents at the resume point differ from "
                                               f"the interrupted preparation's (the source changed); delete "
                                               f"{self.out} and prepare again")
                        check_sha = None
                    inflight.append((position, sha, len(texts), encoder.submit(texts)))
                if not inflight:
                    break
                position, sha, n_docs, result = inflight.popleft()
                if done:
                    continue  # results past max_tokens are discarded
                tokens = result()
                marks.append(_Mark(cursor, doc_index, position, sha))
                start, cursor, doc_index = cursor, cursor + tokens.size, doc_index + n_docs
                if cap is not None and cursor >= cap:
                    tokens, cursor, done = tokens[:tokens.size - (cursor - cap)], cap, True
                if cursor > self.written:
                    buf.append(tokens[max(0, self.written - start):])
                    self._buffered += buf[-1].size
                    buf = self._write_full_shards(buf, marks, info)
                if time.perf_counter() - t_last > 30:
                    rate = (self.written + self._buffered - tokens_last) / (time.perf_counter() - t_last)
                    log.info("%d documents, %d tokens (%.0f tokens/s)", doc_index, self.written + self._buffered, rate)
                    t_last, tokens_last = time.perf_counter(), self.written + self._buffered
            if self.written + self._buffered <= spec.val_tokens:
                raise DataError(f"{self.source.label} yields {self.written + self._buffered} tokens, not more than "
                                   f"data.val_tokens={spec.val_tokens}: no training tokens would be left")
            if self._buffered:  # the last, shorter train shard
                self._commit(np.concatenate(buf), marks, info, final=True)
            ok = True
        finally:
            encoder.close(ok)
        return doc_index

    def _write_full_shards(self, buf: list[np.ndarray], marks: deque, info: dict) -> list[np.ndarray]:
        while True:
            _, _, end = _next_cut(self.written, self.spec.val_tokens, self.spec.shard_tokens)
            need = end - self.written
            if self._buffered < need:
                return buf
            joined = np.concatenate(buf) if len(buf) > 1 else buf[0]
            self._commit(joined[:need], marks, info)
            rest = joined[need:]
            buf = [rest] if rest.size else []
            self._buffered = rest.size

    def _commit(self, tokens: np.ndarray, marks: deque, info: dict, final: bool = False) -> None:
        split, index, _ = _next_cut(self.written, self.spec.val_tokens, self.spec.shard_tokens)
        name = _shard_name(split, index)
        write_shard(self.out / name, tokens)
        if split == "train":
            self.counts += count_tokens(tokens, self.vocab_size, self.out / name)
        self.shards.append({"file": name, "split": split, "tokens": int(tokens.size)})
        self.written += int(tokens.size)
        if final:
            self._buffered = 0
        while len(marks) > 1 and marks[1].pos <= self.written:
            marks.popleft()
        self._save_progress(marks[0], info)
        log.info("wrote %s (%d tokens; %d in all)", name, tokens.size, self.written)

    def _save_progress(self, mark: _Mark, info: dict) -> None:
        write_json(self.out / PROGRESS_FILE, {
            "key": self.key, "tokenizer": info, "docs_per_task": self.docs_per_task, "shards": self.shards,
            "resume": {"pos": mark.pos, "doc": mark.doc, "stream": mark.stream, "sha": mark.sha or None},
        })

    def _finish(self, info: dict, tok: Tokenizer, documents: int, timing: dict) -> dict:
        splits = {s: [(d["file"], d["tokens"]) for d in self.shards if d["split"] == s] for s in ("train", "val")}
        return {
            "format_version": FORMAT_VERSION, "kind": "shards", **write_counts(self.out, self.counts, splits),
            "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "tokenizer": info, "documents": documents,
            "source": {"source": self.source.label, "subset": self.spec.subset, "tokenizer": self.tok_name,
                       "text_field": self.spec.text_field},
            "shard_tokens": self.spec.shard_tokens, "prepare_key": self.key,
            "spec": dataclasses.asdict(self.spec), "timing": timing,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
