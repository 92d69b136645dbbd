"""The report of a pre-training experiment reads like the paper's Tables 8-11: per evaluation a table of
the result against the synthetic data size, one row per initialisation; a plot of the same; every run
with its pre-training steps and loss; transfer.csv with the numbers unrounded. Detection reports the
VOC07 11-point AP50 (the paper's number), not the COCO-style one."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from synthrec.contract.layout import ExperimentLayout
from synthrec.report import build_report
from synthrec.storage import FileStorage
from tests.harness.artifacts import pretrain_metrics, transfer_metrics, write_pretraining_spec

SPEC: dict[str, Any] = {
    "labels": {"classes": [{"name": "cat"}, {"name": "dog"}]},
    "data": {
        "synthetic": [{"uri": "file:///data/syn/"}],
        "realTrain": {"uri": "file:///data/train/"},
        "test": {"uri": "file:///data/test/"},
    },
    "method": {
        "pretrain": {
            "backbone": "resnet50",
            "batchSize": 8,
            "transfer": {
                "classification": {"epochs": 1},
                "detection": {
                    "train": [{"uri": "file:///data/VOC2007/", "split": "trainval"}],
                    "test": {"uri": "file:///data/VOC2007/", "split": "test"},
                },
            },
        }
    },
    "matrix": {"dataSizes": [0, 100, 200], "inits": ["scratch", "timm"]},
}
# run -> (fine-tuning top-1, VOC07 AP50); sup-200-timm has not finished its transfer
DONE = {
    "sup-0-scratch": (40.0, 30.0),
    "sup-100-scratch": (50.0, 35.0),
    "sup-200-scratch": (55.5, 41.25),
    "sup-0-timm": (60.0, 50.0),
    "sup-100-timm": (61.0, 52.0),
}


def write(root: Path) -> None:
    storage = FileStorage(root)
    runs = write_pretraining_spec(storage, "t8", SPEC)
    assert [r.name for r in runs] == [*DONE, "sup-200-timm"]
    for run in runs:
        if run.size:
            storage.write_json(
                ExperimentLayout.pretrain(run.name, "metrics.json"),
                pretrain_metrics(run.name, steps=run.size // 8, final_loss=1.5),
            )
            storage.write_json(ExperimentLayout.pretrain(run.name, "done.json"), {"spec_hash": "p"})
        if run.name not in DONE:
            continue
        top1, voc07 = DONE[run.name]
        for kind, numbers in (
            ("classification", {"top1": top1}),
            ("detection", {"ap50": voc07 + 10, "ap50_voc07": voc07}),  # COCO-style differs
        ):
            folder = ExperimentLayout.transfer(run.name, kind)
            storage.write_json(folder + "metrics.json", transfer_metrics(run.name, kind, **numbers))
            storage.write_json(folder + "done.json", {"spec_hash": "t"})


def cells(html: str, title: str) -> list[list[str]]:
    """The rows of the table under the heading ``title``, as cell texts."""
    table = html.split(f"<h3>{title}</h3>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in table.split("<tr>")[1:]]


def test_each_evaluation_is_a_table_of_results_by_data_size_per_initialisation(tmp_path: Path) -> None:
    write(tmp_path / "experiments" / "t8")
    html = Path(build_report(tmp_path.as_uri())).read_text()
    assert cells(html, "Fine-tuning top-1 (%) by synthetic data size") == [
        ["label space", "objective", "init", "0", "100", "200"],
        ["-", "supervised", "scratch", "40.0%", "50.0%", "55.5%"],
        ["-", "supervised", "timm", "60.0%", "61.0%", "-"],
    ]
    detection = cells(html, "Detection AP50 (VOC07 11-point, %) by synthetic data size")
    assert detection[1][3:] == ["30.0%", "35.0%", "41.2%"]  # the VOC07 number, not the COCO-style one
    assert "Linear probe" not in html  # not asked for: no table
    runs = {row[0]: row for row in cells(html, "Runs")[1:]}
    assert runs["sup-100-scratch"][2:4] == ["12", "1.500"] and runs["sup-0-scratch"][2:4] == ["-", "-"]
    assert runs["sup-200-timm"][1] == "transfer"  # where the unfinished run is
    assert (tmp_path / "report" / "plots" / "t8-transfer-vs-size.png").stat().st_size > 0
    assert "plots/t8-transfer-vs-size.png" in html


def test_transfer_csv_holds_every_run_unrounded_and_the_page_links_it(tmp_path: Path) -> None:
    write(tmp_path / "experiments" / "t8")
    html = Path(build_report(tmp_path.as_uri())).read_text()
    assert "href='transfer.csv'" in html and "results.csv" not in html  # no few-shot experiment here
    with open(tmp_path / "report" / "transfer.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {*DONE, "sup-200-timm"}
    assert rows["sup-200-scratch"]["ap50"] == "41.25" and rows["sup-200-scratch"]["size"] == "200"
    assert (rows["sup-200-timm"]["state"], rows["sup-200-timm"]["classification_top1"]) == ("Pending", "")
    assert rows["sup-200-scratch"]["pretrain_steps"] == "25" and rows["sup-0-timm"]["init"] == "timm"
