"""The W&B comparison view of a sweep (README, "The width-scaling comparison view"), as data.

``VIEW`` declares the panels once; :func:`build_spec` turns it into a JSON spec for one sweep
(runs of the sweep's group, job types train and analysis, grouped by ``axis.optimizer``);
:func:`to_workspace` converts a spec into ``wandb-workspaces`` objects and :func:`apply_spec`
saves it on the W&B server (online only: workspaces live there). Offline, ``sweep.fit
--wandb-workspace`` writes the spec and :func:`python_snippet` (the same view as a standalone
script) into the analysis folder, to apply later with ``--apply-spec``.

The README's panel table is compared with ``build_spec`` by tests/test_fit_live.py.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from specsweep.sweep.analysis.defaults import SNIPPET_FILE, SPEC_FILE
from specsweep.sweep.analysis.points import BUCKET_ORDER
from specsweep.sweep.wandb_keys import median_key, train_key

SPEC_FORMAT = "specsweep-workspace/1"
GROUP_KEY = "axis.optimizer"   # runs are grouped (and coloured) by this config key
WIDTH_KEY = "axis.ffn_width"
JOB_TYPES = ("train", "analysis")  # the analysis run carries the β table, no training curves
BUCKET = "<bucket>"
_SITE = "post"  # the FFN output, where the paper's claims live


@dataclass(frozen=True)
class PanelSpec:
    """One panel (or one per bucket when ``y`` holds ``<bucket>``)."""

    section: str
    kind: str        # line | scatter | table
    x: str
    y: str
    log_x: bool = False
    log_y: bool = False
    grouped: bool = False  # lines: mean ± SD per group of the runs table

    def style(self) -> str:
        """The README's "grouping / scale" cell."""
        if self.kind == "table":
            return "one row per group × bucket × site"
        parts = [f"group {GROUP_KEY}: mean ± SD"] if self.grouped else []
        parts += [s for s, on in (("log x", self.log_x), ("log y", self.log_y)) if on]
        if self.kind == "scatter":
            parts.append(f"colour {GROUP_KEY}")
        return ", ".join(parts)

    def expand(self) -> list["PanelSpec"]:
        if BUCKET not in self.y:
            return [self]
        return [PanelSpec(self.section, self.kind, self.x, self.y.replace(BUCKET, b), self.log_x,
                          self.log_y, self.grouped) for b in BUCKET_ORDER]


_STEP = train_key("step")
_MEDIAN = median_key(_SITE, BUCKET, "{rank}")
VIEW: tuple[PanelSpec, ...] = (
    PanelSpec("Training", "line", _STEP, train_key("eval_loss"), grouped=True),
    PanelSpec("Median ranks (post)", "line", _STEP, _MEDIAN.format(rank="soft_rank"), grouped=True),
    PanelSpec("Median ranks (post)", "line", _STEP, _MEDIAN.format(rank="hard_rank"), grouped=True),
    PanelSpec("Width scaling", "scatter", WIDTH_KEY, f"final/{_SITE}/{BUCKET}/soft_rank", True, True),
    PanelSpec("Width scaling", "scatter", WIDTH_KEY, f"final/{_SITE}/{BUCKET}/hard_rank", True, True),
    PanelSpec("Width scaling", "scatter", WIDTH_KEY, "final/eval_loss", log_x=True),
    PanelSpec("β (analysis run)", "table", "", "tables/beta_summary"),
)


def _view_name(groups: Sequence[str]) -> str:
    # W&B refuses symbols (unicode categories S*, e.g. "+", "=", "·") in view names.
    text = f"{', '.join(groups)} width scaling"
    return "".join("_" if unicodedata.category(c).startswith("S") else c for c in text)


