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


@pytest.mark.slow
def test_fit_from_wandb_into_a_new_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specsweep.sweep.analysis import wandb_io
    from specsweep.sweep.fit import main

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
    from specsweep.sweep.rundir import RunDir, iter_jsonl, read_jsonl_rows

    run = RunDir(tmp_path)
    run.metrics_file.write_bytes(b'{"step": 1}\n{"step": 2}\n' + tail)
    assert [r["step"] for r in iter_jsonl(run.metrics_file, strict=True)] == [1, 2]
    assert read_jsonl_rows(run.metrics_file) == ([{"step": 1}, {"step": 2}], 1)
    assert run.truncate_jsonl(run.metrics_file, 5) == 2
    assert run.metrics_file.read_bytes() == b'{"step": 1}\n{"step": 2}\n'


def test_a_non_utf8_spectra_line_drops_that_line_in_the_fit(tmp_path: Path) -> None:
    from specsweep.sweep.analysis.read import load_sweeps

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
_STAGE = ("import sys; from pathlib import Path; from specsweep.sweep.analysis.outdir import staging_dir; "
          "print(staging_dir(Path(sys.argv[1])), flush=True); sys.stdin.read()")


def test_next_fit_removes_staging_folders_of_dead_fits_only(tmp_path: Path) -> None:
    from specsweep.sweep.fit import main

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


# ---- item 5: sweep.status survives one bad run ----------------------------------------------------
def _obeying_permissions():
    try:
        from test_faults import _obeying_permissions as drop
    except ImportError:
        from tests.test_faults import _obeying_permissions as drop
    return drop()


def test_status_lists_every_run_and_says_which_file_of_a_bad_one_is_unreadable(tmp_path: Path) -> None:
    """Mode 000 is tested honestly as root: sweep.status runs in a child that dropped
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (tests/test_faults.py _obeying_permissions)."""
    sweep = tmp_path / "demo"

    def run(name: str, status: bytes | None, ckpt: bool = False, done: bool = False) -> Path:
        path = sweep / name
        path.mkdir(parents=True)
        if status is not None:
            (path / "run.json").write_bytes(status)
        if ckpt:
            (path / "checkpoints").mkdir()
            (path / "checkpoints" / "ckpt_00000020.pt").write_bytes(b"x")
        if done:
            (path / "DONE").write_text(json.dumps({"final_step": 30, "final_eval_loss": 2.5}))
        return path

    ok = json.dumps({"run_id": "a_good", "status": "done", "step": 30, "axes": {"steps": 30}}).encode()
    run("a_good", ok, done=True)
    junk = run("b_junk", b"\x89\xfe\xff\x00junk")
    empty = run("c_empty", b"")
    run("d_empty_ckpt", b"\0" * 64, ckpt=True)
    locked_dir = run("e_locked_dir", ok)
    locked_file = run("f_locked_file", ok)
    drop = _obeying_permissions()
    (locked_file / "run.json").chmod(0)
    locked_dir.chmod(0)
    try:
        proc = subprocess.run([sys.executable, "-m", "specsweep.sweep.status", str(sweep)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, preexec_fn=drop)
    finally:
        locked_dir.chmod(0o755)
        (locked_file / "run.json").chmod(0o644)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split()[2]: line for line in proc.stdout.splitlines()[1:-1]}
    assert sorted(lines) == ["a_good", "b_junk", "c_empty", "d_empty_ckpt", "e_locked_dir", "f_locked_file"]
    assert lines["a_good"].split()[0] == "done"
    assert f"unreadable: {junk / 'run.json'}: not UTF-8 text" in lines["b_junk"]
    assert f"unreadable: {empty / 'run.json'}: empty" in lines["c_empty"]
    assert lines["d_empty_ckpt"].split()[:2] == ["interrupted", "20/?"] and "run.json is empty" in lines["d_empty_ckpt"]
    assert f"unreadable: {locked_dir / 'run.json'}: Permission denied" in lines["e_locked_dir"]
    assert f"unreadable: {locked_file / 'run.json'}: Permission denied" in lines["f_locked_file"]
    assert proc.stdout.splitlines()[-1].startswith("6 runs:")


# ---- items 4, 5, 7, 9: faults at run time, end to end ------------------------------------------------
import shutil  # noqa: E402

from specsweep.sweep.rundir import RunDir, iter_jsonl  # noqa: E402
from tests.conftest import FAST, run_id_for, run_train  # noqa: E402

RUN_ID = run_id_for(*FAST)


def _env(runs: Path, data_cache: Path, full_error: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(SPECSWEEP_RUNS=str(runs), SPECSWEEP_DATA=str(data_cache), OMP_NUM_THREADS="1",
               WANDB_MODE="offline", WANDB_SILENT="true")
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return env


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> RunDir:
    """A finished FAST run (checkpoints at 20 and 30); tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    run_train(FAST, _env(root / "runs", data_cache))
    return RunDir(root / "runs" / "default" / RUN_ID)


def _unfinished_copy(template: RunDir, runs: Path) -> RunDir:
    """The template as if killed after its last checkpoint, before DONE."""
    run = RunDir(runs / "default" / RUN_ID)
    shutil.copytree(template.path, run.path)
    run.done_file.unlink()
    run.update_status(status="running")
    (run.path / "train.log").unlink(missing_ok=True)
    return run


def _launch(env: dict, code: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", code] if code else ["-m", "specsweep.sweep.train"]
    return subprocess.run([sys.executable, *head, *FAST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


_DISK_FULL = """
import errno, runpy, torch
real, calls = torch.save, []

class FullDisk:  # a file on a disk that fills up after 2,000 bytes
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, data):
        self.n += len(data)
        if self.n > 2000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)
    def flush(self):
        self.f.flush()

def save(obj, f, *a, **k):  # the second checkpoint (step 20) fills the disk: torch's own error path
    calls.append(1)
    return real(obj, FullDisk(f) if len(calls) == 2 else f, *a, **k)

torch.save = save
runpy.run_module("specsweep.sweep.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_disk_full_inside_torch_is_one_line_naming_the_checkpoint(tmp_path: Path, data_cache: Path) -> None:
    """Item 4: torch reports a full disk as RuntimeError 'unexpected pos' raised while handling the
    ENOSPC OSError; run.json and the console say 'No space left on device' and name the file."""
    proc = _launch(_env(tmp_path / "runs", data_cache), code=_DISK_FULL)
    assert proc.returncode != 0
    run = RunDir(tmp_path / "runs" / "default" / RUN_ID)
    ckpt = run.checkpoint_path(20)
    status = run.read_status()
    assert status["status"] == "failed" and status["step"] == 10
    assert "No space left on device" in status["error"] and str(ckpt) in status["error"]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "unexpected pos" not in out
    assert f"run {RUN_ID} ({run.path}) stopped: writing checkpoint: No space left on device: {ckpt}" in proc.stderr
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["ckpt_00000010.pt"]
    assert not list(run.path.rglob(".*.tmp-*"))
    log = (run.path / "train.log").read_text()
    assert "Traceback" in log and "unexpected pos" in log  # the whole story, in the run's log


def _junk_metrics(run: RunDir) -> str:
    lines = len(run.metrics_file.read_bytes().splitlines())
    with open(run.metrics_file, "ab") as f:
        f.write(b"42\n")
    return f"{run.metrics_file}, line {lines + 1}: not a JSON object"


def _corrupt_identity(run: RunDir) -> str:
    run.identity_file.write_bytes(b"\x89\xfe\xff")
    return f"cannot read {run.identity_file}"


def _junk_run_json(run: RunDir) -> str:
    run.status_file.write_bytes(b"\x89\xfe\xff\x00junk")
    return f"{run.status_file}: not UTF-8 text"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_junk_metrics, _corrupt_identity, _junk_run_json])
def test_a_fault_of_a_run_file_is_one_line_naming_file_and_run(tmp_path: Path, data_cache: Path,
                                                                finished: RunDir, damage) -> None:
    """Items 5 and 9: the console gets the file and the run, train.log the traceback."""
    run = _unfinished_copy(finished, tmp_path / "runs")
    what = damage(run)
    proc = _launch(_env(tmp_path / "runs", data_cache))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"run {RUN_ID} ({run.path}) stopped: {what}" in proc.stderr
    assert "Traceback" not in out and "UnicodeDecodeError" not in out
    assert "Traceback" in (run.path / "train.log").read_text()
    if damage is not _junk_metrics:
        return
    # HYDRA_FULL_ERROR=1 shows the traceback on the console too
    proc = _launch(_env(tmp_path / "runs", data_cache, full_error=True))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and what in proc.stderr


