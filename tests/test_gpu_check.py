"""benchmarks/gpu_check.sh and benchmarks/check_run.py on the CPU: part selection, the commands a
dry run prints and that their entry points accept them, the gpu tests' clean skip, and the record
checker of part (c) on a real tiny run (passing, and failing on each kind of damage)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, ROOT, gpu_check, load_benchmark, run_train

GPU_MARK = re.compile(r"""(^|[^"'])pytest\.mark\.gpu\b""", re.M)  # as gpu_check.sh finds the gpu test files


def _commands(out: str) -> dict[str, list[list[str]]]:
    """part -> the command lines a dry run prints under it."""
    parts: dict[str, list[list[str]]] = {}
    part = None
    for line in out.splitlines():
        if line[:1] == "(" and line[2:3] == ")" and "[cap" in line:
            part = line[1]
            parts[part] = []
        elif line.startswith("    ") and part is not None:
            parts[part].append(line.split())
    return parts


def test_dry_run_prints_every_part_in_order_and_part_c_composes():
    proc = gpu_check("--dry-run")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    cmds = _commands(proc.stdout)
    assert list(cmds) == ["b", "d", "a", "c"]  # the telemetry cost part first (issue 21, item 9)
    train, check = cmds["c"]
    assert train[1:3] == ["-m", "specsweep.sweep.train"] and check[1] == "benchmarks/check_run.py"
    for override in ("model=gpt2_160m", "model.ffn_mult=8", "optim=muon", "train.steps=50", "train.compile=true",
                     "train.device=cuda", "data=synthetic", "data.vocab_size=50304", "logger=none",
                     "telemetry.decompose_on=gpu", "+preset=paper", "train.global_batch=64",
                     "train.micro_batch=32"):
        assert override in train, override
    assert "(c) overrides compose: model.n_layer=12 ffn_mult=8 telemetry.every=25" in proc.stdout
    (pytest_cmd,) = cmds["d"]
    assert pytest_cmd[1:5] == ["-m", "pytest", "-m", "gpu"]
    files = [a for a in pytest_cmd if a.startswith("tests/")]
    assert {"tests/test_gpu.py", "tests/test_metrics_covariance.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files  # it names the marker in a string only


def test_parts_select_and_bad_arguments_fail_before_work():
    proc = gpu_check("--dry-run", "--parts", "a,d")
    assert proc.returncode == 0, proc.stderr
    assert list(_commands(proc.stdout)) == ["d", "a"]
    for args, message in ((["--parts", "a,x"], "--parts takes"), (["--budget", "8m"], "--budget takes"),
                          (["--frobnicate"], "unknown argument")):
        proc = gpu_check("--dry-run", *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_the_benchmark_commands_parse_with_their_entry_points(monkeypatch):
    cmds = _commands(gpu_check("--dry-run", "--parts", "a,b").stdout)
    (throughput_cmd,), (overhead_cmd,) = cmds["a"], cmds["b"]
    assert throughput_cmd[1] == "benchmarks/throughput.py" and overhead_cmd[1] == "benchmarks/telemetry_overhead.py"
    args = load_benchmark("throughput").parse_args(throughput_cmd[2:])
    assert (args.device, args.batch, args.seq, args.compile, args.dtype) == ("cuda", 12, 1024, True, "bf16")
    assert args.models == ["ours", "ours_refarch", "reference"]
    overhead = load_benchmark("telemetry_overhead")
    seen = []
    monkeypatch.setattr(overhead, "paper_main", seen.append)  # parse only: nothing is measured
    overhead.main(overhead_cmd[2:])
    assert seen and (seen[0].preset, seen[0].device) == ("paper160m", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_gpu_tests_collect_and_skip_cleanly_without_cuda():
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
             if GPU_MARK.search(p.read_text())]
    assert "tests/test_gpu.py" in files and "tests/test_gpu_check.py" not in files
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # hang guard
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " skipped" in summary and "passed" not in summary and "error" not in summary, summary
    assert "needs a CUDA device" in proc.stdout


# ---- check_run.py on a real run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny CPU run with telemetry at steps 1, 3 and 6 (copied by each test)."""
    base = tmp_path_factory.mktemp("check_run")
    env = {**os.environ, "SPECSWEEP_RUNS": str(base / "runs"), "SPECSWEEP_DATA": str(base / "data"),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    run_train([*FAST, "sweep_name=tiny", "train.steps=6", "train.eval_every=3", "train.ckpt_every=6",
               "train.log_every=1", "telemetry.every=3"], env)
    (run,) = [p for p in (base / "runs" / "tiny").iterdir() if (p / "run.json").exists()]
    return run


def _variant(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def _rewrite(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


def _with_cost_lines(run: Path) -> None:
    events = sorted({json.loads(line)["step"] for line in (run / "spectra.jsonl").read_text().splitlines()})
    check_run = load_benchmark("check_run")
    _rewrite(run / "metrics.jsonl", lambda rows: [r for r in rows if not check_run.is_cost_line(r)] + [
        {"step": s, "telemetry/critical_path_s": 0.01, "telemetry/decompose_s": 0.2, "telemetry/wait_s": 0.0,
         "telemetry/host_mib": 3.0, "telemetry/device_mib": 0.0, "telemetry/spectrum": True} for s in events])


def _check(run: Path, capsys, *flags: str) -> tuple[int, str]:
    code = load_benchmark("check_run").main([str(run), *flags])
    return code, capsys.readouterr().out.strip().splitlines()[-1]


def test_check_run_passes_a_complete_run(tiny_run, tmp_path, capsys):
    run = _variant(tiny_run, tmp_path)
    _with_cost_lines(run)
    code, last = _check(run, capsys)
    assert code == 0 and last.startswith("check=PASS steps=6 ") and "events=3 records=48 " in last, last
    code, last = _check(run.parent, capsys)  # a sweep directory holding the one run
    assert code == 0, last


@pytest.mark.parametrize("damage,failed", [
    ("no_cost_lines", "cost_lines"),
    ("record_missing", "records"),
    ("nan_loss", "loss"),
    ("no_done", "done"),
    ("event_missing", "events,records"),
])
def test_check_run_fails_on_each_kind_of_damage(tiny_run, tmp_path, capsys, damage, failed):
    run = _variant(tiny_run, tmp_path)
    _with_cost_lines(run)
    check_run = load_benchmark("check_run")
    if damage == "no_cost_lines":
        _rewrite(run / "metrics.jsonl", lambda rows: [r for r in rows if not check_run.is_cost_line(r)])
    elif damage == "record_missing":
        gone = (3, 1, "post", "tail")  # step, layer, site, bucket
        _rewrite(run / "spectra.jsonl",
                 lambda rows: [r for r in rows if (r["step"], r["layer"], r["site"], r["bucket"]) != gone])
    elif damage == "nan_loss":
        _rewrite(run / "metrics.jsonl", lambda rows: [{**r, "train_loss": float("nan")} if r.get("step") == 4
                                                     and "train_loss" in r else r for r in rows])
    elif damage == "no_done":
        (run / "DONE").unlink()
    elif damage == "event_missing":
        _rewrite(run / "spectra.jsonl", lambda rows: [r for r in rows if r["step"] != 3])
    code, last = _check(run, capsys)
    assert code == 1 and last.startswith("check=FAIL") and last.endswith(f"failed={failed}"), last
    if damage == "no_cost_lines":
        assert _check(run, capsys, "--no-cost-lines")[0] == 0  # reported, not required
