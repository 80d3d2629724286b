"""What one training run shows in W&B (issue 16, items 6-8), read back from offline files with
`wandb leet inspect`: system metrics and the console log, provenance in the config, metric
definitions, key names without repetition, and a key count that does not grow with depth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from specsweep.metrics.records import metric_keys
from specsweep.sweep.analysis import wandb_io
from specsweep.sweep.analysis.wandb_history import history_rows
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.spec import LoggerSpec
from specsweep.sweep.rundir import RunDir, iter_jsonl
from specsweep.sweep.run.provenance import git_state, run_provenance
from specsweep.sweep.run.wandb_logger import WandbLogger, make_logger, settings_for
from specsweep.sweep.wandb_keys import LAYER_TABLE_KEY, column_of_key, metric_to_wandb, train_key
from tests.conftest import ROOT

METRICS = metric_keys([0.5, 2.0, 3.0, float("inf")])  # the default telemetry's 9 metrics
SITES, BUCKETS = ("pre", "post"), ("global", "head", "mid", "tail")
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
         "SLURM_JOB_NODELIST": "gpu[01-02]"}


@pytest.fixture(autouse=True)
def _no_wandb_service_left():
    """A W&B run in this process leaves its service and WANDB_SERVICE (which children inherit and
    would log through) behind: shut it down after each test."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def _spec(**kw) -> LoggerSpec:
    base = dict(backend="wandb", project="p", entity=None, mode="offline", system_metrics=False, console="off")
    return LoggerSpec(**{**base, **kw})


def _logger(run_dir: Path, spec: LoggerSpec) -> WandbLogger:
    return WandbLogger(spec, sweep_name="s", run_id="r", run_dir=run_dir, config={"run_id": "r", "seed": 0},
                       axes={"optimizer": "adamw"}, wandb_id=f"id{abs(hash(run_dir)) % 10**8}")


