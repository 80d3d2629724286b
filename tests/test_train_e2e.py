"""End to end through the real command line: single runs, grids, skip, resume, refusals, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from specsweep.sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST, ROOT, ended, hold_env, run_id_for, run_train, wait_until_held

pytestmark = pytest.mark.slow


def _short_error_env(env: dict) -> dict:
    """The test environment without HYDRA_FULL_ERROR=1: errors print as users see them."""
    return {k: v for k, v in env.items() if k != "HYDRA_FULL_ERROR"}


def _rows(path: Path, key: str) -> list[dict]:
    return [r for r in iter_jsonl(path) if key in r]


def test_single_run_writes_a_complete_run_directory(env: dict, tmp_path: Path) -> None:
    run_train(FAST, env)
    run = RunDir(tmp_path / "runs" / "default" / run_id_for(*FAST))
    assert run.is_done(), list(run.path.parent.iterdir())
    done = run.read_done()
    assert done["final_step"] == 30 and done["final_eval_loss"] < 6.0
    assert run.read_status()["status"] == "done"
    assert run.config_file.read_text().count("ffn_mult") == 1
    train = _rows(run.metrics_file, "train_loss")
    assert [r["step"] for r in train] == [1, 5, 10, 15, 20, 25, 30]
    assert {"step", "train_loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(train[0])
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 1.0  # it learns
    evals = _rows(run.metrics_file, "eval_loss")
    assert [r["step"] for r in evals] == [10, 20, 30]
    spectra = list(iter_jsonl(run.spectra_file))
    steps = sorted({r["step"] for r in spectra})
    assert steps == [1, 10, 20, 30]
    keys = {(r["layer"], r["site"], r["bucket"]) for r in spectra if r["step"] == 30}
    assert keys == {(l, s, b) for l in (0, 1) for s in ("pre", "post") for b in ("global", "head", "mid", "tail")}
    ok = [r for r in spectra if r["status"] == "ok"]
    assert len(ok) >= len(spectra) * 0.9
    assert all(1 <= r["hard_rank"] <= r["soft_rank"] <= r["dim"] for r in ok)
    assert [s for _, s in run.checkpoints()] and len(run.checkpoints()) <= 2


def _sweep_folders(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def test_grid_puts_one_directory_per_run_under_sweep_dir(env: dict, tmp_path: Path) -> None:
    """An ad-hoc grid (no sweep_name) gets its own folder, grid-<swept keys>-<hash>: the same grid
    (in any order) lands there again, a different grid elsewhere, never in runs/default."""
    runs = tmp_path / "runs"
    args = ["-m", "optim=adamw,muon", "model.ffn_mult=1,2", *FAST, "train.steps=6"]
    run_train(args, env)
    (folder,) = _sweep_folders(runs)
    assert folder.startswith("grid-ffn_mult-optim-") and len(folder) == len("grid-ffn_mult-optim-") + 6, folder
    out = runs / folder
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == sorted(run_id_for(f"optim={o}", f"model.ffn_mult={w}", *FAST, "train.steps=6")
                           for o in ("adamw", "muon") for w in (1, 2))
    assert all(RunDir(out / n).is_done() for n in names)
    assert RunDir(out / names[-1]).read_status()["axes"]["ffn_width"] == 128
    assert {RunDir(out / n).read_status()["sweep"] for n in names} == {folder}  # also the W&B group

    # Relaunching the same grid (axes typed in another order) trains nothing: every run is skipped.
    stamps = {n: (out / n / "DONE").stat().st_mtime_ns for n in names}
    proc = run_train(["-m", "model.ffn_mult=1,2", "optim=muon,adamw", *FAST, "train.steps=6"], env)
    assert "4 finished and skipped" in proc.stdout + proc.stderr
    assert "Launching 0 jobs" in proc.stdout + proc.stderr or "Launching" not in proc.stdout + proc.stderr
    assert stamps == {n: (out / n / "DONE").stat().st_mtime_ns for n in names}
    assert _sweep_folders(runs) == [folder]

    # Another grid, even one whose runs are a subset of the first, is another sweep.
    run_train(["-m", "optim=adamw", "model.ffn_mult=1,2", *FAST, "train.steps=6"], env)
    (other,) = set(_sweep_folders(runs)) - {folder}
    assert other.startswith("grid-ffn_mult-") and other != folder
    assert sorted(p.name for p in (runs / other).iterdir() if p.is_dir() and not p.name.startswith(".")) == names[:2]


def test_named_grid_with_command_line_axis_override(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run_train(["-m", "+sweep=demo", "optim=adamw", "model.ffn_mult=1,2", f"hydra.sweep.dir={out}",
               *FAST, "train.steps=4"], env)
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == [run_id_for("+sweep=demo", "optim=adamw", f"model.ffn_mult={w}", *FAST, "train.steps=4")
                     for w in (1, 2)]
    assert names[0].startswith("gpt-tiny_adamw_w1_s0_")  # the prefix stays readable


def _train_losses(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in _rows(run.metrics_file, "train_loss")]


def test_resume_after_kill_matches_an_uninterrupted_run(env: dict, tmp_path: Path) -> None:
    common = [*FAST, "train.steps=40", "train.log_every=1"]
    run_train([*common, "sweep_name=straight"], env)
    straight = RunDir(tmp_path / "runs" / "straight" / run_id_for(*common))

    killed = RunDir(tmp_path / "runs" / "killed" / run_id_for(*common))
    gate = tmp_path / "gate"
    # Held after step 25, between the checkpoints at 20 and 30, until the kill: rows 21-25 are on disk
    # beyond the checkpoint the relaunch resumes from, however fast the run trains.
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *common, "sweep_name=killed"],
                            cwd=ROOT, env=hold_env(env, gate, 25), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until_held(gate, 25, ended(proc))
        assert [s for s, _ in killed.checkpoints()] == [10, 20] and max(s for s, _ in _train_losses(killed)) == 25
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)  # hang guard: SIGKILL ends a process at once
    assert not killed.is_done()
    assert killed.read_status()["status"] == "running"

    proc = run_train([*common, "sweep_name=killed"], env)
    assert f"resumed {killed.path.name} from step 20 " in proc.stdout + proc.stderr
    assert killed.is_done()
    a, b = _train_losses(straight), _train_losses(killed)
    assert [s for s, _ in b] == list(range(1, 41))  # the same curve, no gap, no duplicate
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)
    assert killed.read_done()["final_eval_loss"] == pytest.approx(straight.read_done()["final_eval_loss"], rel=1e-6)
    sa = [(r["step"], r["layer"], r["site"], r["bucket"]) for r in iter_jsonl(straight.spectra_file)]
    sb = [(r["step"], r["layer"], r["site"], r["bucket"]) for r in iter_jsonl(killed.spectra_file)]
    assert sorted(sa) == sorted(sb)


def test_changed_config_is_refused_not_mixed(env: dict, tmp_path: Path) -> None:
    run_train([*FAST, "train.steps=10"], env)
    # telemetry.every does not enter the run id, but it is part of the run's identity.
    proc = run_train([*FAST, "train.steps=10", "telemetry.every=5"], env, check=False)
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "telemetry.every: 10 -> 5" in proc.stderr


def test_diverged_run_is_recorded_and_the_sweep_goes_on(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "div"
    run_train(["-m", "train.diverge_loss=100,1.0", f"hydra.sweep.dir={out}", *FAST, "train.steps=12",
               "train.ckpt_every=2"], env, check=True)
    bad, good = (RunDir(out / run_id_for(f"train.diverge_loss={v}", *FAST, "train.steps=12", "train.ckpt_every=2"))
                 for v in ("1.0", "100"))
    assert good.is_done()
    assert not bad.is_done() and bad.read_status()["status"] == "diverged"
    assert "train loss" in bad.read_status()["error"]
    # A relaunch skips the diverged run instead of retrying it.
    proc = run_train(["-m", "train.diverge_loss=100,1.0", f"hydra.sweep.dir={out}", *FAST, "train.steps=12",
                      "train.ckpt_every=2"], env)
    assert "1 diverged and skipped" in proc.stdout + proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["optim=sgd"], "sgd"),
    (["model.ffn_mlt=2"], "ffn_mlt"),
    (["model.ffn_mult=0"], "model.ffn_mult"),
    (["model.ffn_mult=1.01"], "not an integer width"),
    (["model.ffn_width=96.5"], "ffn_width"),
    (["data=text", "data.path=/nonexistent/corpus.txt"], "no such file"),
    (["-m", "model.ffn_mult=1,0"], "model.ffn_mult"),
    (["-m", "telemetry.every=5,10"], "run id collision"),
    (["-m", "data=text", "data.path=/nonexistent/corpus.txt"], "no such file"),
])
def test_bad_input_fails_before_any_training(env: dict, tmp_path: Path, args: list, needle: str) -> None:
    # Without HYDRA_FULL_ERROR, a user error is a short message, no traceback (issue 12 item 14).
    proc = run_train([*args, *FAST] if args[0] == "-m" else [*FAST, *args], _short_error_env(env), check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 15, proc.stderr  # e.g. the options of a group
    runs = tmp_path / "runs"
    trained = [p for p in runs.rglob("metrics.jsonl")] if runs.exists() else []
    assert trained == []


@pytest.mark.parametrize("content,needle", [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\0\0" * 64, "is not a text file")])
def test_bad_input_data_file_is_named_before_any_run_directory(env: dict, tmp_path: Path, content: bytes,
                                                               needle: str) -> None:
    # Issue 12 item 13: an empty file failed at set-up ("validation split of 16384 tokens does not fit
    # a corpus of 1 tokens") without naming it; a binary one failed after set-up.
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    proc = run_train(["-m", *FAST, "data=text", f"data.path={corpus}", "model.ffn_mult=2,4"], env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{corpus} {needle}" in out, out[-3000:]
    assert out.count(f"{corpus} {needle}") == 2  # both grid points refused, nothing launched
    assert not (tmp_path / "runs").exists()


def test_bad_input_full_error_env_still_shows_the_traceback(env: dict, tmp_path: Path) -> None:
    proc = run_train([*FAST, "model.ffn_mult=0"], {**env, "HYDRA_FULL_ERROR": "1"}, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "model.ffn_mult" in proc.stderr


def test_bad_input_changed_config_is_a_short_error(env: dict, tmp_path: Path) -> None:
    run_train([*FAST, "train.steps=2"], env)
    short = _short_error_env(env)
    # (the grid names its sweep `default`, the folder of the single run)
    for argv in ([*FAST, "train.steps=2", "telemetry.every=5"],
                 ["-m", *FAST, "train.steps=2", "telemetry.every=5", "sweep_name=default"]):
        proc = run_train(argv, short, check=False)
        assert proc.returncode != 0, proc.stdout[-2000:]
        assert "different config" in proc.stderr and "telemetry.every: 10 -> 5" in proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def test_rank_fraction_axis_only_multiplies_low_rank_optimizers(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "rf"
    proc = run_train(["-m", "optim=adamw,dion", "optim.rank_fraction=0.5,0.25", f"hydra.sweep.dir={out}",
                      *FAST, "train.steps=3"], env)
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == sorted(run_id_for(f"optim={o}", f"optim.rank_fraction={r}", *FAST, "train.steps=3")
                           for o, r in (("adamw", 0.5), ("dion", 0.25), ("dion", 0.5)))
    assert [n.split("_")[1] for n in names] == ["adamw", "dion-r0.25", "dion-r0.5"]
    assert "launched once" in proc.stdout + proc.stderr
    axes = RunDir(out / names[1]).read_status()["axes"]
    assert axes["optimizer"] == "dion" and axes["rank_fraction"] == 0.25
