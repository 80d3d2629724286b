"""The frame every figure of a fit shares: matplotlib (Agg, imported on first use), plain tick
labels on log axes, the caption on top and one legend below the panels, the legend handles of
groups and error bars, and room at the top of a panel for its notes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from specsweep.sweep.analysis.result import FitResult
from specsweep.sweep.analysis.style import caption, ordered_labels


def pyplot():
    # Imported here: matplotlib is slow to import and only needed when figures are drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(ax: Any, axis: str = "both", widths: Sequence[float] | None = None) -> None:
    """'%g' labels on log axes: mathtext tick labels dominate drawing time for small figures."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    targets = [ax.xaxis, ax.yaxis] if axis == "both" else [getattr(ax, f"{axis}axis")]
    for target in targets:
        if target is ax.xaxis and widths is not None:
            target.set_major_locator(FixedLocator(sorted(set(widths))))  # ticks at the swept widths
        else:
            target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_locator(NullLocator())


def finish(fig: Any, result: FitResult, handles: list, labels: list[str], handler_map: dict | None = None) -> Any:
    """Title on top, one legend centred below the panels (the same place in every figure)."""
    width, height = fig.get_size_inches()
    fig.suptitle(caption(result), fontsize=8.5)
    ncol = max(1, min(len(labels), int(width // 2.4)))
    rows = -(-len(labels) // ncol) if labels else 0
    bottom = (0.25 + 0.2 * rows) / height
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7.5, frameon=False,
                   bbox_to_anchor=(0.5, 0.0), handler_map=handler_map)
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.32 / height))
    return fig


def group_handles(colours: dict[str, str], labels: Sequence[str], marker: str = "o") -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D

    labels = ordered_labels(colours, labels)
    return [Line2D([], [], color=colours[lab], marker=marker, lw=1.4) for lab in labels], list(labels)


def errorbar_handle(text: str) -> tuple[Any, str]:
    from matplotlib.container import ErrorbarContainer
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    line = Line2D([], [], color="0.4", marker="o", ls="none", ms=4)
    bars = LineCollection([[(0, -1), (0, 1)]], colors="0.4")
    return ErrorbarContainer((line, (), [bars]), has_xerr=False, has_yerr=True), f"error bar: {text}"


NOTE_STEP = 0.085  # axes fraction between two lines of β notes


def reserve_top(ax: Any, fraction: float) -> None:
    """Raise the top of a log y-axis so that the data (points and error bars) stay below the top
    ``fraction`` of the panel, where the β notes go: notes never cover a point or a bar."""
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > lo and fraction < 1:
        span = np.log(hi / lo)
        ax.set_ylim(lo, hi * np.exp(span * fraction / (1 - fraction)))