def build_spec(groups: Sequence[str], project: str, entity: Optional[str]) -> dict[str, Any]:
    """The view for the runs of W&B ``groups`` (sweep names) as a JSON-able dict."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for panel in (p for decl in VIEW for p in decl.expand()):
        entry: dict[str, Any] = {"type": panel.kind, "title": panel.y, "x": panel.x or None, "y": panel.y,
                                 "log_x": panel.log_x, "log_y": panel.log_y, "style": panel.style()}
        if panel.grouped:
            entry |= {"groupby": GROUP_KEY, "agg": "mean", "range": "stddev"}
        sections.setdefault(panel.section, []).append(entry)
    return {"format": SPEC_FORMAT, "entity": entity, "project": project,
            "name": _view_name(groups),
            "runset": {"groups": list(groups), "job_types": list(JOB_TYPES), "groupby": [GROUP_KEY]},
            "x_axis": _STEP,
            "sections": [{"name": name, "panels": panels} for name, panels in sections.items()]}


def _panel(wr: Any, p: Mapping[str, Any]) -> Any:
    if p["type"] == "line":
        return wr.LinePlot(title=p["title"], x=p["x"], y=[p["y"]], log_x=p["log_x"] or None,
                           log_y=p["log_y"] or None, groupby_aggfunc=p.get("agg"),
                           groupby_rangefunc=p.get("range"))
    if p["type"] == "scatter":
        return wr.ScatterPlot(title=p["title"], x=wr.Config(p["x"]),
                              y=wr.SummaryMetric(p["y"]), log_x=p["log_x"], log_y=p["log_y"])
    if p["type"] == "table":
        return wr.WeavePanelSummaryTable(table_name=p["y"], layout=wr.Layout(w=24, h=10))
    raise ValueError(f"unknown panel type {p['type']!r} in the workspace spec")


def to_workspace(spec: Mapping[str, Any], entity: Optional[str] = None) -> Any:
    """The spec as a ``wandb_workspaces.workspaces.Workspace`` (no server needed to build it)."""
    # Imported here: an optional dependency (the `wandb` extra), only needed for this view.
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"not a specsweep workspace spec (format {spec.get('format')!r}, expected {SPEC_FORMAT})")
    runset = spec["runset"]
    sections = [ws.Section(name=s["name"], is_open=True, panels=[_panel(wr, p) for p in s["panels"]])
                for s in spec["sections"]]
    return ws.Workspace(
        entity=entity or spec["entity"] or "", project=spec["project"], name=spec["name"], sections=sections,
        settings=ws.WorkspaceSettings(x_axis=spec["x_axis"]),
        runset_settings=ws.RunsetSettings(
            filters=expr.And(expr.Metric("Group").isin(list(runset["groups"])),
                             expr.Metric("JobType").isin(list(runset["job_types"]))),
            groupby=[expr.Config(k) for k in runset["groupby"]]))


def offline_reason() -> Optional[str]:
    """Why the view cannot be saved now (None: try online)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    try:
        import wandb_workspaces  # noqa: F401 - only checks that the optional package is there
    except ImportError:
        return "the wandb-workspaces package is not installed (pip install 'specsweep[wandb]')"
    return None


def apply_spec(spec: Mapping[str, Any], timeout: float = 30) -> str:
    """Save the view on the W&B server; returns its URL. Raises on no API key / no server."""
    import wandb

    api = wandb.Api(timeout=timeout)  # raises without an API key or when the server is unreachable
    workspace = to_workspace(spec, spec.get("entity") or api.default_entity)
    workspace.save()
    return str(workspace.url)


def python_snippet(spec: Mapping[str, Any]) -> str:
    """A standalone script that builds and saves the same view with wandb-workspaces."""
    lines = ['"""The specsweep width-scaling view; run once online: python wandb_workspace.py"""',
             "import wandb_workspaces.reports.v2 as wr", "import wandb_workspaces.workspaces as ws",
             "from wandb_workspaces import expr", "", "sections = []"]
    for s in spec["sections"]:
        lines.append(f"sections.append(ws.Section(name={s['name']!r}, is_open=True, panels=[")
        for p in s["panels"]:
            if p["type"] == "line":
                lines.append(f"    wr.LinePlot(title={p['title']!r}, x={p['x']!r}, y=[{p['y']!r}], "
                             f"groupby_aggfunc={p.get('agg')!r}, groupby_rangefunc={p.get('range')!r}),")
            elif p["type"] == "scatter":
                lines.append(f"    wr.ScatterPlot(title={p['title']!r}, x=wr.Config({p['x']!r}), "
                             f"y=wr.SummaryMetric({p['y']!r}), log_x={p['log_x']!r}, log_y={p['log_y']!r}),")
            else:
                lines.append(f"    wr.WeavePanelSummaryTable(table_name={p['y']!r}, layout=wr.Layout(w=24, h=10)),")
        lines.append("]))")
    rs = spec["runset"]
    lines += ["", "workspace = ws.Workspace(",
              f"    entity={spec['entity'] or ''!r},  # empty: fill in your W&B entity",
              f"    project={spec['project']!r}, name={spec['name']!r}, sections=sections,",
              f"    settings=ws.WorkspaceSettings(x_axis={spec['x_axis']!r}),",
              "    runset_settings=ws.RunsetSettings(",
              f"        filters=expr.And(expr.Metric('Group').isin({list(rs['groups'])!r}),",
              f"                         expr.Metric('JobType').isin({list(rs['job_types'])!r})),",
              f"        groupby=[expr.Config(k) for k in {list(rs['groupby'])!r}]))",
              "", "if __name__ == '__main__':", "    print(workspace.save().url)", ""]
    return "\n".join(lines)


def spec_files(spec: Mapping[str, Any]) -> dict[str, str]:
    """The files written into the analysis folder: the JSON spec and the equivalent script."""
    return {SPEC_FILE: json.dumps(spec, indent=1, ensure_ascii=False) + "\n", SNIPPET_FILE: python_snippet(spec)}
