"""Every job of every paper grid, composed and checked against the paper's protocol (issue 15).

paper-notes §4–5: a changed default (a cadence, the clipping, the data order, an optimizer's
hyperparameter) must not silently change a reproduction. The grids are expanded and validated by
``sweep.plan``'s path, which is the sweeper's (sweep.grid.expand + sweep.grid.preflight); nothing
trains and no run directory is made.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from specsweep.sweep.grid.planning import make_plan, plan_json
from specsweep.sweep.grid.spec import build_run_spec

W160 = [768 * k for k in range(1, 9)]
W350 = [1024 * k for k in range(1, 5)]
FIVE = [("adamw", None), ("muon", None), ("normuon", None), ("dion", 0.5), ("dion", 0.0625)]
GRIDS = ["paper_160m", "paper_350m_tail", "paper_dion_ranks", "paper_matched_loss", "paper_heads", "paper_postln"]

# The optimizers' hyperparameters in the paper (paper-notes §4 "Optimizers" and §4b: Lion β (0.9, 0.95),
# NS eps 1e-8, Dion bf16 products and transposed wide matrices); null lion_lr = lr, null head_lr = lion_lr / √d_model.
ADAMW = {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.01}
MUON = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.01, "adjust_lr": "spectral_norm",
        "ns_eps": 1e-8, "lion_lr": None, "lion_betas": [0.9, 0.95], "lion_weight_decay": 0.0, "head_lr": None,
        "scalar_optimizer": "lion"}
NORMUON = {**MUON, "beta2": 0.95}
DION = {"lr": 0.02, "mu": 0.95, "weight_decay": 0.01, "rcqr_oversample": 1.25, "state_dtype": "bfloat16",
        "product_dtype": "bfloat16", "transpose_wide": True,
        "orthogonalize": "rcqr", "lion_lr": None, "lion_betas": [0.9, 0.95], "lion_weight_decay": 0.0,
        "head_lr": None, "scalar_optimizer": "lion"}
HPARAMS = {"adamw": ADAMW, "muon": MUON, "normuon": NORMUON, "dion": DION}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The plan (as sweep.plan's JSON) of every paper grid, with empty run and data folders."""
    root = tmp_path_factory.mktemp("paper_grids")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECSWEEP_RUNS", str(root / "runs"))
        mp.setenv("SPECSWEEP_DATA", str(root / "data"))
        out = {grid: plan_json(make_plan([f"+sweep={grid}"])) for grid in GRIDS}
    assert not (root / "runs").exists(), "planning made a run directory"
    return out


def _arm(run: dict) -> tuple:
    return run["optimizer"], run["rank_fraction"]


def _check_protocol(run: dict, *, steps: int, every: int, eval_every: int, layers: int, d_model: int,
                    heads: int) -> None:
    rid = run["run_id"]
    assert (run["n_layer"], run["d_model"], run["n_head"], run["context_len"]) == (layers, d_model, heads, 512), rid
    assert (run["activation"], run["pos_encoding"], run["qk_norm"]) == ("relu2", "rope", True), rid
    assert (run["steps"], run["telemetry_every"], run["eval_every"]) == (steps, every, eval_every), rid
    assert (run["global_batch"], run["seq_len"], run["tokens_per_step"]) == (1024, 512, 524_288), rid
    assert run["tokens"] == steps * 524_288, rid
    assert run["grad_clip"] is None and run["warmup_steps"] == 0 and run["decay_frac"] == 0.2, rid
    assert run["eval_at_start"] is True and run["eval_tokens"] == 10_485_760, rid
    assert (run["data"], run["data_order"]) == ("fineweb10b_gpt2", "sequential"), rid
    assert (run["data_source"], run["vocab_size"]) == ("hf-bins:kjj0/fineweb10B-gpt2", 50304), rid
    paper_rank0 = (256, [4, 64]) if d_model == 768 else (128, [8, 16])  # 4 GPUs x 64 | 8 GPUs x 16 (§4b)
    assert (run["bucket_sequences"], run["data_stream"]) == paper_rank0, rid
    assert run["seed"] == 1337, rid
    assert run["telemetry_enabled"] and run["telemetry_tokens"] == "train", rid
    assert run["event_weights"] == "after_update", rid  # event s: the weights after s updates (§4b)
    assert (run["telemetry_sites"], run["buckets"], run["min_bucket_rows"]) == (["pre", "post"], True, 1000), rid
    assert (run["bucket_scope"], run["spectrum_every"]) == ("all", 1), rid  # bucket_sequences picks the rows
    assert run["renyi_alphas"] == [0.5, 1.5, 2.0, 3.0, 5.0], rid
    hp = run["optimizer_hparams"]
    expected = dict(HPARAMS[run["optimizer"]])
    if run["optimizer"] == "adamw" and run["lr"] != 3e-3:  # PostLN's AdamW rows: their own lr
        expected["lr"] = run["lr"]
    assert {k: hp[k] for k in expected} == expected, rid


