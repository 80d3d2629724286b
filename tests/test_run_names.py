"""Issue 22 item 1: the sweep name and the run id are one folder name each inside paths.runs_root.

Refused before any folder is made (single runs and -m), with one short line: a name that would
lead out of the root, is empty, holds '/', '..' or a control character, or is longer than the
file system takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from specsweep.sweep.grid.names import name_problem, name_problems
from tests.conftest import FAST, run_train


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("  ", "blank"), ("../../x", "'..'"), ("..", "'..'"), ("a/b", "'/'"), ("a\\b", "'/'"),
    ("a\nb", "control character"), ("a\tb", "control character"), (".hidden", "starts with '.'"),
    ("x" * 300, "300 bytes long"), ("é" * 128, "256 bytes long"),
])
def test_names_that_are_not_one_folder_are_refused(name: str, why: str) -> None:
    assert why in name_problem(name)


@pytest.mark.parametrize("name", ["default", "grid-ffn_mult-optim-3fa2c1", "gpt-tiny_adamw_w0.5_s0_7c1e2a",
                                  "x" * 255, "é" * 127])
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None


def test_a_long_name_is_shown_shortened() -> None:
    (line,) = name_problems([("sweep_name", "y" * 300)], ".")
    assert len(line) < 200 and line.startswith("sweep_name 'yyy") and "300 bytes" in line


def test_the_run_spec_refuses_a_bad_sweep_name_or_run_id(compose) -> None:
    from specsweep.sweep.grid.spec import ConfigError, build_run_spec

    cfg = compose([*FAST, "sweep_name='a\nb'"])
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.run_id = "../escape"
    with pytest.raises(ConfigError) as err:
        build_run_spec(cfg, check_files=False)
    text = str(err.value)
    assert "sweep_name 'a\\nb' holds a control character" in text and "run_id '../escape' holds '..'" in text


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["sweep_name=../../x"],
    ["-m", "sweep_name=../../x", "optim=adamw,muon"],
    ["-m", "sweep_name=ok,../../x"],         # one grid point's name: the preflight refuses the grid
    ["sweep_name='a\nb'"],                   # a quoted newline
    ["sweep_name=" + "x" * 300],             # longer than a folder name may be
    ["model.name=" + "m" * 300],             # a run id part
])
def test_a_launch_with_a_bad_name_writes_nothing_anywhere(env: dict, tmp_path: Path, args: list) -> None:
    env = {k: v for k, v in env.items() if k != "HYDRA_FULL_ERROR"}
    env["SPECSWEEP_RUNS"] = str(tmp_path / "a" / "b" / "runs")  # ../../x would land in tmp_path/x
    argv = [args[0], *FAST, *args[1:]] if args[0] == "-m" else [*FAST, *args]
    proc = run_train(argv, env, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 6, out
    assert ("sweep_name" in out or "run_id" in out) and ("nothing was run" in out or "not launched" in out), out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder made, inside the root or out of it
