"""What a researcher reads in the report, checked against the artifacts it was built from: the images the
CLIP filter did not keep, split into those below the threshold and those that passed but were not drawn;
top-1 over seeds per variant and shots (table, CSV, plot); every run in a CSV with its TensorBoard log
dir; numbers in the confusion matrix; each training objective on its own axes; a report folder that
others on a shared filesystem can open."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

from synthrec.contract import artifacts, confusion
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.report import build_report
from synthrec.report.plots import (
    accept_rates_figure,
    confusion_figure,
    loss_curves,
    losses_figure,
    top1_figure,
)
from synthrec.report.results import result_table
from synthrec.storage import FileStorage, open_storage, write_marker
from tests.harness.artifacts import dataset_manifest, run_metrics, write_dataset_spec, write_experiment_spec

# ------------------------------------------------------------------------------------------ reading HTML


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, keyed by the <h3> before it."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._heading: str | None = None
        self._text: list[str] | None = None
        self._rows: list[list[str]] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h3":
            self._heading, self._text = "", []
        elif tag == "table" and self._heading is not None:
            self._rows = self.tables.setdefault(self._heading, [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._text = []
        elif tag == "br" and self._text is not None:
            self._text.append(" / ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._text is not None:
            self._heading, self._text = "".join(self._text).strip(), None
        elif tag == "table":
            self._rows = None
        elif tag in ("td", "th") and self._rows is not None and self._text is not None:
            self._rows[-1].append("".join(self._text).strip())
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# -------------------------------------------------------------------------------------------- a dataset

CLASSES = ["cat", "dog"]
THRESHOLD = 0.5  # 1/C
# Five images per class, K = 2. cat: 0.90 and 0.61 drawn, 0.67 and 0.59 passed but were not drawn, 0.30 is
# below. dog: only 0.80 passes, so the top two are kept, 0.45 below the threshold; 0.20, 0.10, 0.05 below.
SCORES = {0: [0.90, 0.67, 0.61, 0.59, 0.30], 1: [0.80, 0.45, 0.20, 0.10, 0.05]}
KEPT = {0: [0, 2], 1: [0, 1]}


def jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 80, 160)).save(out, format="JPEG")
    return out.getvalue()


def write_dataset(root: Path) -> None:
    storage = FileStorage(root)
    spec = {"labels": {"classes": [{"name": c} for c in CLASSES]}, "generator": {"model": "hf://org/sd"}}
    hashes = write_dataset_spec(storage, "pets", {**spec, "filter": {"keepPerClass": 2}})
    keys = [f"c{c:05d}-p00000-i{i:05d}" for c in SCORES for i in range(5)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n, key in enumerate(keys):
            for name, data in ((f"{key}.jpg", jpeg(n * 10)), (f"{key}.json", b'{"prompt": "p"}')):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(DatasetLayout.shard(0), buf.getvalue())
    write_marker(storage, DatasetLayout.shard_marker(0), spec_hash=hashes["generate"])
    probs = np.array([[s, 1 - s] if c == 0 else [1 - s, s] for c in SCORES for s in SCORES[c]], np.float32)
    labels = np.array([c for c in SCORES for _ in range(5)], dtype=np.int64)
    data = save({"probs": probs, "class_index": labels}, metadata={"keys": json.dumps(keys)})
    storage.write_bytes(DatasetLayout.features(0), data)
    write_marker(storage, DatasetLayout.features_marker(0), spec_hash=hashes["filter"])
    kept = [
        {"shard": 0, "key": keys[5 * c + i], "class": c, "score": SCORES[c][i], "passed": SCORES[c][i] > 0.5}
        for c in SCORES
        for i in KEPT[c]
    ]
    storage.write_bytes(DatasetLayout.index, "".join(json.dumps(k) + "\n" for k in kept).encode())
    per_class = [
        {"index": 0, "name": "cat", "generated": 5, "corrupt": 0, "passed": 4, "kept": 2},
        {"index": 1, "name": "dog", "generated": 5, "corrupt": 0, "passed": 1, "kept": 2},
    ]
    per_class[0]["kept_below_threshold"], per_class[1]["kept_below_threshold"] = 0, 1
    manifest = dataset_manifest(
        hashes["reduce"],
        CLASSES,
        generated=5,
        passed=0,
        kept=2,
        per_class=per_class,
        filter={
            "enabled": True,
            "seed": 0,
            "threshold": THRESHOLD,
            "threshold_rule": "1/C",
            "keep_per_class": 2,
            "selection": "random",
        },
    )
    manifest.counts.passed = 5
    storage.write_json(DatasetLayout.manifest, manifest.document())


def grid_scores(page: str) -> dict[str, dict[str, list[str]]]:
    """Per class heading, the scores shown in each group: k (kept), nc (passed, not kept), b (below)."""
    section = page.split("Kept and not kept images")[1]
    out = {}
    for block in section.split("<h4>")[1:]:
        name = block.split("<", 1)[0]
        groups: dict[str, list[str]] = {"k": [], "nc": [], "b": []}
        for css, score in re.findall(r"<figure class='(\w+)'>.*?<span class='score'>([\d.]+)</span>", block):
            groups[css].append(score)
        out[name] = groups
    return out


def test_not_kept_images_are_shown_and_counted_apart_below_the_threshold_and_passed_but_not_drawn(
    tmp_path: Path,
) -> None:
    write_dataset(tmp_path)
    page = Path(build_report(tmp_path.as_uri(), out=str(tmp_path / "out"))).read_text()
    assert grid_scores(page) == {
        "cat ": {"k": ["0.90", "0.61"], "nc": ["0.67", "0.59"], "b": ["0.30"]},
        "dog ": {"k": ["0.80", "0.45"], "nc": [], "b": ["0.20", "0.10", "0.05"]},
    }
    assert "cat <span class='note'>2 kept, 2 passed but not kept, 1 below the threshold</span>" in page
    assert "dog <span class='note'>2 kept, 0 passed but not kept, 3 below the threshold</span>" in page
    # the dog image kept below the threshold (too few passed) says so
    dog = page.split("<h4>dog")[1]
    assert re.search(r"0\.45</span> <span class='note'>\(below the threshold\)", dog)
    rates = Tables(page).tables["Accept rates per class"]
    assert rates[0] == [
        "class",
        "generated",
        "passed",
        "kept",
        "passed, not kept",
        "below the threshold",
        "accept rate",
        "keep rate",
    ]
    assert [row[:6] for row in rates[1:]] == [
        ["cat", "5", "4", "2", "2", "1"],
        ["dog", "5", "1", "2", "0", "3"],
    ]
    assert "Not kept: <b>2 passed the threshold but were not among the kept</b>, " in page
    assert "<b>4 were below the threshold</b>" in page and "1 of them below the threshold" in page


def test_the_per_class_plot_stacks_kept_passed_but_not_kept_and_below_the_threshold(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    manifest = artifacts.find_resources(tmp_path.as_uri())[0].dataset_state().manifest
    assert manifest is not None
    ax = accept_rates_figure(manifest.per_class, "pets").axes[0]
    bars = {bar.get_label(): [round(p.get_height(), 6) for p in bar] for bar in ax.containers}
    assert bars == {  # cat, dog: 5 images each
        "kept, passed the threshold": [40.0, 20.0],
        "kept, below the threshold (too few passed)": [0.0, 20.0],
        "passed the threshold, not kept": [40.0, 0.0],
        "below the threshold": [20.0, 60.0],
    }


# ----------------------------------------------------------------------------------------- experiments

VARIANTS = ["ct-init", "tip-adapter", "tip-adapter-f", "coop", "ct-syn"]  # Figure 1's five methods
SHOTS = [0, 1, 4]
SEEDS = [1, 2, 3]
ZERO_SHOT_TOP1 = 45.0


def top1_of(shots: int, seed: int, variant: str) -> float:
    """Distinct numbers per cell, a spread over seeds that grows with the shots."""
    return 40.0 + 5 * VARIANTS.index(variant) + 2 * shots + (seed - 2) * (1 + shots) + 0.25 * seed


def write_experiment(
    root: Path,
    *,
    missing: str | None = None,
    tracking: str | None = None,
    shots: list[int] = SHOTS,
    also_logged: dict[str, Any] | None = None,
    best_validation: bool = False,
) -> list[str]:
    """An experiment of VARIANTS x shots x SEEDS; the run ``missing`` is not done. Returns the run names.
    With ``best_validation`` every run but Tip-Adapter's also reports a best-validation model, 1.0 better."""
    storage = FileStorage(root)
    data = {
        "synthetic": [{"datasetRef": "pets"}],
        "realTrain": {"uri": "file:///r/"},
        "test": {"uri": "file:///t/"},
    }
    spec = {
        "labels": {"classes": [{"name": c} for c in CLASSES]},
        "data": data,
        "matrix": {"shots": shots, "seeds": SEEDS, "variants": [{"name": v} for v in VARIANTS]},
    }
    runs = write_experiment_spec(storage, "fig1", spec)
    for run in runs:
        if run.name == missing:
            continue
        assert run.variant is not None
        extra: dict[str, Any] = {}
        top1 = top1_of(run.shots, run.seed, run.variant)
        if best_validation and run.variant != "tip-adapter":
            extra.update(top1_last=top1, top1_best_validation=top1 + 1.0, best_validation_epoch=2)
        if tracking:
            tensorboard = f"{tracking}runs/{run.name}/tensorboard"
            extra["tracking"] = {"tensorboard": tensorboard, **(also_logged or {})}
        metrics = run_metrics(
            run.name,
            top1=top1,
            zero_shot_top1=ZERO_SHOT_TOP1,
            classes=CLASSES,
            shots=run.shots,
            seed=run.seed,
            variant=run.variant,
            **extra,
        )
        storage.write_json(ExperimentLayout.run_metrics(run.name), metrics.document())
        write_marker(storage, ExperimentLayout.run_marker(run.name), spec_hash="h")
    return [r.name for r in runs]


