"""W&B as a view of the local files: offline runs read back with `wandb leet inspect`, resume,
an unreachable server, credentials, and the fit's W&B input/output. No server, loopback only."""

from __future__ import annotations

import logging
import math
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from specsweep.sweep.analysis import wandb_io
from specsweep.sweep.credentials import REDACTED, redact_secrets, secrets_in
from specsweep.sweep.grid.spec import LoggerSpec
from specsweep.sweep.run.wandb_attempts import logged_up_to
from specsweep.sweep.run.wandb_logger import (NullLogger, WandbLogger, layer_table, make_logger, replay_after_resume,
                                    resolve_mode, spectral_rows, wandb_config)
from specsweep.sweep.rundir import RunDir, iter_jsonl
from specsweep.sweep.wandb_keys import LAYER_TABLE_KEY, metric_from_wandb, record_key, stable_wandb_id
from tests.conftest import ROOT, ended, hold_env, run_id_for, run_train, wait_until_held

FAKE_KEY = "0123456789abcdef" * 2 + "feedbeef"  # 40 hex characters, the shape of a W&B key
SMOKE_TELEMETRY_STEPS = [1, 10, 20, 30]


def _wandb_env(env: dict) -> dict:
    # WANDB_SERVICE: set by a W&B run in this process; a child given it logs through this process's
    # W&B service (and its runs outlive a killed child), so runs of the tests stay apart.
    return {**{k: v for k, v in env.items() if k != "WANDB_SERVICE"}, "WANDB_API_KEY": FAKE_KEY,
            "WANDB_ERROR_REPORTING": "false"}


def _folders(run: RunDir) -> list[Path]:
    return sorted((run.path / "wandb").glob("offline-run-*"), key=lambda p: p.name)


def _assert_no_key(*roots: Path, texts: tuple[str, ...] = ()) -> None:
    """The fake API key appears in no file under the roots (binary W&B logs included)."""
    needle = FAKE_KEY.encode()
    for root in roots:
        if not root.exists():
            continue
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink():
                assert needle not in f.read_bytes(), f"API key leaked into {f}"
    for text in texts:
        assert FAKE_KEY not in text


def _wandb_dirs(tmp_path: Path) -> list[Path]:
    return [tmp_path / n for n in ("wandb", "wandb-data", "wandb-cache", "wandb-config")]


# ---- unit tests ---------------------------------------------------------------------------------

def test_secrets_are_redacted_and_found_by_name() -> None:
    environ = {"WANDB_API_KEY": FAKE_KEY, "HF_TOKEN": "hf_abcdefgh", "MAX_TOKENS": "1234567890",
               "HOME": "/home/someone"}
    assert secrets_in(f"x{FAKE_KEY}y", environ) == ["WANDB_API_KEY"]
    assert secrets_in("/home/someone 1234567890", environ) == []
    cfg = {"data": {"train_tokens": 1000, "url": f"https://u:{FAKE_KEY}@host"},
           "logger": {"api_key": "whatever", "tags": [FAKE_KEY]}, "train": {"tokens_per_s": 3}}
    out = redact_secrets(cfg, [FAKE_KEY])
    assert out["data"] == {"train_tokens": 1000, "url": f"https://u:{REDACTED}@host"}
    assert out["logger"] == {"api_key": REDACTED, "tags": [REDACTED]} and out["train"] == {"tokens_per_s": 3}
    wcfg = wandb_config({"run_id_exclude": ["x"], "volatile_keys": [], "seed": 0}, {"optimizer": "muon"})
    assert wcfg == {"seed": 0, "axis": {"optimizer": "muon"}}


