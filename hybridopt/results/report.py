"""What a run shows when it ends, and ``hybridopt report``: a ranked table and the figures.

The figures of a search: ``search_progress.png`` (best and mean fitness per generation, and the
best against CPU time), ``candidates.png`` (every candidate, coloured by rule family),
``fitness_by_family.png`` and ``summary.html`` (the progress figure as SVG, the best genome, the
ten best candidates), which opens in the MLflow artifact viewer.  A train run's:
``learning_curves.png``, and for control tasks ``returns_by_condition.png`` (the return per
condition, trained-on and held-out apart, with each held-out condition's retention), which a
search of a control task draws for its best candidate and ``hybridopt report`` for several runs
or searches side by side.
"""

from __future__ import annotations

import csv
import html
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from hybridopt.results import plots
from hybridopt.results.store import SearchView, TrainView, find
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.outcome import test_line
from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.stored_names import ARTIFACT_SUMMARY, TAG_COMMAND

__all__ = ["best_run", "figures", "log_figures", "log_figures_safely", "search_table", "summary_html", "write_report"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def search_table(view: SearchView, wide: bool = True) -> list[dict[str, str]]:
    """Candidates best first: their label, the genes that differ between candidates (a column
    each, or with ``wide=False`` one short column), fitness, status, rung, whose state it
    started from, wall and CPU seconds, and (where the runs say) the node that trained it."""
    nodes = any(c.node for c in view.candidates)
    varying = [g for g in view.genes if len({repr(c.genome.get(g)) for c in view.candidates}) > 1]
    labels = {c.run_id: c.label for c in view.candidates}
    rows = []
    for c in view.ranked():
        row = {"candidate": c.label}
        if wide:
            row.update({GenomeSpace.short_name(g): _fmt(c.genome.get(g, "")) for g in varying})
        else:
            row["genes that differ"] = GenomeSpace.describe({g: c.genome[g] for g in varying if g in c.genome})
        row["fitness"] = "-" if c.fitness is None else f"{c.fitness:.4f}"
        row["status"] = c.status
        row["rung"] = str(c.rung)
        row["from"] = labels.get(c.inherited_from or "", "") if c.inherited_from else ""
        row["wall s"] = f"{c.wall_s:.1f}"
        row["CPU s"] = f"{c.cpu_s:.1f}"
        if nodes:
            row["node"] = c.node
        rows.append(row)
    return rows


def _has_returns(view: TrainView) -> bool:
    return any(k.startswith("eval/return/") for k in view.metrics)


def best_run(uri: str, view: SearchView) -> TrainView | None:
    """The run of a search's best candidate, where it evaluated returns per condition."""
    if view.best is None:
        return None
    try:
        (run,) = find(uri, view.best.run_id)
    except LookupError:  # deleted from the store since
        return None
    return run if isinstance(run, TrainView) and _has_returns(run) else None


def figures(view: SearchView | TrainView, uri: str | None = None) -> dict[str, Figure]:
    """The figures of one search or train run, by file name (with ``uri``, a search's returns
    per condition: its best candidate's)."""
    if isinstance(view, SearchView):
        out = {
            "search_progress.png": plots.search_progress([view]),
            "candidates.png": plots.candidates_by_family(view),
            "fitness_by_family.png": plots.fitness_by_family(view),
        }
        best = best_run(uri, view) if uri is not None else None
        if best is not None:
            out["returns_by_condition.png"] = plots.returns_by_condition([best], [f"best: {best.name}"])
        return out
    out = {"learning_curves.png": plots.learning_curves(view)}
    if _has_returns(view):
        out["returns_by_condition.png"] = plots.returns_by_condition([view])
    return out


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def summary_html(view: SearchView, figs: dict[str, Figure]) -> str:
    """One self-contained page: what was searched, the best genome, progress and candidates as
    SVG, and the ten best candidates."""
    best = view.best
    rows = search_table(view)[:10]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    genome = GenomeSpace.describe(best.genome) if best else "none finished"
    fitness = f"{best.fitness:.4f}" if best and best.fitness is not None else "-"
    command = view.tags.get(TAG_COMMAND, "")
    genes = html.escape(", ".join(view.genes))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(view.name)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} svg{{max-width:100%;height:auto}}</style>
