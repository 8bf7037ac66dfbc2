"""Figures of searches and train runs (matplotlib's object API: no display, no global state)."""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hybridopt.results.store import SearchView, TrainView
from hybridopt.tasks.conditions import metric_key

__all__ = [
    "candidates_by_family",
    "fitness_by_family",
    "learning_curves",
    "returns_by_condition",
    "search_progress",
]

FAMILY_COLOURS = {"none": "#7f7f7f", "hebbian": "#1f77b4", "oja": "#2ca02c", "bcm": "#d62728", "stdp": "#9467bd"}
_OTHER = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _colour(family: str, seen: dict[str, str]) -> str:
    if family not in seen:
        seen[family] = FAMILY_COLOURS.get(family) or _OTHER[len(seen) % len(_OTHER)]
    return seen[family]


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
    projections = view.searched_projections or ["input"]
    fig = Figure(figsize=(4.2 * len(projections), 4.0), layout="constrained")
    axes = fig.subplots(1, len(projections), squeeze=False)[0]
    finished = [c.fitness for c in view.candidates if c.fitness is not None]
    floor = min(finished) if finished else 0.0
    rng = random.Random(0)  # the same jitter every time
    for ax, proj in zip(axes, projections):
        seen: dict[str, str] = {}
        for c in view.candidates:
            family = view.rule(c, proj)
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
    projections = view.searched_projections or ["input"]
    fig = Figure(figsize=(4.2 * len(projections), 4.0), layout="constrained")
    axes = fig.subplots(1, len(projections), squeeze=False, sharey=True)[0]
    rng = random.Random(1)
    for ax, proj in zip(axes, projections):
        by: dict[str, list[float]] = {}
        for c in view.candidates:
            if c.fitness is not None:
                by.setdefault(view.rule(c, proj), []).append(c.fitness)
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


_AGGREGATES = ("train", "heldout")  # eval/return/<these> are means over conditions, not conditions


def _condition_lists(view: TrainView) -> tuple[list[str], list[str]]:
    """The metric keys of a run's training and held-out conditions, from its params (a run that
    logged none trained in ``standard`` and held out every other condition it evaluated)."""
    evaluated = [k.split("/", 2)[2] for k in view.metrics if k.startswith("eval/return/")]
    evaluated = [c for c in evaluated if c not in _AGGREGATES]

    def listed(param: str) -> list[str] | None:
        text = view.params.get(param)
        try:
            names = ast.literal_eval(text) if text else None
        except (ValueError, SyntaxError):
            return None
        return [metric_key(str(n)) for n in names] if isinstance(names, list) else None

    train = listed("task.train_conditions") or ["standard"]
    heldout = listed("task.conditions")
    if heldout is None:
        heldout = [c for c in evaluated if c not in train and c != "standard"]
    return train, heldout


def returns_by_condition(views: Sequence[TrainView], labels: Sequence[str] | None = None) -> Figure:
    """Evaluation return per condition as grouped bars, one group per condition and one bar per
    run (several runs, methods, side by side): the conditions trained on left of a divider, the
    held-out ones right of it (a bar of a run that held the condition out is hatched), and above
    each held-out bar its retention ``R_c / R_standard``.  ``standard`` (the intact body, the
    retention's reference) has a section of its own when no run trains or holds it out.  The
    legend gives each run's ``R_heldout / R_standard``."""
    lists = [_condition_lists(v) for v in views]
    trained = list(dict.fromkeys(c for t, _ in lists for c in t))
    heldout = list(dict.fromkeys(c for _, h in lists for c in h if c not in trained))
    sections = [("trained on", trained), ("held out", heldout)]
    if "standard" not in trained and "standard" not in heldout:
        sections.insert(0, ("intact (reference)", ["standard"]))
    sections = [(title, conds) for title, conds in sections if conds]
    conds = [c for _, cs in sections for c in cs]
    n = max(1, len(views))
    fig = Figure(figsize=(max(5.0, 1.6 * len(conds) * n**0.5 + 2), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / n
    for i, (v, (_, held)) in enumerate(zip(views, lists)):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(conds))]
        ys = [v.metrics.get(f"eval/return/{c}", float("nan")) for c in conds]
        errs = [v.metrics.get(f"eval/return_std/{c}", 0.0) for c in conds]
        label = labels[i] if labels else v.name
        if "eval/retention/heldout" in v.metrics:
            label += f" (R_heldout / R_standard = {v.metrics['eval/retention/heldout']:.2f})"
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=3, color=f"C{i}", label=label)
        for bar, c, y, e in zip(bars, conds, ys, errs):
            if c in held:
                bar.set_hatch("//")
                r = v.metrics.get(f"eval/retention/{c}", float("nan"))
                ax.annotate(
                    f"{r:.2f}", (bar.get_x() + bar.get_width() / 2, max(y, 0.0) + e), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7,
                )  # fmt: skip
    ax.set_xticks(range(len(conds)), conds, rotation=20 if len(conds) > 5 else 0)
    ax.axhline(0.0, color="black", lw=0.8)
    start = 0
    for k, (title, cs) in enumerate(sections):
        if k:
            ax.axvline(start - 0.5, color="black", ls="--", lw=1)
        ax.text((start + start + len(cs) - 1) / 2, 1.01, title, transform=ax.get_xaxis_transform(), ha="center")
        start += len(cs)
    ax.set(ylabel="episode return", xlim=(-0.6, len(conds) - 0.4))
    ax.set_title("return per condition (numbers: retention R_c / R_standard)", pad=16)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1 if n > 2 else n)
    return fig
