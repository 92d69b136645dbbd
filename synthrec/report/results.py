"""An experiment's results as the paper's readers read them: per variant and shots, top-1 over the seeds
(mean, sample standard deviation, min and max), with zero-shot CLIP as its own row; and every run as a
row of ``results.csv``. The table, its CSV and the top-1 plot are all made from :func:`result_table`.

A run's curve (its row of the table) is named by :func:`series_of` alone, from the run's own fields, so
new variants and methods get their row and their curve without changes here.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from synthrec.contract import artifacts
from synthrec.contract.layout import ExperimentLayout

ZERO_SHOT = "zero-shot CLIP"
# Without matrix.variants every run is one series, named as the paper names Classifier Tuning's settings.
WITH_SYNTHETIC = "CT w. Syn"
REAL_ONLY = "CT w. init"


def series_of(run: artifacts.RunState) -> str:
    """The row of the table and the curve of the plot a run belongs to: its variant, else the method."""
    if run.variant:
        return run.variant
    return WITH_SYNTHETIC if run.run.synthetic else REAL_ONLY


@dataclass(frozen=True)
class Stats:
    """top-1 of the runs of one cell (one series at one number of shots) over their seeds."""

    values: tuple[float, ...]
    planned: int  # runs of this cell in the matrix, done or not

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); None below two values."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None


@dataclass
class ResultTable:
    shots: list[int]  # the columns, ascending
    rows: dict[str, dict[int, Stats]] = field(default_factory=dict)  # zero-shot CLIP first, then matrix order

    @property
    def series(self) -> list[str]:
        """The rows other than zero-shot CLIP."""
        return [name for name in self.rows if name != ZERO_SHOT]


def selected_top1(run: artifacts.RunState, best_validation: bool) -> float | None:
    """The run's reported top-1, or with ``best_validation`` its best-validation model's where it has one
    (a run without a validation set, zero-shot CLIP or training-free Tip-Adapter has only one model)."""
    if best_validation and run.top1_best_validation is not None:
        return run.top1_best_validation
    return run.top1


def result_table(runs: list[artifacts.RunState], *, best_validation: bool = False) -> ResultTable:
    """Each series' top-1 per shots over its finished runs, and zero-shot CLIP's as every run measured it.

    Zero-shot CLIP does not depend on the shots or the seed; each column shows what that column's runs
    measured, so a difference between columns (another test split) would show rather than be averaged.
    ``best_validation``: the best-validation models' top-1 (:func:`selected_top1`) instead.
    """
    shots = sorted({r.shots for r in runs})
    planned: dict[tuple[str, int], int] = {}
    values: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        for name, value in ((series_of(r), selected_top1(r, best_validation)), (ZERO_SHOT, r.zero_shot_top1)):
            key = (name, r.shots)
            planned[key] = planned.get(key, 0) + 1
            values.setdefault(key, [])
            if r.done and value is not None:
                values[key].append(value)
    names = [ZERO_SHOT, *dict.fromkeys(series_of(r) for r in runs)]  # variants are DNS labels: no clash
    table = ResultTable(shots)
    for name in names:
        cells = {
            s: Stats(tuple(values[(name, s)]), planned[(name, s)]) for s in shots if (name, s) in planned
        }
        if name != ZERO_SHOT or any(c.values for c in cells.values()):
            table.rows[name] = cells
    return table


# ------------------------------------------------------------------------------------------------- CSV

RESULTS_CSV = "results.csv"  # every run of every experiment in the report
TABLE_CSV = "table.csv"  # the table: per experiment, series and shots, top-1 over seeds

RESULT_FIELDS = (
    "experiment",
    "run",
    "series",
    "variant",
    "method",
    "shots",
    "seed",
    "state",
    "top1",
    "top1_last",
    "top1_best_validation",
    "best_validation_epoch",
    "zero_shot_top1",
    "change",
    "validation_top1",
    "selection",
    "selected_epoch",
    "trained",
    "lr",
    "epochs_run",
    "synthetic_images",
    "real_images",
    "test_images",
    "tensorboard",
    "metrics",
)
TABLE_FIELDS = ("experiment", "series", "shots", "runs_done", "runs_planned", "mean", "std", "min", "max")


TRANSFER_CSV = "transfer.csv"  # every pre-training run of every experiment with its transfer results
TRANSFER_FIELDS = (
    "experiment",
    "run",
    "objective",
    "label_space",
    "size",
    "init",
    "seed",
    "stage",
    "state",
    "pretrain_steps",
    "pretrain_loss",
    "classification_top1",
    "linear_probe_top1",
    "ap50",
)


def transfer_rows(experiment: str, state: artifacts.ExperimentState) -> list[dict[str, Any]]:
    """The transfer table (artifacts.pretrain_rows) as rows of transfer.csv: sizes as numbers (empty:
    all images), percentages unrounded."""
    return [
        {"experiment": experiment, "run": row["name"], **{k: row[k] for k in TRANSFER_FIELDS[2:]}}
        for row in artifacts.pretrain_rows(state)
    ]


def run_state(run: artifacts.RunState) -> str:
    if run.done:
        return "done"
    return "stale" if run.stale else "not done"


def tensorboard_dir(run: artifacts.RunState) -> str | None:
    """Where the run's TensorBoard event file went (metrics.json ``tracking``), or None."""
    value = run.metrics.tracking.get("tensorboard") if run.metrics else None
    return value if isinstance(value, str) and value else None