def test_the_seeds_table_has_mean_std_min_max_per_variant_and_shots_with_a_zero_shot_row(
    tmp_path: Path,
) -> None:
    write_experiment(tmp_path / "experiments" / "fig1", missing="shots4-seed3-coop")
    page = Path(build_report(tmp_path.as_uri())).read_text()
    tables = Tables(page).tables
    table = tables["Top-1 over seeds"]
    assert "Top-1 over seeds, best-validation models" not in tables  # no run had a validation set
    assert table[0] == ["top-1 (%)", "0 shots", "1 shot", "4 shots"]
    assert [row[0] for row in table[1:]] == ["zero-shot CLIP", *VARIANTS]
    assert table[1][1:] == ["45.0 ± 0.0 / 45.0–45.0, n=15"] * 2 + ["45.0 ± 0.0 / 45.0–45.0, n=14 of 15"]
    # ct-syn at 4 shots: 40 + 20 + 8 + {-5, 0, 5} + {0.25, 0.5, 0.75} = 63.25, 68.5, 73.75
    assert table[6][3] == "68.5 ± 5.2 / 63.2–73.8, n=3"  # sample std: 5.25, rounded half to even
    # coop at 4 shots without its seed-3 run: 40 + 15 + 8 + {-5, 0} + {0.25, 0.5} = 58.25, 63.5
    assert table[5][3] == "60.9 ± 3.7 / 58.2–63.5, n=2 of 3"


