"""What the five commands share: where the Hydra configs are, and the name the user typed.

The commands are console scripts (pyproject.toml) and modules: ``specsweep-train`` is
``specsweep-train``, and likewise prepare, plan, fit and status.

The configs are the top-level ``conf/`` folder next to the ``sweep`` package: in a checkout (and an
editable install) the repository's own, in an installed wheel the copy it carries (pyproject.toml
packages ``conf`` beside ``sweep``). The Hydra commands give Hydra this absolute path: a relative
``config_path`` only works under ``python -m`` (from a console script Hydra would look for an
importable module ``conf`` instead, and fail).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def prog(command: str) -> str:
    """How the user started ``command`` (train, prepare, plan, fit, status), for usage lines:
    ``specsweep-fit`` from the console script, else ``python -m specsweep.sweep.fit``."""
    script = f"specsweep-{command}"
    return script if os.path.basename(sys.argv[0] or "") == script else f"python -m specsweep.sweep.{command}"
