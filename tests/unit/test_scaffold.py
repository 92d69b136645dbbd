"""`synthrec scaffold table1`: the 17 datasets of the paper's Table 1 as resources, written from the presets;
the committed examples/table1/ is exactly its output and every file in it is valid."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthrec import api
from synthrec.api.validation import validate_file
from synthrec.presets import TABLE1
from synthrec.scaffold import Table1Options, table1

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "examples" / "table1"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrec.cli", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_the_committed_table1_folder_is_exactly_what_the_scaffold_writes() -> None:
    expected = table1()
    assert sorted(p.name for p in COMMITTED.iterdir()) == sorted(expected)
    for name, text in expected.items():
        assert (COMMITTED / name).read_text() == text, f"{name} was edited by hand or the scaffold changed"


def test_table1_holds_every_dataset_once_with_both_backbones_and_the_papers_recipe() -> None:
    files = table1()
    seen = []
    for name, text in files.items():
        if name == "README.md":
            continue
        resources = [api.parse_resource(doc) for doc in yaml.safe_load_all(text)]
        (dataset,) = [r for r in resources if r.kind == "SyntheticDataset"]
        experiments = [r for r in resources if r.kind == "RecognitionExperiment"]
        seen.append(dataset.spec.labels.preset)
        assert dataset.spec.prompts.strategy == "language-enhancement"
        assert dataset.spec.filter.prompts == "filter-template" and dataset.spec.filter.keep_per_class == 800
        assert dataset.spec.filter.clip.model == "RN50"  # the official filter scores with RN50 for both
        assert [e.spec.backbone.model for e in experiments] == ["RN50", "ViT-B-16"]
        for e in experiments:
            assert [s.dataset_ref for s in e.spec.data.synthetic] == [dataset.metadata.name]
            assert e.spec.labels.preset == dataset.spec.labels.preset and e.spec.matrix.shots == [0]
            assert e.spec.method.classifier_tuning.soft_target.weight == 0.5
            assert e.spec.data.test.uri == f"s3://datasets/{dataset.spec.labels.preset}/test/"
    assert seen == [row[0] for row in TABLE1] and len(seen) == 17
    readme = files["README.md"]
    assert "| 15 | EuroSAT | satellite | 10 | 37.51 | 47.77 |" in readme and "8,100" in readme


@pytest.mark.parametrize("path", sorted(COMMITTED.glob("*.yaml")), ids=lambda p: p.name)
def test_every_table1_file_is_valid(path: Path) -> None:
    for doc, problems in validate_file(path).results:
        assert problems == [], f"{path.name} {doc.label}: {problems}"


def test_work_scales_with_the_label_space_and_the_options_reach_every_resource() -> None:
    options = Table1Options(
        data="file:///data/",
        output="file:///out/",
        credentials_secret=None,
        images_per_class=500,
        keep_per_class=200,
        backbones=("ViT-B/16",),
        seeds=(7,),
    )
    files = table1(options)
    imagenet = list(yaml.safe_load_all(files["05-imagenet1k.yaml"]))
    assert imagenet[0]["spec"]["sharding"]["shards"] == 125  # 1000 classes x 500 / 4000 per shard
    assert imagenet[0]["spec"]["generator"]["imagesPerClass"] == 500
    assert imagenet[0]["spec"]["output"] == {"uri": "file:///out/datasets/table1-imagenet1k/"}
    (experiment,) = imagenet[1:]
    assert experiment["metadata"]["name"] == "table1-imagenet1k-vit-b16"
    assert experiment["spec"]["data"]["test"] == {"uri": "file:///data/imagenet1k/test/"}
    assert experiment["spec"]["matrix"]["seeds"] == [7]
    with pytest.raises(ValueError, match="unknown backbone 'ViT-L/14'"):
        table1(Table1Options(backbones=("ViT-L/14",)))


def test_the_command_writes_valid_files_and_refuses_what_the_cluster_would_refuse(tmp_path: Path) -> None:
    proc = _run(
        "scaffold", "table1", "--out", str(tmp_path / "t1"), "--data", "s3://mine/data/", "--seeds", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 18 files" in proc.stdout and len(list((tmp_path / "t1").glob("*.yaml"))) == 17
    assert "s3://mine/data/cub200/test/" in (tmp_path / "t1" / "10-cub200.yaml").read_text()
    bad = _run("scaffold", "table1", "--out", str(tmp_path / "bad"), "--keep-per-class", "0")
    assert bad.returncode == 1 and "keepPerClass" in bad.stderr


def test_validate_examples_star_is_clean_including_the_generated_folder() -> None:
    paths = sorted(glob.glob(str(ROOT / "examples" / "*")))  # what the shell makes of examples/*
    assert str(COMMITTED) in paths
    proc = _run("validate", *paths)
    assert proc.returncode == 0, proc.stderr
    assert "table1/15-eurosat.yaml: document 1 (SyntheticDataset/table1-eurosat): valid" in proc.stdout
    assert proc.stdout.count(": valid") >= 17 * 3


# ------------------------------------------------------------------------------------------- Figure 1

FEW_SHOT = ROOT / "examples" / "eurosat-few-shot.yaml"


def test_the_committed_eurosat_few_shot_example_is_exactly_what_the_scaffold_writes() -> None:
    from synthrec.scaffold_figure1 import figure1

    assert FEW_SHOT.read_text() == figure1(), "edited by hand, or the scaffold changed: write it again"


def test_figure1_guides_each_cell_with_exactly_the_shots_its_runs_train_on() -> None:
    from synthrec import plan

    resources = [api.parse_resource(doc) for doc in yaml.safe_load_all(FEW_SHOT.read_text())]
    datasets = {r.metadata.name: r.spec for r in resources if r.kind == "SyntheticDataset"}
    (experiment,) = [r.spec for r in resources if r.kind == "RecognitionExperiment"]
    runs = plan.experiment_runs(experiment)
    assert {r.method for r in runs} == {
        "zero-shot",
        "classifier-tuning",
        "tip-adapter",
        "tip-adapter-f",
        "coop",
    }
    assert sorted({(r.shots, r.seed) for r in runs if r.shots}) == [
        (n, s) for n in (1, 2, 4, 8, 16) for s in (1, 2, 3)
    ]
    assert len(runs) == 76 and set(plan.referenced_datasets(experiment)) == set(datasets)
    for run in runs:
        for source in run.synthetic:
            rg = datasets[source.dataset_ref].real_guidance
            # the same real data, shot count and seed: Real Guidance starts from the run's own shots
            assert rg.source == experiment.data.real_train
            assert (rg.shots, rg.seed) == (run.shots, run.seed)
            assert rg.images_per_class == 800 and rg.strength is None  # the paper's level for the shots
    assert experiment.data.validation is not None and experiment.backbone.model == "RN50"
    header = " ".join(line.lstrip("# ") for line in FEW_SHOT.read_text().split("apiVersion")[0].splitlines())
    assert "zero-shot CLIP's 37.51 (Table 1) is on the 8,100-image test split" in header


def test_figure1_for_another_dataset_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "sun.yaml"
    result = _run(
        "scaffold", "figure1", "--preset", "sun", "--shots", "1,16", "--seeds", "1", "--no-validation",
        "--data", "file:///data/", "--output", "file:///out/", "--credentials-secret", "", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["metadata"]["name"] for d in docs] == [
        "sun397-rg-1shot-seed1",
        "sun397-rg-16shot-seed1",
        "sun397-figure1",
    ]
    experiment = docs[-1]["spec"]
    assert (
        "validation" not in experiment["data"]
        and experiment["data"]["realTrain"]["uri"] == "file:///data/sun397/train/"
    )
    assert docs[0]["spec"]["sharding"]["shards"] == 397  # 397 classes x 800 / 800 per shard
    assert "SUN397" in out.read_text().splitlines()[0] and "CoOp: 60.3 / 59.5" in out.read_text()
    bad = _run("scaffold", "figure1", "--shots", "0,1", "--out", str(tmp_path / "x.yaml"))
    assert bad.returncode == 1 and "shot counts above 0" in bad.stderr
