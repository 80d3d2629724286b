"""Check that a finished training run left complete, finite records (part (c) of gpu_check.sh).

    python benchmarks/check_run.py RUN_OR_SWEEP_DIR [--no-cost-lines]

Reads the run's resolved config.yaml for what to expect (train.steps, telemetry.every, layers,
sites, buckets) and checks:
  done         DONE exists and run.json says done, at the last step
  loss         every train and eval loss is finite, and the last train loss is below the first
  events       spectra.jsonl has exactly the event steps (step 1, every `every`-th, the last)
  records      every event has one record per layer x site x bucket (global + head/mid/tail when
               buckets are on), status ok, a finite hard rank, and a finite soft rank where the
               record carries a spectrum; the last event carries spectra
  cost_lines   metrics.jsonl has a telemetry cost line (a row with a critical-path key) at every
               event, with finite non-negative numbers (--no-cost-lines: reported, not required)
A SWEEP_DIR must hold exactly one run. Prints one line per check and last
`check=PASS|FAIL <key numbers> [failed=<checks>]`; exits 0 on PASS, 1 on FAIL, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from specsweep.metrics import BUCKETS, event_steps  # noqa: E402
from specsweep.sweep.rundir import STATUS_DONE, RunDir, find_run_dirs, iter_jsonl  # noqa: E402

GLOBAL_BUCKET = "global"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flat(row: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of a row, nested dicts joined with '/'."""
    for key, value in row.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, path + "/")
        else:
            yield path, value


def is_cost_line(row: dict) -> bool:
    """A telemetry cost line: a metrics row naming the critical path (issue 14: one per event)."""
    return any("critical" in key for key, _ in _flat(row))


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def report(self, name: str, ok: bool, detail: str, required: bool = True) -> None:
        word = "ok" if ok else ("FAIL" if required else "missing (not required)")
        print(f"{name:11s} {word}: {detail}")
        if not ok and required:
            self.failed.append(name)


def unusable(message: str) -> SystemExit:
    print(f"check_run: {message}", file=sys.stderr)
    return SystemExit(2)


def find_run(path: Path) -> RunDir:
    runs, _ = find_run_dirs(path)
    if len(runs) != 1:
        raise unusable(f"expected one run directory in {path}, found {len(runs)}")
    return RunDir(runs[0])