</head><body>
<h2>{html.escape(view.experiment)}: {html.escape(view.name)}</h2>
<p>Status {html.escape(view.status)}; {len(view.candidates)} candidates; searched: {genes}.</p>
<p><b>Best</b> ({fitness}): {html.escape(genome)}</p>
<p><b>Result</b>: {html.escape(search_test_line(view) or "not measured on test episodes")}</p>
{f"<p>Reproduce: <code>{html.escape(command)}</code></p>" if command else ""}
{_svg(figs["search_progress.png"])}
{_svg(figs["candidates.png"])}
<h3>The ten best candidates</h3>
<table><tr>{head}</tr>{body}</table>
</body></html>
"""


def log_figures(tracker: Any, run_id: str) -> list[str]:
    """Draw a finished search or train run from the store and log its figures to it; returns
    the artifact names."""
    (view,) = find(tracker.uri, run_id)
    figs = figures(view, tracker.uri)
    out = []
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        tracker.log_artifact_bytes(run_id, name, buf.getvalue())
        out.append(name)
    if isinstance(view, SearchView):
        tracker.log_artifact_bytes(run_id, ARTIFACT_SUMMARY, summary_html(view, figs).encode())
        out.append(ARTIFACT_SUMMARY)
    return out


def placement(view: TrainView) -> str:
    """Where a run's network is plastic: ``static``, or ``input:stdp/neuromodulated`` and the like."""
    parts = []
    for proj in PROJECTIONS:
        rule = view.params.get(f"plasticity.{proj}.rule", "none")
        if rule != "none":
            parts.append(f"{proj}:{rule}/{view.params.get(f'plasticity.{proj}.modulation', 'plain')}")
    return " + ".join(parts) or "static"


def _label(view: SearchView | TrainView, views: Sequence[SearchView | TrainView]) -> str:
    """A short name that tells several runs apart: the placement of a train run, the experiment
    of a search, or the run when one experiment holds several."""
    if isinstance(view, TrainView):
        short = view.name if len(view.name) <= 24 else view.name[-15:]  # a default name ends in its time
        return f"{placement(view)} ({short})"
    if len({v.experiment for v in views}) > 1:
        return (
            view.experiment
            if sum(v.experiment == view.experiment for v in views) == 1
            else f"{view.experiment}/{view.name}"
        )
    return view.name


def write_report(uri: str, targets: Sequence[str], out: Path, csv_path: Path | None = None) -> list[Any]:
    """Read ``targets`` (experiments or run ids) from ``uri``; write every figure of each, and
    the comparison figures when there are several, to ``out``; with ``csv_path``, the ranked
    candidates of every search as one CSV.  Returns the views read."""
    views: list[SearchView | TrainView] = []
    for t in targets:
        views += find(uri, t)
    out.mkdir(parents=True, exist_ok=True)
    for v in views:
        figs = figures(v, uri)
        stem = f"{v.experiment}__{v.name}".replace("/", "_").replace(" ", "_")
        for name, fig in figs.items():
            fig.savefig(out / f"{stem}__{name}", dpi=110)
        if isinstance(v, SearchView):
            (out / f"{stem}__summary.html").write_text(summary_html(v, figs))
    searches = [v for v in views if isinstance(v, SearchView)]
    trains = [v for v in views if isinstance(v, TrainView)]
    if len(searches) > 1:
        plots.search_progress(searches, [_label(v, searches) for v in searches]).savefig(
            out / "comparison__search_progress.png", dpi=110
        )
    returns = [v for v in trains if _has_returns(v)]
    labels = [_label(v, returns) for v in returns]
    for search in searches:  # a search by its best candidate
        best = best_run(uri, search)
        if best is not None:
            returns.append(best)
            labels.append(f"{_label(search, searches)}: best")
    if len(returns) > 1:
        plots.returns_by_condition(returns, labels).savefig(out / "comparison__returns_by_condition.png", dpi=110)
    if csv_path is not None:
        rows = [{"experiment": s.experiment, "search": s.name, **r} for s in searches for r in search_table(s)]
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return views


def search_test_line(view: SearchView) -> str:
    """The search's result: its winner on reserved test episodes, and the selection figure."""
    last = {k: h[-1][1] for k, h in view.generations.items() if k.startswith("test/") and h}
    best = view.generations.get("best_fitness", [])
    selection = f"selection fitness {best[-1][1]:.4f}" if best else ""
    return "; ".join(x for x in (test_line(last), selection) if x)


def train_summary(view: TrainView) -> dict[str, str]:
    """A train run's closing numbers for the terminal."""
    keys = ("fitness", "eval/accuracy", "test/accuracy", "test/accuracy_se", "test/chance", "test/observer")
    keys += ("eval/return/standard", "cpu_time_s", "train_steps")
    return {k: _fmt(view.metrics[k]) for k in keys if k in view.metrics and math.isfinite(view.metrics[k])}


def log_figures_safely(tracker: Any, run_id: str) -> None:
    """The search's figures and summary page as artifacts of its parent run.  A figure that cannot
    be drawn costs a warning, never the search's result (already recorded)."""
    try:
        log_figures(tracker, run_id)
    except Exception as e:  # noqa: BLE001 - plotting must not lose a finished search
        warnings.warn(f"figures of run {run_id} not drawn: {type(e).__name__}: {e}", stacklevel=2)
