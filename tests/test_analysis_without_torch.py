"""The analysis starts and runs without torch (issue 23 item 1): the statistics in metrics/ are
NumPy/pandas/SciPy only, and `sweep.fit`, `sweep.status` and `sweep.plan` import no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

try:
    from test_fit import write_sweep
except ImportError:  # tests/ imported as a package
    from tests.test_fit import write_sweep

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: this test process has long imported torch.
PROBE = """
import json, sys
from specsweep.sweep import fit, plan, status
from specsweep.metrics import buckets, fit as metrics_fit, schedule
loaded = {"imports": "torch" in sys.modules}
for name, main, args in ((\"fit\", fit.main, sys.argv[1:3]), (\"status\", status.main, sys.argv[3:])):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    loaded[name] = ["torch" in sys.modules, code]
print("PROBE " + json.dumps(loaded))
"""


def test_fit_status_and_plan_import_no_torch_and_a_fit_runs_without_it(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "demo", buckets=("global", "tail"), bad_runs=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(sweep), "--no-figures", str(sweep)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    loaded = json.loads(line[len("PROBE "):])
    assert loaded == {"imports": False, "fit": [False, 0], "status": [False, 0]}, (loaded, proc.stderr[-2000:])
    assert (sweep / "analysis" / "beta_table.csv").is_file()
