"""The class report's figures: matplotlib in the lessons' style (plain axes, the lessons' blues, labelled bars).

Each function returns PNG bytes, for embedding in the HTML report and for saving beside it. Only
matplotlib's object API is used (`Figure`, no pyplot), so building a report changes no global state.
"""

import io
import math
import statistics

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

BLUE = "#6fa8dc"      # the lessons' bar colour
PALE = "#cfe2f3"
DARK = "#3d6f9e"
WARM = "#f6b26b"      # what went wrong
DPI = 110


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _points_bins(top: float, scores: list[float]) -> list[float]:
    """One bar per point when scores are whole points (up to 40), else 20 equal bins."""
    if top <= 40 and all(float(s).is_integer() for s in scores):
        return [x - 0.5 for x in range(int(top) + 2)]
    return [top * i / 20 for i in range(21)] if top > 0 else [0, 1]


def score_histograms(assignments: list[str], finals: dict[str, list[float]], max_scores: dict[str, float]) -> bytes:
    """One histogram of final scores (after late penalties) per assignment."""
    columns = min(len(assignments), 3)
    rows = math.ceil(len(assignments) / columns)
    figure = Figure(figsize=(4.4 * columns, 3.1 * rows), layout="constrained")
    for index, assignment in enumerate(assignments):
        ax = figure.add_subplot(rows, columns, index + 1)
        scores, top = finals[assignment], max_scores[assignment]
        ax.hist(scores, bins=_points_bins(top, scores), color=BLUE, edgecolor="white")
        median = statistics.median(scores) if scores else 0
        ax.axvline(median, color=DARK, linestyle="--", linewidth=1)
        ax.set_title(f"{assignment}: {len(scores)} submissions\nmedian {median:g} of {top:g} points", fontsize=10)
        ax.set_xlabel("score after late penalties")
        ax.set_ylabel("students")
        ax.set_xlim(-0.6, top + 0.6)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return png(figure)


def pass_rates(rows: list[dict], several: bool) -> bytes:
    """Share of submissions that pass each test cell (the re-run's verdict), one bar per cell."""
    labels = [f"{r['assignment']} · {r['cell']}" if several else r["cell"] for r in rows]
    rates = [r["pass_rate"] for r in rows]
    figure = Figure(figsize=(8.5, 0.9 + 0.34 * len(rows)), layout="constrained")
    ax = figure.add_subplot()
    bars = ax.barh(labels, rates, color=[BLUE if rate >= 0.5 else WARM for rate in rates])
    ax.bar_label(bars, labels=[f"{r['pass_rate']:.0%} ({r['passed']}/{r['submissions']})" for r in rows],
                 padding=3, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("submissions that pass the test cell (orange: fewer than half)")
    ax.set_title("Pass rate of each test cell")
    return png(figure)


def failing_checks(summaries: list, several: bool, top: int = 12) -> bytes:
    """The checks that failed most often, with the share their most common diagnosis holds."""
    failed = sorted((s for s in summaries if s.failures), key=lambda s: -s.failures)[:top]
    figure = Figure(figsize=(11, 0.9 + 0.34 * max(len(failed), 1)), layout="constrained")
    ax = figure.add_subplot()
    if not failed:
        ax.text(0.5, 0.5, "no check failed", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return png(figure)
    labels = [(f"{s.assignment} · " if several else "") + f"{s.cell}: {s.check}" for s in failed]
    counts = [s.failures for s in failed]
    bars = ax.barh(labels, counts, color=WARM)
    labels = [f"{s.failures} · {s.diagnoses[0].count / s.failures:.0%}: {_short(s.diagnoses[0].example)}"
              if s.diagnoses else str(s.failures) for s in failed]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlim(0, max(counts) * 3.2)  # room for the labels; ticks only under the bars
    ax.set_xticks([t for t in MaxNLocator(nbins=4, integer=True).tick_values(0, max(counts)) if 0 <= t <= max(counts)])
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_xlabel("submissions in which the check failed · share of those failures with the top diagnosis")
    ax.set_title("Most failed checks and their most common diagnosis")
    return png(figure)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def grading_times(assignments: list[str], seconds: dict[str, list[float]]) -> bytes:
    """Grading time per notebook (the kernel's run plus the re-run), one box per assignment."""
    shown = [a for a in assignments if seconds.get(a)]
    figure = Figure(figsize=(8.5, 0.9 + 0.5 * max(len(shown), 1)), layout="constrained")
    ax = figure.add_subplot()
    if not shown:
        ax.text(0.5, 0.5, "no grading time recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return png(figure)
    ax.boxplot([seconds[a] for a in shown], orientation="horizontal", tick_labels=shown, widths=0.5, patch_artist=True,
               boxprops={"facecolor": PALE, "edgecolor": DARK}, medianprops={"color": DARK},
               flierprops={"markeredgecolor": WARM})
    for row, assignment in enumerate(shown, start=1):  # every notebook as a dot, spread a little for legibility
        values = seconds[assignment]
        ax.scatter(values, [row + 0.18 * ((i * 0.618) % 1 - 0.5) for i in range(len(values))], s=10, color=DARK,
                   alpha=0.6, zorder=3)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds per notebook (kernel run + re-run)")
    ax.set_title("Grading time per notebook")
    return png(figure)