def result_rows(
    experiment: artifacts.FoundResource, state: artifacts.ExperimentState
) -> list[dict[str, Any]]:
    """One row per run, with the numbers of its metrics.json as they are stored."""
    rows = []
    for r in state.runs:
        m = r.metrics
        change = None if r.top1 is None or r.zero_shot_top1 is None else r.top1 - r.zero_shot_top1
        rows.append(
            {
                "experiment": experiment.name,
                "run": r.name,
                "series": series_of(r),
                "variant": r.variant,
                "method": r.method,
                "shots": r.shots,
                "seed": r.seed,
                "state": run_state(r),
                "top1": r.top1,
                "top1_last": r.top1_last,
                "top1_best_validation": r.top1_best_validation,
                "best_validation_epoch": m.best_validation_epoch if m else None,
                "zero_shot_top1": r.zero_shot_top1,
                "change": change,
                "validation_top1": m.validation_top1 if m else None,
                "selection": m.selection if m else None,
                "selected_epoch": m.selected_epoch if m else None,
                "trained": m.trained if m else None,
                "lr": m.lr if m else r.run.classifier_tuning.lr,
                "epochs_run": m.epochs_run if m else None,
                "synthetic_images": m.counts.synthetic if m else None,
                "real_images": m.counts.real_train if m else None,
                "test_images": m.counts.test if m else None,
                "tensorboard": tensorboard_dir(r),
                "metrics": experiment.storage.url(ExperimentLayout.run_metrics(r.name)) if m else None,
            }
        )
    return rows


def table_rows(experiment: str, table: ResultTable) -> list[dict[str, Any]]:
    return [
        {
            "experiment": experiment,
            "series": name,
            "shots": shots,
            "runs_done": stats.n,
            "runs_planned": stats.planned,
            "mean": stats.mean,
            "std": stats.std,
            "min": stats.low,
            "max": stats.high,
        }
        for name, cells in table.rows.items()
        for shots, stats in sorted(cells.items())
    ]


# A text cell starting with one of these is a formula to a spreadsheet (CSV injection): names, messages and
# URIs come from users' specs and storage, and a report is opened by people who did not write them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: None is empty, numbers stay numbers, text a spreadsheet would run as a formula
    is prefixed with ``'`` (OWASP's advice), so it shows as the text it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(fields: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> str:
    """RFC 4180 CSV with a header; None is an empty cell, floats keep their full precision, formula-like
    text is defused (:func:`csv_cell`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return out.getvalue()
