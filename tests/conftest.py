"""Shared fixtures: isolated run/data/W&B folders, Hydra composition, subprocess runs, the benchmark
scripts (loaded as modules, gpu_check.sh run)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHAKESPEARE = ROOT / "sweep" / "data" / "corpus" / "tinyshakespeare.txt"  # data.path=builtin:tinyshakespeare.txt

# Small, fast settings for end-to-end runs of the tiny model on the synthetic corpus
# (conf/preset/smoke.yaml; the run ids get the tag "smoke").
FAST = ["+preset=smoke", "logger=none"]


@functools.lru_cache(maxsize=None)
def run_id_for(*overrides: str) -> str:
    """The run id the code gives a job with these task overrides (a grid job: the overrides of one
    grid point). Tests ask for ids instead of spelling their hashes (sweep/grid/run_id.py)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import specsweep.sweep.grid.resolvers  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        return str(cfg.run_id)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest modules first, each module's tests in their own order: the SLURM module, then the
    modules with slow (end-to-end) tests, then the rest. With `make test`'s workers (one module per
    worker at a time) the long modules start at once instead of trailing alone at the end."""
    weight: dict[str, int] = {}
    for item in items:
        rank = 0 if item.get_closest_marker("slurm") else 1 if item.get_closest_marker("slow") else 2
        weight[item.module.__name__] = min(weight.get(item.module.__name__, 2), rank)
    items.sort(key=lambda item: weight[item.module.__name__])  # stable: collection order within a rank


@pytest.fixture(autouse=True)
def _one_copy_of_the_code():
    """The repository root is on this process's path, so ``import metrics`` would load a second copy
    of ``specsweep.metrics`` (two classes of each name) and pass here while failing after a wheel
    install. Whatever test first loads a bare top-level copy fails."""
    yield
    bare = sorted(name for name in ("models", "optim", "metrics", "sweep") if name in sys.modules)
    assert bare == [], f"loaded outside the specsweep namespace: {bare}"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-matrix tests: on a busy 2-core machine the OpenMP
    barriers between threads make every small op up to ~100x slower; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for the whole session (the synthetic corpus is built once)."""
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def env(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a run: runs under tmp_path, shared data cache, W&B kept off the network/home."""
    runs = tmp_path / "runs"
    values = {
        "SPECSWEEP_RUNS": str(runs),
        "SPECSWEEP_DATA": str(data_cache),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": "1",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


# Bounds on waits for a run that is known to get there (a held run, a process that was told to stop):
# they only turn a hung run into a failure, so they are generous (minutes on a loaded 2-core machine
# where a held step is reached in seconds).
RUN_TIMEOUT_S = 300
HELD_TIMEOUT_S = 240


def run_train(args: Sequence[str], env: dict[str, str], timeout: float = RUN_TIMEOUT_S,
              check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``specsweep-train ARGS`` in a subprocess, from the repository root (``timeout``: hang guard)."""
    proc = subprocess.run(
        [sys.executable, "-m", "specsweep.sweep.train", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep.train {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` loaded as module ``NAME`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def gpu_check(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``bash benchmarks/gpu_check.sh ARGS`` with this interpreter as PYTHON (``timeout``: hang guard;
    a dry run composes one config, seconds)."""
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def user_project(folder: Path) -> Path:
    """A user's folder holding its own packages of the generic names, each failing if imported: a
    command run there must load only ``specsweep.*`` (issue 23 item 4)."""
    for name in ("models", "optim", "metrics", "sweep", "conf"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    return folder


@pytest.fixture
def compose():
    """Compose conf/train.yaml with overrides, as Hydra does for a run (hydra node included)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import specsweep.sweep.grid.resolvers  # noqa: F401

    def _compose(overrides: Sequence[str] = ()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)

    return _compose


# ---- holding a run at a known step (sweep/run/hold.py) ----------------------------------------------------
def hold_env(env: dict[str, str], gate: Path, *steps: int) -> dict[str, str]:
    """``env`` plus SPECSWEEP_HOLD: the run (every rank, every attempt) waits after each of ``steps``
    until ``gate/release_<step>`` or ``gate/release`` exists or a stop signal arrives."""
    return {**env, "SPECSWEEP_HOLD": f"{','.join(str(s) for s in steps)}:{gate}"}


def release(gate: Path, step: Optional[int] = None) -> None:
    """Let a held run go on after ``step`` (every hold step when None)."""
    gate.mkdir(parents=True, exist_ok=True)
    (gate / (f"release_{step}" if step is not None else "release")).touch()


def wait_until_held(gate: Path, step: int, gone: Callable[[], Optional[str]], rank: int = 0,
                    timeout: float = HELD_TIMEOUT_S) -> int:
    """Wait until the run is held after ``step``; return the pid of the held process.

    ``gone()`` says why the run can no longer get there (it ended, failed) or None while it still can.
    The run waits at the step however long we take, so the bound only guards against a hung run.
    """
    marker = gate / f"held_{step}_rank{rank}"
    deadline = time.monotonic() + timeout
    while True:
        pid = marker.read_text().strip() if marker.exists() else ""  # empty: created, pid not yet written
        if pid:
            return int(pid)
        why = gone()
        if why is not None and not marker.exists():
            raise AssertionError(f"the run cannot reach its hold after step {step}: {why}")
        assert time.monotonic() < deadline, f"no {marker} after {timeout:.0f} s (hung run?)"
        time.sleep(0.05)  # polling interval only


def ended(proc: subprocess.Popen) -> Callable[[], Optional[str]]:
    """For :func:`wait_until_held`: why a local run can no longer reach its hold (it exited)."""
    def why() -> Optional[str]:
        if proc.poll() is None:
            return None
        out = proc.stdout.read() if proc.stdout else ""
        return f"it exited with {proc.returncode}\n{(out or '')[-3000:]}"
    return why


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
