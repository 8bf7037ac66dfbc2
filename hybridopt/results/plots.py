"""Figures of searches and train runs (matplotlib's object API: no display, no global state)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hybridopt.results.store import SearchView, TrainView

__all__ = [
    "candidates_by_family",
    "fitness_by_family",
    "learning_curves",
    "returns_by_condition",
    "search_progress",
    "searched_projections",
]

FAMILY_COLOURS = {"none": "#7f7f7f", "hebbian": "#1f77b4", "oja": "#2ca02c", "bcm": "#d62728", "stdp": "#9467bd"}
_OTHER = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _colour(family: str, seen: dict[str, str]) -> str:
    if family not in seen:
        seen[family] = FAMILY_COLOURS.get(family) or _OTHER[len(seen) % len(_OTHER)]
    return seen[family]


def searched_projections(view: SearchView) -> list[str]:
    """Projections whose rule family is a gene of the search."""
    return [g.split(".")[1] for g in view.genes if g.startswith("plasticity.") and g.endswith(".rule")]


def _reference_lines(ax: Axes, chance: float | None, observer: float | None) -> None:
    """Chance and the task's reference observer (what its inputs allow) as horizontal lines."""
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.2f}")
    if observer is not None:
        ax.axhline(observer, color="green", ls=":", lw=1.2, label=f"observer {observer:.3f}")