def test_runs_with_a_validation_set_show_the_last_and_the_best_validation_model_in_tables_csv_and_plot(
    tmp_path: Path,
) -> None:
    root = tmp_path / "experiments" / "fig1"
    write_experiment(root, missing="shots4-seed3-coop", best_validation=True)
    out = Path(build_report(tmp_path.as_uri())).parent
    tables = Tables((out / "index.html").read_text()).tables
    runs = tables["All runs"]
    assert runs[0][3:8] == ["variant", "method", "top-1", "last epoch", "best validation"]
    row = {r[0]: r for r in runs[1:]}
    assert row["shots4-seed2-ct-syn"][4:8] == ["classifier-tuning", "68.5%", "68.5%", "69.5%"]
    assert row["shots4-seed2-tip-adapter"][5:8] == ["53.5%", "-", "-"]  # one model
    # the best-validation table: every cell 1.0 higher, except Tip-Adapter's, which has one model
    selected, best = tables["Top-1 over seeds"], tables["Top-1 over seeds, best-validation models"]
    assert best[0] == selected[0] and best[1] == selected[1]  # zero-shot CLIP
    assert best[6][3] == "69.5 ± 5.2 / 64.2–74.8, n=3" and selected[6][3].startswith("68.5 ± 5.2")
    assert best[3] == selected[3]  # tip-adapter
    assert (out / "plots" / "fig1-top1-best-validation-vs-shots.png").is_file()
    storage = FileStorage(root)
    for r in read_csv(out / "results.csv"):
        if r["state"] != "done":
            continue
        metrics = storage.read_json(ExperimentLayout.run_metrics(r["run"]))
        assert r["method"] == "classifier-tuning"
        if r["variant"] == "tip-adapter":
            assert r["top1_last"] == r["top1_best_validation"] == r["best_validation_epoch"] == ""
        else:
            assert float(r["top1_last"]) == metrics["top1"] == float(r["top1"])
            assert float(r["top1_best_validation"]) == metrics["top1_best_validation"]
            assert r["best_validation_epoch"] == "2"


