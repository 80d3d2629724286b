"""A clone alone carries what the README, docs, configs and tests use (issue 23 item 5): no path
outside the repository, and the built-in text corpus named so that it works from any directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from specsweep.sweep.data.checks import check_data
from specsweep.sweep.data.documents import BUILTIN_DIR, find_text_files, local_text_path
from specsweep.sweep.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("../shared", "/work/shared", "shared/docs", "shared/data")


def test_no_tracked_file_points_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:  # a source copy without .git (the wheel test's): walk it instead
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    else:
        names = tracked.stdout.split()
    offenders = []
    for name in names:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".cfg", ".txt") and name not in (
                "Makefile", ".ci/run"):
            continue
        if path == Path(__file__).resolve() or not path.is_file() or BUILTIN_DIR in path.parents:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
    assert not offenders, offenders


def test_the_builtin_corpus_resolves_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = local_text_path("builtin:tinyshakespeare.txt")
    assert path.is_file() and path.parent == BUILTIN_DIR
    assert path.read_text(encoding="utf-8").startswith("First Citizen:")
    assert find_text_files("builtin:tinyshakespeare.txt") == [path]
    assert check_data({"kind": "text", "path": "builtin:tinyshakespeare.txt", "tokenizer": "bpe"}, None) == []


def test_an_unknown_builtin_corpus_is_a_short_error_listing_the_shipped_ones() -> None:
    with pytest.raises(DataError, match=r"no built-in corpus 'nope.txt' \(built-in: tinyshakespeare.txt\)"):
        local_text_path("builtin:nope.txt")
    (problem,) = check_data({"kind": "text", "path": "builtin:nope.txt"}, None)
    assert problem.startswith("data.path: no built-in corpus")


def test_the_mini_grid_reads_the_builtin_corpus() -> None:
    text = (ROOT / "conf" / "sweep" / "mini.yaml").read_text(encoding="utf-8")
    assert "\n  path: builtin:tinyshakespeare.txt\n" in text
