"""The telemetry benchmark's capture-vs-floor comparison (interleaved, medians and spread), its
calibration file, and gpu_check's worst case (issue 21, items 7 and 9). No timing is asserted."""

from __future__ import annotations

import re

import pytest

from specsweep.metrics import costmodel as cm
from tests.conftest import gpu_check, load_benchmark


pytestmark = pytest.mark.usefixtures("one_thread")  # bench.main sets torch's threads: restored after the module


def _bench():
    return load_benchmark("telemetry_overhead")


def test_capture_and_floor_interleaved_then_a_calibration_file_the_projection_reads(tmp_path, capsys):
    bench, cal = _bench(), tmp_path / "cal.json"
    bench.main(["--preset", "tiny", "--device", "cpu", "--rows", "256", "--max-width", "64",
                "--step-seconds", "0.5", "--write-calibration", str(cal)])
    first = capsys.readouterr().out
    bench.main(["--preset", "tiny", "--device", "cpu", "--rows", "256", "--max-width", "32",
                "--step-seconds", "0.5", "--calibration", str(cal)])
    second = capsys.readouterr().out
    for d in (32, 64):
        line = next(x for x in first.splitlines() if x.startswith(f"  D={d}: capture / GEMM floor"))
        assert "5 interleaved repetitions at 256 rows/pair (measured here)" in line and "spread" in line
        assert "scale linearly to 8,192 rows in the tables (x32, projected)" in line
    assert re.search(r"^capture_floor_x_32=\d+\.\d+ capture_floor_x_64=\d+\.\d+ \(measured here", first, re.M)
    assert "projection for one H100 from the constants of telemetry-cost.md, nothing measured here" in first
    prof = cm.load_profile(str(cal))
    assert [d for d, _ in prof.capture_row_s.points] == [32, 64] and prof.measured["capture_floor_x_64"] > 0
    assert prof.measured["repeats"] == 5
    assert f"projection from the calibration {cal}" in second
    assert "nothing measured here" not in second


def test_fewer_than_five_repetitions_are_refused():
    bench = _bench()
    try:
        bench.main(["--preset", "tiny", "--device", "cpu", "--repeats", "2"])
    except SystemExit as e:
        assert "at least 5 interleaved" in str(e)
    else:
        raise AssertionError("--repeats 2 was accepted")


def test_gpu_check_worst_case_fits_480_s_and_the_cost_part_runs_first():
    proc = gpu_check("--dry-run", "--parts", "a,b,d", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(r"worst_case_s=(\d+)", lines[-1])
    assert match and int(match.group(1)) <= 480, lines[-1]
    parts = [x[1] for x in lines if re.match(r"\([abcd]\) ", x)]
    assert parts[0] == "b"
    b_cmd = lines[lines.index(next(x for x in lines if x.startswith("(b)"))) + 1]
    assert "--write-calibration" in b_cmd and "--repeats 5" in b_cmd
