"""benchmarks/telemetry_overhead.py paper mode runs end to end on a tiny preset and ends with the
machine-readable line (timings themselves are not checked: they depend on the machine)."""

import re

import pytest

from tests.conftest import load_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")  # bench.main sets torch's threads: restored after the module
LAST_LINE = re.compile(
    r"critical_path_s=(\d+\.\d+) decomposition_s=(\d+\.\d+) peak_host_mib=(\d+\.\d+) peak_device_mib=(\d+\.\d+)"
)


def test_paper_mode_tiny_preset_prints_measured_and_extrapolated_and_the_last_line(capsys):
    bench = load_benchmark("telemetry_overhead")
    bench.main(["--preset", "tiny", "--device", "cpu", "--rows", "256", "--max-width", "64",
                "--step-seconds", "0.5"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0
    # measured widths carry m / n tags, the width above --max-width is extrapolated (x)
    first_table = [line for line in lines if re.match(r"\s*(32|64|128) ", line)][:3]
    assert [int(line.split()[0]) for line in first_table] == [32, 64, 128]
    assert "n" in first_table[1].split()[1] and first_table[2].split()[1].endswith("x")
    h100 = lines.index(next(line for line in lines if line.startswith("projection for one H100")))
    assert [int(line.split()[0]) for line in lines[h100 + 2:h100 + 5]] == [32, 64, 128]