def search_progress(views: Sequence[SearchView], labels: Sequence[str] | None = None) -> Figure:
    """Best and mean fitness per generation, and the best against cumulative CPU time of training
    (one line per search: several searches compare side by side)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_g, ax_c = fig.subplots(1, 2)
    for i, v in enumerate(views):
        label = labels[i] if labels else v.name
        colour = f"C{i}"
        best = v.generations.get("best_fitness", [])
        mean = v.generations.get("mean_fitness", [])
        if best:
            ax_g.plot(*zip(*best), "o-", color=colour, label=f"{label}: best")
        if mean:
            ax_g.plot(*zip(*mean), "s--", color=colour, alpha=0.6, label=f"{label}: mean")
        cpu = dict(v.generations.get("cpu_s", []))
        pts = [(cpu[g] / 60.0, b) for g, b in best if g in cpu]
        if pts:
            ax_c.plot(*zip(*pts), "o-", color=colour, label=label)
        test = v.generations.get("test/accuracy", [])
        if test:  # the winner on reserved test episodes, where selection ended
            ax_g.plot(*zip(*test), "*", ms=12, color=colour, label=f"{label}: test {test[-1][1]:.3f}")
    if len(views) == 1:
        last = {k: h[-1][1] for k, h in views[0].generations.items() if k in ("test/chance", "test/observer") and h}
        _reference_lines(ax_g, last.get("test/chance"), last.get("test/observer"))
    ax_g.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_g.set(xlabel="generation", ylabel="fitness", title="fitness per generation")
    ax_c.set(xlabel="CPU-minutes of training (all candidates)", ylabel="best fitness so far", title="best vs compute")
    for ax in (ax_g, ax_c):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def candidates_by_family(view: SearchView) -> Figure:
    """Every candidate as a point (generation, fitness), coloured by its rule family, one panel
    per searched projection; failed candidates as crosses at the bottom."""
    projections = searched_projections(view) or ["input"]
    fig = Figure(figsize=(4.2 * len(projections), 4.0), layout="constrained")
    axes = fig.subplots(1, len(projections), squeeze=False)[0]
    finished = [c.fitness for c in view.candidates if c.fitness is not None]
    floor = min(finished) if finished else 0.0
    rng = random.Random(0)  # the same jitter every time
    for ax, proj in zip(axes, projections):
        seen: dict[str, str] = {}
        for c in view.candidates:
            family = str(c.genome.get(f"plasticity.{proj}.rule", "fixed"))
            x = c.generation + rng.uniform(-0.2, 0.2)
            if c.status == "FAILED":
                ax.plot(x, floor, "x", color=_colour(family, seen), ms=7)
            elif c.fitness is not None:
                ax.plot(x, c.fitness, "o", color=_colour(family, seen), ms=6, alpha=0.8)
        for family, colour in seen.items():
            ax.plot([], [], "o", color=colour, label=family)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="generation", ylabel="fitness", title=f"{proj}: rule family")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="x: failed", title_fontsize=7)
    return fig


def fitness_by_family(view: SearchView) -> Figure:
    """Fitness of the finished candidates by rule family, one panel per searched projection
    (points, and the median as a bar)."""
    projections = searched_projections(view) or ["input"]
    fig = Figure(figsize=(4.2 * len(projections), 4.0), layout="constrained")
    axes = fig.subplots(1, len(projections), squeeze=False, sharey=True)[0]
    rng = random.Random(1)
    for ax, proj in zip(axes, projections):
        by: dict[str, list[float]] = {}
        for c in view.candidates:
            if c.fitness is not None:
                by.setdefault(str(c.genome.get(f"plasticity.{proj}.rule", "fixed")), []).append(c.fitness)
        seen: dict[str, str] = {}
        for i, (family, vals) in enumerate(sorted(by.items())):
            colour = _colour(family, seen)
            ax.plot([i + rng.uniform(-0.15, 0.15) for _ in vals], vals, "o", color=colour, alpha=0.7)
            med = sorted(vals)[len(vals) // 2]
            ax.plot([i - 0.3, i + 0.3], [med, med], "-", color="black", lw=2)
        ax.set_xticks(range(len(by)), [f"{f}\n(n={len(v)})" for f, v in sorted(by.items())])
        ax.set(title=f"{proj}: fitness by family", ylabel="fitness")
        ax.grid(alpha=0.3, axis="y")
    return fig


_CURVE_ORDER = ("train/loss", "train/accuracy", "eval/accuracy", "train/return_mean", "train/rate")


def learning_curves(view: TrainView) -> Figure:
    """A train run's curves: every metric logged at two or more steps, loss and accuracy first."""
    keys = [k for k, h in view.curves.items() if len(h) >= 2]
    keys.sort(key=lambda k: (_CURVE_ORDER.index(k) if k in _CURVE_ORDER else len(_CURVE_ORDER), k))
    keys = keys[:6] or list(view.curves)[:1]
    cols = min(3, max(1, len(keys)))
    rows = (len(keys) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        pts = view.curves.get(key, [])
        if pts:
            ax.plot(*zip(*pts), "-" if len(pts) > 20 else "o-", lw=1.2)
        if key.endswith("/accuracy"):
            _reference_lines(ax, view.metrics.get("test/chance"), view.metrics.get("test/observer"))
            if ax.lines[1:]:
                ax.legend(fontsize=7)
        ax.set(title=key, xlabel="step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(view.name, fontsize=9)
    return fig


def returns_by_condition(views: Sequence[TrainView], labels: Sequence[str] | None = None) -> Figure:
    """Evaluation return per condition (standard and each novel one), one bar group per condition
    and one bar per run (static vs plastic side by side when both are given)."""
    conds: list[str] = []
    for v in views:
        conds += [
            k.split("/", 2)[2] for k in v.metrics if k.startswith("eval/return/") and k.split("/", 2)[2] not in conds
        ]
    conds.sort(key=lambda c: (c != "standard", c))
    fig = Figure(figsize=(max(5.0, 1.6 * len(conds) * max(1, len(views)) ** 0.5 + 2), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(views))
    for i, v in enumerate(views):
        xs = [j + (i - (len(views) - 1) / 2) * width for j in range(len(conds))]
        ys = [v.metrics.get(f"eval/return/{c}", float("nan")) for c in conds]
        errs = [v.metrics.get(f"eval/return_std/{c}", 0.0) for c in conds]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=labels[i] if labels else v.name)
    ax.set_xticks(range(len(conds)), conds)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(ylabel="episode return", title="return per condition (standard, then never seen in training)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig
