"""Figures and tables ready for a paper (issue 16, item 11): titles, colours per optimizer,
offsets, one legend place, small multiples, the combined PDF, CSV columns, ``err`` explained.

The sweep is synthetic (tests/test_fit.py's generator): four optimizers, AdamW with two seeds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from test_fit import write_run
except ImportError:  # tests/ imported as a package
    from tests.test_fit import write_run

from specsweep.sweep.analysis import style
from specsweep.sweep.analysis.figures import COMBINED_PDF, build_figures, colours_of, write_figures
from specsweep.sweep.fit import run_fit

SMALL = dict(sites=("post",), buckets=("global", "tail"), steps=(200, 400, 600, 800, 1000))
OPTIMIZERS = ("adamw", "muon", "normuon", "dion")


def _sweep(root: Path, optimizers=OPTIMIZERS, adamw_seeds=(0, 1), mults=(1, 2, 4)) -> Path:
    """Runs of every optimizer × width; normuon is planted like muon (the generator knows three)."""
    for mult in mults:
        for opt in optimizers:
            for seed in (adamw_seeds if opt == "adamw" else (0,)):
                planted = "muon" if opt == "normuon" else opt
                run = write_run(root, optimizer=planted, mult=mult, seed=seed,
                                extra_axes={"variant": opt} if opt == "normuon" else None, **SMALL)
                if opt == "normuon":  # the same telemetry, under its own optimizer name
                    info = json.loads((run / "run.json").read_text())
                    info["axes"]["optimizer"] = "normuon"
                    del info["axes"]["variant"]
                    (run / "run.json").write_text(json.dumps(info))
    return root


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    sweep = _sweep(tmp_path_factory.mktemp("figs") / "paper")
    return run_fit([sweep], figures=False, n_boot=50, window_k=3)


@pytest.fixture(scope="module")
def figures(four):
    built = dict(build_figures(four))
    yield built
    import matplotlib.pyplot as plt

    plt.close("all")


def _legend_colours(fig) -> dict[str, str]:
    from matplotlib.colors import to_hex

    (legend,) = fig.legends
    out = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        if hasattr(handle, "get_color") and text.get_text() in OPTIMIZERS:
            out[text.get_text()] = to_hex(handle.get_color())
    return out


def test_every_figure_is_titled_with_sweep_steps_seeds_and_rule(figures):
    assert set(figures) == {"rank_vs_width_post", "beta_by_bucket_post", "phase_map_post",
                            "beta_over_steps_post", "loss_vs_width"}
    for stem, fig in figures.items():
        title = fig._suptitle.get_text()
        for needle in ("paper", "1000 steps", "seeds 0, 1", "paper rule (median of last 5 ckpts"):
            assert needle in title, (stem, title)
        assert len(fig.legends) == 1, stem  # one legend per figure ...
        legend = fig.legends[0]
        assert legend._loc == 8 and all(ax.get_legend() is None for ax in fig.axes), stem  # ... below the panels


def test_colours_are_fixed_per_optimizer_in_every_figure(figures, four):
    expected = {"adamw": "#1f77b4", "muon": "#ff7f0e", "normuon": "#2ca02c", "dion": "#d62728"}
    assert colours_of(four) == expected
    for stem, fig in figures.items():
        assert _legend_colours(fig) == expected, stem
    # The mapping does not depend on which optimizers a sweep has, nor on their order.
    assert style.palette({"muon": "muon"}) == {"muon": "#ff7f0e"}
    shades = style.palette({"dion rank_fraction=0.25": "dion", "dion rank_fraction=0.5": "dion", "x": "sgd"})
    assert shades["dion rank_fraction=0.25"] == "#d62728" != shades["dion rank_fraction=0.5"]
    assert shades["x"] not in expected.values()
    # Plotted artists use the legend's colour: every line of a beta_over_steps row is its optimizer's.
    from matplotlib.colors import to_hex

    axes = np.array(figures["beta_over_steps_post"].axes).reshape(4, 2)
    for row, opt in zip(axes, OPTIMIZERS):
        assert {to_hex(line.get_color()) for ax in row for line in ax.get_lines()} == {expected[opt]}


def test_rank_vs_width_points_are_offset_per_optimizer(figures, four):
    from matplotlib.colors import to_hex

    offsets = style.width_offsets(style.ordered_labels(colours_of(four), OPTIMIZERS), [64, 128, 256])
    assert [round(offsets[o], 6) for o in OPTIMIZERS] == sorted(round(v, 6) for v in offsets.values())
    assert offsets["adamw"] < 1 < offsets["dion"] and offsets["adamw"] * offsets["dion"] == pytest.approx(1)
    ax = figures["rank_vs_width_post"].axes[0]  # global · soft rank
    points = {}
    for line in ax.get_lines():
        if line.get_linestyle() == "None" and line.get_marker() == "o":  # the error-bar markers
            points[to_hex(line.get_color())] = np.asarray(line.get_xdata(), dtype=float)
    colours = colours_of(four)
    for opt in OPTIMIZERS:
        np.testing.assert_allclose(points[colours[opt]], np.array([64, 128, 256]) * offsets[opt])
    assert len({tuple(x) for x in points.values()}) == 4  # no two groups on the same x
    legend_texts = [t.get_text() for t in figures["rank_vs_width_post"].legends[0].get_texts()]
    assert any(t.startswith("error bar: ±1 SD across layer medians (the paper's band)") for t in legend_texts)


def test_beta_over_steps_is_small_multiples_and_phase_map_explains_marker_size(figures):
    fig = figures["beta_over_steps_post"]
    assert len(fig.axes) == 4 * 2  # one row per optimizer, one column per bucket
    texts = [t.get_text() for t in figures["phase_map_post"].legends[0].get_texts()]
    assert "marker size: D = 64 … 256" in texts  # smallest and largest width, one entry


def test_phase_map_legend_holds_only_the_groups_and_the_marker_sizes(figures):
    """The forbidden region and the frontier are labelled in the panels, not in the legend."""
    fig = figures["phase_map_post"]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == [*OPTIMIZERS, "marker size: D = 64 … 256"]
    for ax in fig.axes:
        inside = " ".join(t.get_text() for t in ax.texts)
        assert "forbidden" in inside and "R_hard = R_soft" in inside


def test_beta_over_steps_legend_has_a_swatch_per_band(figures):
    fig = figures["beta_over_steps_post"]
    legend = fig.legends[0]
    entries = dict(zip((t.get_text() for t in legend.get_texts()), legend.legend_handles))
    soft = next(h for k, h in entries.items() if k.startswith("β_soft band"))
    hard = next(h for k, h in entries.items() if k.startswith("β_hard band"))
    assert (soft.get_alpha(), soft.get_hatch()) != (hard.get_alpha(), hard.get_hatch())
    # Each swatch looks like the band it names: the panels' two fills carry the same styles.
    fills = fig.axes[0].collections
    assert sorted((c.get_alpha(), c.get_hatch() or "") for c in fills) == sorted(
        (h.get_alpha(), h.get_hatch() or "") for h in (soft, hard))


def test_rank_vs_width_beta_notes_never_cover_a_point_or_an_error_bar(tmp_path):
    """Ranks that fall with the width put the highest points top left, where the β notes go."""
    from specsweep.sweep.analysis.figures import figure_rank_vs_width

    root = tmp_path / "falling"
    for mult in (1, 2, 4):
        for opt in ("adamw", "muon"):
            write_run(root, optimizer=opt, mult=mult, seed=0, noise=0.2, beta_scale=-1.5, **SMALL)
    fig = figure_rank_vs_width(run_fit([root], figures=False, n_boot=0, window_k=3), "post")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().startswith("β=")]
        if not boxes:
            continue
        segments = [seg for coll in ax.collections for seg in coll.get_segments()]  # error bars, data coords
        points = [np.column_stack([ln.get_xdata(), ln.get_ydata()]) for ln in ax.get_lines()
                  if ln.get_linestyle() == "None"]
        data = np.vstack([*segments, *points]).astype(float)
        for x, y in ax.transData.transform(data):
            for box in boxes:
                assert not (box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1), (ax.get_title(), box, x, y)
        checked += 1
    assert checked == len(fig.axes)


def test_phase_map_drops_buckets_without_both_ranks(tmp_path):
    rows = [{"run_id": f"r{w}{o}", "optimizer": o, "ffn_width": w, "metric": m, "bucket": b,
             "site": "post", "value": v * w ** 0.5, "seed": 0}
            for o in ("adamw", "muon") for w in (64, 128, 256)
            for b, metrics in (("global", ("soft_rank", "hard_rank")), ("tail", ("soft_rank",)))
            for m, v in zip(metrics, (1.0, 0.3))]
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    result = run_fit(points_file=tmp_path / "p.csv", figures=False, window_k=0)
    figs = dict(build_figures(result))
    assert [ax.get_title() for ax in figs["phase_map_post"].axes] == ["phase map · global · post"]
    assert "p" in figs["phase_map_post"]._suptitle.get_text()  # the points file names the figures


def test_combined_pdf_has_one_page_per_figure(four, tmp_path):
    paths = write_figures(dataclasses.replace(four, out_dir=tmp_path, messages=[]))
    combined = tmp_path / "figures" / COMBINED_PDF
    assert combined in paths
    pages = len(re.findall(rb"/Type\s*/Page\b", combined.read_bytes()))
    stems = {p.stem for p in paths if p.suffix == ".png"}
    assert pages == len(stems) == 5
    assert {p.name for p in paths} == {f"{s}.{e}" for s in stems for e in ("png", "pdf")} | {COMBINED_PDF}


def test_csv_columns_dropped_only_when_empty_or_duplicate(tmp_path, four):
    # Four optimizers, seeds for AdamW: label == optimizer (dropped), bootstrap columns kept.
    table = pd.read_csv(four.out_dir / "beta_table.csv")
    assert "label" not in table.columns and "optimizer" in table.columns
    assert {"boot_lower", "boot_upper", "boot_method"} <= set(table.columns)
    assert table["boot_method"].notna().any() and "note" not in table.columns
    assert "rank_fraction" not in pd.read_csv(four.out_dir / "points.csv").columns  # no run set it
    assert "label" not in pd.read_csv(four.out_dir / "runs.csv").columns
    # One seed: no bootstrap columns. Dion with two rank fractions: label differs from optimizer, kept.
    sweep = tmp_path / "dion"
    for mult in (1, 2):
        for rf in (0.25, 0.5):
            write_run(sweep, optimizer="dion", mult=mult, seed=0, extra_axes={"rank_fraction": rf}, **SMALL)
    result = run_fit([sweep], figures=False, window_k=0)
    table = pd.read_csv(result.out_dir / "beta_table.csv")
    assert not {"boot_lower", "boot_upper", "boot_method"} & set(table.columns)
    assert set(table["label"]) == {"rank_fraction=0.25", "rank_fraction=0.5"}
    assert "rank_fraction" in table.columns


def test_report_explains_err(four):
    text = four.report.read_text()
    assert "`err` (points.csv, error bars of rank_vs_width): ±1 SD across layer medians (the paper's band)" in text
    assert "unweighted OLS of ln R on ln D" in text
