"""The report's plots (matplotlib, Agg backend, imported only here)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from synthrec.contract import artifacts, confusion
from synthrec.contract.manifest import ClassCounts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accept_rates(per_class: list[ClassCounts], path: Path, title: str) -> None:
    plt = _pyplot()
    names = [c.name for c in per_class]
    rates = [100 * (c.accept_rate or 0.0) for c in per_class]
    kept = [100 * (c.keep_rate or 0.0) for c in per_class]
    width = min(16, max(5, 0.35 * len(names) + 2))
    fig, ax = plt.subplots(figsize=(width, 3.6), dpi=100)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], rates, width=0.4, label="passed the CLIP filter threshold")
    ax.bar([x + 0.2 for x in xs], kept, width=0.4, label="kept")
    ax.set_xticks(list(xs), names, rotation=60 if len(names) > 6 else 0, ha="right", fontsize=8)
    ax.set_ylabel("% of generated images")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_top1_vs_shots(runs: list[artifacts.RunState], path: Path, title: str) -> bool:
    """top-1 (mean over seeds, min-max bars) against shots per variant, and the zero-shot baseline."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    baseline = [r.zero_shot_top1 for r in runs if r.zero_shot_top1 is not None]
    for r in runs:
        if r.top1 is not None:
            series[r.variant or "top-1"][r.shots].append(r.top1)
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    all_shots = sorted({s for points in series.values() for s in points})
    positions = {s: i for i, s in enumerate(all_shots)}  # even spacing: shots are usually 0,1,2,4,8,16
    for name, points in sorted(series.items()):
        shots = sorted(points)
        means = [sum(points[s]) / len(points[s]) for s in shots]
        lows = [m - min(points[s]) for m, s in zip(means, shots, strict=True)]
        highs = [max(points[s]) - m for m, s in zip(means, shots, strict=True)]
        ax.errorbar(
            [positions[s] for s in shots], means, yerr=[lows, highs], marker="o", capsize=3, label=name
        )
    if baseline:
        zs = sum(baseline) / len(baseline)
        ax.axhline(zs, color="gray", linestyle="--", label=f"zero-shot CLIP ({zs:.1f}%)")
    ax.set_xticks(range(len(all_shots)), [str(s) for s in all_shots])
    ax.set_xlabel("real shots per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_transfer_vs_size(
    rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], path: Path, title: str
) -> bool:
    """Each evaluation's result against the synthetic data size, one line per initialisation (and
    objective and label space when they vary): the paper's Tables 8-11 as curves."""
    panels = [(key, label) for key, label in columns if any(r[key] is not None for r in rows)]
    sizes = sorted({r["size"] for r in rows if r["size"] is not None})
    if not panels or not sizes:
        return False
    varies = {k for k in ("objective", "label_space") if len({r[k] for r in rows}) > 1}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=100, squeeze=False)
    positions = {s: i for i, s in enumerate(sizes)}  # even spacing: 0, 1.2M, 2.4M, 3.6M
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            if r[key] is not None and r["size"] is not None:
                name = " / ".join([r["init"], *(str(r[k]) for k in sorted(varies))])
                lines[name].append((positions[r["size"]], r[key]))
        for name, points in sorted(lines.items()):
            points.sort()
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        ax.set_xticks(range(len(sizes)), [f"{s / 1e6:g}M" if s >= 100_000 else str(s) for s in sizes])
        ax.set_xlabel("synthetic images (0: no synthetic pre-training)")
        ax.set_ylabel(label.split(" by ")[0])
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="initialisation")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_curves(curves: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss per epoch of every run (per step when a run has no epochs)."""
    lines = {}
    for name, curve in curves.items():
        epochs = [e for e in curve.get("epochs") or [] if isinstance(e.get("loss"), int | float)]
        if epochs:
            lines[name] = ([e.get("epoch", i + 1) for i, e in enumerate(epochs)], [e["loss"] for e in epochs])
            continue
        steps = [s for s in curve.get("steps") or [] if isinstance(s.get("loss"), int | float)]
        if steps:
            lines[name] = ([s.get("step", i) for i, s in enumerate(steps)], [s["loss"] for s in steps])
    if not lines:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, (xs, ys) in sorted(lines.items()):
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_confusion(doc: dict[str, Any], path: Path, title: str) -> None:
    """The trained head's confusion matrix, each row as a share of that class's test images."""
    plt = _pyplot()
    names = [str(n) for n in doc["classes"]]
    matrix = confusion.dense(doc["test"], len(names))
    rows = [[100.0 * n / (sum(row) or 1) for n in row] for row in matrix]
    size = min(12, max(4, 0.32 * len(names) + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=100)
    ticks = list(range(len(names)))
    ax.set_xticks(ticks, names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="% of the true class's test images")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
