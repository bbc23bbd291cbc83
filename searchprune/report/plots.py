"""Figures of a sampler comparison (matplotlib's Agg canvas; no display, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.ticker import MaxNLocator

from searchprune.report.compare import cost_label, pareto_front

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from searchprune.report.compare import Comparison, Run

__all__ = ["plot_anytime", "plot_fronts"]

_COLORS = {"random": "#555555", "tpe": "#1f77b4", "cmaes": "#d62728", "gp": "#2ca02c",
           "qmc": "#9467bd", "nsga2": "#ff7f0e"}


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _color(sampler: str, i: int) -> str:
    return _COLORS.get(sampler, f"C{i}")


def plot_anytime(c: Comparison, path: str | Path, *, baseline: float | None = None,
                 title: str | None = None) -> Path:
    """Best-so-far (or hypervolume-so-far) against evaluated trials: the mean over seeds as a
    line, the min-max range over seeds as a band, the reference target as a dashed line."""
    fig = _figure((7.5, 4.8))
    ax = fig.add_subplot()
    for i, row in enumerate(c.rows):
        band, color = c.curves[row.sampler], _color(row.sampler, i)
        ax.fill_between(band.k, band.min, band.max, color=color, alpha=0.15, linewidth=0,
                        step="post")
        ax.step(band.k, band.mean, where="post", color=color, linewidth=2,
                label=f"{row.sampler} (mean of {len(row.seeds)} seeds; band: min-max)")
    if c.target is not None:
        ax.axhline(c.target, color="black", linestyle="--", linewidth=1,
                   label=f"{c.reference_sampler}: mean final value")
    if baseline is not None and c.objective != "pareto":
        ax.axhline(baseline, color="#2ca02c", linestyle=":", linewidth=1,
                   label=f"unpruned network ({baseline:.2f}%)")
    for j, (label, top1) in enumerate(c.reference_lines()):
        ax.axhline(top1, color=_REF_COLORS[j % len(_REF_COLORS)], linestyle="-.",
                   linewidth=1.2, label=f"{label} ({top1:.2f}%)")
    ax.set_xlabel("evaluated (in-band) trials")
    ax.set_ylabel("hypervolume of the front so far" if c.objective == "pareto"
                  else "best-so-far validation top-1 (%)")
    ax.set_title(title or "Anytime performance per sampler")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _zoom(ax, c, baseline)
    return _save(fig, path)


_REF_COLORS = ("#7f7f7f", "#8c564b", "#e377c2", "#bcbd22")


def _zoom(ax, c: Comparison, baseline: float | None) -> None:
    """Start the y axis where the curves are after a few evaluations, so the differences that
    matter are visible (the first evaluations of a random start can be far lower)."""
    lows = [b.min[min(2, len(b.min) - 1)] for b in c.curves.values() if b.min]
    highs = [max(b.max) for b in c.curves.values() if b.max]
    if c.target is not None:
        highs.append(c.target)
    if baseline is not None and c.objective != "pareto":
        highs.append(baseline)
    lows += [top1 for _, top1 in c.reference_lines()]
    highs += [top1 for _, top1 in c.reference_lines()]
    if lows and highs:
        lo, hi = min(lows), max(highs)
        pad = 0.08 * (hi - lo) or 0.5
        ax.set_ylim(lo - pad, hi + pad)


def plot_fronts(runs: Sequence[Run], path: str | Path, *, title: str | None = None,
                cost: str = "flops") -> Path:
    """Pareto studies: every evaluated trial as a faint dot and each seed's front as a staircase,
    one colour per sampler; ``cost`` names the second objective (``search.pareto_cost``)."""
    fig = _figure((7.5, 4.8))
    ax = fig.add_subplot()
    samplers = list(dict.fromkeys(r.sampler for r in runs))
    for i, sampler in enumerate(samplers):
        color = _color(sampler, i)
        for j, run in enumerate(r for r in runs if r.sampler == sampler):
            pts = [(p[0], p[1]) for p in run.points]
            if not pts:
                continue
            ax.scatter([p[1] for p in pts], [p[0] for p in pts], s=8, color=color, alpha=0.25,
                       linewidths=0)
            front = pareto_front(pts)
            ax.step([p[1] for p in front], [p[0] for p in front], where="post", color=color,
                    linewidth=1.5, alpha=0.9, label=sampler if j == 0 else None)
    ax.set_xlabel(f"{cost_label(cost)} ratio kept (lower is cheaper)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title or "Pareto fronts (one staircase per seed)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