def check(run: RunDir, cost_lines_required: bool = True) -> tuple[bool, str]:
    """Run every check on ``run``; returns (passed, the summary line)."""
    cfg = run.read_config()
    if cfg is None:
        raise unusable(f"no readable {run.config_file}")
    steps, every = int(cfg["train"]["steps"]), int(cfg["telemetry"]["every"])
    tel = cfg["telemetry"]
    layers = range(int(cfg["model"]["n_layer"]))
    buckets = (GLOBAL_BUCKET, *BUCKETS) if tel.get("buckets") else (GLOBAL_BUCKET,)
    expected_keys = {(layer, site, bucket) for layer in layers for site in tel["sites"] for bucket in buckets}
    events = event_steps(steps, every) if tel.get("enabled", True) else []
    checks = Checks()

    status = run.read_status()
    checks.report("done", run.is_done() and status.get("status") == STATUS_DONE and status.get("step") == steps,
                  f"DONE {'present' if run.is_done() else 'absent'}, run.json status={status.get('status')} "
                  f"step={status.get('step')} (expected {steps})")

    rows = list(iter_jsonl(run.metrics_file)) if run.metrics_file.exists() else []
    train = [r for r in rows if "train_loss" in r and not r.get("diverged")]
    evals = [r for r in rows if "eval_loss" in r]
    losses = [r["train_loss"] for r in train] + [r["eval_loss"] for r in evals]
    first = train[0]["train_loss"] if train else float("nan")
    last = train[-1]["train_loss"] if train else float("nan")
    finite = bool(losses) and all(_finite(v) for v in losses)
    checks.report("loss", finite and train[-1]["step"] == steps and last < first,
                  f"{len(train)} train / {len(evals)} eval rows, all finite: {finite}; "
                  f"train loss {first:.4f} at step {train[0]['step'] if train else '-'} -> {last:.4f} "
                  f"at step {train[-1]['step'] if train else '-'}")

    records = list(iter_jsonl(run.spectra_file)) if run.spectra_file.exists() else []
    by_step: dict[int, list[dict]] = {}
    for r in records:
        by_step.setdefault(int(r["step"]), []).append(r)
    checks.report("events", sorted(by_step) == events,
                  f"event steps {sorted(by_step)} (expected {events})")

    problems: list[str] = []
    spectra_events = 0
    for step in events:
        recs = by_step.get(step, [])
        counts = Counter((int(r["layer"]), r["site"], r["bucket"]) for r in recs)
        missing = expected_keys - set(counts)
        extra = set(counts) - expected_keys
        doubled = [k for k, n in counts.items() if n > 1]
        bad_status = Counter(r.get("status") for r in recs if r.get("status") != "ok")
        bad_hard = sum(1 for r in recs if r.get("status") == "ok" and not (_finite(r.get("hard_rank"))
                                                                              and r["hard_rank"] > 0))
        with_spectrum = [r for r in recs if r.get("spectrum", True)]
        bad_soft = sum(1 for r in with_spectrum if r.get("status") == "ok" and not _finite(r.get("soft_rank")))
        spectra_events += bool(recs) and len(with_spectrum) == len(recs)
        for what, n in (("missing", len(missing)), ("unexpected", len(extra)), ("doubled", len(doubled)),
                        ("hard_rank not finite", bad_hard), ("soft_rank not finite", bad_soft)):
            if n:
                problems.append(f"step {step}: {n} {what}")
        if bad_status:
            problems.append(f"step {step}: status {dict(bad_status)}")
    final = by_step.get(events[-1], []) if events else []
    if final and not all(r.get("spectrum", True) for r in final):
        problems.append(f"the last event (step {events[-1]}) carries no spectra")
    checks.report("records", not problems and bool(events),
                  f"{len(records)} records, {len(expected_keys)} per event expected "
                  f"({len(layers)} layers x {len(tel['sites'])} sites x {len(buckets)} buckets), "
                  f"{spectra_events} event(s) with spectra" + ("; " + "; ".join(problems[:8]) if problems else ""))

    cost = [r for r in rows if is_cost_line(r)]
    cost_steps = sorted({int(r["step"]) for r in cost if "step" in r})
    cost_finite = all(_finite(v) and v >= 0 for r in cost for k, v in _flat(r)
                      if isinstance(v, (int, float)) and not isinstance(v, bool))
    checks.report("cost_lines", bool(events) and set(events) <= set(cost_steps) and cost_finite,
                  f"{len(cost)} cost line(s) at steps {cost_steps} (expected one at every event), "
                  f"numbers finite and >= 0: {cost_finite}", required=cost_lines_required)

    passed = not checks.failed
    line = (f"check={'PASS' if passed else 'FAIL'} steps={train[-1]['step'] if train else 0} "
            f"first_loss={first:.4f} final_loss={last:.4f} events={len(by_step)} records={len(records)} "
            f"spectra_events={spectra_events} cost_lines={len(cost)} done={'yes' if run.is_done() else 'no'}")
    if checks.failed:
        line += f" failed={','.join(checks.failed)}"
    return passed, line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="a run directory, or a sweep directory holding one run")
    p.add_argument("--no-cost-lines", action="store_true",
                   help="report missing telemetry cost lines without failing (runs from before they existed)")
    args = p.parse_args(argv)
    if not args.path.is_dir():
        p.error(f"{args.path} is not a directory")
    passed, line = check(find_run(args.path), cost_lines_required=not args.no_cost_lines)
    print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
