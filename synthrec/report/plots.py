"""The report's plots: matplotlib's object API (no pyplot, no GUI backend), one ``*_figure`` function per
plot that builds the figure from the report's numbers, and :func:`png` that turns it into PNG bytes."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

from synthrec.contract import confusion
from synthrec.contract.manifest import ClassCounts
from synthrec.report.images import NotKept
from synthrec.report.results import ZERO_SHOT, ResultTable

MAX_LEGEND_RUNS = 10  # beyond this many runs the loss plots colour and name lines by series, not by run
# The objectives a run records per step (synthrec.workers.tuning: TuneResult.steps) and how to title them;
# any other number a method records there gets its own axes under its own key.
OBJECTIVES = {
    "loss": "total: the weighted sum that is minimised",
    "syn": "synthetic images: soft-target (SCE) + CE",
    "real": "real shots: cross-entropy",
}
NOT_OBJECTIVES = {"step", "lr"}
EPOCH_FIELDS = {"epoch", "val_top1"}  # what else an epoch of curve.json holds


def _figure(width: float, height: float, layout: str | None = None) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def png(fig: Any) -> bytes:
    """``fig`` as PNG bytes (the report writes them through its one writer)."""
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- datasets


def accept_rates_figure(per_class: list[ClassCounts], title: str) -> Any:
    """Per class, what became of its generated images, as shares stacked to 100 %: kept (above, then below
    the threshold), passed the threshold but not kept, below it, dropped by Real Filtering, undecodable.
    The colours are the image grids' (green kept, amber passed but not kept, red below)."""
    names = [c.name for c in per_class]
    parts: dict[str, tuple[str, list[float]]] = {
        "kept, passed the threshold": ("#2e7d32", []),
        "kept, below the threshold (too few passed)": ("#9ccc65", []),
        "passed the threshold, not kept": ("#ef8f00", []),
        "below the threshold": ("#c62828", []),
        "dropped by Real Filtering": ("#757575", []),
        "undecodable": ("#bdbdbd", []),
    }
    for c in per_class:
        split = NotKept.of([c])
        share = 100.0 / c.generated if c.generated else 0.0
        counts = (
            c.kept - c.kept_below_threshold,
            c.kept_below_threshold,
            split.not_chosen,
            split.below,
            split.real_filtered,
            split.corrupt,
        )
        for (_, values), n in zip(parts.values(), counts, strict=True):
            values.append(share * n)
    fig = _figure(min(16, max(7, 0.4 * len(names) + 2)), 4.5, layout="constrained")
    ax = fig.subplots()
    xs = list(range(len(names)))
    bottom = [0.0] * len(names)
    for label, (color, values) in parts.items():
        if any(values):
            ax.bar(xs, values, bottom=bottom, width=0.7, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    slanted = len(names) > 6 or max((len(n) for n in names), default=0) > 12
    ax.set_xticks(xs, names, rotation=45 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    ax.set_ylabel("% of the class's generated images")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------- experiments


def top1_figure(table: ResultTable, title: str) -> Any | None:
    """top-1 against shots: per series the mean over seeds with a band from min to max, and zero-shot
    CLIP dashed; None when no run has a top-1 yet. Shots are evenly spaced (usually 0, 1, 2, 4, 8, 16)."""
    if not any(stats.values for cells in table.rows.values() for stats in cells.values()):
        return None
    fig = _figure(7, 4.3)
    ax = fig.subplots()
    positions = {s: i for i, s in enumerate(table.shots)}
    for name, cells in table.rows.items():
        points = [(positions[s], c) for s, c in sorted(cells.items()) if c.values]
        if not points:
            continue
        xs = [x for x, _ in points]
        means = [c.mean for _, c in points]
        if name == ZERO_SHOT:
            flat = len({round(m or 0.0, 6) for m in means}) == 1
            label = f"{ZERO_SHOT} ({means[0]:.1f}%)" if flat else ZERO_SHOT
            ax.plot(xs, means, color="0.35", linestyle="--", marker=".", label=label, zorder=1)
            continue
        (line,) = ax.plot(xs, means, marker="o", label=name, zorder=3)
        if not any(c.n > 1 for _, c in points):
            continue
        lows, highs = [c.low for _, c in points], [c.high for _, c in points]
        if len(points) > 1:
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.18, linewidth=0, zorder=2)
        else:  # a band needs two points: one number of shots gets a min-max bar
            ax.vlines(xs, lows, highs, color=line.get_color(), alpha=0.5, linewidth=6, zorder=2)
    ax.set_xticks(range(len(table.shots)), [str(s) for s in table.shots])
    ax.set_xlabel("real shots per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, title="mean over seeds, band: min to max", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def transfer_figure(
    rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], title: str
) -> Any | None:
    """Each evaluation's result (``columns``: row key, title) against the synthetic data size, one line per
    initialisation (and objective and label space when they vary): the paper's Tables 8-11 as curves.
    ``rows`` are the transfer table's (synthrec.contract.artifacts.pretrain_rows); None when no run has a
    result at a stated size yet."""
    panels = [(key, label) for key, label in columns if any(r[key] is not None for r in rows)]
    sizes = sorted({r["size"] for r in rows if r["size"] is not None})
    if not panels or not sizes:
        return None
    varies = [k for k in ("objective", "label_space") if len({r[k] for r in rows}) > 1]
    fig = _figure(5.5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    positions = {s: i for i, s in enumerate(sizes)}  # evenly spaced: 0, 1.2M, 2.4M, 3.6M
    for ax, (key, label) in zip(axes, panels, strict=True):
        lines: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r[key] is not None and r["size"] is not None:
                name = " / ".join([r["init"], *(str(r[k]) for k in varies)])
                lines.setdefault(name, []).append((positions[r["size"]], r[key]))
        for name, points in sorted(lines.items()):
            points.sort()
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        ax.set_xticks(range(len(sizes)), [f"{s / 1e6:g}M" if s >= 100_000 else str(s) for s in sizes])
        ax.set_xlabel("synthetic images (0: no synthetic pre-training)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        legend = " / ".join(["initialisation", *(k.replace("_", " ") for k in varies)])
        ax.legend(fontsize=8, title=legend, title_fontsize=8)
    fig.tight_layout()
    return fig


@dataclass
class LossCurves:
    """One run's recorded objectives against (fractional) epochs, or steps when the phases are unknown."""

    x: list[float] = field(default_factory=list)
    x_label: str = "epoch"
    objectives: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # key -> (x, value)
    validation: list[tuple[float, float]] = field(default_factory=list)  # (epoch, validation top-1)


def loss_curves(curve: dict[str, Any]) -> LossCurves:
    """The objectives of a run's curve.json (its steps: ``loss``, ``syn``, ``real``, ...), each step placed
    at its epoch through the phases' steps per epoch, so runs with different data sizes line up."""
    out = LossCurves()
    phases = [p for p in curve.get("phases") or [] if isinstance(p, dict)]
    to_epoch = _step_to_epoch(phases)
    if to_epoch is None:
        out.x_label = "step"
    for i, step in enumerate(s for s in curve.get("steps") or [] if isinstance(s, dict)):
        index = step.get("step", i)
        if not _is_number(index):
            continue
        x = to_epoch(int(index)) if to_epoch else float(index)
        for key, value in step.items():
            if key not in NOT_OBJECTIVES and _is_number(value) and math.isfinite(value):
                out.objectives.setdefault(str(key), []).append((x, float(value)))
    epochs = [e for e in curve.get("epochs") or [] if isinstance(e, dict) and _is_number(e.get("epoch"))]
    for epoch in epochs:
        if _is_number(epoch.get("val_top1")):
            out.validation.append((float(epoch["epoch"]), float(epoch["val_top1"])))
    if not out.objectives:  # no steps recorded: the per-epoch means
        out.x_label = "epoch"
        for epoch in epochs:
            for key, value in epoch.items():
                if key not in NOT_OBJECTIVES | EPOCH_FIELDS and _is_number(value) and math.isfinite(value):
                    out.objectives.setdefault(str(key), []).append((float(epoch["epoch"]), float(value)))
    return out


def _step_to_epoch(phases: list[dict[str, Any]]) -> Any | None:
    """Global step index -> epoch (the end of epoch 1 is 1.0), phases one after the other."""
    bounds = []
    start_step = start_epoch = 0
    for p in phases:
        spe, epochs = p.get("steps_per_epoch"), p.get("epochs")
        if not (isinstance(spe, int) and isinstance(epochs, int) and spe > 0):
            return None
        bounds.append((start_step, start_epoch, spe))
        start_step += spe * epochs
        start_epoch += epochs
    if not bounds:
        return None

    def to_epoch(step: int) -> float:
        first, epoch, spe = bounds[0]
        for bound in bounds:
            if step >= bound[0]:
                first, epoch, spe = bound
        return epoch + (step - first + 1) / spe

    return to_epoch


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def losses_figure(curves: dict[str, LossCurves], series: dict[str, str], title: str) -> Any | None:
    """One axes per objective (their scales and meanings differ), and the validation top-1 if any; a line
    per run, coloured per run or, beyond MAX_LEGEND_RUNS runs, per series. None when nothing was recorded."""
    keys = [k for k in OBJECTIVES if any(k in c.objectives for c in curves.values())]
    keys += sorted({k for c in curves.values() for k in c.objectives} - set(OBJECTIVES))
    panels: list[tuple[str, str]] = [(k, OBJECTIVES.get(k, k)) for k in keys]
    if any(c.validation for c in curves.values()):
        panels.append(("validation", "validation top-1 (%)"))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.4 * cols, 3.3 * rows + 0.8, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    by_run = len(curves) <= MAX_LEGEND_RUNS
    names = list(dict.fromkeys(series.get(run, run) for run in curves))
    labelled: set[str] = set()
    for i, (run, c) in enumerate(curves.items()):
        group = run if by_run else series.get(run, run)
        color = f"C{(i if by_run else names.index(group)) % 10}"
        for ax, (key, _) in zip(axes, panels, strict=False):
            points = c.validation if key == "validation" else c.objectives.get(key, [])
            if points:
                xs, ys = zip(*points, strict=True)
                label = None if group in labelled else group
                labelled.add(group)
                ax.plot(xs, ys, color=color, linewidth=1, alpha=0.85, label=label)
    x_label = next((c.x_label for c in curves.values()), "epoch")
    for ax, (key, panel_title) in zip(axes, panels, strict=False):
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("epoch" if key == "validation" else x_label)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    drawn = {}  # each run (or series) is labelled on the first axes it drew on: one entry each, in order
    for ax in axes:
        drawn.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = list(curves) if by_run else names
    labels = sorted(drawn, key=order.index)
    handles = [drawn[label] for label in labels]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(5, len(labels)),
        fontsize=7,
        title=None if by_run else "one line per run, coloured by series",
        title_fontsize=7,
    )
    return fig


def confusion_figure(doc: dict[str, Any], title: str) -> Any:
    """The trained head's confusion matrix: the test images of each cell as a number, the colour their
    share of the true class."""
    names = [str(n) for n in doc["classes"]]
    matrix = confusion.dense(doc["test"], len(names))
    shares = [[100.0 * n / (sum(row) or 1) for n in row] for row in matrix]
    size = min(12, max(4, 0.32 * len(names) + 2))
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    fontsize = 9 if len(names) <= 10 else 7 if len(names) <= 20 else 5
    for t, row in enumerate(matrix):
        for p, count in enumerate(row):
            if count:
                color = "white" if shares[t][p] > 55 else "black"
                ax.text(p, t, str(count), ha="center", va="center", fontsize=fontsize, color=color)
    ticks = list(range(len(names)))
    ax.set_xticks(ticks, names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="% of the true class's test images")
    fig.tight_layout()
    return fig