def test_table_csv_and_results_csv_hold_every_number_of_the_runs_metrics(tmp_path: Path) -> None:
    root = tmp_path / "experiments" / "fig1"
    names = write_experiment(root, missing="shots4-seed3-coop", tracking=root.as_uri() + "/")
    out = Path(build_report(tmp_path.as_uri())).parent
    assert "href='results.csv'" in (out / "index.html").read_text()
    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == names
    storage = FileStorage(root)
    for row in rows:
        if row["run"] == "shots4-seed3-coop":
            assert row["state"] == "not done" and row["top1"] == "" and row["tensorboard"] == ""
            continue
        metrics = storage.read_json(ExperimentLayout.run_metrics(row["run"]))
        assert row["state"] == "done" and row["experiment"] == "fig1"
        assert (
            float(row["top1"]) == metrics["top1"]
            and float(row["zero_shot_top1"]) == metrics["zero_shot_top1"]
        )
        assert float(row["change"]) == pytest.approx(metrics["top1"] - metrics["zero_shot_top1"])
        assert (row["series"], int(row["shots"]), int(row["seed"])) == (
            metrics["variant"],
            metrics["shots"],
            metrics["seed"],
        )
        assert row["tensorboard"] == metrics["tracking"]["tensorboard"]
        assert row["metrics"] == storage.url(ExperimentLayout.run_metrics(row["run"]))
    table = {(r["series"], int(r["shots"])): r for r in read_csv(out / "table.csv")}
    assert len(table) == (1 + len(VARIANTS)) * len(SHOTS)
    for variant in VARIANTS:
        for shots in SHOTS:
            seeds = [s for s in SEEDS if (shots, s, variant) != (4, 3, "coop")]
            values = np.array([top1_of(shots, s, variant) for s in seeds])
            cell = table[variant, shots]
            assert (int(cell["runs_done"]), int(cell["runs_planned"])) == (len(seeds), 3)
            assert float(cell["mean"]) == pytest.approx(values.mean())
            assert float(cell["std"]) == pytest.approx(values.std(ddof=1))
            assert (float(cell["min"]), float(cell["max"])) == (values.min(), values.max())
    assert float(table["zero-shot CLIP", 1]["mean"]) == ZERO_SHOT_TOP1


