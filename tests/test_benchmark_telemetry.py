"""benchmarks/telemetry_overhead.py paper mode runs end to end on a tiny preset and ends with the
machine-readable line (timings themselves are not checked: they depend on the machine)."""

import importlib.util
import re
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "telemetry_overhead.py"
LAST_LINE = re.compile(
    r"critical_path_s=(\d+\.\d+) decomposition_s=(\d+\.\d+) peak_host_mib=(\d+\.\d+) peak_device_mib=(\d+\.\d+)"
)


def _load():
    spec = importlib.util.spec_from_file_location("telemetry_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_paper_mode_tiny_preset_prints_measured_and_extrapolated_and_the_last_line(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        bench.main(["--preset", "tiny", "--device", "cpu", "--rows", "256", "--max-width", "64",
                    "--step-seconds", "0.5"])
    finally:
        torch.set_num_threads(threads)
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