def test_paper_160m_is_five_optimizers_by_eight_widths(plans: dict) -> None:
    runs = plans["paper_160m"]["runs"]
    assert len(runs) == 40 and len({r["run_id"] for r in runs}) == 40
    assert {(_arm(r), r["ffn_width"]) for r in runs} == {(a, d) for a in FIVE for d in W160}
    for r in runs:
        _check_protocol(r, steps=6000, every=200, eval_every=150, layers=12, d_model=768, heads=12)
        assert r["postln_frac"] == 0.0 and r["norm_placement"] == "pre"
    assert plans["paper_160m"]["totals"]["tokens"] == 40 * 6000 * 524_288


def test_paper_350m_tail_is_four_optimizers_by_four_widths(plans: dict) -> None:
    runs = plans["paper_350m_tail"]["runs"]
    assert len(runs) == 16 and len({r["run_id"] for r in runs}) == 16
    arms = [("adamw", None), ("muon", None), ("normuon", None), ("dion", 0.0625)]
    assert {(_arm(r), r["ffn_width"]) for r in runs} == {(a, d) for a in arms for d in W350}
    for r in runs:
        _check_protocol(r, steps=8000, every=400, eval_every=200, layers=24, d_model=1024, heads=32)


def test_paper_dion_ranks_is_four_ranks_and_the_adamw_reference(plans: dict) -> None:
    runs = plans["paper_dion_ranks"]["runs"]
    arms = [("dion", r) for r in (0.5, 0.25, 0.125, 0.0625)] + [("adamw", None)]
    assert len(runs) == 40 and {(_arm(r), r["ffn_width"]) for r in runs} == {(a, d) for a in arms for d in W160}
    for r in runs:
        _check_protocol(r, steps=6000, every=200, eval_every=150, layers=12, d_model=768, heads=12)
    # the runs it shares with paper_160m are the same runs (same ids): a shared sweep_name skips them
    shared = {r["run_id"] for r in plans["paper_160m"]["runs"]} & {r["run_id"] for r in runs}
    assert len(shared) == 24


def test_paper_matched_loss_is_adamw_6k_12k_and_dion_16(plans: dict) -> None:
    runs = plans["paper_matched_loss"]["runs"]
    arms = {(("adamw", None), 6000), (("adamw", None), 12000), (("dion", 0.0625), 6000)}
    assert len(runs) == 24 and {(_arm(r), r["steps"], r["ffn_width"]) for r in runs} == \
        {(a, s, d) for a, s in arms for d in W160}
    for r in runs:
        _check_protocol(r, steps=r["steps"], every=200, eval_every=150, layers=12, d_model=768, heads=12)
    assert len({r["run_id"] for r in plans["paper_160m"]["runs"]} & {r["run_id"] for r in runs}) == 16


def test_paper_heads_is_12_and_6_heads_by_five_optimizers_by_eight_widths(plans: dict) -> None:
    runs = plans["paper_heads"]["runs"]
    assert len(runs) == 80 and len({r["run_id"] for r in runs}) == 80
    assert {(_arm(r), r["n_head"], r["ffn_width"]) for r in runs} == {(a, h, d) for a in FIVE for h in (12, 6) for d in W160}
    for r in runs:
        _check_protocol(r, steps=6000, every=200, eval_every=150, layers=12, d_model=768, heads=r["n_head"])


