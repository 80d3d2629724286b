"""Issue 22 items 4-12: faults that must not take a tool down or lose anything ("Moderate" block)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT


# ---- item 11: --from-wandb with --out NEWDIR ------------------------------------------------------
def _api_run(name: str, width: int) -> SimpleNamespace:
    history = []
    for step in (10, 20, 30):
        history.append({"trainer/step": step, "train/train_loss": 5.0 - step / 10, "train/lr": 1e-3,
                        "trainer/tokens": step * 100, "_step": len(history)})
        history.append({"trainer/step": step, "_step": len(history), **{
            f"spectral/{site}/global/{m}/L{layer:02d}": width / 8 * (layer + 1) * (1 + step / 100)
            for site in ("pre", "post") for m in ("soft_rank", "hard_rank") for layer in (0, 1)}})
    history.append({"trainer/step": 30, "eval/loss": 3.5 - width / 1000, "eval/ppl": 33.1})
    config = {"axis": {"value": {"optimizer": "adamw", "ffn_width": width, "d_model": 64, "seed": 0}},
              "run_id": {"value": name}}
    return SimpleNamespace(name=name, group="g", job_type="train", state="finished", config=config,
                           summary={"final/eval_loss": 3.5, "final/train_loss": 2.0, "final/step": 30},
                           scan_history=lambda page_size=1000, h=history: iter(h))


def test_fit_from_wandb_into_a_new_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.analysis import wandb_io
    from sweep.fit import main

    runs = [_api_run(f"r{w}", w) for w in (64, 128, 256)]
    api = SimpleNamespace(default_entity="me", runs=lambda path, filters: runs)
    real = wandb_io.materialize
    monkeypatch.setattr(wandb_io, "materialize", lambda source, dest, api_=None: real(source, dest, api=api))
    out = tmp_path / "new"
    assert main(["--from-wandb", "proj/g", "--out", str(out), "--n-boot", "20"]) == 0
    assert (out / "status.json").is_file() and sorted(p.name for p in (out / "runs").iterdir()) == \
        ["r128", "r256", "r64"]
    # a refit into the same folder keeps the rebuilt runs
    assert main(["--from-wandb", "proj/g", "--out", str(out), "--n-boot", "20"]) == 0
    assert (out / "runs" / "r64" / "metrics.jsonl").is_file()
    # a folder that is neither new nor an analysis is still refused, before anything is fetched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["--from-wandb", "proj/g", "--out", str(other)]) != 0
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def _write_sweep(root: Path, **kwargs) -> Path:
    try:
        from test_fit import write_sweep
    except ImportError:
        from tests.test_fit import write_sweep
    return write_sweep(root, **kwargs)


# ---- item 7: a tail of NUL bytes (power cut) is a torn last line; non-UTF-8 spectra lines ---------
@pytest.mark.parametrize("tail", [b"\0" * 300, b'{"step": 3, "train_lo' + b"\0" * 40])
def test_a_nul_tail_is_dropped_like_a_torn_last_row(tmp_path: Path, tail: bytes) -> None:
    from sweep.rundir import RunDir, iter_jsonl, read_jsonl_rows

    run = RunDir(tmp_path)
    run.metrics_file.write_bytes(b'{"step": 1}\n{"step": 2}\n' + tail)
    assert [r["step"] for r in iter_jsonl(run.metrics_file, strict=True)] == [1, 2]
    assert read_jsonl_rows(run.metrics_file) == ([{"step": 1}, {"step": 2}], 1)
    assert run.truncate_jsonl(run.metrics_file, 5) == 2
    assert run.metrics_file.read_bytes() == b'{"step": 1}\n{"step": 2}\n'


def test_a_non_utf8_spectra_line_drops_that_line_in_the_fit(tmp_path: Path) -> None:
    from sweep.analysis.read import load_sweeps

    sweep = _write_sweep(tmp_path / "demo", mults=(1, 2), adamw_seeds=(0,), muon_seeds=(), bad_runs=False)
    spectra = sweep / "adamw-w1-s0" / "spectra.jsonl"
    rows = len(spectra.read_bytes().splitlines())
    with open(spectra, "ab") as f:
        f.write(b"\x89\xfe\xff junk\n" + b"\0" * 64)
    contents = load_sweeps([sweep])
    run = next(r for r in contents.runs if r.run_dir.name == "adamw-w1-s0")
    assert len(run.spectra) == rows and len(contents.runs) == 2
    assert any("skipped 2 unreadable line(s) in spectra.jsonl" in w for w in contents.warnings)


# ---- item 8: staging folders of killed fits ---------------------------------------------------------
_STAGE = ("import sys; from pathlib import Path; from sweep.analysis.outdir import staging_dir; "
          "print(staging_dir(Path(sys.argv[1])), flush=True); sys.stdin.read()")


def test_next_fit_removes_staging_folders_of_dead_fits_only(tmp_path: Path) -> None:
    from sweep.fit import main

    sweep = _write_sweep(tmp_path / "demo", bad_runs=False)
    out = sweep / "analysis"
    # a fit still writing, held until we let it go, ...
    live = subprocess.Popen([sys.executable, "-c", _STAGE, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        live_dir = Path(live.stdout.readline().strip())
        # ... a fit killed while writing (its staging folder holds its owner record), ...
        dead = subprocess.run([sys.executable, "-c", _STAGE, str(out)], cwd=ROOT, input="", text=True,
                              capture_output=True, check=True).stdout.strip()
        # ... and one of an older version without the record (its process ended too)
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        legacy = sweep / f".analysis.staging-{gone}"
        (legacy / "tables").mkdir(parents=True)
        assert Path(dead).is_dir() and live_dir.is_dir()
        assert main([str(sweep), "--n-boot", "20"]) == 0
        assert not Path(dead).exists() and not legacy.exists()
        assert live_dir.is_dir()
        assert not (out / ".owner.json").exists()
    finally:
        live.communicate("", timeout=60)
