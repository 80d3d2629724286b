"""Our β beside the published β (issue 15, item 3): ``specsweep-fit ... --compare paper``.

The released per-width points of paper 1 (tests/data/paper/, README there) re-fitted with
``--points`` must give the published β of the released tables (shipped in
sweep/analysis/published/) exactly; a demo-sized sweep matches nothing and says so; a sweep with
only some published optimizers compares just those. Synthetic sweeps are written through the
sweep.rundir API (no training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specsweep.sweep import rundir
from specsweep.sweep.analysis import compare
from specsweep.sweep.analysis.compare import Experiment, experiment_of, load_published, match_published
from specsweep.sweep.analysis.figures import figure_beta_by_bucket
from specsweep.sweep.fit import main, run_fit

PAPER_POINTS = Path(__file__).parent / "data" / "paper"
WINDOW = (5200, 5400, 5600, 5800, 6000)  # the paper rule's last 5 checkpoints of a 6000-step run


# --------------------------------------------------------------------------------------------
# Matching (pure functions)
# --------------------------------------------------------------------------------------------

def test_experiment_of_reads_our_axes_and_the_papers_columns():
    ours = experiment_of({"model": "gpt2-160m", "d_model": 768, "n_layer": 12, "n_head": 12,
                          "optimizer": "dion", "rank_fraction": 0.0625, "steps": 6000,
                          "activation": "relu2", "pos_encoding": "rope", "norm_placement": "pre",
                          "postln_frac": 0.0, "ffn_width": 1536})
    paper = experiment_of({"model_scale": "160m", "model_name": "GPT2-160M", "optimizer": "Dion",
                           "optimizer_variant": "dion_r1_16", "dion_rank_fraction": "1/16",
                           "final_steps": "5200;5400;5600;5800;6000"})
    assert ours == paper == Experiment(768, 12, 12, "dion", 0.0625, 6000)
    assert ours.optimizer_text() == "dion 1/16"
    # Rank fraction from the variant name alone; AdamW-12K from its variant; 350M defaults.
    assert experiment_of({"model_scale": "160m", "optimizer": "Dion",
                          "optimizer_variant": "dion_r1_4"}).rank_fraction == 0.25
    assert experiment_of({"model_scale": "160m", "optimizer": "AdamW", "optimizer_variant": "adamw_12k"},
                         published=True).steps == 12000
    big = experiment_of({"model_scale": "350m", "optimizer": "Muon"}, published=True)
    assert (big.d_model, big.n_layer, big.n_head, big.steps) == (1024, 24, 32, 8000)
    assert experiment_of({"model_scale": "350m", "optimizer": "Muon"}).steps is None  # ours: not recorded
    assert experiment_of({"model_scale": "160m", "head_count": 6, "optimizer": "Muon"}).n_head == 6
    # Explicit sizes win over a model name; non-Dion optimizers carry no rank fraction.
    tiny = experiment_of({"model": "gpt2-160m", "d_model": 128, "n_layer": 2, "n_head": 4,
                          "optimizer": "AdamW", "rank_fraction": None, "postln_frac": 0.5})
    assert (tiny.d_model, tiny.n_layer, tiny.rank_fraction, dict(tiny.arch)["postln_frac"]) == (128, 2, None, 0.5)


@pytest.fixture(scope="module")
def paper():
    return load_published("paper")


def _ours(**kw) -> Experiment:
    base = {"d_model": 768, "n_layer": 12, "n_head": 12, "optimizer": "adamw", "steps": 6000}
    return experiment_of({**base, **kw})


@pytest.mark.parametrize("kw, bucket, site, metric, beta, cited", [
    ({}, "global", "post", "soft_rank", 0.660599149016815, "Table 2"),
    ({}, "tail", "post", "hard_rank", 0.4381065230415346,
     "Table 2; Dion rank sweep (TAIL); matched-loss comparison"),
    ({"steps": 12000}, "tail", "post", "hard_rank", 0.1768301, "matched-loss comparison"),
    ({"optimizer": "dion", "rank_fraction": 0.25}, "tail", "post", "soft_rank", 0.855009,
     "Dion rank sweep (TAIL)"),
    ({"optimizer": "muon", "n_head": 6}, "tail", "post", "hard_rank", None,
     "attention-rank intervention (6 heads; read off a figure, no CI)"),
    ({"d_model": 1024, "n_layer": 24, "n_head": 32, "optimizer": "normuon", "steps": 8000}, "tail", "post",
     "hard_rank", 0.88075, "350M TAIL"),
])
def test_match_published_finds_the_published_row(paper, kw, bucket, site, metric, beta, cited):
    rows, why = match_published(_ours(**kw), bucket, site, metric, paper.rows)
    assert why == "" and len(rows) == 1
    (row,) = rows
    assert row["published_in"] == cited
    if beta is None:  # 6-head values: 3 decimals, no interval
        assert np.isnan(row["beta_lower"]) and round(row["beta"], 3) == row["beta"]
    else:
        assert row["beta"] == pytest.approx(beta, abs=1e-4) and row["beta_lower"] < row["beta"]


@pytest.mark.parametrize("kw, bucket, site, reason", [
    ({"d_model": 128, "n_layer": 2, "n_head": 4}, "global", "post",
     "model d_model=128, n_layer=2, n_head=4 (published: d_model=768, n_layer=12, n_head=12 or 6; "
     "d_model=1024, n_layer=24, n_head=32)"),
    ({"n_head": 8}, "global", "post", "model d_model=768, n_layer=12, n_head=8"),
    ({"postln_frac": 0.5}, "global", "post", "postln_frac=0.5 (published: activation=relu2"),
    ({"optimizer": "lion"}, "global", "post", "optimizer lion (published for this model: adamw, dion 1/2, "
     "dion 1/4, dion 1/8, dion 1/16, muon, normuon)"),
    ({"optimizer": "dion", "rank_fraction": 0.3}, "global", "post", "optimizer dion 3/10"),
    ({"optimizer": "dion", "rank_fraction": 0.25}, "global", "post", "bucket=global (published for dion 1/4: tail)"),
    ({"steps": 1000}, "global", "post", "steps=1000 (published: 6000, 12000)"),
    ({}, "global", "pre", "site=pre (published: post only)"),
    ({"d_model": 1024, "n_layer": 24, "n_head": 32, "steps": 6000}, "tail", "post", "steps=6000 (published: 8000)"),
])
def test_match_published_says_why_not(paper, kw, bucket, site, reason):
    rows, why = match_published(_ours(**kw), bucket, site, "soft_rank", paper.rows)
    assert rows == [] and why.startswith(reason)


def test_published_tables_merge_shared_values(paper):
    """Each published value once: 10 global + 30 bucket (Table 2), + Dion 1/4, 1/8 (4), + 350M (8),
    + AdamW 12K (6), + 6-head (30; the 12-head rows of that file are Table 2 rounded)."""
    assert len(paper.rows) == 10 + 30 + 4 + 8 + 6 + 30
    keys = [(r["exp"], r["bucket"], r["site"], r["metric"]) for r in paper.rows]
    assert len(set(keys)) == len(keys)
    assert {r["site"] for r in paper.rows} == {"post"}
    readme = (Path(compare.__file__).parent / "published" / "README.md").read_text()
    assert "6803c68d5afcbf4533d2fb6c608df7ef31afcbb6" in readme and "MIT License" in readme


# --------------------------------------------------------------------------------------------
# Done when: the released points reproduce the published β (zero difference)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_rows, cited", [
    ("global_rank_scaling_points.csv", 10, "Table 2"),
    ("frequency_bucket_rank_scaling_points.csv", 30, "Table 2"),
    ("tail_350m_rank_scaling_points.csv", 8, "350M TAIL"),
    ("dion_tail_rank_sweep_points.csv", 10, "Dion rank sweep (TAIL)"),
])
def test_released_points_reproduce_the_published_beta(tmp_path, capsys, name, n_rows, cited):
    out = tmp_path / "fit"
    assert main(["--points", str(PAPER_POINTS / name), "--compare", "paper", "--out", str(out),
                 "--no-figures", "--window-k", "0"]) == 0
    table = pd.read_csv(out / "paper_comparison.csv")
    assert len(table) == n_rows  # every soft/hard row of the file is compared
    assert (table["diff"].abs() < 1e-9).all()
    assert ((table["beta_lower"] - table["published_lower"]).abs() < 1e-9).all()
    assert ((table["beta_upper"] - table["published_upper"]).abs() < 1e-9).all()
    assert table["overlap"].all() and (table["overlap_basis"] == "intervals").all()
    assert table["published_in"].str.contains(cited, regex=False).all()
    printed = capsys.readouterr().out
    assert f"{n_rows} of {n_rows} β_soft/β_hard rows of this fit match a published experiment" in printed
    assert "ours [95% CI]" in printed and "published [95% CI]" in printed
    report = (out / "report.md").read_text()
    assert "## Compared with published β" in report and "Table 2" in report and "6803c68" in report


# --------------------------------------------------------------------------------------------
# Synthetic sweeps: no match, partial match
# --------------------------------------------------------------------------------------------

def _write_run(sweep: Path, optimizer: str, width: int, value: dict[str, float], axes: dict) -> None:
    """A finished run whose every checkpoint has the given ranks (the paper rule returns them)."""
    run_id = f"{optimizer}-d{width}"
    spectra = [{"step": s, "layer": 0, "site": "post", "bucket": "global", "status": "ok", **value}
               for s in WINDOW]
    info = {"run_id": run_id, "sweep": sweep.name, "status": rundir.STATUS_DONE, "step": WINDOW[-1],
            "error": None, "axes": {"optimizer": optimizer, "rank_fraction": None, "ffn_width": width,
                                    "seed": 0, "steps": WINDOW[-1], **axes}}
    rundir.write_run_files(sweep / run_id, info, [{"step": WINDOW[-1], "eval_loss": 3.0}], spectra,
                           {"run_id": run_id, "final_step": WINDOW[-1], "final_eval_loss": 3.0})


def test_demo_sized_sweep_matches_nothing_and_the_rest_is_unchanged(tmp_path, capsys):
    sweep = tmp_path / "demo"
    tiny = {"model": "gpt-tiny", "d_model": 128, "n_layer": 2, "n_head": 4}
    for opt, beta in (("adamw", 0.3), ("muon", 0.8)):
        for width in (128, 256, 512):
            _write_run(sweep, opt, width, {"soft_rank": 2.0 * width ** beta, "hard_rank": width ** beta}, tiny)
    assert main([str(sweep), "--out", str(tmp_path / "plain"), "--no-figures"]) == 0
    plain = capsys.readouterr().out
    assert main([str(sweep), "--out", str(tmp_path / "cmp"), "--no-figures", "--compare", "paper"]) == 0
    printed = capsys.readouterr().out
    assert ("no published experiment matches this sweep: model d_model=128, n_layer=2, n_head=4 "
            "(published: d_model=768") in printed
    assert not (tmp_path / "cmp" / "paper_comparison.csv").exists()
    assert "no published experiment matches this sweep" in (tmp_path / "cmp" / "report.md").read_text()
    # Everything else is as without --compare: the printed β table and every table written.
    assert printed.startswith(plain.split("\nwrote")[0])
    for name in ("beta_table.csv", "points.csv", "beta_summary.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "plain" / name), pd.read_csv(tmp_path / "cmp" / name))
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(p.name for p in (tmp_path / "cmp").iterdir())


@pytest.fixture(scope="module")
def partial_sweep(tmp_path_factory) -> Path:
    """A 160M sweep (axes as our gpt2_160m preset gives) with AdamW and Muon at the paper's
    values (the released global points) and Lion, which the paper did not run."""
    sweep = tmp_path_factory.mktemp("p") / "paper160"
    points = pd.read_csv(PAPER_POINTS / "global_rank_scaling_points.csv")
    axes = {"model": "gpt2-160m", "d_model": 768, "n_layer": 12, "n_head": 12, "activation": "relu2",
            "pos_encoding": "rope", "norm_placement": "pre", "postln_frac": 0.0}
    for opt in ("AdamW", "Muon"):
        mine = points[points["optimizer"] == opt]
        for width, rows in mine.groupby("ffn_hidden_dim"):
            _write_run(sweep, opt.lower(), int(width), dict(zip(rows["metric"], rows["value"])), axes)
    for width in (768, 1536, 3072):
        _write_run(sweep, "lion", width, {"soft_rank": width ** 0.7, "hard_rank": width ** 0.5}, axes)
    return sweep


@pytest.fixture(scope="module")
def partial(partial_sweep, tmp_path_factory):
    return run_fit([partial_sweep], tmp_path_factory.mktemp("p") / "out", figures=False, window_k=0,
                   compare="paper")


def test_partial_match_compares_only_published_rows(partial):
    comp = partial.comparison
    table = comp.table
    assert sorted(zip(table["optimizer"], table["metric"])) == [
        ("adamw", "hard_rank"), ("adamw", "soft_rank"), ("muon", "hard_rank"), ("muon", "soft_rank")]
    assert (table["diff"].abs() < 1e-9).all() and table["overlap"].all()
    assert (table["published_in"] == "Table 2").all() and (table["steps"] == 6000).all()
    assert comp.summary.startswith("4 of 6 β_soft/β_hard rows of this fit match")
    assert comp.not_compared == ["lion: optimizer lion (published for this model: adamw, dion 1/2, "
                                 "dion 1/4, dion 1/8, dion 1/16, muon, normuon)"]
    assert (partial.out_dir / "paper_comparison.csv").is_file()
    assert "- lion: optimizer lion" in partial.report.read_text()


def test_beta_figure_shows_published_beta_hollow_beside_ours(partial):
    from matplotlib.colors import to_hex

    from specsweep.sweep.analysis.figures import colours_of

    fig = figure_beta_by_bucket(partial, "post")
    colours = colours_of(partial)
    for ax in fig.axes[:2]:  # soft, hard; the Δβ panel has no published value
        hollow = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]
        assert sorted(to_hex(ln.get_color()) for ln in hollow) == sorted([colours["adamw"], colours["muon"]])
        filled = {to_hex(ln.get_color()): ln.get_xdata()[0] for ln in ax.get_lines()
                  if ln.get_marker() == "o" and ln.get_markerfacecolor() != "none"}
        for ln in hollow:  # beside ours, to the right
            assert ln.get_xdata()[0] > filled[to_hex(ln.get_color())]
    hollow_delta = [ln for ln in fig.axes[2].get_lines() if ln.get_markerfacecolor() == "none"]
    assert hollow_delta == []
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "hollow: published β [95% CI] (Table 2)" in texts
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_comparison_goes_to_wandb_with_the_analysis(partial_sweep, tmp_path, monkeypatch):
    from specsweep.sweep.analysis import wandb_io

    for key in ("DIR", "DATA_DIR", "CACHE_DIR", "CONFIG_DIR"):
        monkeypatch.setenv(f"WANDB_{key}", str(tmp_path / f"wandb-{key.lower()}"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    assert main([str(partial_sweep), "--out", str(out), "--no-figures", "--window-k", "0",
                 "--compare", "paper", "--wandb", "offline"]) == 0
    (folder,) = sorted((out / "wandb").glob("offline-run-*"))
    logged = {k.split(".")[0] for h in wandb_io.read_offline_run(folder)["history"] for k in h}
    assert "tables/paper_comparison" in logged


# --------------------------------------------------------------------------------------------
# --compare FILE.csv
# --------------------------------------------------------------------------------------------

def test_compare_with_a_table_of_ones_own(tmp_path, capsys):
    sweep = tmp_path / "tiny"
    tiny = {"d_model": 64, "n_layer": 2, "n_head": 4}
    for width in (64, 128, 256):
        _write_run(sweep, "adamw", width, {"soft_rank": 2.0 * width ** 0.5, "hard_rank": width ** 0.25}, tiny)
    table = tmp_path / "mine.csv"
    pd.DataFrame([{"d_model": 64, "n_layer": 2, "optimizer": "AdamW", "metric": "soft_rank", "beta": 0.45,
                   "beta_lower": 0.4, "beta_upper": 0.49, "citation": "my notes, Table 1"},
                  {"d_model": 64, "n_layer": 2, "optimizer": "AdamW", "metric": "hard_rank", "beta": 0.3,
                   "steps": 9999}]).to_csv(table, index=False)
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--no-figures", "--compare", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 β_soft/β_hard rows of this fit match" in printed and "my notes, Table 1" in printed
    got = pd.read_csv(tmp_path / "out" / "paper_comparison.csv").iloc[0]
    assert got["diff"] == pytest.approx(0.05, abs=1e-9) and not got["overlap"]


@pytest.mark.parametrize("content, message", [
    ("optimizer,metric\nadamw,soft_rank\n", "lacks column(s) ['beta']"),
    ("optimizer,metric,beta\nadamw,soft_rank,0.5\n", "line 2: no model size"),
    ("model_scale,optimizer,metric,beta\n160m,adamw,entropy,0.5\n", "metric 'entropy' is not one of"),
])
def test_bad_compare_table_is_a_short_error_before_any_work(tmp_path, capsys, content, message):
    (tmp_path / "bad.csv").write_text(content)
    out = tmp_path / "out"
    assert main(["--points", str(PAPER_POINTS / "global_rank_scaling_points.csv"), "--out", str(out),
                 "--compare", str(tmp_path / "bad.csv")]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
