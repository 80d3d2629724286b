"""Names that become folders (the sweep name, the run id) stay one folder inside ``paths.runs_root``.

A run lives in ``<paths.runs_root>/<sweep_name>/<run_id>/``. Each name must be one plain folder
name: not empty, no ``/`` (or ``\\``), no ``..``, not hidden (``.x``), no control character (a
newline would make a folder that no listing shows right), and no longer than the file system takes
(``NAME_MAX``, 255 bytes on common ones). Anything else is refused before a folder is made, with
one short line that says which name and why; so ``sweep_name=../../x`` cannot write outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


NAME_MAX = 255  # bytes of one folder name on ext4, xfs, NFS, Lustre, GPFS (when the system cannot say)


def name_max(near: Any = ".") -> int:
    """The longest folder name (bytes) the file system holding ``near`` (or its nearest existing
    parent) takes."""
    path = Path(str(near)).absolute()
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return int(os.pathconf(folder, "PC_NAME_MAX"))
            except (OSError, ValueError):
                break
    return NAME_MAX


def name_problem(name: Any, limit: int = NAME_MAX) -> Optional[str]:
    """Why ``name`` cannot be one folder name inside the runs root, or None if it can."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)  # sweep_name=2024 is a folder name too
    if not isinstance(name, str) or not name.strip():
        return "is empty" if not name else "is blank" if isinstance(name, str) else f"is not text ({name!r})"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character (a newline, tab, ...)"
    if ".." in name:
        return "holds '..' (it would lead out of paths.runs_root)"
    if "/" in name or "\\" in name:
        return "holds '/' (a name is one folder, not a path)"
    if name.startswith("."):
        return "starts with '.' (a hidden folder)"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > limit:
        return f"is {size} bytes long; the file system takes at most {limit} per folder name"
    return None


def name_problems(names: Iterable[tuple[str, Any]], runs_root: Any = ".") -> list[str]:
    """One line per (what, name) pair that cannot be a folder name, e.g.
    ``sweep_name '../x' holds '..' (...)``; [] when all can."""
    limit = name_max(runs_root)
    out = []
    for what, name in names:
        problem = name_problem(name, limit)
        if problem:
            shown = repr(name if not isinstance(name, str) or len(name) <= 60 else name[:57] + "...")
            out.append(f"{what} {shown} {problem}")
    return out


class NameCheck(Callback):
    """Hydra callback (conf/train.yaml ``hydra.callbacks``): refuses a launch whose sweep name or
    run id cannot be a folder name before Hydra makes the run's folder (a single run) or the
    sweeper reads the grid (``-m``; each job is checked again by the preflight), with one line
    and exit status 1, as a credential on the command line is (sweep.credentials)."""

    def _check(self, config: DictConfig, keys: tuple[str, ...]) -> None:
        names = []
        for key in keys:
            try:
                names.append((key, OmegaConf.select(config, key)))
            except Exception:  # noqa: BLE001 - an unresolvable config: the job reports it, as before
                continue
        try:
            root = OmegaConf.select(config, "paths.runs_root", default=".")
        except Exception:  # noqa: BLE001 - likewise
            root = "."
        problems = name_problems(names, root)
        if problems:  # SystemExit: Hydra turns a callback's Exception into a warning and goes on
            raise SystemExit("error: " + "; ".join(problems) + "; nothing was run")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, ("sweep_name", "run_id"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, ("sweep_name",))  # run ids: per job, in the preflight
