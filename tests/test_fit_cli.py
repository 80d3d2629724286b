"""End-to-end tests of ``specsweep-fit`` on synthetic sweeps (see tests/test_fit.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

try:
    from test_fit import PLANTED_BETA, write_run, write_sweep
except ImportError:  # tests/ imported as a package
    from tests.test_fit import PLANTED_BETA, write_run, write_sweep

from specsweep.sweep.fit import main

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "specsweep.sweep.fit", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # hang guard


def test_cli_end_to_end(tmp_path):
    sweep = write_sweep(tmp_path / "demo", buckets=("global", "head", "tail"))
    out = tmp_path / "analysis"
    proc = _cli(sweep, "--out", out, "--no-figures", "--matched-loss", "0.05", "--n-boot", "200")
    assert proc.returncode == 0, proc.stderr
    # The β table is printed: one line per optimizer × bucket × site with soft, hard and Δβ.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("adamw", "muon"))]
    assert len(lines) == 2 * 3 * 2
    assert "β_soft [95% CI]" in proc.stdout and "Δβ [95% CI]" in proc.stdout
    assert "excluded" in proc.stderr and "diverged" in proc.stderr and "unfinished" in proc.stderr
    for name in ("points.csv", "beta_table.csv", "beta_summary.csv", "report.md", "matched_pairs.csv"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "beta_table.csv")
    hard = table[(table["optimizer"] == "muon") & (table["metric"] == "hard_rank")
                 & (table["bucket"] == "global") & (table["site"] == "post")].iloc[0]
    assert hard["beta_lower"] <= PLANTED_BETA["muon"]["hard_rank"] <= hard["beta_upper"]

    # Re-fit the points table it wrote, through the CLI entry point: same β table.
    assert main(["--points", str(out / "points.csv"), "--out", str(tmp_path / "refit"), "--no-figures"]) == 0
    again = pd.read_csv(tmp_path / "refit" / "beta_table.csv")
    pd.testing.assert_series_equal(table["beta"], again["beta"], rtol=1e-9)


@pytest.mark.parametrize("args, message", [
    (["{empty}"], "no run directories"),
    (["{missing}"], "not found"),
    (["{sweep}", "--rule", "median"], "bad aggregation rule"),
    (["--points", "{badcsv}"], "lacks column"),
    ([], "no sweep directory"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    sweep = tmp_path / "sweep"
    write_run(sweep, optimizer="adamw", mult=1, seed=0, sites=("post",), buckets=("global",))
    (tmp_path / "bad.csv").write_text("optimizer,value\nadamw,1\n")
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "nope", "sweep": sweep,
             "badcsv": tmp_path / "bad.csv"}
    assert main([a.format(**paths) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_cli_single_width_reports_no_fit(tmp_path, capsys):
    sweep = tmp_path / "one"
    write_run(sweep, optimizer="adamw", mult=1, seed=0, sites=("post",), buckets=("global",))
    assert main([str(sweep), "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert "needs >= 2" in captured.err and "—" in captured.out
