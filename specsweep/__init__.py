"""The project namespace: the code is imported as ``specsweep.models``, ``specsweep.optim``,
``specsweep.metrics`` and ``specsweep.sweep`` (configs: ``specsweep.conf``), never under those
generic names at the top level, so a user's own ``models`` or ``sweep`` package cannot shadow ours.

The repository keeps them as top-level folders. An installed wheel holds them inside this package
(setup.py maps them); in a source checkout this package's path also covers the checkout's root, so
``python -m specsweep.sweep.train`` runs from the checkout with or without an editable install.
"""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
# A source checkout (not a wheel, whose packages sit inside this folder): the folders beside this one.
if not (Path(__file__).resolve().parent / "sweep").is_dir() and (_CHECKOUT / "sweep" / "__init__.py").is_file() \
        and (_CHECKOUT / "setup.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821  (a package's __path__, set by the import system)
