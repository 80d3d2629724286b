"""JSON-lines files of a run (metrics.jsonl, spectra.jsonl): append, read, truncate on resume.

They are append-only and truncated back to the checkpoint step on resume, so a resumed run
continues the same curve without duplicated rows. A process killed mid-write leaves a torn last
line; readers skip it. A power cut can leave the file's tail as NUL bytes (the size was
recorded, the data never reached the disk): a last line of NULs, or a row cut short by them, is a
torn last line too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from specsweep.sweep.rundir.files import atomic_write_text, json_safe


class JsonlError(ValueError):
    """A JSON-lines file holds a line that is neither a JSON object nor a torn last row."""


def numbered_jsonl(path: Path, strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSON-lines file; a torn final line (killed mid-write) is skipped.

    A torn line is the last one, without its newline, starting like a row or holding only NUL bytes
    (a power cut). Other lines that are not JSON objects raise JsonlError naming the file and line
    if ``strict``, else are skipped.
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not raw.endswith(b"\n") and text.rstrip(b"\0").lstrip(b"\0") == b"":
                continue  # a tail of NUL bytes left by a power cut: torn
            if not text:
                continue
            problem = ""
            try:
                row = json.loads(text.decode("utf-8"))
                if not isinstance(row, dict):
                    problem = f"not a JSON object: {text[:60].decode('utf-8', 'replace')!r}"
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except json.JSONDecodeError as e:
                problem = f"not JSON ({e.msg}): {text[:60].decode('utf-8', 'replace')!r}"
            if not problem:
                yield n, row
                continue
            torn = not raw.endswith(b"\n") and text.lstrip(b"\0").startswith(b"{")
            if strict and not torn:
                raise JsonlError(f"{path}, line {n}: {problem}")


def iter_jsonl(path: Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file (see numbered_jsonl)."""
    for _, row in numbered_jsonl(path, strict):
        yield row


def truncate_jsonl(path: Path, max_step: int, max_step_of: Callable[[dict], int] | None = None) -> int:
    """Drop rows with step > max_step (or > ``max_step_of(row)`` when given) and a torn last line;
    returns rows kept.

    Any other junk (a line that is not a JSON object, bytes that are not text, a row whose step
    is not a number) raises JsonlError naming the file and line.
    """
    if not path.exists():
        return 0
    kept = []
    for n, row in numbered_jsonl(path, strict=True):
        step = row.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise JsonlError(f"{path}, line {n}: step {step!r} is not a number")
        if step <= (max_step if max_step_of is None else max_step_of(row)):
            kept.append(row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(kept)


def read_jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON-lines file and the number of unreadable lines (a torn last line, a line that
    is not a JSON object, bytes that are not UTF-8 text, a tail of NUL bytes); unlike
    :func:`iter_jsonl` it counts what it skips."""
    rows, bad = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            line = line.strip(b"\0")
            if not line:  # NUL bytes only (a power cut)
                bad += 1
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


class JsonlAppender:
    """Append-only JSON-lines writer, flushed per row so a crash loses at most the current row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a")

    def write(self, row: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(json_safe(dict(row))) + "\n")
        self._f.flush()

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._f.write(json.dumps(json_safe(dict(row))) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