@pytest.mark.slow
def test_a_nul_tail_left_by_a_power_cut_resumes(tmp_path: Path, data_cache: Path, finished: RunDir) -> None:
    """Item 7: NUL bytes at the end of metrics.jsonl and spectra.jsonl are a torn last line."""
    run = _unfinished_copy(finished, tmp_path / "runs")
    for path in (run.metrics_file, run.spectra_file):
        with open(path, "ab") as f:
            f.write(b"\0" * 512)
    proc = _launch(_env(tmp_path / "runs", data_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.is_done() and b"\0" not in run.metrics_file.read_bytes() + run.spectra_file.read_bytes()
    steps = [r["step"] for r in iter_jsonl(run.metrics_file) if "train_loss" in r]
    assert steps == [r["step"] for r in iter_jsonl(finished.metrics_file) if "train_loss" in r]


# ---- item 6: a finished grid in a read-only directory -------------------------------------------------
@pytest.mark.slow
def test_finished_grid_in_a_read_only_directory_is_skipped(tmp_path: Path, data_cache: Path,
                                                           finished: RunDir) -> None:
    try:
        from test_faults import _make_read_only, _make_writable
    except ImportError:
        from tests.test_faults import _make_read_only, _make_writable
    runs = tmp_path / "runs"
    run = RunDir(runs / "default" / RUN_ID)
    shutil.copytree(finished.path, run.path)
    drop = _obeying_permissions()
    _make_read_only(runs)
    try:
        proc = subprocess.run([sys.executable, "-m", "specsweep.sweep.train", "-m", *FAST, "sweep_name=default"], cwd=ROOT,
                              env=_env(runs, data_cache), capture_output=True, text=True, timeout=300,
                              preexec_fn=drop)
    finally:
        _make_writable(runs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "1 finished and skipped" in out and "Traceback" not in out
    assert "nothing to launch" in out and not (runs / "default" / "multirun.yaml").exists()


# ---- item 10: SIGTERM to a -m launcher that trains its grid in-process ----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("at_step", [5, 10])
def test_sigterm_to_a_local_grid_stops_the_current_run_and_starts_no_other(tmp_path: Path, data_cache: Path,
                                                                          at_step: int) -> None:
    """At step 5 the run checkpoints and is interrupted; at step 10, its last, it finishes. Either
    way the launcher exits 143 and the second grid point never starts (a signal during the last
    step was forgotten and the grid went on)."""
    import signal

    from tests.conftest import ended, hold_env, wait_until_held

    gate = tmp_path / "gate"
    env = hold_env(_env(tmp_path / "runs", data_cache), gate, at_step)  # every grid point holds there
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", "-m", *FAST, "train.steps=10",
                             "model.ffn_mult=2,4", "sweep_name=g"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        held = wait_until_held(gate, at_step, ended(proc))
        assert held == proc.pid  # the basic launcher trains in the launcher's own process
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    first = RunDir(tmp_path / "runs" / "g" / run_id_for(*FAST, "train.steps=10", "model.ffn_mult=2"))
    second = RunDir(tmp_path / "runs" / "g" / run_id_for(*FAST, "train.steps=10", "model.ffn_mult=4"))
    status = first.read_status()
    assert status["status"] == ("interrupted" if at_step == 5 else "done"), out[-3000:]
    assert status["step"] == at_step and first.checkpoint_step() == at_step
    assert first.is_done() == (at_step == 10)
    assert not second.path.exists() or not second.read_status(), out[-3000:]


# ---- item 12: an unreachable W&B server ------------------------------------------------------------
def test_a_refused_wandb_server_sends_the_run_offline_without_an_online_attempt(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The failed online start only waited out init_timeout (nothing spins, training is as fast
    after it: see sweep/run/wandb_reach.py); a refused server is now known at once and never tried."""
    import socket

    from specsweep.sweep.grid.spec import LoggerSpec
    from specsweep.sweep.run import wandb_logger
    from specsweep.sweep.run.wandb_logger import NullLogger

    tried: list[str] = []

    class Fake(NullLogger):
        def __init__(self, spec, *, mode, **kwargs):
            tried.append(mode)
            self.mode = mode

    monkeypatch.setattr(wandb_logger, "WandbLogger", Fake)
    monkeypatch.setattr(wandb_logger, "_online_failure", None)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var))
    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="online")
    import wandb

    try:
        with socket.socket() as server:  # a loopback port that listens: W&B is tried online
            server.bind(("127.0.0.1", 0))
            server.listen()
            monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
            wandb.teardown()  # W&B reads its settings once per process
            assert wandb_logger.make_logger(spec, run_dir=tmp_path / "a").mode == "online"
        # the same port, closed: refused at once, the run logs offline, online never tried
        wandb.teardown()
        assert wandb_logger.make_logger(spec, run_dir=tmp_path / "b").mode == "offline"
        assert tried == ["online", "offline"]
        # behind a proxy only W&B can tell: it is tried
        monkeypatch.setattr(wandb_logger, "_online_failure", None)
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
        wandb.teardown()
        assert wandb_logger.make_logger(spec, run_dir=tmp_path / "c").mode == "online"
    finally:
        wandb.teardown()


@pytest.mark.slow
def test_a_read_only_run_directory_is_one_line_naming_it_and_the_run(tmp_path: Path, data_cache: Path,
                                                                     finished: RunDir) -> None:
    """Item 9, read-only: the run's log cannot be written there either, so the console says that too."""
    try:
        from test_faults import _make_read_only, _make_writable
    except ImportError:
        from tests.test_faults import _make_read_only, _make_writable
    run = _unfinished_copy(finished, tmp_path / "runs")
    drop = _obeying_permissions()
    _make_read_only(run.path)
    try:
        proc = subprocess.run([sys.executable, "-m", "specsweep.sweep.train", *FAST], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=_env(tmp_path / "runs", data_cache), preexec_fn=drop)
    finally:
        _make_writable(run.path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"run {RUN_ID} ({run.path}) stopped: cannot write to the run directory {run.path}" in proc.stderr
    assert "Traceback" not in out and f"cannot write the log file {run.path / 'train.log'}" in out
