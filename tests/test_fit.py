"""Tests for metrics.fit (β fits, aggregation rules, comparisons) and sweep.fit (run dirs -> tables).

The run directories are synthetic (written by ``write_sweep`` below, per docs/contracts.md) with
planted power laws rank = A·D^β, so recovered exponents can be checked against known truth.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specsweep.metrics import fit as mfit

from specsweep.metrics import aggregation as magg
from specsweep.sweep.analysis.rules import parse_rule

# --------------------------------------------------------------------------------------------
# Synthetic run-directory generator
# --------------------------------------------------------------------------------------------

PLANTED_BETA = {"adamw": {"soft_rank": 0.66, "hard_rank": 0.29},
                "muon": {"soft_rank": 0.95, "hard_rank": 0.82},
                "dion": {"soft_rank": 0.74, "hard_rank": 0.50}}
BUCKET_SHIFT = {"global": 0.0, "head": -0.10, "mid": 0.0, "tail": 0.05}
# A in R = A·D^β, chosen so that R_hard < R_soft < D over the widths used here.
PREFACTOR = {"adamw": {"soft_rank": 0.9, "hard_rank": 2.0},
             "muon": {"soft_rank": 0.9, "hard_rank": 0.35},
             "dion": {"soft_rank": 0.9, "hard_rank": 0.8}}
SITE_FACTOR = {"post": 1.0, "pre": 0.6}
LAYER_FACTOR = (0.8, 0.9, 1.1, 1.25)
STEPS = tuple(range(100, 1001, 100))
PLATEAU_STEP = 500  # β(s) ramps up to its planted value by this step, then stays


def planted_beta(optimizer: str, metric: str, bucket: str) -> float:
    return PLANTED_BETA[optimizer][metric] + BUCKET_SHIFT[bucket]


def beta_at_step(beta: float, step: int) -> float:
    return beta * min(1.0, 0.5 + 0.5 * step / PLATEAU_STEP)


def write_run(root: Path, *, optimizer: str, mult: int, seed: int, d_model: int = 64,
              status: str = "done", done: bool = True, noise: float = 0.03, steps=STEPS,
              sites=("post", "pre"), buckets=tuple(BUCKET_SHIFT), extra_axes: dict | None = None,
              beta_scale: float = 1.0) -> Path:
    """One run dir: run.json, config.yaml, metrics.jsonl, spectra.jsonl and (if done) DONE."""
    width = mult * d_model
    extra = extra_axes or {}
    run_id = f"{optimizer}-w{mult}-s{seed}" + "".join(f"-{k}{v}" for k, v in extra.items())
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))  # deterministic across processes
    axes = {"model": "tiny", "optimizer": optimizer, "rank_fraction": None, "ffn_mult": mult,
            "ffn_width": width, "d_model": d_model, "n_layer": len(LAYER_FACTOR), "n_head": 4,
            "seed": seed, "steps": steps[-1], **extra}
    run_json = {"run_id": run_id, "sweep": root.name, "status": status, "config_hash": f"h{run_id}",
                "axes": axes, "step": steps[-1] if done else steps[len(steps) // 2],
                "error": "loss is nan" if status == "diverged" else None, "updated": 0, "wandb_id": None}
    (run_dir / "run.json").write_text(json.dumps(run_json))
    (run_dir / "config.yaml").write_text(f"optimizer: {optimizer}\nffn_width: {width}\n")
    run_offset = rng.normal(0, noise, size=(2, 4, 2))  # per run: site × bucket × metric
    records = []
    for step in steps:
        for layer, lf in enumerate(LAYER_FACTOR):
            for s_i, site in enumerate(sites):
                for b_i, bucket in enumerate(buckets):
                    rec = {"step": step, "layer": layer, "site": site, "bucket": bucket,
                           "n_rows": 4096, "dim": width, "n_over_d": 4096 / width,
                           "sampling": "well", "status": "ok", "min_eig": 0.0, "neg_mass": 0.0}
                    for m_i, metric in enumerate(mfit.RANK_METRICS):
                        beta = beta_at_step(beta_scale * planted_beta(optimizer, metric, bucket), step)
                        value = (PREFACTOR[optimizer][metric] * SITE_FACTOR[site] * lf * width ** beta
                                 * math.exp(run_offset[s_i, b_i, m_i] + rng.normal(0, noise)))
                        rec[metric] = value
                    rec["entropy"] = math.log(rec["soft_rank"])
                    rec["eee"], rec["js"] = 0.5, 0.1
                    records.append(rec)
    (run_dir / "spectra.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    loss = 3.0 + (1.2 if optimizer == "adamw" else 1.0) * (width / d_model) ** -0.3
    metric_rows = [{"step": s, "train_loss": loss + 0.1, "lr": 1e-3, "tokens": s * 1000,
                    "tokens_per_s": 1e4, "grad_norm": 1.0, "elapsed_s": s / 10} for s in steps]
    metric_rows += [{"step": s, "eval_loss": loss + 0.05 * (steps[-1] - s) / steps[-1],
                     "eval_ppl": math.exp(loss), "tokens": s * 1000} for s in steps[::2] + (steps[-1],)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in metric_rows) + "\n")
    if done:
        (run_dir / "DONE").write_text(json.dumps({"run_id": run_id, "final_step": steps[-1],
                                                  "final_train_loss": loss + 0.1,
                                                  "final_eval_loss": loss, "wall_s": 1.0}))
    return run_dir


def write_sweep(root: Path, *, mults=(1, 2, 3, 4), adamw_seeds=(0, 1), muon_seeds=(0,),
                bad_runs: bool = True, buckets=tuple(BUCKET_SHIFT)) -> Path:
    """A small sweep: AdamW with two seeds, Muon with one, plus (optionally) bad runs."""
    root.mkdir(parents=True, exist_ok=True)
    for mult in mults:
        for seed in adamw_seeds:
            write_run(root, optimizer="adamw", mult=mult, seed=seed, buckets=buckets)
        for seed in muon_seeds:
            write_run(root, optimizer="muon", mult=mult, seed=seed, buckets=buckets)
    if bad_runs:
        write_run(root, optimizer="muon", mult=8, seed=0, status="diverged", done=False)
        write_run(root, optimizer="adamw", mult=8, seed=0, status="running", done=False)
        broken = write_run(root, optimizer="muon", mult=6, seed=0, buckets=buckets)
        (broken / "run.json").write_text("{not json")
        torn = root / "adamw-w1-s0" / "spectra.jsonl"
        torn.write_text(torn.read_text() + '{"step": 10')  # a torn last line
    return root


# --------------------------------------------------------------------------------------------
# Core fit: hand-computed, scipy, exact t quantile, the paper's released points
# --------------------------------------------------------------------------------------------

def test_fit_three_points_by_hand():
    # ln D = 0, 1, 2 and ln R = 0, 1, 3.  x̄ = 1, ȳ = 4/3, Sxx = 2, Sxy = 3  ->  β = 3/2,
    # intercept = 4/3 − 3/2 = −1/6.  Fitted: −1/6, 4/3, 17/6, residuals 1/6, −1/3, 1/6,
    # SSres = 1/6, SStot = 14/3 -> R² = 27/28; SE = sqrt(SSres/(n−2)/Sxx) = sqrt(1/12).
    # 95 % half-width = t_0.975(1)·SE = 12.7062047362·0.2886751346 = 3.6679653624.
    fit = mfit.fit_power_law([1.0, math.e, math.e ** 2], [1.0, math.e, math.e ** 3])
    assert fit.beta == pytest.approx(1.5, abs=1e-12)
    assert fit.intercept == pytest.approx(-1 / 6, abs=1e-12)
    assert fit.r_squared == pytest.approx(27 / 28, abs=1e-12)
    assert fit.std_err == pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    assert fit.beta_lower == pytest.approx(1.5 - 3.6679653624, abs=1e-9)
    assert fit.beta_upper == pytest.approx(1.5 + 3.6679653624, abs=1e-9)
    assert fit.n_widths == 3 and fit.ci_method.startswith("t(n-2)")


def test_fit_matches_scipy_linregress():
    rng = np.random.default_rng(1)
    widths = 768 * np.arange(1, 9)
    ranks = 3.0 * widths ** 0.7 * np.exp(rng.normal(0, 0.1, widths.size))
    fit = mfit.fit_power_law(widths, ranks)
    ref = stats.linregress(np.log(widths), np.log(ranks))
    assert fit.beta == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12)
    assert fit.r_squared == pytest.approx(ref.rvalue ** 2, rel=1e-12)
    assert fit.std_err == pytest.approx(ref.stderr, rel=1e-10)


def test_t_interval_uses_exact_quantile():
    rng = np.random.default_rng(2)
    widths = 768 * np.arange(1, 9)
    fit = mfit.fit_power_law(widths, widths ** 0.5 * np.exp(rng.normal(0, 0.2, 8)))
    q = (fit.beta_upper - fit.beta) / fit.std_err
    assert q == pytest.approx(stats.t.ppf(0.975, 6), rel=1e-12)
    assert q != pytest.approx(2.447, rel=1e-6)  # not the rounded table value
    assert (fit.beta - fit.beta_lower) == pytest.approx(fit.beta_upper - fit.beta, rel=1e-12)


# AdamW, GPT-2 160M, global bucket, post-activation, paper-rule points: the released file
# results/processed/global_rank_scaling_points.csv of optimizer-scaling-laws/spectral-scaling-laws
# (widths 768·{1..8}); expected fits from results/processed/main_beta_table.csv of the same repo.
PAPER_WIDTHS = [768, 1536, 2304, 3072, 3840, 4608, 5376, 6144]
PAPER_ADAMW_HARD = [211.17000000000002, 273.62, 340.605, 596.45, 482.72, 271.21500000000003,
                    323.41499999999996, 463.96000000000004]
PAPER_ADAMW_SOFT = [430.83475823153265, 685.3537044816487, 1018.9369173960288, 1262.2639038845869,
                    1349.6196931476431, 1504.1627180066484, 1419.7590878985675, 1769.0588487222258]


def test_paper_adamw_global_fits_reproduced():
    hard = mfit.fit_power_law(PAPER_WIDTHS, PAPER_ADAMW_HARD)
    assert hard.beta == pytest.approx(0.2887017437797793, abs=1e-9)
    assert hard.beta_lower == pytest.approx(-0.11518810638159516, abs=1e-9)
    assert hard.beta_upper == pytest.approx(0.6925915939411538, abs=1e-9)
    assert hard.intercept == pytest.approx(3.5601311439894516, abs=1e-9)
    assert hard.r_squared == pytest.approx(0.3376907442333099, abs=1e-9)
    assert hard.std_err == pytest.approx(0.1650610545536493, abs=1e-9)
    soft = mfit.fit_power_law(PAPER_WIDTHS, PAPER_ADAMW_SOFT)
    assert soft.beta == pytest.approx(0.660599149016815, abs=1e-9)
    assert soft.beta_lower == pytest.approx(0.5464726751015166, abs=1e-9)
    assert soft.beta_upper == pytest.approx(0.7747256229321134, abs=1e-9)
    delta = mfit.fit_delta_beta(PAPER_WIDTHS, PAPER_ADAMW_SOFT, PAPER_ADAMW_HARD)
    assert delta.beta == pytest.approx(soft.beta - hard.beta, abs=1e-12)  # +0.37 in the paper
    assert round(delta.beta, 2) == 0.37


# --------------------------------------------------------------------------------------------
# Bad input, seeds, Δβ, pooled comparison, bootstrap
# --------------------------------------------------------------------------------------------

def test_fewer_than_two_widths_is_no_fit_with_reason():
    fit = mfit.fit_power_law([768, 768], [10.0, 12.0])
    assert not fit.ok and fit.n_widths == 1 and "needs >= 2" in fit.note
    assert math.isnan(fit.beta_lower) and fit.ci_method.startswith("none")


def test_two_widths_give_slope_without_interval():
    fit = mfit.fit_power_law([100, 400], [10.0, 40.0])
    assert fit.beta == pytest.approx(1.0)
    assert math.isnan(fit.beta_lower) and math.isnan(fit.std_err)
    assert "2 widths" in fit.ci_method and "no interval" in fit.note


def test_non_positive_ranks_are_excluded_with_reason():
    fit = mfit.fit_power_law([1, 2, 4, 8], [1.0, 2.0, 0.0, -3.0])
    assert fit.n_widths == 2 and "non-positive" in fit.note
    assert fit.beta == pytest.approx(1.0)


def test_seeds_are_averaged_in_log_space_per_width():
    widths = [1, 1, 2, 2, 4, 4]
    ranks = [1.0, 4.0, 3.0, 3.0, 5.0, 20.0]
    fit = mfit.fit_power_law(widths, ranks)
    ref = stats.linregress(np.log([1, 2, 4]), [np.log(2.0), np.log(3.0), np.log(10.0)])
    assert fit.beta == pytest.approx(ref.slope) and fit.n_widths == 3 and fit.n_points == 6


def test_delta_beta_regresses_the_log_ratio():
    rng = np.random.default_rng(3)
    d = np.array([64, 128, 192, 256, 320], float)
    soft = 0.9 * d ** 0.95 * np.exp(rng.normal(0, 0.05, 5))
    hard = 0.3 * d ** 0.60 * np.exp(rng.normal(0, 0.05, 5))
    delta = mfit.fit_delta_beta(d, soft, hard)
    ref = stats.linregress(np.log(d), np.log(soft / hard))
    assert delta.beta == pytest.approx(ref.slope, rel=1e-12)
    assert delta.std_err == pytest.approx(ref.stderr, rel=1e-10)
    assert delta.beta == pytest.approx(mfit.fit_power_law(d, soft).beta - mfit.fit_power_law(d, hard).beta)


def test_fit_delta_beta_is_the_beta_tables_delta_row():
    # Δβ is computed one way: fit_delta_beta on arrays gives, bit for bit, the delta_beta row that
    # fit_beta_table (the sweep.fit path) reports for the same runs, seeds and a bad pair included.
    rng = np.random.default_rng(11)
    d = np.repeat([64.0, 128.0, 192.0, 256.0, 384.0], 2)
    soft = 0.9 * d ** 0.95 * np.exp(rng.normal(0, 0.05, d.size))
    hard = 0.3 * d ** 0.60 * np.exp(rng.normal(0, 0.05, d.size))
    hard[3] = 0.0  # one run with a non-positive rank: its pair is left out on both paths
    seed = np.tile([0, 1], 5)
    points = pd.DataFrame({"optimizer": "adamw", "ffn_width": np.concatenate([d, d]),
                           "seed": np.concatenate([seed, seed]),
                           "metric": ["soft_rank"] * d.size + ["hard_rank"] * d.size,
                           "value": np.concatenate([soft, hard])})
    row = mfit.fit_beta_table(points, ["optimizer"], bootstrap=False).table.set_index("metric").loc["delta_beta"]
    delta = mfit.fit_delta_beta(d, soft, hard)
    for name in ("beta", "beta_lower", "beta_upper", "intercept", "r_squared", "std_err", "n_widths",
                 "n_points"):
        assert getattr(delta, name) == row[name], name
    assert delta.n_points == d.size - 1 and "1 pair(s)" in delta.note


def test_compare_slopes_pooled_interaction():
    rng = np.random.default_rng(4)
    d = np.array([64, 128, 256, 512, 1024], float)
    ya = np.log(2 * d ** 0.3) + rng.normal(0, 0.05, 5)
    yb = np.log(1 * d ** 0.8) + rng.normal(0, 0.05, 5)
    cmp = mfit.compare_slopes(d, np.exp(ya), d, np.exp(yb))
    fa, fb = stats.linregress(np.log(d), ya), stats.linregress(np.log(d), yb)
    assert cmp.diff == pytest.approx(fb.slope - fa.slope, rel=1e-10)
    # By hand: pooled s² = (RSS_a + RSS_b)/(n − 4), SE² = s²(1/Sxx + 1/Sxx).
    x = np.log(d)
    sxx = ((x - x.mean()) ** 2).sum()
    rss = sum((((y - (f.intercept + f.slope * x)) ** 2).sum()) for y, f in ((ya, fa), (yb, fb)))
    se = math.sqrt(rss / (10 - 4) * 2 / sxx)
    assert cmp.std_err == pytest.approx(se, rel=1e-10) and cmp.dof == 6
    assert cmp.p_value == pytest.approx(2 * stats.t.sf(abs(cmp.diff / se), 6), rel=1e-8)
    assert cmp.p_value < 1e-4


def test_bootstrap_is_labelled_and_needs_several_units():
    rng = np.random.default_rng(5)
    d = np.repeat([64, 128, 256, 512], 3)
    r = d ** 0.7 * np.exp(rng.normal(0, 0.05, d.size))
    boot = mfit.bootstrap_beta(d, r, np.tile([0, 1, 2], 4), n_boot=500)
    assert "bootstrap over seeds" in boot.method and boot.lower < 0.7 < boot.upper
    single = mfit.bootstrap_beta([64, 128, 256], [8, 12, 20], [0, 0, 0])
    assert math.isnan(single.lower) and "nothing to resample" in single.note


def test_fit_beta_table_partial_results_and_messages():
    points = pd.DataFrame({
        "optimizer": ["a"] * 4 + ["b"] + ["c"] * 2,
        "ffn_width": [64, 128, 256, 512, 64, 64, 128],
        "metric": "hard_rank", "bucket": "global", "site": "post",
        "value": [8.0, 11.0, 16.0, 23.0, 5.0, 4.0, -1.0],
    })
    table = mfit.fit_beta_table(points, ["optimizer"])
    by_opt = table.table.set_index("optimizer")
    assert np.isfinite(by_opt.loc["a", "beta"]) and math.isnan(by_opt.loc["b", "beta"])
    assert any("optimizer=b" in m and "needs >= 2" in m for m in table.messages)
    assert any("optimizer=c" in m and "non-positive" in m for m in table.messages)


# --------------------------------------------------------------------------------------------
# Aggregation rules on synthetic telemetry
# --------------------------------------------------------------------------------------------

def _telemetry() -> pd.DataFrame:
    """3 layers × 7 steps of one site/bucket; early steps are outliers the rules must skip."""
    per_layer = {0: [1000, 1000, 10, 20, 30, 40, 50],
                 1: [1e6, 1e6, 5, 7, 9, 11, 13],
                 2: [0.1, 0.1, 16, 18, 20, 22, 24]}
    rows = []
    for layer, values in per_layer.items():
        for i, v in enumerate(values):
            rows.append({"step": 100 * (i + 1), "layer": layer, "site": "post", "bucket": "global",
                         "soft_rank": float(v), "hard_rank": float(v) / 2, "status": "ok"})
    return pd.DataFrame(rows)


def test_paper_rule_recovers_planted_medians():
    agg = magg.aggregate_records(_telemetry(), parse_rule("paper")).set_index("metric")
    # Layer medians of the last 5 checkpoints: 30, 9, 20 -> median 20, SD(ddof=1) of (30, 9, 20).
    assert agg.loc["soft_rank", "value"] == pytest.approx(20.0)
    assert agg.loc["soft_rank", "err"] == pytest.approx(np.std([30, 9, 20], ddof=1))
    assert agg.loc["hard_rank", "value"] == pytest.approx(10.0)
    assert agg.loc["soft_rank", "n_layers"] == 3
    assert (agg.loc["soft_rank", "window_start"], agg.loc["soft_rank", "window_end"]) == (300, 700)


def test_paper_rule_uses_last_five_valid_checkpoints():
    records = _telemetry()
    last = (records["layer"] == 0) & (records["step"] == 700)
    records.loc[last, ["soft_rank", "hard_rank"]] = np.nan
    records.loc[last, "status"] = "too few rows"
    records.loc[(records["layer"] == 0) & (records["step"] == 200), "soft_rank"] = 1.0
    agg = magg.aggregate_records(records).set_index("metric")
    # Layer 0 now uses steps 200..600 -> [1, 10, 20, 30, 40] -> median 20 (taking steps 300..700
    # and dropping the missing one would give 25); layer medians 20, 9, 20.
    assert agg.loc["soft_rank", "value"] == pytest.approx(20.0)
    assert agg.loc["soft_rank", "err"] == pytest.approx(np.std([20, 9, 20], ddof=1))


def test_other_rules_mean_layer_window():
    records = _telemetry()
    mean = magg.aggregate_records(records, parse_rule("mean")).set_index("metric")
    assert mean.loc["soft_rank", "value"] == pytest.approx(np.mean([30, 9, 20]))
    layer = magg.aggregate_records(records, parse_rule("layer:1")).set_index("metric")
    assert layer.loc["soft_rank", "value"] == pytest.approx(9.0)
    assert layer.loc["soft_rank", "err"] == pytest.approx(np.std([5, 7, 9, 11, 13], ddof=1))
    window = magg.aggregate_records(records, parse_rule("window:300-500")).set_index("metric")
    assert window.loc["soft_rank", "value"] == pytest.approx(np.median([20, 7, 18]))
    assert window.loc["soft_rank", "n_steps"] == 3
    for bad in ("median", "layer:x", "window:5-1", "window:7"):
        with pytest.raises(ValueError, match="aggregation rule"):
            parse_rule(bad)


def test_sliding_window_beta_follows_planted_ramp(tmp_path):
    frames = []
    for mult in (1, 2, 4, 8):
        run = write_run(tmp_path, optimizer="muon", mult=mult, seed=0, noise=0.0, sites=("post",))
        rows = [json.loads(line) for line in (run / "spectra.jsonl").read_text().splitlines()]
        frames.append(magg.sliding_window_records(pd.DataFrame(rows), k=3).assign(optimizer="muon", ffn_width=64 * mult))
    steps = mfit.fit_beta_table(pd.concat(frames), ["optimizer", "end_step"], bootstrap=False).table
    sel = steps[(steps["metric"] == "hard_rank") & (steps["bucket"] == "global")].set_index("end_step")
    # Window ending at step s covers s-200..s; its per-layer median sits at s-100.
    for end in (300, 500, 1000):
        expected = beta_at_step(planted_beta("muon", "hard_rank", "global"), end - 100)
        assert sel.loc[end, "beta"] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Matched loss and the optimizer-gain vs architecture-shift rule
# --------------------------------------------------------------------------------------------

def test_match_runs_by_loss_and_compare():
    runs = pd.DataFrame({"config": ["a"] * 4 + ["b"] * 4, "ffn_width": [64, 128, 256, 512] * 2,
                         "eval_loss": [3.0, 2.9, 2.8, 2.7, 3.02, 2.95, 2.5, 2.71]})
    pairs = mfit.match_runs_by_loss(runs, 0.03)
    assert pairs["matched"].tolist() == [True, False, False, True]
    pairs = mfit.match_runs_by_loss(runs, 0.06)
    assert pairs["matched"].sum() == 3
    d = np.array([64, 128, 256, 512])
    points = pd.concat([pd.DataFrame({"config": c, "ffn_width": d, "metric": m, "bucket": "global",
                                      "site": "post", "value": a * d ** b})
                        for c, bs in (("a", (0.6, 0.3)), ("b", (0.9, 0.8)))
                        for m, b, a in (("soft_rank", bs[0], 1.0), ("hard_rank", bs[1], 0.3))])
    cmp = mfit.compare_matched_configs(points, pairs, min_widths=3).table.set_index("metric")
    assert cmp.loc["hard_rank", "beta_a"] == pytest.approx(0.3)
    assert cmp.loc["hard_rank", "diff"] == pytest.approx(0.5)
    assert cmp.loc["delta_beta", "beta_b"] == pytest.approx(0.1)
    assert cmp.loc["hard_rank", "widths"] == "64;128;512"


def test_optimizer_gain_vs_architecture_shift():
    rows = []
    betas = {("adamw", 12): 0.30, ("muon", 12): 0.90, ("adamw", 6): 0.75, ("muon", 6): 1.00}
    for (opt, heads), beta in betas.items():
        rows.append({"optimizer": opt, "n_head": heads, "metric": "hard_rank", "bucket": "tail",
                     "site": "post", "beta": beta})
    table = mfit.optimizer_gain_vs_arch_shift(pd.DataFrame(rows), arch_col="n_head", baseline=12)
    table = table.set_index("optimizer")
    assert table.loc["adamw", "optimizer_gain"] == pytest.approx(0.60)
    assert table.loc["adamw", "arch_shift"] == pytest.approx(0.45)
    assert table.loc["muon", "arch_shift"] == pytest.approx(0.10)
    assert table["gain_exceeds_shift"].all()


# --------------------------------------------------------------------------------------------
# sweep.fit on a synthetic sweep
# --------------------------------------------------------------------------------------------

FIXTURE_BUCKETS = ("global", "tail")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from specsweep.sweep.fit import run_fit

    # Two buckets keep the figure work small; bucket handling is the same for four.
    sweep = write_sweep(tmp_path_factory.mktemp("sweep") / "demo", buckets=FIXTURE_BUCKETS)
    return run_fit([sweep], rule="paper", matched_loss=0.05, n_boot=300)


def test_sweep_excludes_bad_runs_and_keeps_going(fitted):
    reasons = {Path(p).name: r for p, r in fitted.excluded}
    assert reasons["muon-w8-s0"].startswith("diverged")
    assert reasons["adamw-w8-s0"].startswith("unfinished")
    assert "unreadable run.json" in reasons["muon-w6-s0"]
    assert any("unreadable line" in m for m in fitted.messages)
    assert fitted.points["run_id"].nunique() == 12


def test_points_table_layout(fitted):
    points = pd.read_csv(fitted.out_dir / "points.csv")
    for col in ("run_id", "optimizer", "ffn_width", "ffn_mult", "n_head", "seed", "metric", "bucket",
                "site", "value", "err", "eval_loss", "config_hash"):
        assert col in points.columns
    assert len(points) == 12 * 2 * len(FIXTURE_BUCKETS) * 2  # runs × metrics × buckets × sites
    assert "ffn_width" not in fitted.group_cols and "seed" not in fitted.group_cols
    assert "optimizer" in fitted.group_cols and "ffn_mult" not in fitted.group_cols


def test_planted_betas_recovered(fitted):
    table = pd.read_csv(fitted.out_dir / "beta_table.csv")
    inside, total = 0, 0
    for _, row in table[table["metric"] != "delta_beta"].iterrows():
        truth = planted_beta(row["optimizer"], row["metric"], row["bucket"])
        assert row["beta"] == pytest.approx(truth, abs=0.1)
        inside += row["beta_lower"] <= truth <= row["beta_upper"]
        total += 1
        if row["bucket"] == "global" and row["site"] == "post":
            assert row["beta_lower"] <= truth <= row["beta_upper"]
    assert inside / total >= 0.85 and total == 2 * len(FIXTURE_BUCKETS) * 2 * 2
    # Δβ is the slope of ln(R_soft/R_hard): with identical points it equals β_soft − β_hard exactly.
    wide = table.pivot_table(index=["optimizer", "bucket", "site"], columns="metric", values="beta")
    assert np.allclose(wide["delta_beta"], wide["soft_rank"] - wide["hard_rank"], atol=1e-12)
    for (opt, bucket, site), value in wide["delta_beta"].items():
        truth = PLANTED_BETA[opt]["soft_rank"] - PLANTED_BETA[opt]["hard_rank"]
        assert value == pytest.approx(truth, abs=0.1)
    adamw = table[table["optimizer"] == "adamw"]
    assert adamw["boot_method"].str.contains("bootstrap over seeds").all()
    assert (table["n_widths"] == 4).all()


def test_comparison_steps_matched_tables(fitted):
    cmp = fitted.comparisons
    hard = cmp[(cmp["metric"] == "hard_rank") & (cmp["bucket"] == "global") & (cmp["site"] == "post")]
    assert hard["diff"].iloc[0] == pytest.approx(0.82 - 0.29, abs=0.06) and hard["p_value"].iloc[0] < 0.01
    steps = fitted.beta_steps
    # trailing windows of up to 3 events, one point per event from the first (issue 20, item 7)
    assert set(steps["end_step"]) == set(STEPS)
    assert dict(zip(steps["end_step"], steps["n_events"]))[STEPS[0]] == 1
    assert fitted.matched_pairs is not None and "matched" in fitted.matched_pairs.columns
    for name in ("points.csv", "runs.csv", "beta_table.csv", "beta_summary.csv", "beta_steps.csv",
                 "optimizer_comparison.csv", "matched_pairs.csv", "report.md"):
        assert (fitted.out_dir / name).stat().st_size > 0


def test_figures_written_and_non_empty(fitted):
    names = {p.name for p in fitted.figures}
    for stem in ("rank_vs_width_post", "beta_by_bucket_post", "phase_map_post",
                 "loss_vs_width", "beta_over_steps_post"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    for path in fitted.figures:
        assert path.stat().st_size > 1000
    assert not any("figure" in m and "failed" in m for m in fitted.messages)


def test_report_has_provenance(fitted):
    text = fitted.report.read_text()
    for needle in ("Sweep directories", "Aggregation rule: paper", "t(n-2) 95% fit interval",
                   "Seeds present: 0, 1", "hadamw-w1-s0", "muon-w8-s0", "diverged", "β table"):
        assert needle in text


def test_points_file_refit_matches(fitted, tmp_path):
    from specsweep.sweep.fit import run_fit

    again = run_fit(points_file=fitted.out_dir / "points.csv", out_dir=tmp_path / "refit",
                    figures=False, window_k=0)
    a = fitted.beta_table.set_index(["label", "metric", "bucket", "site"])["beta"]
    b = again.beta_table.set_index(["label", "metric", "bucket", "site"])["beta"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index(), rtol=1e-9)


def test_points_file_in_paper_format(tmp_path):
    from specsweep.sweep.fit import run_fit

    rows = [{"run_id": f"160m_adamw_{i + 1}x", "optimizer": "AdamW", "dion_rank_fraction": np.nan,
             "width_multiplier": i + 1, "ffn_hidden_dim": d, "metric": m, "bucket": "global",
             "site": "post", "value": v, "err_low": v * 0.8, "err_high": v * 1.2,
             "n_layers_used": 12, "final_steps": "5200;5400;5600;5800;6000"}
            for i, d in enumerate(PAPER_WIDTHS)
            for m, v in (("soft_rank", PAPER_ADAMW_SOFT[i]), ("hard_rank", PAPER_ADAMW_HARD[i]))]
    path = tmp_path / "paper_points.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = run_fit(points_file=path, out_dir=tmp_path / "out", figures=False)
    hard = result.beta_table[result.beta_table["metric"] == "hard_rank"].iloc[0]
    assert hard["beta"] == pytest.approx(0.2887017437797793, abs=1e-9)
    assert hard["intercept"] == pytest.approx(3.5601311439894516, abs=1e-9)
    assert hard["n_widths"] == 8


def test_window_mismatch_and_two_widths_messages(tmp_path):
    from specsweep.sweep.fit import run_fit

    sweep = tmp_path / "s"
    write_run(sweep, optimizer="adamw", mult=1, seed=0)
    short = write_run(sweep, optimizer="adamw", mult=2, seed=0, steps=tuple(range(50, 501, 50)))
    info = json.loads((short / "run.json").read_text())
    info["axes"]["steps"] = STEPS[-1]  # same budget axis, but telemetry logged on other steps
    (short / "run.json").write_text(json.dumps(info))
    result = run_fit([sweep], figures=False)
    assert any("different aggregation windows" in m for m in result.messages)
    assert any("2 widths" in m for m in result.messages)
    assert result.beta_table["beta"].notna().all() and result.beta_table["beta_lower"].isna().all()


def test_architecture_axis_gain_vs_shift_and_rank_fraction_labels(tmp_path):
    from specsweep.sweep.fit import run_fit

    sweep = tmp_path / "heads"
    small = dict(sites=("post",), buckets=("global", "tail"), steps=(600, 700, 800, 900, 1000))
    for mult in (1, 2, 4):
        for heads, scale in ((4, 1.0), (2, 1.1)):
            for opt, rf in (("adamw", None), ("muon", None), ("dion", 0.25)):
                write_run(sweep, optimizer=opt, mult=mult, seed=0, beta_scale=scale,
                          extra_axes={"n_head": heads, "rank_fraction": rf}, **small)
    result = run_fit([sweep], figures=False, window_k=0, arch_baseline=("n_head", "4"))
    assert set(result.beta_table["label"]) == {"adamw n_head=2", "adamw n_head=4", "muon n_head=2",
                                               "muon n_head=4", "dion rank_fraction=0.25 n_head=2",
                                               "dion rank_fraction=0.25 n_head=4"}
    gain = result.gain_shift
    assert len(gain) == 2 * 2 * 3  # metrics × buckets × optimizers, one alternative head count
    hard = gain[(gain["metric"] == "hard_rank") & (gain["bucket"] == "global")].set_index("optimizer")
    # Planted: best baseline β_hard (muon 0.82) − adamw 0.29; shift = 0.1·β at n_head=2.
    assert hard.loc["adamw", "optimizer_gain"] == pytest.approx(0.82 - 0.29, abs=0.08)
    assert hard.loc["muon", "arch_shift"] == pytest.approx(0.082, abs=0.08)
    assert (result.out_dir / "gain_vs_shift.csv").is_file()
    # Dion (with its rank_fraction) is compared against AdamW like any optimizer, per head count.
    cmp = result.comparisons
    assert set(cmp["optimizer"]) == {"muon", "dion rank_fraction=0.25"}
    assert set(cmp["optimizer_ref"]) == {"adamw"} and set(cmp["n_head"]) == {2, 4}
    assert any("gain exceeds shift in" in m for m in result.messages)


def test_empty_sweep_dir_is_an_error(tmp_path):
    from specsweep.sweep.fit import SweepError, run_fit

    (tmp_path / "empty").mkdir()
    with pytest.raises(SweepError, match="no run directories"):
        run_fit([tmp_path / "empty"])
    sweep = tmp_path / "unfinished"
    write_run(sweep, optimizer="adamw", mult=1, seed=0, status="running", done=False)
    with pytest.raises(SweepError, match="no finished runs"):
        run_fit([sweep])


def _drop_spectra(run_dir: Path, steps: set[int]) -> None:
    """Rewrite a run's records at ``steps`` as hard-rank-only events (spectrum=false), as the
    trainer writes them with telemetry.spectrum_every > 1; the other records get spectrum=true."""
    path = run_dir / "spectra.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in records:
        rec["spectrum"] = rec["step"] not in steps
        if not rec["spectrum"]:
            rec.update(soft_rank=None, entropy=None, eee=None, js=None, min_eig=None, neg_mass=None)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_fit_refuses_soft_rank_points_from_events_without_spectra(tmp_path):
    from specsweep.sweep.fit import run_fit

    sweep = tmp_path / "s"
    runs = [write_run(sweep, optimizer="adamw", mult=m, seed=0, buckets=("global",)) for m in (1, 2, 4)]
    want = run_fit([sweep], figures=False, n_boot=0).points
    # spectra before the window only: the fit is the same (a missing key in older files = spectrum)
    _drop_spectra(runs[0], {200, 400})
    _drop_spectra(runs[1], set())
    same = run_fit([sweep], figures=False, n_boot=0)
    assert not any("hard ranks only" in m for m in same.messages)
    pd.testing.assert_frame_equal(same.points, want)
    # two events of the window without spectra: no soft-rank points for that run, and it says why
    _drop_spectra(runs[0], {700, 900})
    result = run_fit([sweep], figures=False, n_boot=0)
    (message,) = [m for m in result.messages if "hard ranks only" in m]
    assert message.startswith("adamw-w1-s0: no soft_rank points: step(s) 700, 900 of its aggregation window")
    assert "spectrum=false" in message and "older events" in message
    points = result.points
    assert set(points.loc[points["run_id"] == "adamw-w1-s0", "metric"]) == {"hard_rank"}
    assert set(points.loc[points["run_id"] != "adamw-w1-s0", "metric"]) == {"soft_rank", "hard_rank"}
    hard = lambda p: p[p["metric"] == "hard_rank"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(hard(points), hard(want))  # hard-rank points are all kept
    soft = result.beta_table[result.beta_table["metric"] == "soft_rank"]
    assert (soft["n_widths"] == 2).all()  # the soft-rank β comes from the other two widths only
