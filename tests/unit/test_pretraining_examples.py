"""The pre-training examples reproduce the settings of the paper's Tables 8-11: valid resources whose matrix
expands to (at least) the table's rows, each with a cost estimate in GPU-hours stated as an estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec import api, plan
from synthrec.api.validation import load_documents, validate_file

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "table8-cifar100-resnet50.yaml": 8,
    "table9-cifar100-deit-s.yaml": 9,
    "table10-voc-supervised.yaml": 10,
    "table11-voc-moco.yaml": 11,
}
M = 1_000_000


def resources(name: str) -> list[api.Resource]:
    return [api.parse_resource(d.body) for d in load_documents(ROOT / "examples" / "pretraining" / name)]


def rows(name: str) -> set[tuple[str | None, str, int | None, str]]:
    """(label space, objective, data size, init) of every run of the file's experiments."""
    out = set()
    for res in resources(name):
        if isinstance(res, api.RecognitionExperiment):
            for run in plan.pretrain_runs(res.spec):
                out.add((run.label_space, run.objective, run.size, run.init))
    return out


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_example_is_valid_and_states_its_cost_as_an_estimate(name: str) -> None:
    path = ROOT / "examples" / "pretraining" / name
    report = validate_file(path)
    assert report.results and all(problems == [] for _, problems in report.results), report.results
    text = path.read_text()
    assert f"Table {TABLES[name]}" in text and "COST ESTIMATE (from published throughput" in text
    assert any(unit in text for unit in ("A100-h", "V100-h", "GPU-hours"))


def test_table8_is_data_size_by_initialisation_on_cifar100_syn_with_fine_tuning() -> None:
    assert rows("table8-cifar100-resnet50.yaml") == {
        (None, "supervised", size, init)
        for size in (0, int(1.2 * M), int(2.4 * M), int(3.6 * M))
        for init in ("scratch", "timm:tv_in1k")
    }
    [dataset, experiment] = resources("table8-cifar100-resnet50.yaml")
    assert dataset.spec.labels.preset == "cifar100" and not dataset.spec.filter.enabled  # LE only, no CF
    assert dataset.spec.prompts.strategy == "language-enhancement"
    method = experiment.spec.method.pretrain
    assert method.backbone == "resnet50" and method.transfer.classification is not None


def test_table9_is_deit_s_on_in1k_and_in2k_syn_and_the_two_baselines() -> None:
    found = rows("table9-cifar100-deit-s.yaml")
    assert found == {
        ("in1k-syn", "supervised", int(1.2 * M), "scratch"),
        ("in1k-syn", "supervised", int(2.4 * M), "scratch"),
        ("in2k-syn", "supervised", int(2.4 * M), "scratch"),
        ("in2k-syn", "supervised", int(4.0 * M), "scratch"),
        (None, "supervised", 0, "scratch"),
        (None, "supervised", 0, "timm"),  # real IN-1K weights
    }
    presets = {
        r.spec.labels.preset for r in resources("table9-cifar100-deit-s.yaml") if r.kind == "SyntheticDataset"
    }
    assert presets == {"imagenet1k", "imagenet2k"}


@pytest.mark.parametrize(
    ("name", "objective", "real_init"),
    [
        ("table10-voc-supervised.yaml", "supervised", "timm:tv_in1k"),
        ("table11-voc-moco.yaml", "moco-v2", "s3://synthrec/models/moco_v2_200ep_pretrain.pth.tar"),
    ],
)
def test_tables10_and_11_transfer_to_voc_detection_with_every_row_of_the_paper(
    name: str, objective: str, real_init: str
) -> None:
    paper = {
        ("in1k-syn", 0, "scratch"),
        ("in1k-syn", int(1.2 * M), "scratch"),
        ("in1k-syn", int(2.4 * M), "scratch"),
        ("in2k-syn", int(2.4 * M), "scratch"),
        ("in2k-syn", int(4.0 * M), "scratch"),
        ("in1k-syn", 0, real_init),
        ("in1k-syn", int(2.4 * M), real_init),
    }
    found = {(space, size, init) for space, obj, size, init in rows(name) if obj == objective}
    assert paper <= found
    [experiment] = resources(name)
    detection = experiment.spec.method.pretrain.transfer.detection
    assert [(d.uri.rstrip("/").rsplit("/", 1)[-1], d.split) for d in detection.train] == [
        ("VOC2007", "trainval"),
        ("VOC2012", "trainval"),
    ]
    assert (detection.test.split, detection.iterations, detection.batch_size) == ("test", 24000, 16)
