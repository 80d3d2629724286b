"""The default name of a sweep: the folder of its runs and their W&B group.

- ``sweep_name=NAME`` on the command line, or set by a named grid's file (``+sweep=demo`` sets
  ``demo``): that name.
- a grid (``-m``) without one: ``grid-<swept keys>-<hash>``, e.g. ``grid-ffn_mult-optim-3fa2c1``:
  the keys whose value differs between its runs (sorted, at most four shown) and a hash of all its
  runs' identifying overrides (order-free: the same grid typed in another order or as a ``range()``
  is the same grid). Two different grids never share a folder; the same grid launched again (or
  relaunched by ``sweep.status --resubmit``, whatever extra non-identifying overrides it adds)
  lands in the same one. A grid with no identifying override at all is the default run: ``default``.
- a single run: ``default``.

The name is chosen before any run directory is resolved (``hydra.sweep.dir`` is
``${paths.runs_root}/${sweep_name}``): the sweeper sets it on the launch's config and on every
job's composed config (``NamedSweepLoader``), not as an override, so Hydra does not echo it in the
job's overrides (hydra_plugins/specsweep_sweeper).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence

from omegaconf import read_write

from specsweep.sweep.grid.expand import given_overrides
from specsweep.sweep.grid.run_id import digest_of, excluded, parse_override

DEFAULT = "default"      # conf/train.yaml's sweep_name
MAX_KEYS_SHOWN = 4
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def name_given(task_overrides: Sequence[str], composed_name: str) -> bool:
    """Whether the launch names its sweep: ``sweep_name=`` on the command line, or a config
    (a named grid's file) that sets another name than the default."""
    return composed_name != DEFAULT or any(parse_override(o)[0] == "sweep_name" for o in task_overrides)


def _identifying(job: Sequence[str], exclude: Iterable[str]) -> dict[str, str]:
    found = {}
    for override in job:
        key, value = parse_override(override)
        if key.startswith("hydra.") or key == "sweep_name" or excluded(key, exclude):
            continue
        found[key] = value
    return found


def _short(key: str) -> str:
    return _UNSAFE.sub("_", key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]).strip("_") or "key"


def grid_sweep_name(jobs: Sequence[Sequence[str]], exclude: Iterable[str]) -> str:
    """``grid-<swept keys>-<hash>`` of a grid given as its jobs' overrides (see the module doc)."""
    exclude = list(exclude)
    points = [_identifying(job, exclude) for job in jobs]
    if not any(points):
        return DEFAULT
    keys = sorted({k for p in points for k in p})
    swept = [k for k in keys if len({p.get(k) for p in points}) > 1] or keys
    shown: list[str] = []
    for key in swept:
        short = _short(key)
        if short not in shown:
            shown.append(short)
    digest = digest_of({"grid": sorted(sorted(f"{k}={v}" for k, v in p.items()) for p in points)})
    return "-".join(["grid", *shown[:MAX_KEYS_SHOWN], digest])


def default_sweep_name(task_overrides: Sequence[str], composed_name: str, jobs: Sequence[Sequence[str]],
                       exclude: Iterable[str]) -> Optional[str]:
    """The name a multirun's sweep gets when the launch does not name it; None when it does."""
    if name_given(task_overrides, composed_name):
        return None
    return grid_sweep_name(jobs, exclude)


def launch_sweep_name(config: Any, jobs: Sequence[Sequence[str]]) -> Optional[str]:
    """The name to give a multirun composed as ``config`` (its ``hydra.overrides.task``,
    ``sweep_name``, ``run_id_exclude``) with these jobs; None when the launch names its sweep or
    the grid is the default run. The sweeper and ``sweep.plan`` both ask this."""
    name = default_sweep_name(given_overrides(config), str(config.sweep_name), jobs,
                              list(config.get("run_id_exclude") or []))
    return None if name in (None, DEFAULT) else name


class NamedSweepLoader:
    """Hydra's config loader, giving every job it composes the grid's default sweep name.

    The name is set on the job's config, not added to its overrides: Hydra would echo an override
    in ``hydra.job.override_dirname``, ``.hydra/overrides.yaml`` and the job's returned overrides.
    Launchers compose each job with ``load_sweep_config`` (the SLURM launcher on the node, so this
    is pickled with it); everything else is the wrapped loader's.
    """

    def __init__(self, loader: Any, sweep_name: str) -> None:
        self.loader = loader
        self.sweep_name = sweep_name

    def load_sweep_config(self, master_config: Any, sweep_overrides: Sequence[str]) -> Any:
        cfg = self.loader.load_sweep_config(master_config, list(sweep_overrides))
        with read_write(cfg):
            cfg.sweep_name = self.sweep_name
        return cfg

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "sweep_name") or name.startswith("__"):  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.loader, name)
