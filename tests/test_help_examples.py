"""Every example of `specsweep-train --help` composes with the sweeper it needs (issue 23 item 6:
the Optuna example lacked `hydra/sweeper=optuna` and exited 1)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELP = ROOT / "conf" / "hydra" / "help" / "specsweep_train.yaml"
OPTUNA_SYNTAX = re.compile(r"\b(interval|tag|range|choice)\(")


def _examples() -> list[list[str]]:
    header = yaml.safe_load(HELP.read_text(encoding="utf-8"))["header"]
    commands = []
    for line in header.splitlines():
        line = line.strip()
        if line.startswith("specsweep-train"):
            # The command is the part before the description (two or more spaces).
            words = shlex.split(re.split(r"\s{2,}", line)[0])[1:]
            # A sweep axis (key=a,b,c) composes as its first value.
            commands.append([re.sub(r"^([^=\[]+=[^,\[(]+),.*$", r"\1", w) for w in words
                             if w not in ("-m", "--cfg", "job")])
    return commands


def test_the_help_has_examples() -> None:
    assert any("+sweep=lr_search" in " ".join(c) for c in _examples())


@pytest.mark.parametrize("overrides", _examples(), ids=lambda o: " ".join(o) or "(none)")
def test_each_help_example_composes_with_the_sweeper_its_grid_needs(compose, overrides: list[str]) -> None:
    cfg = compose([o for o in overrides if not o.startswith(("hydra/launcher=", "cluster="))])
    params = cfg.hydra.sweeper.get("params") or {}
    if any(OPTUNA_SYNTAX.search(str(v)) for v in params.values()):
        assert "optuna" in cfg.hydra.sweeper._target_.lower(), (overrides, cfg.hydra.sweeper._target_)
