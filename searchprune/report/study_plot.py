"""One study as a picture: the pruned architecture of its best trials (kept channels per group
against the original widths, the figure pruning papers print) and validation top-1 against the
FLOPs ratio of every evaluated trial, with the FLOPs band marked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from searchprune.errors import SearchpruneError
from searchprune.report.plots import _figure, _save

__all__ = ["StudyPoint", "plot_study", "study_points"]

_TOP_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass(frozen=True)
class StudyPoint:
    """An evaluated trial: number, validation top-1, FLOPs ratio and kept channels per group."""

    number: int
    top1: float
    flops_ratio: float
    widths: Mapping[str, int]


def study_points(trials: Iterable[Any]) -> list[StudyPoint]:
    """Every COMPLETE trial with widths and accuracy, best first (ties: lower number first)."""
    points = []
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        u = t.user_attrs
        top1 = u.get("top1", t.values[0] if t.values else None)
        if top1 is None or "widths" not in u or "flops_ratio" not in u:
            continue
        points.append(StudyPoint(t.number, float(top1), float(u["flops_ratio"]),
                                 {k: int(v) for k, v in u["widths"].items()}))
    return sorted(points, key=lambda p: (-p.top1, p.number))


def plot_study(study: Any, path: str | Path, *, top: int = 3) -> Path:
    """Write a PNG with two panels: the ``top`` best trials' kept channels per group as bars
    over the original widths, and top-1 against FLOPs ratio for every evaluated trial (the
    band shaded, the unpruned baseline dashed, the ``top`` best ringed in their bar colours).

    Raises:
        SearchpruneError: the study has no evaluated trial with widths yet.
    """
    points = study_points(study.get_trials(deepcopy=False))
    if not points:
        raise SearchpruneError(f"study '{study.study_name}' has no evaluated trials to plot yet; "
                               "run 'searchprune study run' first")
    attrs = study.user_attrs
    original = attrs.get("groups") or {}
    groups = list(original) or list(points[0].widths)
    best = points[:max(1, top)]
    fig = _figure((max(9.0, 4.0 + 0.55 * len(groups)) + 5.0, 4.8))
    arch, scatter = fig.subplots(1, 2, width_ratios=[max(2.0, len(groups) / 4), 1.6])
    _architecture(arch, groups, original, best)
    _scatter(scatter, points, best, attrs)
    fig.suptitle(f"study {study.study_name}: {len(points)} evaluated trials")
    return _save(fig, path)


def _architecture(ax, groups: list[str], original: Mapping[str, int],
                  best: list[StudyPoint]) -> None:
    xs = range(len(groups))
    width = 0.8 / max(1, len(best))
    if original:
        ax.bar(xs, [original.get(g, 0) for g in groups], 0.9, color="#dddddd",
               edgecolor="#999999", label="original")
    for i, p in enumerate(best):
        offset = (i - (len(best) - 1) / 2) * width
        ax.bar([x + offset for x in xs], [p.widths.get(g, 0) for g in groups], width,
               color=_TOP_COLORS[i % len(_TOP_COLORS)],
               label=f"trial {p.number}: {p.top1:.2f}%, FLOPs {p.flops_ratio:.3f}")
    ax.set_xticks(list(xs), groups, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("channels kept")
    ax.set_title(f"pruned architecture of the best {len(best)} trial(s) per channel group")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _scatter(ax, points: list[StudyPoint], best: list[StudyPoint],
             attrs: Mapping[str, Any]) -> None:
    pruning = (attrs.get("config") or {}).get("pruning", {})
    gamma, tol = pruning.get("gamma"), pruning.get("tolerance")
    xs = [p.flops_ratio for p in points]
    if gamma is not None and tol is not None:
        ax.axvspan(gamma - tol, gamma + tol, color="#ffd966", alpha=0.35,
                   label=f"band {gamma} ± {tol}")
        ax.set_xlim(min(min(xs), gamma - 1.5 * tol), max(max(xs), gamma + 1.5 * tol))
    ax.scatter(xs, [p.top1 for p in points], s=18, color="#555555",
               alpha=0.7, label="evaluated trials")
    for i, p in enumerate(best):
        ax.scatter([p.flops_ratio], [p.top1], s=90, facecolors="none", linewidths=2,
                   edgecolors=_TOP_COLORS[i % len(_TOP_COLORS)])
    baseline = attrs.get("baseline_val_top1")
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1,
                   label=f"unpruned {baseline:.2f}%")
    ax.set_xlabel("FLOPs ratio (kept)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("accuracy against FLOPs ratio")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