def test_paper_postln_is_four_fractions_by_the_tables_six_rows(plans: dict) -> None:
    runs = plans["paper_postln"]["runs"]
    rows = {("adamw", None, 1e-4), ("adamw", None, 3e-4), ("muon", None, 0.02), ("normuon", None, 0.02),
            ("dion", 0.5, 0.02), ("dion", 0.0625, 0.02)}
    assert len(runs) == 24
    assert {(r["optimizer"], r["rank_fraction"], r["lr"], r["postln_frac"]) for r in runs} == \
        {(*row, f) for row in rows for f in (0.25, 0.5, 0.75, 1.0)}
    for r in runs:
        _check_protocol(r, steps=6000, every=200, eval_every=150, layers=12, d_model=768, heads=12)
        assert r["ffn_width"] == 3072 and r["norm_placement"] == "pre"


def test_plan_totals_add_up(plans: dict) -> None:
    for grid, plan in plans.items():
        runs, tot = plan["runs"], plan["totals"]
        assert tot["runs"] == len(runs) and tot["to_train"] == len(runs), grid
        assert math.isclose(tot["gpu_hours"], sum(r["gpu_hours"] for r in runs)), grid
        assert tot["telemetry_events"] == sum(r["telemetry"]["events"] for r in runs), grid
        assert tot["data_ready"] is False and "specsweep-prepare data=fineweb10b" in tot["data_problems"][0]
        for r in runs:  # events at step 1, every `every` steps and the last
            assert r["telemetry"]["events"] == r["steps"] // r["telemetry_every"] + 1, r["run_id"]
            assert r["steps"] % r["eval_every"] == 0, r["run_id"]  # the last eval is on the cadence
            assert r["n_evals"] == r["steps"] // r["eval_every"] + 1, r["run_id"]  # + the one at step 0


def test_the_paper_preset_alone_is_the_160m_protocol(compose) -> None:
    spec = build_run_spec(compose(["+preset=paper"]), check_files=False)
    m, t, tel = spec.model, spec.train, spec.telemetry
    assert (m.name, m.n_layer, m.d_model, m.n_head, m.context_len) == ("gpt2-160m", 12, 768, 12, 512)
    assert (t.steps, t.global_batch, t.micro_batch, t.grad_clip, t.eval_every, t.eval_at_start) == \
        (6000, 1024, 64, None, 150, True)
    assert (tel.every, tel.bucket_scope, spec.data.order, spec.data.eval_tokens, spec.seed) == \
        (200, "all", "sequential", 10_485_760, 1337)
    assert (tel.bucket_sequences, spec.data.stream(), spec.model.vocab_size) == (256, (4, 64), 50304)
    # the GPU check's shortened widest Muon point composes as well
    short = build_run_spec(compose(["+preset=paper", "model=gpt2_160m", "model.ffn_mult=8", "optim=muon",
                                    "train.steps=50", "train.micro_batch=256"]), check_files=False)
    assert (short.model.ffn_hidden_dim, short.train.split(1).grad_accum) == (6144, 4)


def test_paper_350m_micro_batch_and_gpu_count_keep_the_global_batch(plans: dict) -> None:
    r = plans["paper_350m_tail"]["runs"][0]
    assert (r["micro_batch"], r["grad_accum"], r["ranks"]) == (16, 64, 1)  # one GPU by default (resources=gpu)
    assert Path(plans["paper_350m_tail"]["sweep_dir"]).name == "paper_350m_tail"


def test_runs_shared_between_grids_are_the_same_runs(compose) -> None:
    from specsweep.sweep.grid.identity import identity_of

    job = ["optim=dion", "optim.rank_fraction=0.5", "model.ffn_mult=3"]
    main = compose(["+sweep=paper_160m", *job])
    ranks = compose(["+sweep=paper_dion_ranks", "sweep_name=paper_160m", *job])
    assert main.run_id == ranks.run_id == "gpt2-160m_dion-r0.5_w3_s1337"
    assert identity_of(main) == identity_of(ranks)  # launched into paper_160m, skipped there as done