def _folder(run_dir: Path) -> Path:
    (folder,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    return folder


def _records(step: int, n_layers: int) -> list[dict]:
    """Telemetry records of one event of an ``n_layers`` model, distinct values per record."""
    out = []
    for layer in range(n_layers):
        for i, (site, bucket) in enumerate((s, b) for s in SITES for b in BUCKETS):
            rec = {"step": step, "layer": layer, "site": site, "bucket": bucket, "status": "ok"}
            rec.update({m: step + layer + i / 10 + j / 100 for j, m in enumerate(METRICS)})
            out.append(rec)
    out.append({"step": step, "layer": n_layers, "site": "post", "bucket": "tail", "status": "too_few_rows",
                **{m: None for m in METRICS}})
    return out


def _leet_records(folder: Path) -> list[dict]:
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(folder)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---- item 7: key names --------------------------------------------------------------------------

def test_key_names_have_no_repeated_prefix_and_old_names_stay_readable() -> None:
    assert [train_key(c) for c in ("train_loss", "lr", "grad_norm", "eval_loss", "eval_ppl", "step", "tokens")] == [
        "train/loss", "train/lr", "train/grad_norm", "eval/loss", "eval/ppl", "trainer/step", "trainer/tokens"]
    for column in ("train_loss", "lr", "tokens_per_s", "grad_norm", "eval_loss", "eval_ppl", "tokens", "elapsed_s"):
        assert column_of_key(train_key(column)) == column
    assert column_of_key("train/train_loss") == "train_loss"  # runs logged before the rename
    assert column_of_key("spectral_median/post/tail/hard_rank") is None and column_of_key("_step") is None
    # The same rows under the old and the new names rebuild the same metrics.jsonl rows.
    old = [{"trainer/step": 5, "train/train_loss": 2.5, "train/lr": 1e-3, "trainer/tokens": 640},
           {"trainer/step": 10, "eval/loss": 2.0, "eval/ppl": 7.4, "trainer/tokens": 1280}]
    new = [{"trainer/step": 5, "train/loss": 2.5, "train/lr": 1e-3, "trainer/tokens": 640}, old[1]]
    assert history_rows(old)[:2] == history_rows(new)[:2] == (
        {5: {"step": 5, "train_loss": 2.5, "lr": 1e-3, "tokens": 640}},
        {10: {"step": 10, "eval_loss": 2.0, "eval_ppl": 7.4, "tokens": 1280}})


# ---- item 7: provenance and metric definitions ---------------------------------------------------

def test_provenance_is_never_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip() != ""
        assert git_state(ROOT) == {"git_commit": head.stdout.strip(), "git_dirty": dirty}
    none = {"git_commit": None, "git_dirty": None}
    assert git_state(tmp_path) == none  # not a checkout
    nested = ROOT / ".venv"  # inside the checkout but not its top: e.g. a package installed in a venv
    if nested.is_dir():
        assert git_state(nested) == none
    assert run_provenance({}, tmp_path) == none  # SLURM keys only when set
    assert run_provenance({**SLURM, "SLURM_ARRAY_TASK_ID": ""}, tmp_path) == {
        "slurm_job_id": "4242", "slurm_array_job_id": "4240", "slurm_job_nodelist": "gpu[01-02]", **none}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_state(ROOT) == none


def test_run_config_has_provenance_and_eval_loss_keeps_its_minimum(env: dict, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    logger = _logger(tmp_path / "run", _spec())
    for step, train_loss, eval_loss in ((10, 3.0, 2.9), (20, 2.0, 2.1), (30, 2.5, 2.4)):
        logger.log({"step": step, "train_loss": train_loss, "lr": 1e-3, "tokens": step * 64}, step)
        logger.log({"step": step, "eval_loss": eval_loss, "eval_ppl": 2.0 ** eval_loss}, step)
    logger.finish()
    folder = _folder(tmp_path / "run")
    parsed = wandb_io.read_offline_run(folder)
    prov = parsed["summary"]["config"]["provenance"]
    assert {k: prov[k] for k in ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id",
                                 "slurm_job_nodelist")} == {"slurm_job_id": "4242", "slurm_array_job_id": "4240",
                                                            "slurm_array_task_id": "2",
                                                            "slurm_job_nodelist": "gpu[01-02]"}
    assert prov["git_commit"] == git_state()["git_commit"] and "git_dirty" in prov
    # eval/loss: its minimum in the summary, on the trainer/step axis like every key.
    defined = {r["metric"].get("name"): r["metric"] for r in _leet_records(folder) if r["type"] == "metric"}
    assert defined["eval/loss"]["summary"] == {"min": True}
    assert defined["train/loss"]["summary"] == {"last": True}
    assert all(defined[k]["step_metric"] == "trainer/step" for k in ("eval/loss", "eval/ppl", "train/loss"))
    summary = parsed["summary"]["summary"]
    assert summary["eval/loss"] == {"min": 2.1} and summary["train/loss"] == {"last": 2.5}
    # train rows under train/loss (no train/train_loss), read back as metrics.jsonl's train_loss.
    keys = {k for h in parsed["history"] for k in h}
    assert "train/loss" in keys and "train/train_loss" not in keys
    (record,) = list(wandb_io.offline_runs(tmp_path / "run"))
    assert [r["train_loss"] for r in wandb_io.run_files(record).metrics if "train_loss" in r] == [3.0, 2.0, 2.5]


# ---- item 8: key budget -------------------------------------------------------------------------

def _event_keys(parsed: dict) -> list[set[str]]:
    """The W&B keys of each telemetry event's history row (internal ``_`` keys left out)."""
    return [{k.split(".")[0] for k in h if not k.startswith("_")} for h in parsed["history"]]


@pytest.mark.parametrize("per_layer", [False, True])
def test_key_count_per_event_and_spectra_rebuilt_from_wandb(env: dict, tmp_path: Path, per_layer: bool) -> None:
    """24 layers x 2 sites x 4 buckets x 9 metrics: 1,728 per-layer values per event. By default
    they go into one Table; the keys are the 72 medians, the Table and the step."""
    run_dir = tmp_path / "run"
    logger = _logger(run_dir, _spec(per_layer_keys=per_layer))
    events = {step: _records(step, 24) for step in (10, 20)}
    for step, records in events.items():
        logger.log_spectra(records, step, METRICS)
    logger.finish()
    parsed = wandb_io.read_offline_run(_folder(run_dir))
    medians = {f"spectral_median/{s}/{b}/{metric_to_wandb(m)}" for s in SITES for b in BUCKETS for m in METRICS}
    per_layer_keys = {f"spectral/{s}/{b}/{metric_to_wandb(m)}/L{layer:02d}"
                      for s in SITES for b in BUCKETS for m in METRICS for layer in range(24)}
    expected = medians | {LAYER_TABLE_KEY, "trainer/step"} | (per_layer_keys if per_layer else set())
    assert _event_keys(parsed) == [expected, expected]
    assert len(expected) == (1802 if per_layer else 74)

    # sweep.fit --from-wandb rebuilds spectra.jsonl: from the scalars, or from the Tables.
    assert wandb_io.materialize(str(run_dir), tmp_path / "rebuilt") == 1
    rebuilt = list(iter_jsonl(tmp_path / "rebuilt" / "r" / "spectra.jsonl"))
    ok = [r for records in events.values() for r in records if r["status"] == "ok"]
    key = lambda r: (r["step"], r["layer"], r["site"], r["bucket"])  # noqa: E731
    assert sorted(map(key, rebuilt)) == sorted(map(key, ok))
    by_key = {key(r): r for r in rebuilt}
    for r in ok:
        assert {m: by_key[key(r)][m] for m in METRICS} == pytest.approx({m: r[m] for m in METRICS}, rel=1e-12)


def test_layer_tables_are_read_back_through_the_api(tmp_path: Path) -> None:
    """The W&B API gives a Table's reference as a nested dict and its file through run.file()."""
    table = {"columns": ["step", "layer", "site", "bucket", "hard_rank", "renyi_0p5"],
             "data": [[10, 0, "post", "global", 3.0, 4.0], [10, 1, "post", "global", 5.0, None]]}
    files = {"media/table/tables/spectral_layers_1_ab.table.json": json.dumps(table)}

    class File:
        def __init__(self, name: str) -> None:
            self.name = name

        def download(self, root: str, replace: bool = False):
            path = Path(root, self.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[self.name])  # a missing file raises, like the API
            return open(path)

    history = [{"trainer/step": 10, "_step": 0, LAYER_TABLE_KEY: {"_type": "table-file", "path": p}}
               for p in [*files, "media/table/gone.table.json"]]
    run = SimpleNamespace(name="r", group="g", job_type="train", state="finished", config={"run_id": "r"},
                          summary={"final/eval_loss": 2.0}, file=File,
                          scan_history=lambda page_size=1000: iter(history))
    api = SimpleNamespace(default_entity="me", runs=lambda path, filters: [run])
    (record,) = list(wandb_io.api_runs("proj/g", api=api))
    spectra = wandb_io.run_files(record).spectra
    assert spectra == [{"step": 10, "layer": 0, "site": "post", "bucket": "global", "status": "ok",
                        "hard_rank": 3.0, "renyi_0.5": 4.0},
                       {"step": 10, "layer": 1, "site": "post", "bucket": "global", "status": "ok",
                        "hard_rank": 5.0}]


# ---- item 6: system metrics and console ---------------------------------------------------------

def test_logger_options_compose_and_bad_values_are_refused(compose) -> None:
    from omegaconf import open_dict

    from specsweep.sweep.grid.spec import build_run_spec

    def logger_spec(overrides):
        cfg = compose(["+preset=smoke", *overrides])
        with open_dict(cfg):
            del cfg["hydra"]
        return build_run_spec(cfg).logger

    default = settings_for(logger_spec(["logger=wandb_offline"]))
    assert default["console"] == "auto" and default["x_disable_stats"] is False
    assert default["x_stats_sampling_interval"] == 15.0
    off = settings_for(logger_spec(["logger=wandb", "logger.system_metrics=false", "logger.console=off"]))
    assert off["console"] == "off" and off["x_disable_stats"] is True and "x_stats_sampling_interval" not in off
    assert logger_spec(["logger=none", "logger.per_layer_keys=true"]).per_layer_keys is True
    for bad, message in ((dict(console="tee"), "logger.console: auto | wrap | redirect | off, got 'tee'"),
                         (dict(system_metrics_interval=0), "logger.system_metrics_interval: seconds > 0"),
                         (dict(system_metrics="yes"), "logger.system_metrics: true | false"),
                         (dict(per_layer_keys=1), "logger.per_layer_keys: true | false")):
        with pytest.raises(ConfigError, match=message):
            make_logger(_spec(**bad))


def test_system_metrics_and_console_are_not_logged_when_off(env: dict, tmp_path: Path) -> None:
    logger = _logger(tmp_path / "run", _spec(system_metrics=False, console="off"))
    print("a line on the console")
    logger.log({"step": 1, "train_loss": 1.0}, 1)
    logger.finish()
    folder = _folder(tmp_path / "run")
    types = {r["type"] for r in _leet_records(folder)}
    assert "history" in types and not types & {"stats", "output_raw", "output"}
    assert wandb_io.read_offline_run(folder)["summary"].get("console_lines", 0) == 0


HELD_BOUND_S = 240  # a smoke run reaches step 1 in seconds; generous for a loaded 2-core machine
SAMPLE_BOUND_S = 120  # samples every 0.2 s once held; the bound only stops a hung test


@pytest.mark.slow
def test_system_metrics_and_console_are_logged_by_default(env: dict, tmp_path: Path) -> None:
    """A training run with the default logger options is held after step 1 (sweep/run/hold.py)
    until its W&B file holds a system-metrics sample, then released: the sample is there whatever
    the machine's speed, and the console log holds the training log lines."""
    gate = tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-m", "specsweep.sweep.train", "+preset=smoke", "logger=wandb_offline", "sweep_name=sysm",
         "train.steps=5", "logger.system_metrics_interval=0.2"],
        cwd=ROOT, env={**{k: v for k, v in env.items() if k != "WANDB_SERVICE"}, "SPECSWEEP_HOLD": f"1:{gate}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + HELD_BOUND_S
        while not (gate / "held_1_rank0").exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "run not held after step 1 in time"
            time.sleep(0.1)
        (run_path,) = (tmp_path / "runs" / "sysm").glob("gpt-tiny_*")
        run = RunDir(run_path)
        folder = _folder(run.path)
        deadline = time.monotonic() + SAMPLE_BOUND_S
        while True:
            try:
                if any(r["type"] == "stats" for r in _leet_records(folder)):
                    break
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                pass  # the file is being written: read it again
            assert time.monotonic() < deadline, "no system-metrics sample in the W&B file"
            time.sleep(0.2)
    finally:
        gate.mkdir(parents=True, exist_ok=True)
        (gate / "release").touch()
        out = proc.communicate(timeout=HELD_BOUND_S)[0]
    assert proc.returncode == 0 and run.is_done(), out[-3000:]
    records = _leet_records(folder)
    stats = [r["stats"]["item"] for r in records if r["type"] == "stats"]
    assert stats and any("memory_percent" in s for s in stats) and any("proc.memory.rssMB" in s for s in stats)
    console = wandb_io.read_offline_run(folder)["summary"]["console"]
    lines = [c["line"] for c in console]
    assert any("step 1/5 loss" in line for line in lines), lines[-20:]
    assert any("held after step 1" in line for line in lines)
