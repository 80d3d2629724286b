"""The W&B comparison view (issue 16, item 9): the spec built from sweep/analysis/workspace.py is
the README's table, converts to wandb-workspaces objects without a server, and is written with
instructions when W&B is offline. No test talks to a W&B server."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

try:
    from test_fit import write_run
except ImportError:  # tests/ imported as a package
    from tests.test_fit import write_run

from specsweep.sweep.analysis import workspace
from specsweep.sweep.analysis.points import BUCKET_ORDER
from specsweep.sweep.fit import main

README = Path(__file__).resolve().parents[1] / "docs" / "wandb.md"  # the W&B reference page
SECTION = "## The width-scaling comparison view"


def _readme_rows() -> list[tuple[str, str, str, str, str]]:
    """(section, panel, x, y, grouping/scale) of the README table, one row per panel (<bucket>
    rows expanded over the buckets)."""
    text = README.read_text()
    body = text[text.index(SECTION):]
    body = body[:body.index("\n#", len(SECTION))]
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["section", "panel", "x", "y", "grouping / scale"]
    rows = []
    for line in lines[2:]:
        cells = [c.strip().replace("`", "") for c in line.strip("|").split("|")]
        cells[2] = "" if cells[2] == "—" else cells[2]
        buckets = BUCKET_ORDER if "<bucket>" in cells[3] else ("",)
        rows += [tuple(cells[:3] + [cells[3].replace("<bucket>", b)] + cells[4:]) for b in buckets]
    return rows


def _spec_rows(spec: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for section in spec["sections"]:
        for p in section["panels"]:
            # The style text must say what the structured fields do.
            assert ("log x" in p["style"]) == p["log_x"] and ("log y" in p["style"]) == p["log_y"]
            assert (p.get("groupby") is not None) == ("group axis.optimizer" in p["style"])
            rows.append((section["name"], p["type"], p["x"] or "", p["y"], p["style"]))
    return rows


def test_readme_table_is_the_generated_view():
    spec = workspace.build_spec(["demo"], "specsweep", None)
    readme = _readme_rows()
    assert sorted(readme) == sorted(_spec_rows(spec))
    assert len(readme) == 1 + 2 * 4 + 2 * 4 + 1 + 1
    assert spec["runset"] == {"groups": ["demo"], "job_types": ["train", "analysis"], "groupby": ["axis.optimizer"]}
    assert spec["x_axis"] == "trainer/step"
    # The README states the same filters and grouping in words.
    text = README.read_text()
    assert "`Group = <sweep_name>` and `Job Type ∈ {train, analysis}`" in text and "**grouped** by `axis.optimizer`" in text


def _model(ws) -> dict:
    return json.loads(ws._to_model().model_dump_json(by_alias=True))


def test_spec_converts_to_wandb_workspaces_objects_offline():
    spec = workspace.build_spec(["demo", "demo2"], "proj", "team")
    model = _model(workspace.to_workspace(spec))
    assert (model["entity"], model["project"], model["displayName"]) == ("team", "proj", "demo, demo2 width scaling")
    section = model["spec"]["section"]
    (runset,) = section["runSets"]
    filters = {f["key"]["name"]: (f["op"], f["value"]) for f in runset["filters"]["filters"]}
    assert filters == {"group": ("IN", ["demo", "demo2"]), "jobType": ("IN", ["train", "analysis"])}
    assert runset["grouping"] == [{"section": "config", "name": "axis.value.optimizer"}]
    panels = {s["name"]: s["panels"] for s in section["panelBankConfig"]["sections"]}
    assert list(panels) == ["Training", "Median ranks (post)", "Width scaling", "β (analysis run)"]
    line = panels["Median ranks (post)"][0]
    assert line["viewType"] == "Run History Line Plot" and line["config"]["xAxis"] == "trainer/step"
    assert line["config"]["metrics"] == ["spectral_median/post/global/soft_rank"]
    assert (line["config"]["groupAgg"], line["config"]["groupArea"]) == ("mean", "stddev")
    scatter = panels["Width scaling"][0]["config"]
    assert (scatter["xAxis"], scatter["yAxis"]) == ("config:axis.value.ffn_width", "summary:final/post/global/soft_rank")
    assert scatter["xAxisLogScale"] and scatter["yAxisLogScale"]
    (table,) = panels["β (analysis run)"]
    assert table["viewType"] == "Weave" and "tables/beta_summary" in json.dumps(table["config"])
    odd = workspace.build_spec(["optim=adamw+muon"], "p", None)  # symbols W&B refuses in names
    assert _model(workspace.to_workspace(odd))["displayName"] == "optim_adamw_muon width scaling"
    with pytest.raises(ValueError, match="not a specsweep workspace spec"):
        workspace.to_workspace({**spec, "format": "other"})


def _strip_ids(obj):
    if isinstance(obj, dict):
        return {k: _strip_ids(v) for k, v in obj.items() if k not in ("__id__", "id", "ref", "name")
                or not isinstance(v, str)}
    if isinstance(obj, list):
        return [_strip_ids(v) for v in obj]
    return obj


def test_python_snippet_builds_the_same_workspace():
    spec = workspace.build_spec(["demo"], "specsweep", "me")
    scope: dict = {"__name__": "snippet"}  # not __main__: build the view, do not save it
    exec(compile(workspace.python_snippet(spec), workspace.SNIPPET_FILE, "exec"), scope)
    assert _strip_ids(_model(scope["workspace"])) == _strip_ids(_model(workspace.to_workspace(spec)))


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:  # a loopback port nothing listens on: never a real server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"HOME": tmp_path / "home", "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                 "WANDB_DIR": tmp_path / "wandb", "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
                 "NETRC": tmp_path / "home" / ".netrc", "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(k, str(v))
    (tmp_path / "home").mkdir()
    sweep = tmp_path / "demo"
    for opt in ("adamw", "muon"):
        for mult in (1, 2):
            write_run(sweep, optimizer=opt, mult=mult, seed=0, sites=("post",), buckets=("global",),
                      steps=(600, 700, 800, 900, 1000))
    return sweep


@pytest.mark.parametrize("mode", ["offline", "no-key"])
def test_offline_writes_the_spec_and_says_how_to_apply_it(wandb_env, monkeypatch, capsys, mode):
    if mode == "offline":
        monkeypatch.setenv("WANDB_MODE", "offline")
    assert main([str(wandb_env), "--no-figures", "--window-k", "0", "--wandb-workspace"]) == 0
    err = capsys.readouterr().err
    out = wandb_env / "analysis"
    spec = json.loads((out / workspace.SPEC_FILE).read_text())
    assert spec == workspace.build_spec(["demo"], "specsweep", None)
    assert (out / workspace.SNIPPET_FILE).is_file()
    reason = "WANDB_MODE=offline" if mode == "offline" else "API key"
    assert re.search(rf"W&B workspace not created \(.*{reason}", err), err
    assert f"--apply-spec {out / workspace.SPEC_FILE}" in err
    # Applying it offline is refused with the reason; the spec stays for later.
    assert main(["--wandb-workspace", "--apply-spec", str(out / workspace.SPEC_FILE)]) == 2
    assert "workspace not saved" in capsys.readouterr().err
    # A later refit without --wandb-workspace keeps the spec (carried over with the folder swap).
    assert main([str(wandb_env), "--no-figures", "--window-k", "0"]) == 0
    assert (out / workspace.SPEC_FILE).is_file()
