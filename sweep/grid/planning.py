"""The plan of a grid (``sweep.plan``): its runs as the sweeper would launch them, with their cost.

``make_plan`` composes and validates every job exactly as ``sweep.train -m`` does (the shared
expansion of sweep.grid.expand, the preflight of sweep.grid.preflight: run ids, collisions, runs
already done or diverged), leaving the data files to one separate check so that a grid can be
planned before its data is prepared, and estimates each run (sweep.grid.estimate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import read_write

from specsweep.metrics.costmodel import DeviceProfile, load_profile

from specsweep.sweep.errors import UserError
from specsweep.sweep.grid.estimate import ANCHOR, CPU_ANCHOR, RECORD_BYTES, RunEstimate, estimate
from specsweep.sweep.grid.expand import compose_multirun
from specsweep.sweep.grid.preflight import PlannedJob, plan_sweep, restrict_plan
from specsweep.sweep.grid.sweep_name import NamedSweepLoader, launch_sweep_name
from specsweep.sweep.grid.spec import RunSpec, data_file_problems, resource_ranks
from specsweep.sweep.rundir import STATUS_DIVERGED, STATUS_DONE, RunDir

TO_TRAIN = ("todo", "resume")
STATE_WORDS = {"todo": "new", "resume": "resume", "left": "left out (hydra.sweeper.only)",
               STATUS_DONE: "done: skipped", STATUS_DIVERGED: "diverged: skipped"}


@dataclass
class PlannedRun:
    job: PlannedJob
    spec: RunSpec
    cost: RunEstimate
    remaining: float  # share of the run still to train (1 new, 0 done or skipped)


@dataclass
class GridPlan:
    sweep_name: str
    sweep_dir: str
    runs: list[PlannedRun]
    tokens_per_s: Optional[float]  # given per GPU, or None: the anchor
    data_problems: list[str] = field(default_factory=list)
    gpus_per_node: int = 0
    calibration: Optional[DeviceProfile] = None  # plan.calibration: measured on the machine, else the H100 constants

    def to_train(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.job.state in TO_TRAIN]


def _remaining(job: PlannedJob, steps: int) -> float:
    if job.state == "todo":
        return 1.0
    if job.state == "resume":
        done = RunDir(job.run_dir).checkpoint_step() or 0
        return max(0.0, (steps - done) / steps)
    return 0.0


def make_plan(overrides: Sequence[str], tokens_per_s: Optional[float] = None,
              calibration: Optional[str] = None) -> GridPlan:
    """Compose, expand and check the grid of ``overrides``; estimate every run. Writes nothing.
    ``calibration``: a calibration file (plan.calibration) read instead of the H100 constants."""
    try:
        profile = load_profile(calibration) if calibration else None
    except ValueError as e:
        raise UserError(f"plan.calibration: {e}") from None
    master, loader, jobs = compose_multirun(overrides)
    # The folder the launch would use: as the sweeper does, a grid without a sweep_name gets its
    # default name on the launch's config and on every job's config.
    name = launch_sweep_name(master, jobs)
    if name is not None:
        with read_write(master):
            master.sweep_name = name
        loader = NamedSweepLoader(loader, name)
    plan = plan_sweep(loader, master, jobs, check_files=False)
    only = master.hydra.sweeper.get("only")
    if only:
        restrict_plan(plan, list(only))
    runs, problems = [], []
    checked: set[str] = set()
    for job in plan.jobs:
        spec = job.spec
        assert spec is not None
        ranks = resource_ranks(spec.config.get("resources"))
        key = json.dumps([spec.config["data"], spec.train.global_batch, spec.train.batch_size,
                          spec.train.seq_len, spec.train.eval_batches, ranks], sort_keys=True, default=str)
        if key not in checked:  # one look at the files per distinct data and batch shape
            checked.add(key)
            problems += [p for p in data_file_problems(spec) if p not in problems]
        gpu = bool((spec.config.get("resources") or {}).get("gpus_per_node"))
        runs.append(PlannedRun(job, spec, estimate(spec, ranks, tokens_per_s, gpu=gpu, calibration=profile),
                               _remaining(job, spec.train.steps)))
    gpus = int((master.get("resources") or {}).get("gpus_per_node") or 0)
    return GridPlan(str(master.sweep_name), str(master.paths.sweep_dir), runs, tokens_per_s, problems, gpus, profile)


# ---- output ------------------------------------------------------------------------------------

def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _tokens(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _optimizer(spec: RunSpec) -> str:
    rf = spec.optimizer.hparams.get("rank_fraction")
    if spec.optimizer.name == "dion" and rf is not None:
        return f"dion r={rf:g}"
    return spec.optimizer.name


def bucket_sequences(s: RunSpec) -> int:
    """Sequences per step the HEAD/MID/TAIL covariances take (telemetry.bucket_sequences, else all;
    bucket_scope=rank0: at most this run's rank 0 share, which comes first in the step's order)."""
    total, ranks = s.train.sequences_per_step, resource_ranks(s.config.get("resources"))
    n = min(s.telemetry.bucket_sequences or total, total)
    return min(n, total // ranks) if s.telemetry.bucket_scope == "rank0" else n


def _optimizer_fields(name: str, hp: dict) -> dict[str, Any]:
    """The optimizer settings that differ between the paper's code and its runs (paper-notes §4b);
    null where the optimizer has no such part (no Lion group, no Newton–Schulz, not Dion)."""
    return {"lion_betas": hp.get("lion_betas", hp.get("betas") if name == "lion" else None),
            "ns_eps": hp.get("ns_eps"), "dion_transpose_wide": hp.get("transpose_wide") if name == "dion" else None}


def run_record(run: PlannedRun) -> dict[str, Any]:
    """One run of the plan as plain data (the JSON's ``runs`` rows)."""
    s, t, tel, m = run.spec, run.spec.train, run.spec.telemetry, run.spec.model
    hp = s.optimizer.hparams
    return {
        "run_id": s.run_id, "state": run.job.state, "run_dir": str(run.job.run_dir),
        "overrides": list(run.job.overrides),
        "optimizer": s.optimizer.name, "rank_fraction": hp.get("rank_fraction"), "lr": hp.get("lr"),
        "optimizer_hparams": hp, **_optimizer_fields(s.optimizer.name, hp),
        "model": m.name, "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head,
        "context_len": m.context_len, "ffn_width": m.ffn_hidden_dim, "ffn_mult": m.ffn_hidden_dim / m.d_model,
        "activation": m.activation, "pos_encoding": m.pos_encoding, "qk_norm": m.qk_norm,
        "norm_placement": m.norm_placement, "postln_frac": m.postln_frac,
        "seed": s.seed, "steps": t.steps, "global_batch": t.sequences_per_step, "seq_len": t.seq_len,
        "tokens_per_step": run.cost.tokens_per_step, "grad_clip": t.grad_clip,
        "warmup_steps": t.warmup_steps, "decay_frac": t.decay_frac, "eval_every": t.eval_every,
        "eval_at_start": t.eval_at_start, "eval_tokens": s.data.eval_tokens,
        "data": s.config["data"].get("name") or s.data.kind, "data_order": s.data.order,
        "data_source": s.data.source, "data_stream": list(s.data.stream() or []) or None, "vocab_size": run.cost.vocab,
        "bucket_sequences": bucket_sequences(s) if tel.buckets else None,
        "telemetry_every": tel.every if tel.enabled else None, "telemetry_enabled": tel.enabled,
        "spectrum_every": tel.spectrum_every, "bucket_scope": tel.bucket_scope,
        "min_bucket_rows": tel.min_bucket_rows, "telemetry_tokens": tel.tokens, "event_weights": tel.event_weights,
        "telemetry_sites": list(tel.sites), "buckets": tel.buckets, "renyi_alphas": list(tel.renyi_alphas),
        "remaining": run.remaining, **run.cost.as_dict(),
    }


def _totals(plan: GridPlan) -> dict[str, Any]:
    runs, todo = plan.runs, plan.to_train()
    states: dict[str, int] = {}
    for r in runs:
        states[r.job.state] = states.get(r.job.state, 0) + 1
    tel = [r.cost.telemetry for r in runs if r.cost.telemetry is not None]
    hours = "gpu_hours" if plan.gpus_per_node else "cpu_job_hours"
    return {
        "runs": len(runs), "states": states, "to_train": len(todo),
        "tokens": sum(r.cost.tokens for r in runs),
        "tokens_to_train": sum(r.cost.tokens * r.remaining for r in runs),
        hours: sum(r.cost.device_hours for r in runs),
        f"{hours}_to_train": sum(r.cost.device_hours * r.remaining for r in runs),
        "checkpoint_bytes": sum(r.cost.kept_checkpoint_bytes for r in runs),
        "spectra_records": sum(r.cost.spectra_records for r in runs),
        "spectra_bytes": sum(r.cost.spectra_bytes for r in runs),
        "telemetry_events": sum(r.cost.events for r in runs),
        "telemetry_spectrum_events": sum(r.cost.spectrum_events for r in runs),
        "telemetry_hours": sum(r.cost.telemetry.telemetry_s * r.cost.ranks / 3600 for r in runs if r.cost.telemetry),
        "telemetry_share": (sum(t.telemetry_s for t in tel) / sum(t.wall_s for t in tel)) if tel else None,
        "data_ready": not plan.data_problems, "data_problems": plan.data_problems,
    }


def _assumptions(plan: GridPlan) -> dict[str, str]:
    unit = "GPU" if plan.gpus_per_node else "CPU job"
    rate = (f"plan.tokens_per_s={plan.tokens_per_s:g} tokens/s per {unit} (given)" if plan.tokens_per_s
            else f"ours measured by the calibration ({plan.calibration.measured['ours_tok_s']:,.0f} tokens/s at the "
                 "anchor's shape), scaled by training FLOPs per token"
            if plan.gpus_per_node and plan.calibration is not None and plan.calibration.measured.get("ours_tok_s")
            else f"estimate from a measured anchor: {ANCHOR if plan.gpus_per_node else CPU_ANCHOR}")
    return {
        "throughput": rate + ("; data-parallel ranks assumed to scale linearly" if plan.gpus_per_node else ""),
        "device": "GPU-hours: GPUs per run x wall hours" if plan.gpus_per_node else "CPU job-hours (resources has no GPU)",
        "evaluation": "forward only, a third of a training token's FLOPs",
        "checkpoint_disk": "fp32 weights + optimizer state, train.keep_checkpoints kept per run",
        "spectra_disk": f"{RECORD_BYTES} bytes per telemetry record (one line of the spectra file)",
        "telemetry": (f"metrics.costmodel.estimate_run, {_profile_word(plan)}; checkpoint drains and writes, "
                      "train.compile's eager telemetry steps counted" if plan.gpus_per_node
                      else "events counted; their time is not estimated (the cost model's profile is an H100)"),
    }


def _profile_word(plan: GridPlan) -> str:
    return (f"profile measured: {plan.calibration.name}" if plan.calibration is not None
            else "projected from the H100 constants of telemetry-cost.md")


def plan_json(plan: GridPlan) -> dict[str, Any]:
    """The plan as plain data: ``{"sweep", "sweep_dir", "runs": [...], "totals": {...}, "assumptions": {...}}``."""
    return {"sweep": plan.sweep_name, "sweep_dir": plan.sweep_dir, "runs": [run_record(r) for r in plan.runs],
            "totals": _totals(plan), "assumptions": _assumptions(plan)}


def plan_text(plan: GridPlan) -> str:
    """The plan as the command prints it: one line per run, then the totals and their basis."""
    tot = _totals(plan)
    lines = [f"sweep {plan.sweep_name} -> {plan.sweep_dir}", ""]
    unit = "GPU-hours" if plan.gpus_per_node else "CPU job-hours"
    hours = "gpu_hours" if plan.gpus_per_node else "cpu_job_hours"
    head = f"{'run id':<44} {'optimizer':<14} {'D':>6} {'steps':>6} {'tokens':>8} {unit.split('-')[0] + '-h':>7}  state"
    lines += [head, "-" * len(head)]
    for r in plan.runs:
        s = r.spec
        lines.append(f"{s.run_id:<44} {_optimizer(s):<14} {s.model.ffn_hidden_dim:>6} {s.train.steps:>6} "
                     f"{_tokens(r.cost.tokens):>8} {r.cost.device_hours:>7.2f}  {STATE_WORDS.get(r.job.state, r.job.state)}")
    states = ", ".join(f"{n} {STATE_WORDS.get(k, k)}" for k, n in sorted(tot["states"].items()))
    tps = sorted({round(r.cost.tokens_per_s) for r in plan.runs})
    first = plan.runs[0].cost if plan.runs else None
    lines += ["", "totals (estimates)"]
    lines.append(f"  runs        {tot['runs']} ({states}); {tot['to_train']} to train")
    if first is not None:
        lines.append(f"  tokens      {_tokens(tot['tokens'])} in all, {_tokens(tot['tokens_to_train'])} to train; "
                     f"{first.tokens_per_step:,} tokens per step = {first.grad_accum} micro-batches x "
                     f"{first.ranks} rank(s) x {first.micro_batch} sequences")
        lines.append(f"  {unit.replace('CPU job-hours', 'CPU-hours'):<11} {tot[hours + '_to_train']:,.1f} to train ({tot[hours]:,.1f} for the whole grid), "
                     f"estimate at {_tokens(tps[0])}-{_tokens(tps[-1])} tokens/s per {unit.split('-')[0]}")
        lines.append(f"              {_assumptions(plan)['throughput']}")
    lines.append(f"  disk        checkpoints {_gib(tot['checkpoint_bytes'])} (kept after the runs), "
                 f"spectra {_gib(tot['spectra_bytes'])} ({tot['spectra_records']:,} records x {RECORD_BYTES} B)")
    if tot["telemetry_events"]:
        cost = (f"about {tot['telemetry_share']:.1%} of wall time ({tot['telemetry_hours']:,.1f} GPU-h, "
                f"cost model, {_profile_word(plan)})" if tot["telemetry_share"] is not None
                else "time not estimated for CPU jobs")
        lines.append(f"  telemetry   {tot['telemetry_events']:,} events ({tot['telemetry_spectrum_events']:,} with spectra, "
                     f"{tot['telemetry_events'] - tot['telemetry_spectrum_events']:,} hard ranks only), {cost}")
    else:
        lines.append("  telemetry   off")
    if plan.data_problems:
        lines.append("  data        NOT READY: the launch would refuse every run until this is fixed:")
        lines += [f"                - {p}" for p in plan.data_problems]
    else:
        lines.append("  data        ready")
    skipped = [r for r in plan.runs if r.job.state not in TO_TRAIN]
    if skipped:
        lines.append(f"  skipped     {len(skipped)} runs already finished, diverged or left out (see state above)")
    return "\n".join(lines)
