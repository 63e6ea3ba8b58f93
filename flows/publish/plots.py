"""Three PNG plots beside report.md, so a run's mix, sizes and check results read at a glance.

Figures are built with the object API and rendered by an explicitly attached Agg canvas: no
pyplot, no global figure registry and no backend switch, so plotting is safe from worker
threads and leaves a caller's (e.g. a notebook's) matplotlib setup alone. Output bytes are
reproducible (fixed size and dpi, no "Software" version stamp), so reruns of the same data do
not show up as changed files.

The axes sit in margins given in inches rather than in matplotlib's constrained layout, which
draws each figure an extra time to measure it (benchmarks/decisions.md, cold start). The
left margin is measured from the widest y tick label a plot will show (a check name, a count).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.core.config import SCENARIOS
from flows.core.files import atomic_path
from flows.quality.lengths import counts_by, dialogue_lengths

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# matplotlib is imported by the functions that draw: a replay links to the stored plots and
# never loads it (start-up time, benchmarks/RESULTS.md).

PLOTS: dict[str, str] = {
    "plot_counts.png": "Dialogues per scenario and source",
    "plot_lengths.png": "Dialogue lengths",
    "plot_checks.png": "Quality check pass rates",
}
DPI = 100
# tab10 as literal colours: the same source gets the same colour whatever the user's rcParams.
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def write_plots(
    out: Path, rows: list[dict[str, Any]], pass_rates: Mapping[str, float]
) -> list[Path]:
    """Write plot_counts.png, plot_lengths.png and plot_checks.png into out; return their paths.

    Empty inputs still produce images (saying so) so report.md never links a missing file.
    """
    figures = [_counts_figure(rows), _lengths_figure(rows), _checks_figure(pass_rates)]
    paths = []
    for name, fig in zip(PLOTS, figures, strict=True):
        target = out / name
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        paths.append(target)
    return paths


def plots_markdown(paths: list[Path]) -> str:
    """Image links for report.md, relative because report.md sits in the same output folder."""
    return "\n\n".join(f"![{PLOTS.get(p.name, p.stem.replace('_', ' '))}]({p.name})" for p in paths)


def _figure(width: float, height: float, y_labels: list[str], top: float = 0.45) -> Figure:
    """A figure of width x height inches whose axes leave room, on the left, for the widest
    of `y_labels` (the y tick labels it will show, measured) and the y axis label; below, for
    one line of tick labels and the x axis label; above, for `top` inches of titles."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    fig = Figure(figsize=(width, height), dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=rcParams["ytick.labelsize"])
    widest = (
        max(
            (renderer.get_text_width_height_descent(t, font, ismath=False)[0] for t in y_labels),
            default=0.0,
        )
        / DPI
    )
    left = min(0.5 + widest, width / 2)  # a longer name is cut: the report lists it whole
    fig.subplots_adjust(
        left=left / width, right=1 - 0.25 / width, bottom=0.6 / height, top=1 - top / height
    )
    return fig


def _count_labels(most: int) -> list[str]:
    """The widest y tick label a count axis up to `most` (plus its margin) can show."""
    return [str(round(most * 1.2) + 1)]


def _say_empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _counts_figure(rows: list[dict[str, Any]]) -> Figure:
    from matplotlib.ticker import MaxNLocator

    by_source = counts_by(rows, "source", "scenario")
    most = max((n for counts in by_source.values() for n in counts.values()), default=0)
    fig = _figure(8, 4.5, _count_labels(most))
    ax = fig.add_subplot()
    ax.set_title("Dialogues per scenario and source")
    ax.set_xlabel("scenario")
    ax.set_ylabel("dialogues")
    if not by_source:
        _say_empty(ax, "no dialogues")
        return fig
    present = next(iter(by_source.values())).keys()
    # The report's scenario order first, then anything unexpected, so plot and table agree.
    scenarios = [s for s in SCENARIOS if s in present] + sorted(set(present) - set(SCENARIOS))
    width = 0.8 / len(by_source)
    for k, (source, counts) in enumerate(by_source.items()):
        offsets = [x - 0.4 + width * (k + 0.5) for x in range(len(scenarios))]
        bars = ax.bar(
            offsets,
            [counts[s] for s in scenarios],
            width,
            label=source,
            color=COLOURS[k % len(COLOURS)],
        )
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.12)
    ax.legend(title="source", fontsize=8)
    return fig


def _lengths_figure(rows: list[dict[str, Any]]) -> Figure:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 4, _count_labels(len(rows)), top=0.75)
    fig.suptitle("Dialogue lengths")
    turns_ax, tokens_ax = fig.subplots(1, 2, gridspec_kw={"wspace": 0.3})
    turns_ax.set_title("Turns per dialogue")
    turns_ax.set_xlabel("turns")
    tokens_ax.set_title("Approx. tokens per dialogue (messages)")
    tokens_ax.set_xlabel("approx. tokens")
    for ax in (turns_ax, tokens_ax):
        ax.set_ylabel("dialogues")
    if not rows:
        _say_empty(turns_ax, "no dialogues")
        _say_empty(tokens_ax, "no dialogues")
        return fig
    lengths = [dialogue_lengths(r) for r in rows]
    turns = [d["turns"] for d in lengths]
    # One bar per whole turn count, centred on it: turn counts are small integers.
    turn_bins = [t - 0.5 for t in range(min(turns), max(turns) + 2)]
    turns_ax.hist(turns, bins=turn_bins, color=COLOURS[0], edgecolor="white")
    if max(turns) - min(turns) <= 20:  # every turn count a tick, also when all are one
        turns_ax.set_xticks(range(min(turns), max(turns) + 1))
    else:
        turns_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tokens_ax.hist(
        [d["tokens"] for d in lengths],
        bins=min(20, max(1, len(set(d["tokens"] for d in lengths)))),
        color=COLOURS[1],
        edgecolor="white",
    )
    for ax in (turns_ax, tokens_ax):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _checks_figure(pass_rates: Mapping[str, float]) -> Figure:
    height = max(2.5, 1 + 0.45 * len(pass_rates))
    names = list(pass_rates)
    fig = _figure(8, height, names)
    ax = fig.add_subplot()
    ax.set_title("Quality check pass rates")
    ax.set_xlabel("pass rate (%)")
    if not pass_rates:
        _say_empty(ax, "no checks")
        return fig
    percents = [100.0 * pass_rates[n] for n in names]
    bars = ax.barh(names, percents, color=COLOURS[2])
    ax.bar_label(bars, labels=[f"{p:.0f}%" for p in percents], padding=3, fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_xticks(range(0, 101, 20))
    ax.invert_yaxis()  # first check on top, as listed in the report
    ax.set_ylabel("check")
    return fig
