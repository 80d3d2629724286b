"""One family of commands (issue 16 item 5): specsweep-train, -prepare, -plan, -fit, -status, each
with a --help that shows real examples, from any directory, installed editable or from a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT, user_project

BIN = Path(sys.executable).parent
COMMANDS = ("train", "prepare", "plan", "fit", "status")
# What each --help must show: a real example (a command line a user can type).
EXAMPLE = {
    "train": "specsweep-train -m +sweep=demo",
    "prepare": "specsweep-prepare data=fineweb_edu",
    "fit": "specsweep-fit runs/demo --watch",
    "status": "specsweep-status runs/demo --resubmit",
    "plan": "+sweep=",  # sweep.plan (issue 15): an example with a named grid
}


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check_help(script: Path, command: str, cwd: Path, env: dict) -> None:
    proc = _run([script, "--help"], cwd, env)
    assert proc.returncode == 0, f"{script.name} --help failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if command in EXAMPLE:
        assert EXAMPLE[command] in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_installed_and_helps_from_any_directory(command: str, tmp_path: Path) -> None:
    script = BIN / f"specsweep-{command}"
    assert script.exists(), f"{script} missing: reinstall the project (make setup)"
    _check_help(script, command, tmp_path, {**os.environ, "OMP_NUM_THREADS": "1"})


def test_every_command_is_declared_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for command in COMMANDS:
        assert f'specsweep-{command} = "specsweep.sweep.{command}:' in text, command


def _copy_source(dest: Path) -> Path:
    """The project's source tree without its virtualenv, runs, caches and build leftovers."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "data_cache", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "wandb", "outputs", "multirun")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_wheel_install_works_from_another_directory(tmp_path: Path, data_cache: Path) -> None:
    """``pip install .`` (not editable), configs included: built as a wheel, installed into a folder of
    its own that is put first on PYTHONPATH (this venv provides the dependencies), run from elsewhere."""
    src = _copy_source(tmp_path / "src")
    # A site's own settings (git-ignored conf/local/) never go into a wheel.
    (src / "conf" / "local").mkdir(exist_ok=True)
    (src / "conf" / "local" / "default.yaml").write_text("# site paths\n")
    wheels = tmp_path / "wheels"
    # No build isolation: the build uses this venv's setuptools (tests never touch the network).
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
                 tmp_path, dict(os.environ), timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("specsweep-*.whl")
    target = tmp_path / "site"
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", target, wheel],
                   tmp_path, dict(os.environ), timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    # One project namespace (issue 23 item 4): nothing generic at the top of site-packages.
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == \
        ["bin", "hydra_plugins", "specsweep"], sorted(p.name for p in target.iterdir())
    package = target / "specsweep"
    assert (package / "conf" / "train.yaml").is_file() and (package / "conf" / "sweep" / "demo.yaml").is_file()
    assert not (package / "conf" / "local").exists()
    assert (package / "sweep" / "data" / "corpus" / "tinyshakespeare.txt").is_file()  # data.path=builtin:...

    # A user's project folder with packages of the generic names, each failing loudly if imported.
    elsewhere = user_project(tmp_path / "elsewhere")
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "SPECSWEEP_RUNS": str(tmp_path / "runs"),
           "SPECSWEEP_DATA": str(data_cache), "WANDB_MODE": "offline"}
    # The code, the plugins and the configs all come from the wheel, not from this checkout.
    where = _run([sys.executable, "-c", "import specsweep.sweep as w, hydra_plugins.specsweep_sweeper as s, "
                  "specsweep.sweep.commands as c; print(w.__file__); print(s.__file__); print(c.CONF_DIR)"],
                 elsewhere, env)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    scripts = target / "bin"
    for command in COMMANDS:
        _check_help(scripts / f"specsweep-{command}", command, elsewhere, env)
    cfg = _run([scripts / "specsweep-train", "optim=muon", "--cfg", "job"], elsewhere, env)
    assert cfg.returncode == 0 and "name: muon" in cfg.stdout, cfg.stderr[-3000:]
    # The module form too: with `python -m` the current folder (the user's packages) comes first.
    run = _run([sys.executable, "-m", "specsweep.sweep.train", *FAST, "train.steps=2"], elsewhere, env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    assert (run_dir / "DONE").is_file()
    status = _run([scripts / "specsweep-status", tmp_path / "runs" / "default", "--ids"], elsewhere, env)
    assert status.returncode == 0 and run_dir.name in status.stdout and "preset=smoke" in status.stdout, status.stdout


def test_a_source_checkout_imports_under_the_namespace_without_any_install(tmp_path: Path) -> None:
    """A copy of the checkout on a machine with no install of it (a GPU node running
    benchmarks/gpu_check.sh): the checkout's root on the path is enough for ``specsweep.*``."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import specsweep.sweep.liveness as m, specsweep; "
            "print(m.__file__); print(specsweep.__file__)")
    # -S: no site-packages, so no editable-install finder can be what resolves the import.
    proc = _run([sys.executable, "-S", "-c", code, ROOT], user_project(tmp_path), {**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(ROOT / "sweep" / "liveness.py"), str(ROOT / "specsweep" / "__init__.py")]
