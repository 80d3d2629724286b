"""How much a sweep can tell (issue 21 item 4; docs/power.md): Δβ between optimizers, its interval,
the minimum detectable difference (MDD) checked by simulation, sweep.fit's table, block and
report, and sweep.plan's prediction from the published fits or a pilot sweep."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specsweep.metrics import fit as mfit
from specsweep.metrics import power as mpow
from tests.conftest import ROOT
from tests.test_fit import write_sweep

PUBLISHED = ROOT / "sweep" / "analysis" / "published"


# ---- the statistics ------------------------------------------------------------------------------

def _noise(sigma_seed: float, ln_widths, seeds: int) -> mpow.SeriesNoise:
    """True noise of a simulated series: seed scatter only, no lack of fit."""
    sigma = sigma_seed / math.sqrt(seeds)
    return mpow.SeriesNoise(0.0, mpow.slope_se(sigma, ln_widths), len(ln_widths) - 2, sigma,
                            tuple(ln_widths), seeds, sigma_seed, 0.0, True)


def _rejections(rng, ln_widths, sigma_a, sigma_b, seeds, delta, n_rep) -> float:
    """Share of simulated sweeps (power laws with per-run scatter) whose Δβ interval excludes 0,
    fitted as sweep.fit fits them (seeds averaged per width, series_noise, difference)."""
    x = np.repeat(np.asarray(ln_widths), seeds)
    hits = 0
    for _ in range(n_rep):
        a = mpow.series_noise(x, 0.8 * x + 1.0 + rng.normal(0, sigma_a, x.size))
        b = mpow.series_noise(x, (0.8 - delta) * x + 2.0 + rng.normal(0, sigma_b, x.size))
        hits += mpow.difference(a, b, with_mdd=False).resolved
    return hits / n_rep


@pytest.mark.parametrize("widths, sigmas, seeds", [
    ([768 * k for k in range(1, 9)], (0.10, 0.30), 1),   # the paper's 8 widths, unequal scatter
    ([64, 128, 256], (0.05, 0.05), 1),                  # the demo's 3 widths (df 1 per fit)
    ([64, 128, 256, 512], (0.10, 0.20), 3),             # seeds averaged per width
])
def test_mdd_is_detected_80_percent_of_the_time_in_simulation(widths, sigmas, seeds):
    lw = [math.log(w) for w in widths]
    na, nb = _noise(sigmas[0], lw, seeds), _noise(sigmas[1], lw, seeds)
    target = mpow.design_mdd(na, nb, lw, lw, seeds, seeds)
    rng = np.random.default_rng(2026)
    n_rep = 1500  # Monte-Carlo SE of a rate near 0.8: 0.010
    power = _rejections(rng, lw, sigmas[0], sigmas[1], seeds, target, n_rep)
    assert abs(power - 0.80) < 0.04, (target, power)
    size = _rejections(rng, lw, sigmas[0], sigmas[1], seeds, 0.0, n_rep)
    assert size <= 0.05 + 0.02, size  # the conservative df keeps the test's level


def test_mdd_formula_exact_and_approximate():
    # Large df: the normal-theory (z_{0.975} + z_{0.8})·SE.
    assert mpow.mdd(1.0, 1e7) == pytest.approx(stats.norm.ppf(0.975) + stats.norm.ppf(0.8), rel=1e-4)
    # Exact noncentral t: power at the MDD is 0.8; the approximation is close from df 4, not at df 1.
    for df in (1, 2, 4, 6, 30):
        d = mpow.mdd(0.1, df)
        assert mpow.power_at(d, 0.1, df) == pytest.approx(0.8, abs=1e-8)
    assert mpow.mdd_approx(0.1, 6) == pytest.approx(mpow.mdd(0.1, 6), rel=0.03)
    assert mpow.mdd(0.1, 1) > 1.1 * mpow.mdd_approx(0.1, 1)
    # SE(β) = σ / sqrt(Σ (ln D − mean)²); scaling D leaves it unchanged.
    lw = [math.log(768 * k) for k in range(1, 9)]
    assert mpow.slope_se(0.2, lw) == pytest.approx(0.2 / math.sqrt(np.var(lw) * 8))
    assert mpow.slope_se(0.2, lw) == pytest.approx(mpow.slope_se(0.2, [math.log(k) for k in range(1, 9)]))
    with pytest.raises(ValueError, match="> 0"):
        mpow.needed_for(0.0, _noise(0.1, lw, 1), _noise(0.1, lw, 1), [768 * k for k in range(1, 9)], 1)


def test_series_noise_is_the_fits_slope_and_splits_seed_scatter():
    rng = np.random.default_rng(1)
    widths = np.repeat([64.0, 128, 256, 512, 1024], 3)
    lack = np.repeat([0.2, -0.2, 0.0, -0.2, 0.2], 3)  # a curvature more seeds will not remove
    y = 0.7 * np.log(widths) + lack + rng.normal(0, 0.05, widths.size)
    noise = mpow.series_noise(np.log(widths), y)
    fit = mfit.fit_power_law(widths, np.exp(y))
    assert noise.beta == pytest.approx(fit.beta) and noise.se == pytest.approx(fit.std_err)
    assert noise.df == fit.n_widths - 2 and noise.n_seeds == 3 and noise.seed_split
    assert noise.sigma_seed == pytest.approx(0.05, rel=0.5) and noise.sigma_lof > 0.1
    assert noise.sigma_at(3) == pytest.approx(noise.sigma)
    assert noise.sigma_at(10 ** 6) == pytest.approx(noise.sigma_lof, rel=1e-3)
    need = mpow.needed_for(0.05, noise, noise, [64, 128, 256, 512, 1024], 3)
    assert need.seeds is None and "seeds do not remove" in need.why_seeds


def test_width_ladder_continues_at_its_own_spacing():
    assert mpow.extend_widths([64, 128, 256], 5) == [64, 128, 256, 512, 1024]
    assert mpow.extend_widths([768 * k for k in range(1, 9)], 10)[-2:] == [6912.0, 7680.0]


def test_power_module_imports_only_numpy_and_scipy():
    tree = ast.parse((ROOT / "metrics" / "power.py").read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots <= {"__future__", "functools", "math", "dataclasses", "typing", "numpy", "scipy"}, roots
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('p', 'metrics/power.py'); "
            "m = importlib.util.module_from_spec(s); sys.modules['p'] = m; s.loader.exec_module(m); "
            "print(round(m.mdd(0.1, 6), 4), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"{mpow.mdd(0.1, 6):.4f}", "False"]


# ---- sweep.plan: the published fits as the pilot -----------------------------------------------------

def test_published_noise_is_the_published_interval():
    """σ = std_err·sqrt(Sxx) of the paper's widths; std_err is the published CI's half-width over t."""
    from specsweep.sweep.analysis.power_plan import published_noises

    noises = published_noises("160m")
    main = pd.read_csv(PUBLISHED / "main_beta_table.csv")
    for r in main.itertuples():
        half = (r.beta_upper - r.beta_lower) / 2
        assert half == pytest.approx(stats.t.ppf(0.975, r.n_widths - 2) * r.std_err, rel=1e-9)
    adamw = noises[("adamw", "hard_rank", "global", "post")]
    assert adamw.se == pytest.approx(0.1650610545536493) and adamw.df == 6
    lw = [math.log(768 * k) for k in range(1, 9)]
    assert adamw.sigma == pytest.approx(0.1650610545536493 * math.sqrt(mpow.sxx(lw)))
    assert ("dion r=1/16", "soft_rank", "tail", "post") in noises
    big = published_noises("350m")
    assert ("muon", "hard_rank", "tail", "post") in big and ("dion r=1/16", "hard_rank", "tail", "post") in big
    assert big[("muon", "hard_rank", "tail", "post")].df == 2  # 1024·{1..4}


def _spec(optimizer: str, width: int, seed: int, rank_fraction=None):
    return SimpleNamespace(optimizer=SimpleNamespace(name=optimizer, hparams={"rank_fraction": rank_fraction}),
                           model=SimpleNamespace(ffn_hidden_dim=width, d_model=768, n_layer=12),
                           seed=seed, telemetry=SimpleNamespace(enabled=True))


def test_plan_predicts_the_paper_grids_mdd_and_the_seeds_that_resolve_a_target():
    from specsweep.sweep.analysis.power_plan import grid_resolution, published_noises

    specs = [_spec(o, 768 * k, 0) for o in ("adamw", "muon") for k in range(1, 9)]
    rows, text = grid_resolution(specs, "paper", 0.2)
    row = next(r for r in rows if (r["metric"], r["bucket"]) == ("hard_rank", "global"))
    main = pd.read_csv(PUBLISHED / "main_beta_table.csv").set_index(["optimizer", "metric"])
    se = math.hypot(main.loc[("AdamW", "hard_rank"), "std_err"], main.loc[("Muon", "hard_rank"), "std_err"])
    assert (row["optimizer_a"], row["optimizer_b"]) == ("muon", "adamw")
    assert row["mdd"] == pytest.approx(mpow.mdd(se, 6))  # the same grid again: the published SEs
    noises = published_noises("160m")
    na, nb = noises[("muon", "hard_rank", "global", "post")], noises[("adamw", "hard_rank", "global", "post")]
    lw = [math.log(768 * k) for k in range(1, 9)]
    m = row["seeds_needed"]
    assert mpow.design_mdd(na, nb, lw, lw, m, m) <= 0.2 < mpow.design_mdd(na, nb, lw, lw, m - 1, m - 1)
    assert f"muon − adamw β_hard: resolves |Δβ| ≥ global {row['mdd']:.2f}" in text
    assert f"to resolve 0.2 (global): {m} seeds per width" in text and "optimistic bound" in text


def test_plan_from_a_pilot_sweep_uses_its_scatter(tmp_path):
    from specsweep.sweep.analysis.power_plan import grid_resolution, sweep_noises

    pilot = write_sweep(tmp_path / "pilot", bad_runs=False, buckets=("global",))
    noises = sweep_noises(pilot)
    assert noises[("adamw", "soft_rank", "global", "post")].seed_split  # 2 seeds: seed scatter measured
    assert not noises[("muon", "soft_rank", "global", "post")].seed_split
    specs = [_spec(o, w, s) for o in ("adamw", "muon") for w in (128, 256, 512) for s in (0, 1)]
    rows, text = grid_resolution(specs, str(pilot), 0.1)
    row = next(r for r in rows if (r["metric"], r["bucket"], r["site"]) == ("soft_rank", "global", "post"))
    lw = [math.log(w) for w in (128, 256, 512)]
    na, nb = noises[("muon", "soft_rank", "global", "post")], noises[("adamw", "soft_rank", "global", "post")]
    assert row["seeds"] == 2 and row["mdd"] == pytest.approx(mpow.design_mdd(na, nb, lw, lw, 2, 2))
    assert f"the pilot sweep {pilot}" in text


@pytest.mark.slow
def test_plan_command_prints_and_writes_the_resolution(tmp_path, env, capsys):
    from specsweep.sweep.plan import main

    out = tmp_path / "plan.json"
    assert main(["+sweep=demo", "plan.resolve=0.5", f"plan.out={out}"]) == 0
    text = capsys.readouterr().out
    assert "resolution (Δβ between two optimizers" in text and "muon − adamw β_hard: resolves |Δβ| ≥ global" in text
    rows = json.loads(out.read_text())["resolution"]
    assert {r["optimizer_a"] for r in rows} == {"muon"} and all(r["resolve"] == 0.5 for r in rows)
    assert main(["+sweep=demo", "plan.resolve=0"]) == 2
    assert "plan.resolve: a difference of β > 0" in capsys.readouterr().err
    assert main(["+sweep=demo", f"plan.pilot={tmp_path / 'nope'}"]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


# ---- sweep.fit: power.csv, the printed block, the report ------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from specsweep.sweep.fit import run_fit

    sweep = write_sweep(tmp_path_factory.mktemp("power") / "demo", bad_runs=False, buckets=("global", "tail"))
    return run_fit([sweep], figures=False, n_boot=50, resolve=0.05)


def test_fit_reports_every_pairs_delta_interval_and_mdd(fitted):
    table = pd.read_csv(fitted.out_dir / "power.csv")
    assert len(table) == 3 * 2 * 2  # metrics (soft, hard, Δβ) × buckets × sites, one pair
    assert set(zip(table["optimizer_a"], table["optimizer_b"])) == {("muon", "adamw")}
    beta = fitted.beta_table.set_index(["optimizer", "metric", "bucket", "site"])
    for r in table.itertuples():
        a, b = beta.loc[("muon", r.metric, r.bucket, r.site)], beta.loc[("adamw", r.metric, r.bucket, r.site)]
        se = math.hypot(a["std_err"], b["std_err"])
        df = min(a["n_widths"], b["n_widths"]) - 2
        assert r.delta == pytest.approx(a["beta"] - b["beta"]) and r.se == pytest.approx(se)
        assert r.mdd == pytest.approx(mpow.mdd(se, df))
        half = stats.t.ppf(0.975, df) * se
        assert (r.lower, r.upper) == (pytest.approx(r.delta - half), pytest.approx(r.delta + half))
        assert r.resolve == 0.05


def test_fit_report_and_console_say_what_the_sweep_can_and_cannot_show(fitted, tmp_path, capsys):
    from specsweep.sweep.analysis.power import power_block
    from specsweep.sweep.fit import main

    report = fitted.report.read_text()
    assert "## What this sweep can resolve" in report and "this sweep resolves |Δβ| ≥" in report
    block = power_block(fitted.power)
    first = block.splitlines()[1]
    r = fitted.power[(fitted.power["metric"] == "hard_rank") & (fitted.power["bucket"] == "global")
                     & (fitted.power["site"] == "post")].iloc[0]
    assert first.strip().startswith(f"muon − adamw β_hard (global, post) = {r['delta']:+.2f} ± "
                                    f"{(r['upper'] - r['lower']) / 2:.2f}")
    assert f"this sweep resolves |Δβ| ≥ {r['mdd']:.2f}; to resolve 0.05:" in first
    assert "can show:" in block and "cannot show: differences below its MDD" in block
    assert main([str(fitted.out_dir.parent), "--no-figures", "--resolve", "-1"]) == 2
    assert "--resolve must be" in capsys.readouterr().err


def test_a_sweep_that_resolves_nothing_says_so():
    from specsweep.sweep.analysis.power import summary_lines, verdict

    rows = pd.DataFrame([{"optimizer_a": "muon", "optimizer_b": "adamw", "metric": m, "bucket": "global",
                          "site": "post", "delta": d, "lower": d - 0.3, "upper": d + 0.3, "mdd": 0.42,
                          "resolved": False, "seeds": 1, "resolve": 0.1, "seeds_needed": 12.0,
                          "widths_needed": "64;128;256;512", "note": ""}
                         for m, d in (("hard_rank", 0.05), ("soft_rank", -0.001))])
    assert summary_lines(rows) == [
        "can show: no optimizer difference: none of the 2 intervals excludes 0",
        "cannot show: differences below its MDD, 0.42 to 0.42 (median 0.42); a true difference that small "
        "is missed more than 1 time in 5"]
    assert verdict(rows.iloc[0]) == ("muon − adamw β_hard (global, post) = +0.05 ± 0.30 (not resolved); this sweep "
                                     "resolves |Δβ| ≥ 0.42; to resolve 0.1: 12 seeds per width (now 1) or 4 widths "
                                     "D=64..512")
    assert "= +0.00 ± 0.30" in verdict(rows.iloc[1])
    assert verdict(rows.iloc[1].copy().replace({0.42: 0.08})).endswith("to resolve 0.1: this sweep already does")