def test_the_top1_plot_draws_one_curve_per_variant_with_a_min_max_band_over_seeds(tmp_path: Path) -> None:
    write_experiment(tmp_path)
    found = artifacts.find_resources(tmp_path.as_uri())
    fig = top1_figure(result_table(found[0].experiment_state().runs), "fig1")
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert list(curves) == [f"zero-shot CLIP ({ZERO_SHOT_TOP1:.1f}%)", *VARIANTS]
    assert list(curves["zero-shot CLIP (45.0%)"].get_ydata()) == [ZERO_SHOT_TOP1] * 3
    bands = ax.collections
    assert len(bands) == len(VARIANTS)
    for variant, band in zip(VARIANTS, bands, strict=True):
        line = curves[variant]
        assert list(line.get_xdata()) == [0, 1, 2]  # shots evenly spaced
        per_shots = [[top1_of(s, seed, variant) for seed in SEEDS] for s in SHOTS]
        assert list(line.get_ydata()) == pytest.approx([np.mean(v) for v in per_shots])
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(min(per_shots[0])) and ys.max() == pytest.approx(max(per_shots[2]))
        assert band.get_facecolor()[0][:3] == pytest.approx(_rgb(line.get_color()))


def test_a_single_number_of_shots_gets_a_min_max_bar_per_variant(tmp_path: Path) -> None:
    write_experiment(tmp_path, shots=[0])  # the zero-shot setting of Table 1
    found = artifacts.find_resources(tmp_path.as_uri())
    ax = top1_figure(result_table(found[0].experiment_state().runs), "table1").axes[0]
    bars = ax.collections
    assert len(bars) == len(VARIANTS)
    for variant, bar in zip(VARIANTS, bars, strict=True):
        (segment,) = bar.get_segments()
        values = [top1_of(0, seed, variant) for seed in SEEDS]
        assert [tuple(p) for p in segment] == [(0, min(values)), (0, max(values))]


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_each_run_shows_its_tensorboard_log_dir_and_the_command_for_the_experiment(
    tmp_path: Path, where: str
) -> None:
    local = tmp_path / "experiments" / "fig1"
    root = local.as_uri() + "/" if where == "file" else "s3://bucket/experiments/fig1/"
    write_experiment(local, tracking=root)
    out = Path(build_report(tmp_path.as_uri()))
    page = out.read_text()
    runs = Tables(page).tables["All runs"]
    assert runs[0][-1] == "logs" and len(runs) == 1 + len(VARIANTS) * len(SHOTS) * len(SEEDS)
    for row in runs[1:]:
        assert row[-1] == f"TensorBoard: {root}runs/{row[0]}/tensorboard"
    assert f"<code>tensorboard --logdir {local.as_uri()}/runs</code>" in page
    # the log dirs are shown to copy: the page links only to files beside it, from file:// or a bucket
    refs = re.findall(r"(?:src|href)='([^'#][^']*)'", page)
    assert refs and all((out.parent / ref).is_file() for ref in refs)


def test_a_run_links_its_wandb_and_mlflow_runs_and_never_a_script(tmp_path: Path) -> None:
    logged = {
        "wandb": {"project": "p", "id": "abc", "url": "https://wandb.ai/team/p/runs/abc"},
        "mlflow": {"tracking_uri": "http://mlflow:5000/", "experiment_id": "7", "run_id": "r1"},
    }
    write_experiment(tmp_path, tracking=tmp_path.as_uri() + "/", also_logged=logged)
    page = Path(build_report(tmp_path.as_uri(), out=str(tmp_path / "out"))).read_text()
    assert page.count(">W&amp;B run</a>") == len(VARIANTS) * len(SHOTS) * len(SEEDS)
    assert "<a href='https://wandb.ai/team/p/runs/abc'" in page
    assert "<a href='http://mlflow:5000/#/experiments/7/runs/r1'" in page
    logged = {
        "wandb": {"url": "javascript:alert(1)"},
        "mlflow": {"tracking_uri": "file:///m", "run_id": "r2"},
    }
    write_experiment(tmp_path, tracking=tmp_path.as_uri() + "/", also_logged=logged)
    page = Path(build_report(tmp_path.as_uri(), out=str(tmp_path / "out"))).read_text()
    assert "href='javascript" not in page and "<code>javascript:alert(1)</code>" in page
    assert "MLflow run <code>r2</code> at <code>file:///m</code>" in page


