"""``specsweep-plan``: a grid's runs and cost before anything runs (issue 15).

The plan composes, expands and checks the grid exactly as ``sweep.train -m`` does
(sweep.grid.expand, sweep.grid.preflight), trains nothing and makes no run directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specsweep.sweep.grid.identity import claim
from specsweep.sweep.grid.planning import make_plan
from specsweep.sweep.plan import main
from specsweep.sweep.rundir import RunDir
from tests.conftest import FAST, ROOT, run_train

ARMS = "hydra.sweeper.arms=[{optim:adamw},{optim:muon,optim.lr:0.01}]"


def test_plan_of_paper_160m_lists_its_40_runs_and_writes_them(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "specsweep.sweep.plan", "+sweep=paper_160m", f"plan.out={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("gpt2-160m_")]
    assert len(lines) == 40 and all(line.rstrip().endswith("new") for line in lines)
    text = proc.stdout
    assert "GPU-hours" in text and "estimate" in text and "393k tokens/s on one H100" in text
    assert "disk        checkpoints" in text and "telemetry   1,240 events" in text
    assert "NOT READY" in text and "specsweep-prepare data=fineweb10b" in text
    plan = json.loads(out.read_text())
    assert len(plan["runs"]) == 40 and plan["totals"]["runs"] == 40
    run = next(r for r in plan["runs"] if r["run_id"] == "gpt2-160m_dion-r0.0625_w8_s1337")
    assert (run["optimizer"], run["rank_fraction"], run["ffn_width"], run["steps"]) == ("dion", 0.0625, 6144, 6000)
    assert (run["tokens_per_step"], run["telemetry_every"], run["grad_clip"], run["state"]) == (524_288, 200, None, "todo")
    assert run["gpu_hours"] > 0 and run["kept_checkpoint_bytes"] > 0 and run["telemetry"]["events"] == 31
    assert plan["totals"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in plan["runs"]))
    assert not (tmp_path / "runs").exists(), "the plan made a run directory"


def test_plan_says_which_runs_are_done_and_skipped(env: dict, tmp_path: Path, capsys) -> None:
    first = make_plan(["+sweep=paper_350m_tail"])
    assert len(first.runs) == 16
    done = first.runs[5]
    rd = RunDir(done.job.run_dir)  # what a finished run leaves: its identity, then DONE
    rd.path.mkdir(parents=True)
    claim(rd, done.spec.identity, done.spec.config_yaml())
    rd.write_done({"run_id": done.spec.run_id, "final_step": 8000})
    out = tmp_path / "plan.json"
    assert main(["+sweep=paper_350m_tail", f"plan.out={out}"]) == 0
    plan = json.loads(out.read_text())
    states = {r["run_id"]: r["state"] for r in plan["runs"]}
    assert len(states) == 16 and states[done.spec.run_id] == "done"
    assert plan["totals"]["to_train"] == 15
    assert plan["totals"]["gpu_hours_to_train"] == pytest.approx(
        plan["totals"]["gpu_hours"] - next(r["gpu_hours"] for r in plan["runs"] if r["state"] == "done"))
    text = capsys.readouterr().out
    assert f"{done.spec.run_id}" in text and "done: skipped" in text


def test_plan_refuses_bad_input_with_a_short_message(env: dict, capsys) -> None:
    assert main(["+preset=smoke", "plan.outfile=x.json"]) == 2
    assert "unknown plan option (known: plan.out, plan.tokens_per_s" in capsys.readouterr().err
    assert main(["+preset=smoke", "plan.tokens_per_s=fast"]) == 2
    assert "plan.tokens_per_s: a positive number" in capsys.readouterr().err
    assert main(["+sweep=paper_nope"]) == 2
    assert "paper_nope" in capsys.readouterr().err
    # an invalid job stops the plan as it would stop the launch, naming the job and the key
    assert main(["+preset=paper", "train.global_batch=1000", "model.ffn_mult=1,2"]) == 2
    err = capsys.readouterr().err
    assert "the grid was not launched" in err and "train.global_batch=1000 does not split" in err
    assert main(["--help"]) == 0 and "plan.tokens_per_s" in capsys.readouterr().out


@pytest.mark.slow
def test_the_plan_lists_what_the_sweeper_launches(env: dict, tmp_path: Path, capsys) -> None:
    grid = [*FAST, ARMS, "model.ffn_mult=1,2", "train.steps=3"]
    assert main([*grid, f"plan.out={tmp_path / 'before.json'}", "plan.tokens_per_s=5000"]) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    assert before["totals"]["cpu_job_hours"] > 0 and "plan.tokens_per_s=5000" in before["assumptions"]["throughput"]
    planned = sorted(r["run_id"] for r in before["runs"])
    assert len(planned) == 4  # the arms x the widths, the muon arm with its own learning rate
    assert sorted(r["optimizer"] for r in before["runs"]) == ["adamw", "adamw", "muon", "muon"]
    assert {r["lr"] for r in before["runs"] if r["optimizer"] == "muon"} == {0.01}
    assert not (tmp_path / "runs").exists()
    sweep_dir = Path(before["sweep_dir"])
    assert sweep_dir.name.startswith("grid-"), "the plan shows the folder the launch will use"
    run_train(["-m", *grid], env)
    launched = sorted(p.name for p in sweep_dir.iterdir() if (p / "DONE").exists())
    assert launched == planned
    assert main([*grid, f"plan.out={tmp_path / 'after.json'}"]) == 0
    after = json.loads((tmp_path / "after.json").read_text())
    assert {r["state"] for r in after["runs"]} == {"done"} and after["totals"]["to_train"] == 0


@pytest.mark.parametrize("optim", ["adamw", "muon", "normuon", "dion", "lion"])
def test_checkpoint_estimate_counts_the_optimizer_state_a_step_creates(compose, optim: str) -> None:
    import torch

    from specsweep.models import GPT
    from specsweep.optim import build_optimizer
    from specsweep.sweep.grid.estimate import state_bytes
    from specsweep.sweep.grid.spec import build_run_spec

    spec = build_run_spec(compose([f"optim={optim}", "model.vocab_size=300", "model.ffn_mult=3"]))
    model = GPT(spec.model)
    bundle = build_optimizer(model, optim, **spec.optimizer.hparams)
    x = torch.randint(0, 300, (2, 16))
    model(x, x)[1].backward()
    bundle.step()
    real = sum(v.numel() * v.element_size() for o in bundle.optimizers for st in o.state.values()
               for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    params, estimated = state_bytes(spec.model, optim, spec.optimizer.hparams)
    assert params == model.num_params()
    assert estimated == pytest.approx(real, rel=0.02)


def test_checkpoint_writes_count_the_last_step_in_the_plan_and_the_telemetry_share_alike(compose) -> None:
    """A run whose steps are no multiple of train.ckpt_every also checkpoints at its last step (the
    trainer saves at ``step % ckpt_every == 0 or last``): 10 steps, every 4 -> steps 4, 8 and 10.
    The plan's wall time and the telemetry's share of it rest on the same checkpoint writes."""
    from specsweep.metrics.costmodel import H100
    from specsweep.sweep.grid.estimate import estimate
    from specsweep.sweep.grid.spec import build_run_spec

    spec = build_run_spec(compose(["model.vocab_size=300", "train.steps=10", "train.ckpt_every=4",
                                   "telemetry.every=5"]))
    est = estimate(spec, ranks=1, gpu=True)
    tel = est.telemetry
    assert tel is not None
    one = est.checkpoint_bytes / H100.ckpt_bytes_per_s
    assert est.ckpt_s == pytest.approx(3 * one)
    assert tel.ckpt_s == pytest.approx(3 * one) and tel.basis["ckpt_s"].startswith("3 checkpoints")
    assert est.wall_s == pytest.approx(tel.wall_s)
    assert tel.share == pytest.approx(tel.telemetry_s / est.wall_s)