def test_config_with_a_credential_is_refused(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    from specsweep.sweep.grid.spec import ConfigError, build_run_spec

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    from omegaconf import open_dict

    from specsweep.sweep.grid.run_id import identity_overrides

    cfg = compose(["+preset=smoke"])
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.data.note = f"x{FAKE_KEY}"  # e.g. a resolved ${oc.env:WANDB_API_KEY} in a config file
    with pytest.raises(ConfigError) as err:
        build_run_spec(cfg)
    assert "data.note: holds the value of $WANDB_API_KEY" in str(err.value) and FAKE_KEY not in str(err.value)
    # An override carrying it fails while the run id (hence the run directory) is computed.
    with pytest.raises(ValueError, match=r"\$WANDB_API_KEY") as err:
        identity_overrides([f"+note={FAKE_KEY}"], [])
    assert FAKE_KEY not in str(err.value)


def test_errors_log_records_and_sweep_records_never_show_a_credential(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """Issue 12 item 2: every text that could echo a secret shows *** instead."""
    import io

    from omegaconf import OmegaConf

    from specsweep.sweep.rundir import sweepdir
    from specsweep.sweep.credentials import RedactingFilter
    from specsweep.sweep.errors import ConfigError, SweepError
    from specsweep.sweep.grid.preflight import plan_sweep

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("SPECSWEEP_API_TOKEN", FAKE_KEY[::-1])
    assert REDACTED == "***"
    for error in (ConfigError(f"bad value {FAKE_KEY}"), SweepError(f"job [+note={FAKE_KEY}]")):
        assert FAKE_KEY not in str(error) and REDACTED in str(error)

    # The preflight's refusal of a job whose overrides carry a credential (e.g. from a sweep file's
    # params, which never pass the command-line check) labels the job redacted.
    class Loader:
        def load_sweep_config(self, master, overrides):
            raise ValueError(f"cannot compose {overrides}")

    with pytest.raises(SweepError) as err:
        plan_sweep(Loader(), OmegaConf.create({}), [["+preset=smoke", f"+note={FAKE_KEY}"]])
    assert "job [+preset=smoke +note=***]" in str(err.value) and FAKE_KEY not in str(err.value)

    # Log records (console and train.log), tracebacks included.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        logger.warning("launching %s", f"+note={FAKE_KEY}")
        try:
            raise RuntimeError(f"server said {FAKE_KEY}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert FAKE_KEY not in stream.getvalue() and "launching +note=***" in stream.getvalue()
    assert "RuntimeError: server said ***" in stream.getvalue()

    # grid.json (what `sweep.status --resubmit` relaunches) keeps no credential, and a relaunch
    # with an extra argument carrying one is refused without echoing it.
    sweepdir.record_launch(tmp_path, [("r", ["+preset=smoke"])], ["+preset=smoke"], [])
    assert FAKE_KEY[::-1] not in sweepdir.grid_file(tmp_path).read_text()
    launch = sweepdir.read_grid(tmp_path)["launches"][0]
    with pytest.raises(SweepError) as err:
        sweepdir.relaunch_command(launch, tmp_path, ["r"], [f"+note={FAKE_KEY}"])
    assert "'+note=***'" in str(err.value) and FAKE_KEY not in str(err.value)


@pytest.mark.parametrize("args", [
    ["-m", f"+note={FAKE_KEY}"],
    [f"+note={FAKE_KEY}"],
    ["-m", f"optim={FAKE_KEY}"],
    [f"optim={FAKE_KEY}"],
    ["-m", "+note=${oc.env:WANDB_API_KEY}"],
    ["+note=${oc.env:WANDB_API_KEY}"],
])
def test_a_credential_on_the_command_line_is_refused_and_never_echoed(env: dict, tmp_path: Path,
                                                                      args: list) -> None:
    # Issue 12 item 2: with -m the refusal printed the job's overrides, the key included.
    env = {k: v for k, v in _wandb_env(env).items() if k != "HYDRA_FULL_ERROR"}
    argv = [*args[:1], "+preset=smoke", "logger=wandb_offline", *args[1:]] if args[0] == "-m" else \
        ["+preset=smoke", "logger=wandb_offline", *args]
    proc = run_train(argv, env, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "$WANDB_API_KEY" in out and "credentials stay in the environment" in out, out
    assert "Traceback" not in out
    _assert_no_key(tmp_path, texts=(out,))
    assert not (tmp_path / "runs").exists()  # refused before any run or sweep directory


def test_key_scheme_medians_and_metric_names() -> None:
    recs = [{"step": 10, "layer": l, "site": "post", "bucket": "tail", "status": "ok",
             "hard_rank": float(l + 1), "renyi_0.5": 2.0 * (l + 1)} for l in range(3)]
    recs.append({"step": 10, "layer": 3, "site": "post", "bucket": "tail", "status": "too few rows",
                 "hard_rank": None, "renyi_0.5": None})
    data = spectral_rows(recs, ["hard_rank", "renyi_0.5"])
    assert data["spectral/post/tail/hard_rank/L02"] == 3.0
    assert data["spectral/post/tail/renyi_0p5/L00"] == 2.0  # no "." in W&B keys
    assert data["spectral_median/post/tail/hard_rank"] == 2.0  # over ok layers only
    assert data["spectral_median/post/tail/renyi_0p5"] == 4.0
    assert not any("L03" in k for k in data)
    assert set(spectral_rows(recs, ["hard_rank"], per_layer=False)) == {"spectral_median/post/tail/hard_rank"}
    columns, rows = layer_table(recs, ["hard_rank", "renyi_0.5"])
    assert columns == ["step", "layer", "site", "bucket", "hard_rank", "renyi_0p5"]
    assert rows == [[10, l, "post", "tail", l + 1.0, 2.0 * (l + 1)] for l in range(3)]  # ok records only
    assert record_key(recs[0], "renyi_inf") == "spectral/post/tail/renyi_inf/L00"
    assert metric_from_wandb("renyi_0p5") == "renyi_0.5" and metric_from_wandb("hard_rank") == "hard_rank"
    assert stable_wandb_id("s", "r") == stable_wandb_id("s", "r") != stable_wandb_id("s2", "r")


def test_mode_from_environment_wins() -> None:
    assert resolve_mode("online", {"WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("offline", {"WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("online", {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode("online", {}) == "online"


class _BrokenRun:
    def __init__(self) -> None:
        self.calls = 0

    def log(self, data: dict) -> None:
        self.calls += 1
        raise ConnectionError("server went away")


def test_mid_run_failure_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    logger = WandbLogger.__new__(WandbLogger)
    logger._broken, logger._run, logger._wandb = False, _BrokenRun(), None
    with caplog.at_level(logging.WARNING, logger="specsweep.logger"):
        for step in range(1, 6):
            logger.log({"step": step, "train_loss": 1.0}, step)
            logger.log_spectra([{"layer": 0, "site": "pre", "bucket": "global", "status": "ok",
                                 "hard_rank": 1.0}], step, ["hard_rank"])
    assert logger._run.calls == 1
    assert [r.getMessage() for r in caplog.records].count(
        "W&B log failed (ConnectionError: server went away); continuing with local files only") == 1


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch: pytest.MonkeyPatch):
    """Each test starts as a new process would: W&B online never failed before, no W&B service."""
    monkeypatch.setattr("specsweep.sweep.run.wandb_logger._online_failure", None)
    # the fakes below decide whether online fails, not the reachability probe (issue 22 item 12)
    monkeypatch.setattr("specsweep.sweep.run.wandb_logger.wandb_server_unreachable", lambda: None)
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # also takes WANDB_SERVICE out of the environment


class _FakeWandbLogger(NullLogger):
    """Stands in for WandbLogger: records the modes tried, fails for the modes in ``fail``."""

    tried: list = []
    fail: set = set()

    def __init__(self, spec, *, mode, **kwargs):
        type(self).tried.append(mode)
        if mode in type(self).fail:
            raise RuntimeError(f"{mode} down")
        self.mode = mode


def test_online_failure_falls_back_to_offline_then_to_nothing(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("specsweep.sweep.run.wandb_logger.WandbLogger", _FakeWandbLogger)
    monkeypatch.setattr(_FakeWandbLogger, "tried", [])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="online")
    monkeypatch.setattr(_FakeWandbLogger, "fail", {"online"})
    with caplog.at_level(logging.WARNING, logger="specsweep.logger"):
        assert make_logger(spec, run_dir=Path("R")).mode == "offline"
        monkeypatch.setattr("specsweep.sweep.run.wandb_logger._online_failure", None)  # as in a new process
        monkeypatch.setattr(_FakeWandbLogger, "fail", {"online", "offline"})
        assert type(make_logger(spec, run_dir=Path("R"))) is NullLogger
    assert _FakeWandbLogger.tried == ["online", "offline", "online", "offline"]
    assert len(caplog.records) == 2 and "wandb sync R/wandb/offline-run-*" in caplog.records[0].getMessage()
    assert type(make_logger(LoggerSpec("none", "p", None, "disabled"))) is NullLogger


def test_one_failed_online_start_sends_the_later_runs_offline_at_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Issue 12 item 11: each grid point waited the full init_timeout again for an unreachable server.
    monkeypatch.setattr("specsweep.sweep.run.wandb_logger.WandbLogger", _FakeWandbLogger)
    monkeypatch.setattr(_FakeWandbLogger, "tried", [])
    monkeypatch.setattr(_FakeWandbLogger, "fail", {"online"})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="online")
    with caplog.at_level(logging.INFO, logger="specsweep.logger"):
        modes = [make_logger(spec, run_dir=Path(f"R{i}")).mode for i in range(3)]
    assert modes == ["offline"] * 3
    assert _FakeWandbLogger.tried == ["online", "offline", "offline", "offline"]  # one online attempt
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "online down" in warnings[0].getMessage()
    # Every later run still says where its offline rows are, for `wandb sync`.
    hints = [f"wandb sync R{i}/wandb/offline-run-*" in r.getMessage() for i, r in enumerate(caplog.records)]
    assert hints == [True] * 3


def _api_run(name: str, optimizer: str, width: int, state: str = "finished") -> SimpleNamespace:
    history = []
    for step in (10, 20, 20, 30):  # step 20 twice: a resumed run re-logs it; the last value wins
        history.append({"trainer/step": step, "train/train_loss": 5.0 - step / 10, "train/lr": 1e-3,
                        "trainer/tokens": step * 100, "_step": len(history)})
        history.append({"trainer/step": step, "_step": len(history), **{
            f"spectral/{site}/global/{m}/L{l:02d}": width / 8 * (l + 1) + (step == 20) * len(history)
            for site in ("pre", "post") for m in ("soft_rank", "hard_rank", "renyi_0p5") for l in (0, 1)}})
    history.append({"trainer/step": 30, "eval/loss": 3.5, "eval/ppl": 33.1})
    config = {"axis": {"value": {"optimizer": optimizer, "ffn_width": width, "d_model": 64, "seed": 0}},
              "run_id": {"value": name}, "_wandb": {"value": {}}}
    return SimpleNamespace(name=name, group="g", job_type="train", state=state, config=config,
                           summary={"final/eval_loss": 3.5, "final/train_loss": 2.0, "final/step": 30},
                           scan_history=lambda page_size=1000, h=history: iter(h))


def test_runs_rebuilt_from_the_wandb_api_are_read_by_the_fit(tmp_path: Path) -> None:
    from specsweep.sweep.analysis.read import load_sweeps

    runs = [_api_run(f"r{w}", "adamw", w) for w in (64, 128)] + [_api_run("crashed", "adamw", 256, "crashed")]
    runs.append(SimpleNamespace(name="analysis", job_type="analysis"))
    api = SimpleNamespace(default_entity="me", runs=lambda path, filters: (
        [r for r in runs] if (path, filters) == ("me/proj", {"group": "g"}) else []))
    assert wandb_io.materialize("proj/g", tmp_path / "runs", api=api) == 3
    contents = load_sweeps([tmp_path / "runs"])
    assert sorted(r.run_id for r in contents.runs) == ["r128", "r64"]
    assert [Path(p).name for p, _ in contents.excluded] == ["crashed"]
    run = next(r for r in contents.runs if r.run_id == "r64")
    assert run.axes["ffn_width"] == 64 and run.eval_loss == 3.5
    s = run.spectra
    assert sorted(s["step"].unique()) == [10, 20, 30] and "renyi_0.5" in s.columns
    assert len(s) == 3 * 2 * 2  # steps × layers × sites, no duplicate for the re-logged step
    assert s[(s.step == 20) & (s.layer == 0) & (s.site == "pre")]["soft_rank"].item() == 8 + 5
    metrics = list(iter_jsonl(tmp_path / "runs" / "r64" / "metrics.jsonl"))
    assert [r["step"] for r in metrics if "train_loss" in r] == [10, 20, 30]
    assert [r["eval_loss"] for r in metrics if "eval_loss" in r] == [3.5]
    with pytest.raises(ValueError):
        list(wandb_io.api_runs("just-a-name", api=api))


# ---- end to end (offline files, no server) ------------------------------------------------------

def _history(parsed: dict, key: str) -> list[dict]:
    return [h for h in parsed["history"] if key in h]


@pytest.mark.slow
def test_offline_grid_is_one_wandb_run_per_job(env: dict, tmp_path: Path) -> None:
    from specsweep.sweep.analysis.points import build_points
    from specsweep.sweep.analysis.read import load_sweeps
    from specsweep.sweep.analysis.rules import parse_rule

    out = tmp_path / "grid"
    proc = run_train(["-m", "optim=adamw,muon", "+preset=smoke", "logger=wandb_offline",
                      f"hydra.sweep.dir={out}", "telemetry.log_eigenvalues=true"], _wandb_env(env))
    ids = set()
    for opt in ("adamw", "muon"):
        run = RunDir(out / run_id_for(f"optim={opt}", "+preset=smoke"))
        assert run.is_done()
        (folder,) = _folders(run)
        parsed = wandb_io.read_offline_run(folder)
        meta, summary = parsed["run"], parsed["summary"]
        group = run.read_status()["sweep"]  # the grid's default name (no sweep_name given)
        assert group.startswith("grid-optim-")
        wid = stable_wandb_id(group, run.path.name)
        assert meta["run_id"] == wid == run.read_status()["wandb_id"] and folder.name.endswith(wid)
        assert meta["display_name"] == run.path.name and meta["run_group"] == group
        assert meta["job_type"] == "train"
        assert {f"optimizer:{opt}", "ffn_width:256", "seed:0"} <= set(meta["tags"])
        cfg = summary["config"]
        assert cfg["axis"]["optimizer"] == opt and cfg["axis"]["ffn_width"] == 256
        assert cfg["optim"]["name"] == opt and cfg["run_id"] == run.path.name
        assert "run_id_exclude" not in cfg and cfg["run_dir"] == str(run.path)
        assert summary["state"] == "finished"
        ids.add(meta["run_id"])

        # Ranks at exactly the telemetry steps: medians over layers as keys, the per-layer values
        # in one Table per event (per-layer keys are opt-in: logger.per_layer_keys).
        rank_rows = _history(parsed, "spectral_median/post/tail/hard_rank")
        assert [h["trainer/step"] for h in rank_rows] == SMOKE_TELEMETRY_STEPS
        assert all(f"{LAYER_TABLE_KEY}._type" in h and "spectral_median/pre/global/renyi_0p5" in h
                   for h in rank_rows)
        assert not any(k.startswith("spectral/") for h in parsed["history"] for k in h)
        spectra = [r for r in iter_jsonl(run.spectra_file)
                   if (r["site"], r["bucket"], r["layer"]) == ("post", "tail", 1)]
        (record,) = list(wandb_io.offline_runs(run.path))
        from_tables = [r for r in wandb_io.run_files(record).spectra
                       if (r["site"], r["bucket"], r["layer"]) == ("post", "tail", 1)]
        assert [r["hard_rank"] for r in from_tables] == pytest.approx(
            [r["hard_rank"] for r in sorted(spectra, key=lambda r: r["step"])])
        hist = _history(parsed, "spectrum/post/global/L00._type")
        assert [h["trainer/step"] for h in hist] == SMOKE_TELEMETRY_STEPS
        assert hist[0]["spectrum/post/global/L00._type"] == "histogram"
        assert any("spectrum_plot/pre/global_table._type" in h for h in parsed["history"])

        # The same train/eval rows as metrics.jsonl, and the summary of the run.
        local = [r for r in iter_jsonl(run.metrics_file) if "train_loss" in r]
        train = _history(parsed, "train/loss")
        assert [(h["trainer/step"], h["train/loss"]) for h in train] == [
            (r["step"], pytest.approx(r["train_loss"])) for r in local]
        assert [h["trainer/step"] for h in _history(parsed, "eval/loss")] == [10, 20, 30]
        s = summary["summary"]
        assert s["final/eval_loss"] == pytest.approx(run.read_done()["final_eval_loss"])
        assert s["final/step"] == 30 and 1 <= s["final/post/global/hard_rank"] <= 256
    assert len(ids) == 2
    _assert_no_key(out, *_wandb_dirs(tmp_path), texts=(proc.stdout, proc.stderr))

    # sweep.fit can rebuild the runs from the W&B files alone: the same points as from the run dirs.
    assert wandb_io.materialize(str(out), tmp_path / "rebuilt") == 2
    rule = parse_rule("paper")
    a, _ = build_points(load_sweeps([out]).runs, rule)
    b, _ = build_points(load_sweeps([tmp_path / "rebuilt"]).runs, rule)
    key = ["run_id", "metric", "bucket", "site"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) > 0 and a[key].equals(b[key])
    assert b["value"].to_numpy() == pytest.approx(a["value"].to_numpy(), rel=1e-9)
    assert b["eval_loss"].to_numpy() == pytest.approx(a["eval_loss"].to_numpy())


def test_an_attempt_killed_before_wandb_wrote_its_file_is_left_out(tmp_path: Path) -> None:
    """W&B writes its run file in blocks: a process killed in its first seconds leaves a file with
    the header only. --from-wandb read it as a second, nameless run."""
    folder = tmp_path / "run" / "wandb" / "offline-run-20260101_000000-abc"
    folder.mkdir(parents=True)
    (folder / "run-abc.wandb").write_bytes(b":W&B\xe1\xbe\x00")  # ident, magic 0xBEE1, version 0
    assert wandb_io.read_offline_run(folder)["run"] == {}
    assert list(wandb_io.offline_runs(tmp_path)) == []
    assert wandb_io.materialize(str(tmp_path), tmp_path / "rebuilt") == 0


def _attempt(run_dir: Path, wandb_id: str, steps: list, finish: bool = True) -> WandbLogger:
    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="offline", system_metrics=False,
                      console="off")
    logger = WandbLogger(spec, sweep_name="s", run_id="r", run_dir=run_dir, config={}, axes={}, wandb_id=wandb_id)
    for step in steps:
        logger.log({"step": step, "train_loss": 10.0 - step / 10}, step)
    if finish:
        logger.finish()
    return logger


@pytest.mark.parametrize("earlier", ["nothing written", "up to step 15"])
def test_resume_logs_again_what_the_killed_attempt_never_wrote(env: dict, tmp_path: Path, earlier: str) -> None:
    """W&B writes its file about every 15 s: a process killed in between lost more than the last
    checkpoint interval (all of it when killed young); the resume reads what the earlier
    attempt's file holds and logs the rest again."""
    run_dir = tmp_path / "run"
    (run_dir / "wandb").mkdir(parents=True)
    local = list(range(5, 35, 5))
    (run_dir / "metrics.jsonl").write_text("".join(
        f'{{"step": {s}, "train_loss": {10.0 - s / 10}}}\n' for s in local))
    old = run_dir / "wandb" / "offline-run-20000101_000000-wid"  # an earlier start than any today
    if earlier == "nothing written":
        old.mkdir()
        (old / "run-wid.wandb").write_bytes(b":W&B\xe1\xbe\x00")  # the header only
    else:
        _attempt(tmp_path / "first", "wid", [s for s in local if s <= 15])
        (first,) = (tmp_path / "first" / "wandb").glob("offline-run-*")
        first.rename(old)
    logger = _attempt(run_dir, "wid", [], finish=False)
    replay_after_resume(logger, run_dir / "metrics.jsonl", run_dir / "spectra.jsonl", after_step=20,
                        metrics=["hard_rank"])  # resumed at step 30, checkpoints every 10 steps
    logger.finish()
    (folder,) = [f for f in _folders(RunDir(run_dir)) if f != old]
    steps = [h["trainer/step"] for h in _history(wandb_io.read_offline_run(folder), "train/loss")]
    assert steps == ([5, 10, 15, 20, 25, 30] if earlier == "nothing written" else [15, 20, 25, 30])
    (record,) = list(wandb_io.offline_runs(run_dir))
    assert [r["step"] for r in wandb_io.run_files(record).metrics] == local


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_wandb_run(env: dict, tmp_path: Path) -> None:
    env = _wandb_env(env)
    args = ["+preset=smoke", "logger=wandb_offline", "sweep_name=killed"]
    run = RunDir(tmp_path / "runs" / "killed" / run_id_for("+preset=smoke"))
    gate = tmp_path / "gate"
    # Held after step 25 (checkpoints at 10 and 20, rows to 25 written) until the kill, however fast it trains.
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *args], cwd=ROOT, env=hold_env(env, gate, 25),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_held(gate, 25, ended(proc))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)  # hang guard: SIGKILL ends a process at once
    assert not run.is_done()
    first = _folders(run)
    assert len(first) == 1

    out = run_train(args, env)
    assert run.is_done() and f"resumed {run.path.name} from step" in out.stdout + out.stderr
    folders = _folders(run)
    assert len(folders) == 2 and folders[0] == first[0]
    wid = stable_wandb_id("killed", run.path.name)
    parsed = [wandb_io.read_offline_run(f) for f in folders]
    assert all(f.name.endswith(f"-{wid}") for f in folders) and run.read_status()["wandb_id"] == wid
    # W&B writes its file in blocks (flushed about every 15 s): the killed attempt may hold
    # nothing yet; whatever it holds is the same W&B run.
    assert parsed[1]["run"]["run_id"] == wid and parsed[0]["run"].get("run_id", wid) == wid
    assert all(p["run"]["display_name"] == run.path.name and p["run"]["resume"] for p in parsed if p["run"])
    assert parsed[1]["summary"]["state"] == "finished"
    # The relaunch replays the last checkpoint interval (the rows in flight when the process died
    # never reached the first attempt's file), then goes on.
    resumed_from = 20
    assert f"resumed {run.path.name} from step {resumed_from} " in out.stdout + out.stderr
    local = [r["step"] for r in iter_jsonl(run.metrics_file) if "train_loss" in r]
    steps = [h["trainer/step"] for h in _history(parsed[1], "train/loss")]
    # ... and whatever the first attempt's W&B file lacks (it may hold nothing: see above).
    # (as W&B's own summary of that file records it: its last trainer/step, which lags the rows when
    # an event's records were logged after a later train row; the replay is then the longer one)
    held = logged_up_to(run.path, wid, current=folders[1])
    assert held is None or held <= max((h["trainer/step"] for h in parsed[0]["history"] if "trainer/step" in h))
    after = min(resumed_from - 10, held - 1) if held is not None else 0
    assert steps == [s for s in local if s > after]
    assert resumed_from in [h["trainer/step"] for h in _history(parsed[1], "spectral_median/post/global/hard_rank")]
    # Read back as one run: every logged step of the local curve is there.
    (record,) = list(wandb_io.offline_runs(run.path))
    files = wandb_io.run_files(record)
    assert [r["step"] for r in files.metrics if "train_loss" in r] == local
    assert sorted({r["step"] for r in files.spectra}) == SMOKE_TELEMETRY_STEPS
    assert files.done["final_eval_loss"] == pytest.approx(run.read_done()["final_eval_loss"])


@pytest.mark.slow
def test_unreachable_server_trains_and_keeps_local_files(env: dict, tmp_path: Path) -> None:
    """A 2-run grid against a server that is down: one online attempt and one warning in all
    (issue 12 item 11: each run waited init_timeout again), every run trains and keeps its rows
    in an offline W&B run, and no stray ``run-*`` folder of the failed attempt is left."""
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in _wandb_env(env).items() if k != "WANDB_MODE"}
    env["WANDB_BASE_URL"] = f"http://127.0.0.1:{port}"
    proc = run_train(["-m", "+preset=smoke", "logger=wandb", "logger.init_timeout=2", "train.steps=10",
                      "model.ffn_mult=2,4", "sweep_name=default"], env, timeout=300)
    log = proc.stdout + proc.stderr
    assert log.count("W&B online could not start") == 1, log[-3000:]
    assert log.count("W&B online failed earlier in this process") == 1, log[-3000:]
    assert "Traceback" not in log
    for width in (2, 4):
        run = RunDir(tmp_path / "runs" / "default" / run_id_for("+preset=smoke", "train.steps=10", f"model.ffn_mult={width}"))
        assert run.is_done() and run.read_status()["status"] == "done"
        assert [r["step"] for r in iter_jsonl(run.metrics_file) if "train_loss" in r] == [1, 5, 10]
        assert sorted({r["step"] for r in iter_jsonl(run.spectra_file)}) == [1, 10]
        assert not math.isnan(run.read_done()["final_eval_loss"])
        # The rows were kept for a later `wandb sync`: an offline W&B run with the same stable id,
        # and nothing else (the failed online attempt's folder is gone).
        assert sorted(p.name for p in (run.path / "wandb").glob("*run-*")) == [p.name for p in _folders(run)]
        (folder,) = _folders(run)
        parsed = wandb_io.read_offline_run(folder)
        assert parsed["run"]["run_id"] == stable_wandb_id("default", run.path.name)
        assert [h["trainer/step"] for h in _history(parsed, "train/loss")] == [1, 5, 10]
    _assert_no_key(tmp_path / "runs", *_wandb_dirs(tmp_path), texts=(log,))


def test_the_configured_init_timeout_reaches_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """logger.init_timeout bounds each online attempt (W&B's default is 90 s)."""
    import wandb

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise wandb.errors.CommError("unreachable")

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_SILENT", "true")  # WandbLogger sets it; restored after the test
    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="online", init_timeout=2)
    with pytest.raises(wandb.errors.CommError):
        WandbLogger(spec, sweep_name="s", run_id="r", run_dir=tmp_path, config={}, axes={}, wandb_id="x")
    assert seen["settings"].init_timeout == 2.0 and seen["mode"] == "online"


@pytest.mark.slow
def test_fit_pushes_the_analysis_as_an_offline_wandb_run(env: dict, tmp_path: Path) -> None:
    try:
        from test_fit import write_sweep
    except ImportError:
        from tests.test_fit import write_sweep
    from specsweep.sweep.fit import main

    sweep = write_sweep(tmp_path / "demo", buckets=("global", "tail"))
    out = tmp_path / "analysis"
    assert main([str(sweep), "--out", str(out), "--n-boot", "50", "--wandb", "offline"]) == 0
    (folder,) = sorted((out / "wandb").glob("offline-run-*"))
    parsed = wandb_io.read_offline_run(folder)
    assert parsed["run"]["job_type"] == "analysis" and parsed["run"]["run_group"] == "demo"
    s = parsed["summary"]["summary"]
    assert s["beta/muon/post/global/hard"] == pytest.approx(_beta(out, "muon", "hard_rank"), rel=1e-9)
    logged = {k.split(".")[0] for h in parsed["history"] for k in h}
    assert {"tables/beta_summary", "tables/beta_table", "figures/rank_vs_width_post"} <= logged


def _beta(out: Path, optimizer: str, metric: str) -> float:
    import pandas as pd

    t = pd.read_csv(out / "beta_table.csv")
    row = t[(t.optimizer == optimizer) & (t.metric == metric) & (t.bucket == "global") & (t.site == "post")]
    return float(row["beta"].iloc[0])
