"""Local text sources: one .txt file or a folder of them, one document per file."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from specsweep.sweep.data.shards import TOKEN_DTYPE
from specsweep.sweep.data.tokenizer import Tokenizer
from specsweep.sweep.errors import DataError


# Corpora shipped inside the package, named in configs as ``builtin:<file>`` so that a config (and
# so a run's identity) does not depend on where the package is installed.
BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent / "corpus"


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


def find_text_files(path: str | Path) -> list[Path]:
    """The .txt files at ``path`` (the file itself, or every *.txt below a folder, sorted)."""
    path = local_text_path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"no .txt files found in text data folder: {path}")
        return files
    raise DataError(f"text data not found: {path} (expected a .txt file or a folder of .txt files)")


def read_documents(files: Sequence[Path]) -> Iterator[str]:
    """Yield each file's text (UTF-8); a file that is not UTF-8 raises DataError naming it."""
    for f in files:
        try:
            yield f.read_text(encoding="utf-8")
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
