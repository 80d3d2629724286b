"""Entry point: ``specsweep-plan +sweep=<name> [overrides] [plan.out=FILE.json] [plan.tokens_per_s=N]``.

What a grid will run and cost, before anything runs: the same composition, grid expansion and
preflight as ``specsweep-train -m`` (sweep.grid.expand, sweep.grid.preflight), one line per
run and the totals (tokens, estimated GPU-hours, disk, telemetry). Submits nothing, trains nothing,
writes nothing but ``plan.out``.

    specsweep-plan +sweep=paper_160m
    specsweep-plan +sweep=paper_160m resources=gpu4 plan.out=plan.json
    specsweep-plan +sweep=paper_350m_tail plan.tokens_per_s=250000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from specsweep.sweep.analysis.defaults import DEFAULT_RESOLVE, PAPER
from specsweep.sweep.credentials import exit_if_credentials_in
from specsweep.sweep.errors import UserError

OPTIONS = {
    "out": "write the plan as JSON to this file",
    "tokens_per_s": "training tokens per second per GPU (default: an estimate from a measured anchor)",
    "pilot": f"noise for the resolution block: a finished sweep directory, or {PAPER} (default: the published fits)",
    "resolve": f"the |Δβ| between optimizers to resolve: seeds or widths that would (default {DEFAULT_RESOLVE}; "
               "docs/power.md)",
    "calibration": "a calibration file (benchmarks/gpu_check.sh) read instead of the H100 constants",
}
# The numeric options, each with what it must be.
POSITIVE = {"resolve": "a difference of β > 0, e.g. plan.resolve=0.1",
            "tokens_per_s": "a positive number of tokens per second per GPU"}
USAGE = __doc__.split("\n\n")[0] + "\n\nOptions (plan.KEY=VALUE; every other argument is a Hydra override, as for sweep.train -m):\n" + \
    "\n".join(f"  plan.{k:<13} {v}" for k, v in OPTIONS.items())


def split_options(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(plan options, Hydra overrides) of the command line; UserError on a bad plan option."""
    options: dict[str, Any] = {}
    overrides: list[str] = []
    for arg in argv:
        if arg in ("-m", "--multirun"):  # the grid is always expanded
            continue
        if not arg.lstrip("+").startswith("plan."):
            overrides.append(arg)
            continue
        key, sep, value = arg.lstrip("+")[len("plan."):].partition("=")
        if key not in OPTIONS or not sep:
            raise UserError(f"{arg}: unknown plan option (known: {', '.join('plan.' + k for k in OPTIONS)}; "
                            f"each as plan.KEY=VALUE)")
        if key in POSITIVE:  # a number > 0
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = -1.0
            if not options[key] > 0:
                raise UserError(f"plan.{key}: {POSITIVE[key]}, got {value!r}")
        else:
            if not value:
                raise UserError(f"plan.{key}: a value, e.g. plan.out=plan.json or plan.pilot=runs/demo")
            options[key] = value
    return options, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print (and with plan.out write) the plan of a grid; 0 when every run is valid, 2 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    exit_if_credentials_in(argv)
    # torch and Hydra only past --help
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from specsweep.sweep.analysis.power_plan import grid_resolution
    from specsweep.sweep.grid.planning import make_plan, plan_json, plan_text

    try:
        options, overrides = split_options(argv)
        plan = make_plan(overrides, tokens_per_s=options.get("tokens_per_s"), calibration=options.get("calibration"))
        rows, resolution = grid_resolution([r.spec for r in plan.runs], options.get("pilot", PAPER),
                                           options.get("resolve", DEFAULT_RESOLVE))
    except UserError as e:  # a bad plan option, an invalid job (as the launch would refuse it)
        print(f"specsweep.sweep.plan: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:  # composition: an unknown key or group option
        print(f"specsweep.sweep.plan: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(plan_text(plan))
    if resolution:
        print("\n" + resolution)
    if "out" in options:
        out = Path(options["out"])
        out.write_text(json.dumps(plan_json(plan) | {"resolution": rows}, indent=1, default=str) + "\n")
        print(f"plan written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
