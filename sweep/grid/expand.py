"""From a multirun command to its jobs: the grid expansion shared by the sweeper and ``sweep.plan``.

The grid is Hydra's basic one (each ``key=a,b,c`` an axis, the jobs their cartesian product, the
command line after ``hydra.sweeper.params``), optionally over a list of **arms**
(``hydra.sweeper.arms``): alternatives that each set several keys at once, e.g. the paper's
"AdamW-12K" (``optim=adamw`` with ``train.steps=12000``) beside "Dion 1/16" (``optim=dion`` with
``optim.rank_fraction=0.0625``), which no cartesian product gives without extra points. The grid
is then the union over arms of (arm x params x command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from specsweep.sweep.errors import SweepError
from specsweep.sweep.grid import resolvers  # noqa: F401  (registers ${run_id:} for the composition)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def arm_overrides(arm: Any) -> list[str]:
    """One arm as override strings: a list of ``key=value`` or a mapping ``{key: value}``."""
    if OmegaConf.is_config(arm):
        arm = OmegaConf.to_container(arm, resolve=True)
    if isinstance(arm, Mapping):
        return [f"{k}={_text(v)}" for k, v in arm.items()]
    if isinstance(arm, (list, tuple)) and all(isinstance(o, str) for o in arm):
        return list(arm)
    raise SweepError(f"hydra.sweeper.arms: each arm is a list of key=value overrides or a mapping, got {arm!r}")


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def given_overrides(config: Any, group: str = "task") -> list[str]:
    """A launch's ``hydra.overrides.<group>`` as typed: an interpolation (``train.steps=${seed}``)
    stays unresolved, as Hydra passes it to the sweeper and keeps it in multirun.yaml (iterating
    the list would resolve it against the launch's config, where a swept key has no value yet)."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides[group], resolve=False)]


def grid_jobs(params: Optional[Mapping[str, Any]], arguments: Sequence[str], config_loader: Any,
              arms: Optional[Sequence[Any]] = None) -> list[list[str]]:
    """The override list of every job of the grid, in launch order (as Hydra's basic sweeper makes
    them, arm by arm): ``params`` is ``hydra.sweeper.params``, ``arguments`` the command line's task
    overrides (they win over both)."""
    parser = OverridesParser.create(config_loader=config_loader)
    base = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    jobs: list[list[str]] = []
    for arm in (arms or [[]]):
        batches = BasicSweeper.split_arguments(parser.parse_overrides(arm_overrides(arm) + base), None)
        jobs += [list(job) for batch in batches for job in batch]
    return jobs


def compose_multirun(overrides: Sequence[str], config_dir: Path = CONF_DIR,
                     config_name: str = "train") -> tuple[DictConfig, Any, list[list[str]]]:
    """Compose ``overrides`` as ``specsweep-train -m OVERRIDES`` would: the multirun's master
    config, Hydra's config loader (for each job's config) and the jobs of its grid. Nothing is
    written and nothing runs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        gh = GlobalHydra.instance()
        master = gh.hydra.compose_config(config_name=config_name, overrides=list(overrides),
                                         run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        loader = gh.config_loader()
        sweeper = master.hydra.sweeper
        jobs = grid_jobs(sweeper.get("params"), given_overrides(master), loader, sweeper.get("arms"))
    return master, loader, jobs
