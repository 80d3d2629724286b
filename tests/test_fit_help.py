"""`specsweep-fit --help` and a usage error load nothing heavy (issue 23 item 1: fit --help took
~2.5x as long as train --help): no pandas, SciPy, matplotlib or torch before the fit runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "scipy", "matplotlib")
PROBE = """
import json, sys
from specsweep.sweep import fit
for argv in (["--help"], ["--once"]):
    try:
        fit.main(argv)
    except SystemExit:
        pass
print("PROBE " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
""" % (HEAVY,)


def test_help_and_a_usage_error_import_no_heavy_library(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "--once goes with --watch" in proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    assert json.loads(line[len("PROBE "):]) == []


def test_run_fit_is_still_importable_from_sweep_fit() -> None:
    from specsweep.sweep.fit import run_fit
    from specsweep.sweep.analysis.pipeline import run_fit as pipeline_run_fit

    assert run_fit is pipeline_run_fit
