"""The HTML report is built from the artifacts alone, references only files stored beside it, escapes class
names and prompts, and says plainly when the tiny random-weight models were used."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

from synthrec.contract import confusion
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.report import build_report, safetensors_matrix
from synthrec.storage import FileStorage, open_storage, write_marker
from tests.harness.artifacts import dataset_manifest, run_metrics, write_dataset_spec, write_experiment_spec

CLASSES = ["cat <b>&", "dog"]


def jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="JPEG")
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_dataset(root: Path, model: str = "hf://org/sd") -> None:
    """The artifacts of a finished one-shard dataset: two images per class, one kept per class."""
    storage = FileStorage(root)
    spec = {"labels": {"classes": [{"name": c} for c in CLASSES]}, "generator": {"model": model}}
    hashes = write_dataset_spec(storage, "pets", {**spec, "filter": {"keepPerClass": 1}})
    prompts = [
        {
            "class": c,
            "class_name": n,
            "index": 0,
            "prompt": f"a photo of a {n}.",
            "images": 2,
            "source": "basic",
        }
        for c, n in enumerate(CLASSES)
    ]
    storage.write_bytes(DatasetLayout.prompts, "".join(json.dumps(p) + "\n" for p in prompts).encode())
    keys = [f"c{c:05d}-p00000-i{i:05d}" for c in range(2) for i in range(2)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key in keys:
            c = int(key[1:6])
            add(tar, f"{key}.jpg", jpeg((200, 0, 0) if c == 0 else (0, 0, 200)))
            meta = {"class": c, "class_name": CLASSES[c], "prompt": f"<i>{CLASSES[c]}</i> prompt {key}"}
            add(tar, f"{key}.json", json.dumps(meta).encode())
    storage.write_bytes(DatasetLayout.shard(0), buf.getvalue())
    write_marker(storage, DatasetLayout.shard_marker(0), spec_hash=hashes["generate"])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    features = save(
        {"probs": probs, "class_index": np.array([0, 0, 1, 1], dtype=np.int64)},
        metadata={"keys": json.dumps(keys)},
    )
    storage.write_bytes(DatasetLayout.features(0), features)
    write_marker(storage, DatasetLayout.features_marker(0), spec_hash=hashes["filter"])
    kept = [
        {"shard": 0, "key": keys[0], "class": 0, "score": 0.9, "passed": True},
        {"shard": 0, "key": keys[2], "class": 1, "score": 0.8, "passed": True},
    ]
    storage.write_bytes(DatasetLayout.index, "".join(json.dumps(k) + "\n" for k in kept).encode())
    storage.write_json(DatasetLayout.manifest, dataset_manifest(hashes["reduce"], CLASSES).document())


def write_experiment(root: Path) -> None:
    storage = FileStorage(root)
    data = {
        "synthetic": [{"datasetRef": "pets"}],
        "realTrain": {"uri": "file:///r/"},
        "test": {"uri": "file:///t/"},
    }
    spec = {"labels": {"classes": [{"name": c} for c in CLASSES]}, "data": data}
    runs = write_experiment_spec(storage, "pets-ct", {**spec, "matrix": {"shots": [0, 4], "seeds": [1, 2]}})
    per_class = [  # 10 test images per class; cat gets worse than zero-shot CLIP, dog better
        {"index": 0, "name": CLASSES[0], "count": 10, "top1": 40.0, "zero_shot_top1": 60.0},
        {"index": 1, "name": CLASSES[1], "count": 10, "top1": 70.0, "zero_shot_top1": 30.0},
    ]
    matrices = confusion.document(CLASSES, [[4, 6], [3, 7]], [[6, 4], [7, 3]])
    for run in runs[:3]:  # the last run is not done
        top1 = 50.0 + run.shots + run.seed
        metrics = run_metrics(run.name, top1=top1, zero_shot_top1=45.0, classes=CLASSES, per_class=per_class)
        storage.write_json(ExperimentLayout.run_metrics(run.name), metrics.document())
        storage.write_json(ExperimentLayout.run_confusion(run.name), matrices)
        curve = {"epochs": [{"epoch": e, "loss": 2.0 / e} for e in range(1, 4)], "steps": []}
        storage.write_json(ExperimentLayout.run(run.name, "curve.json"), curve)
        write_marker(storage, ExperimentLayout.run_marker(run.name), spec_hash="h")


def referenced_files(page: Path) -> list[str]:
    refs = re.findall(r"(?:src|href)='([^']+)'", page.read_text())
    return [r for r in refs if not r.startswith("#")]


def test_the_report_shows_grids_rates_prompts_runs_and_plots_from_files_beside_it(tmp_path: Path) -> None:
    write_dataset(tmp_path / "datasets" / "pets")
    write_experiment(tmp_path / "experiments" / "pets-ct")
    where = Path(build_report(tmp_path.as_uri()))
    assert where == tmp_path / "report" / "index.html"
    html = where.read_text()
    files = referenced_files(where)
    assert all(not f.startswith(("http", "//", "/")) for f in files)
    for f in files:
        assert (where.parent / f).is_file(), f
    assert sorted(f for f in files if f.startswith("img/")) == [
        f"img/pets/c{c:05d}-p00000-i{i:05d}.jpg" for c in range(2) for i in range(2)
    ]
    assert {
        "plots/pets-accept-rates.png",
        "plots/pets-ct-top1-vs-shots.png",
        "plots/pets-ct-curves.png",
        "plots/pets-ct-confusion.png",
    } <= set(files)
    # kept: the index's scores; rejected: the features file's probability of the intended class
    grid = html.split("Kept and not kept images")[1]
    assert re.search(r"<span class='score'>0\.90</span> &lt;i&gt;cat &lt;b&gt;&amp;&lt;/i&gt; prompt", grid)
    assert "<span class='score'>0.30</span>" in grid  # cat image 1: rejected, p(cat) = 0.3
    assert "<span class='score'>0.40</span>" in grid  # dog image 1: rejected, p(dog) = 0.4
    assert "<b>&" not in html and "<i>" not in html  # data is escaped everywhere
    assert "a photo of a cat &lt;b&gt;&amp;." in html  # prompt samples
    assert "shots4-seed2" in html and "not done" in html and "+10.0" in html  # 50+4+1 vs 45
    assert "RANDOM weights" not in html
    # where the best finished run (shots4-seed1: 55 %) errs: weakest class first, then its confusions
    errs = html.split("Where the best run errs: shots4-seed1 (55.0% top-1)")[1]
    weakest = re.findall(r"<tr><td class='l'>([^<]+)</td><td>10</td><td>([^<]+)</td><td>([^<]+)</td>", errs)
    assert weakest == [("cat &lt;b&gt;&amp;", "40.0%", "60.0%"), ("dog", "70.0%", "30.0%")]
    assert "-20.0" in errs and "+40.0" in errs
    pairs = re.findall(r"<tr><td class='l'>([^<]+)</td><td class='l'>([^<]+)</td>(.*?)</tr>", errs)
    assert pairs == [
        ("cat &lt;b&gt;&amp;", "dog", "<td>6</td><td>60.0</td><td>4</td>"),
        ("dog", "cat &lt;b&gt;&amp;", "<td>3</td><td>30.0</td><td>7</td>"),
    ]


def test_a_run_without_a_readable_confusion_matrix_still_gets_its_per_class_table(tmp_path: Path) -> None:
    root = tmp_path / "experiments" / "pets-ct"
    write_experiment(root)
    for run in ("shots4-seed1", "shots0-seed1", "shots0-seed2"):
        (root / ExperimentLayout.run_confusion(run)).write_text('["not", "a", "matrix"]')
    html = Path(build_report(tmp_path.as_uri())).read_text()
    errs = html.split("Where the best run errs: shots4-seed1")[1]
    assert "No readable confusion matrix for this run" in errs and "-20.0" in errs
    assert "pets-ct-confusion.png" not in html


def test_tiny_models_are_called_out_in_the_report(tmp_path: Path) -> None:
    write_dataset(tmp_path, model="tiny://sd")
    html = Path(build_report(tmp_path.as_uri())).read_text()
    assert html.count("RANDOM weights") == 2 and "meaningless" in html  # top and bottom


def test_an_unfinished_dataset_is_reported_as_such(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / DatasetLayout.manifest).unlink()
    html = Path(build_report(tmp_path.as_uri(), out=str(tmp_path / "out"))).read_text()
    assert "Not complete yet (no manifest.json)" in html and "a photo of a dog." in html


def test_a_report_for_s3_is_rendered_locally_and_uploaded(tmp_path: Path, s3_bucket: Any) -> None:
    write_dataset(tmp_path)
    where = build_report(tmp_path.as_uri(), out=s3_bucket.uri + "reports/pets/")
    assert where == s3_bucket.uri + "reports/pets/index.html"
    storage = open_storage(s3_bucket.uri + "reports/pets/")
    keys = {info.key for info in storage.list()}
    assert "index.html" in keys and "plots/pets-accept-rates.png" in keys
    page = storage.read_bytes("index.html").decode()
    for ref in re.findall(r"src='([^']+)'", page):
        assert ref in keys


def test_safetensors_are_read_without_numpy_or_torch() -> None:
    data = save({"probs": np.array([[0.25, 0.75]], dtype=np.float32)})
    assert safetensors_matrix(data, "probs") == [[0.25, 0.75]]
    with pytest.raises(KeyError):
        safetensors_matrix(data, "missing")


def test_scores_of_a_format_2_features_file_are_the_softmax_of_its_float16_logits() -> None:
    from synthrec.report.images import filter_scores

    logits = np.array([[2.0, 0.0], [0.0, 1.5]], dtype=np.float16)
    expected = np.exp(logits.astype(np.float64))
    expected /= expected.sum(axis=1, keepdims=True)
    for tensors in ({"logits": logits}, {"logits": -logits, "filter_logits": logits}):
        assert np.allclose(filter_scores(save(tensors)), expected, atol=1e-6)
    # format 1 stored the probabilities themselves
    assert filter_scores(save({"probs": np.array([[0.25, 0.75]], dtype=np.float32)})) == [[0.25, 0.75]]
