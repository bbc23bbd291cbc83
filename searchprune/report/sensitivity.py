"""The sensitivity plot: accuracy drop against keep-ratio, one line per group, one panel per
stage (matplotlib's Agg canvas, as :mod:`searchprune.report.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from searchprune.report.plots import _figure, _save
from searchprune.sensitivity import stage_of

if TYPE_CHECKING:
    from searchprune.search.sensitivity import Scan

__all__ = ["plot_sensitivity"]


def plot_sensitivity(scan: Scan, path: str | Path, *, title: str | None = None) -> Path:
    """Each group's measured drop at each scanned keep-ratio (and 0 at 1.0), grouped by stage;
    residual streams dashed. The y axis is shared, so stages compare at a glance."""
    curves = scan.curves()
    stages = list(dict.fromkeys(stage_of(g) for g in curves))
    fig = _figure((3.6 * len(stages) + 0.8, 4.2))
    axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        for i, (group, curve) in enumerate((g, c) for g, c in curves.items()
                                           if stage_of(g) == stage):
            pts = [*curve, (1.0, 0.0)]
            ax.plot([r for r, _ in pts], [d for _, d in pts], marker="o", markersize=3,
                    linewidth=1.4, linestyle="--" if "residual" in group else "-",
                    color=f"C{i % 10}", label=group.removeprefix(f"{stage}."))
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(stage)
        ax.set_xlabel("keep-ratio of the group (others full)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    if scan.method == "scan":
        axes[0].set_ylabel("top-1 drop vs unpruned (points)")
        reference = f"unpruned {scan.reference_top1:.2f}%, " if scan.reference_top1 is not None \
            else ""
        spent = f"{reference}{scan.evaluations} evaluations"
    else:
        axes[0].set_ylabel(scan.unit)
        spent = (f"{scan.method} estimates from {scan.cost.forward_images} images forward and "
                 "backward")
    fig.suptitle(title or f"Per-group sensitivity ({spent})")
    return _save(fig, path)