def test_a_report_on_s3_carries_its_csv_files(tmp_path: Path, s3_bucket: Any) -> None:
    write_experiment(tmp_path)
    build_report(tmp_path.as_uri(), out=s3_bucket.uri + "r/")
    storage = open_storage(s3_bucket.uri + "r/")
    keys = {info.key for info in storage.list()}
    assert {"index.html", "results.csv", "table.csv"} <= keys
    assert len(read_csv_bytes(storage.read_bytes("results.csv"))) == len(VARIANTS) * len(SHOTS) * len(SEEDS)


def read_csv_bytes(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


# ------------------------------------------------------------------------------------------------ plots


def test_the_confusion_matrix_shows_the_count_of_each_cell() -> None:
    doc = confusion.document(["a", "b", "c"], [[7, 3, 0], [0, 10, 0], [1, 0, 12]], [[0] * 3] * 3)
    ax = confusion_figure(doc, "run").axes[0]
    cells = sorted((int(t.get_position()[1]), int(t.get_position()[0]), t.get_text()) for t in ax.texts)
    assert cells == [(0, 0, "7"), (0, 1, "3"), (1, 1, "10"), (2, 0, "1"), (2, 2, "12")]


def curve(real: float, syn: float) -> dict[str, Any]:
    """Two phases (3 epochs of 2 steps, then 1 epoch of 4 steps), every step recorded."""
    steps = [
        {"step": i, "lr": 0.1, "syn": syn * (i + 1), "real": real, "loss": syn * (i + 1) + real}
        for i in range(10)
    ]
    return {
        "steps": steps,
        "epochs": [{"epoch": e, "loss": 1.0, "val_top1": 50.0 + e} for e in (1, 2, 3, 4)],
        "phases": [
            {"name": "a", "epochs": 3, "steps_per_epoch": 2},
            {"name": "b", "epochs": 1, "steps_per_epoch": 4},
        ],
    }


def test_each_training_objective_has_its_own_axes_against_epochs() -> None:
    curves = {"r1": loss_curves(curve(real=2.0, syn=0.01)), "r2": loss_curves(curve(real=3.0, syn=0.02))}
    fig = losses_figure(curves, {"r1": "ct-syn", "r2": "ct-syn"}, "exp")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert titles == [
        "total: the weighted sum that is minimised",
        "synthetic images: soft-target (SCE) + CE",
        "real shots: cross-entropy",
        "validation top-1 (%)",
    ]
    total, syn, real, val = (ax.get_lines() for ax in axes)  # per axes a line per run: r1, r2
    assert [list(line.get_ydata()) for line in real] == [[2.0] * 10, [3.0] * 10]
    assert list(syn[0].get_ydata()) == pytest.approx([0.01 * i for i in range(1, 11)])
    assert list(total[1].get_ydata()) == pytest.approx([0.02 * i + 3.0 for i in range(1, 11)])
    # steps at their epochs: 2 steps per epoch for 3 epochs, then 4 steps in epoch 4
    epochs = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.25, 3.5, 3.75, 4.0]
    assert list(total[0].get_xdata()) == pytest.approx(epochs)
    assert list(val[0].get_ydata()) == [51.0, 52.0, 53.0, 54.0]
    # a 0.01-scale loss is not flattened by a 3.0-scale one: each axes is scaled to its own objective
    assert syn[0].axes.get_ylim()[1] < 0.5 < real[0].axes.get_ylim()[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["r1", "r2"]


# ------------------------------------------------------------------------------------------------ umask


@pytest.fixture
def umask() -> Iterator[Any]:
    before = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(before)


@pytest.mark.parametrize(
    ("mask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)], ids=["umask-022", "umask-077"]
)
def test_the_report_folder_and_files_follow_the_umask(
    tmp_path: Path, umask: Any, mask: int, folder: int, file: int
) -> None:
    write_experiment(tmp_path / "experiments" / "fig1")
    umask(mask)
    out = Path(build_report(tmp_path.as_uri())).parent
    assert stat.S_IMODE(out.stat().st_mode) == folder
    assert stat.S_IMODE((out / "plots").stat().st_mode) == folder
    for name in ("index.html", "results.csv", "plots/fig1-top1-vs-shots.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == file, name
