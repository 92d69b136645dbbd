"""The report writes only under --out, under names it makes itself: stored strings (resource names, index
keys, tar member names) never become paths, image bytes are decoded and re-encoded (never copied
through), and every stored JSON it reads is parsed into its typed model; a bad one leaves a note in the
report, not a traceback. Anyone who can write to a shared prefix must not be able to plant files on the
machine of whoever runs the report."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from synthrec import api, plan
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.plan.tasks import ResourceRef
from synthrec.report import ReportError, build_report
from synthrec.storage import FileStorage, write_marker
from synthrec.workers.runtime import spec_document
from tests.harness.artifacts import dataset_manifest, run_metrics, tar_bytes

CLASSES = ["cat", "dog"]
SCRIPT = b"#!/bin/sh\necho owned > /tmp/owned\n"
KEYS = [f"c{c:05d}-p00000-i00000" for c in range(2)]


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def write_dataset(
    root: Path,
    *,
    name: str = "pets",
    kept: list[dict[str, Any]] | None = None,
    members: dict[str, bytes] | None = None,
) -> FileStorage:
    """A finished one-shard dataset (one image per class, both kept), with what a test plants in it."""
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "pets"},
        "spec": {
            "labels": {"classes": [{"name": c} for c in CLASSES]},
            "generator": {"model": "hf://org/sd"},
            "filter": {"keepPerClass": 1},
            "output": {"uri": "file:///unused/"},
        },
    }
    res = api.parse_resource(body)
    hashes = plan.dataset_hashes(res.spec)
    storage = FileStorage(root)
    doc = spec_document(
        plan.dataset_task(res.spec, "prompts", ResourceRef(kind="SyntheticDataset", name="x"))
    )
    doc["metadata"]["name"] = name
    storage.write_json(DatasetLayout.spec, doc)
    files = {f"{k}.jpg": jpeg((200, 0, 0)) for k in KEYS}
    files |= {f"{k}.json": json.dumps({"class": i, "prompt": f"p{i}"}).encode() for i, k in enumerate(KEYS)}
    storage.write_bytes(DatasetLayout.shard(0), tar_bytes(files | (members or {})))
    write_marker(storage, DatasetLayout.shard_marker(0), spec_hash=hashes["generate"])
    rows = (
        kept
        if kept is not None
        else [{"shard": 0, "key": k, "class": i, "score": 0.9} for i, k in enumerate(KEYS)]
    )
    for row in rows:
        row.setdefault("class_name", CLASSES[row.get("class", 0) if isinstance(row.get("class"), int) else 0])
        row.setdefault("passed", True)
    storage.write_bytes(DatasetLayout.index, "".join(json.dumps(r) + "\n" for r in rows).encode())
    manifest = dataset_manifest(hashes["reduce"], CLASSES, filter_enabled=False)
    storage.write_json(DatasetLayout.manifest, manifest.document())
    return storage


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def report_into(tmp_path: Path, source: Path) -> tuple[Path, set[Path]]:
    """Build the report of ``source`` into a folder deep below tmp_path (so that the planted '..' paths
    stay inside tmp_path, where the test sees them); return index.html and every file written anywhere
    under tmp_path outside the report folder."""
    out = tmp_path / "d1" / "d2" / "d3" / "d4" / "d5" / "d6" / "out"
    before = files_under(tmp_path)
    where = Path(build_report(source.as_uri(), out=str(out)))
    written = files_under(tmp_path) - before
    return where, {p for p in written if out not in p.parents}


# ------------------------------------------------------------------------------------------ traversal


def test_a_planted_resource_name_cannot_place_files_outside_out(tmp_path: Path) -> None:
    write_dataset(tmp_path / "shared" / "datasets" / "pets", name="../../../../planted")

    where, outside = report_into(tmp_path, tmp_path / "shared")

    assert outside == set()
    assert where.parent.name == "out"


def test_a_planted_index_key_cannot_write_a_script_outside_out(tmp_path: Path) -> None:
    evil = "../../../../../../planted"
    write_dataset(
        tmp_path / "shared",
        kept=[{"shard": 0, "key": evil, "class": 0, "score": 1.0}],
        members={f"{evil}.jpg": SCRIPT, f"{evil}.json": b'{"class": 0, "prompt": "x"}'},
    )

    where, outside = report_into(tmp_path, tmp_path / "shared")

    assert outside == set()
    for path in files_under(where.parent):
        assert SCRIPT not in path.read_bytes(), f"{path} holds the planted bytes"


def test_names_are_slugs_of_stored_strings_bounded_and_distinct() -> None:
    from synthrec.report.files import ReportFiles, slug

    assert slug("c00003-p00012-i00004") == "c00003-p00012-i00004"  # a good name stays as it is
    for hostile in ("../../etc/passwd", "/abs", "a/b", "x" * 500, "ünï", "", ".", "CON", "a\x00b"):
        made = slug(hostile)
        assert made and len(made) <= 64 and made.replace("-", "").replace("_", "").isalnum(), made
        assert made.isascii() and made == made.lower()
    assert slug("a/b") != slug("a-b") and slug("A") != slug("a")
    files = ReportFiles(Path("/nonexistent"))
    assert files.name("plots", "pets", ext="png") == "plots/pets.png"
    assert files.name("plots", "pets", ext="png") == "plots/pets-2.png"  # never the same file twice
    with pytest.raises(ValueError, match="not a name of this report"):
        files.path("../outside.png")


def test_image_bytes_are_re_encoded_and_undecodable_ones_are_dropped(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (0, 200, 0)).save(png, format="PNG")
    members = {f"{KEYS[0]}.jpg": png.getvalue(), f"{KEYS[1]}.jpg": SCRIPT}
    write_dataset(tmp_path / "shared", members=members)

    where, outside = report_into(tmp_path, tmp_path / "shared")

    images = sorted((where.parent / "img").rglob("*.jpg"))
    assert [p.name for p in images] == [f"{KEYS[0]}.jpg"]  # the script made no file
    with Image.open(images[0]) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 128  # decoded, resized, re-encoded
    assert outside == set()


def _huge_png(side: int) -> bytes:
    """A valid PNG of side x side grey pixels, built without holding the pixels (it compresses to KBs)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_decompression_bomb_image_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    from synthrec.limits import ImageTooLarge, decode_rgb

    bomb = _huge_png(12_000)  # 144 MP: 432 MB as RGB (PIL only warns below 179 MP)
    assert len(bomb) < 1024 * 1024
    with pytest.raises(ImageTooLarge, match=r"12000x12000 pixels \(144 MP\) is over the 40 MP limit"):
        decode_rgb(bomb)

    write_dataset(tmp_path / "shared", members={f"{KEYS[0]}.jpg": bomb})
    where, _ = report_into(tmp_path, tmp_path / "shared")
    assert [p.name for p in (where.parent / "img").rglob("*.jpg")] == [f"{KEYS[1]}.jpg"]


def test_a_huge_member_in_a_small_gzip_tar_is_not_read(tmp_path: Path) -> None:
    import gzip

    from synthrec.limits import MAX_JSON_MEMBER_BYTES, MemberTooLarge, read_member

    raw = tar_bytes({"big.json": b" " * (64 * 1024 * 1024)})  # 64 MB of blanks: about 64 KB gzipped
    path = tmp_path / "small.tar.gz"
    path.write_bytes(gzip.compress(raw))
    assert path.stat().st_size < 300 * 1024
    with tarfile.open(path) as tar:
        member = tar.getmember("big.json")
        with pytest.raises(MemberTooLarge, match="67108864 bytes, over the 4194304 allowed"):
            read_member(tar, member, MAX_JSON_MEMBER_BYTES)


# ------------------------------------------------------------------------------ bad stored documents


def write_experiment(root: Path) -> FileStorage:
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": "pets-ct"},
        "spec": {
            "labels": {"classes": [{"name": c} for c in CLASSES]},
            "data": {
                "synthetic": [{"datasetRef": "pets"}],
                "realTrain": {"uri": "file:///real/train/"},
                "test": {"uri": "file:///real/test/"},
            },
            "matrix": {"shots": [0], "seeds": [1, 2]},
            "output": {"uri": "file:///unused/"},
        },
    }
    res = api.parse_resource(body)
    storage = FileStorage(root)
    runs = plan.experiment_runs(res.spec)
    task = plan.train_task(res.spec, runs[0], [], ResourceRef(kind="RecognitionExperiment", name="pets-ct"))
    storage.write_json(ExperimentLayout.spec, spec_document(task))
    for run in runs:
        metrics = run_metrics(run.name, top1=50.0 + run.seed, zero_shot_top1=45.0, classes=CLASSES)
        storage.write_json(ExperimentLayout.run_metrics(run.name), metrics.document())
        storage.write_json(ExperimentLayout.run(run.name, "curve.json"), {"epochs": [], "steps": []})
        write_marker(storage, ExperimentLayout.run_marker(run.name), spec_hash="h")
    return storage


def test_damaged_or_planted_documents_leave_notes_and_the_rest_of_the_report(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    ds = write_dataset(shared / "datasets" / "pets")
    ex = write_experiment(shared / "experiments" / "pets-ct")
    (shared / "datasets" / "broken").mkdir(parents=True)
    (shared / "datasets" / "broken" / "spec.json").write_text('{"kind": "SyntheticDataset", "metadata": 7}')
    good_row = {"shard": 0, "key": KEYS[1], "class": 1, "class_name": "dog", "score": 0.5, "passed": True}
    lines = ['{"shard": -1, "key": "x"}', "not json", json.dumps(good_row)]
    ds.write_bytes(DatasetLayout.index, ("\n".join(lines) + "\n").encode())
    ds.write_bytes(DatasetLayout.prompts, b'{"class": "cat"}\n')
    ex.write_bytes(ExperimentLayout.run_metrics("shots0-seed1"), b'{"run": []}')
    ex.write_json(ExperimentLayout.run("shots0-seed2", "curve.json"), {"epochs": [{"loss": "high"}]})
    matrix = {"classes": CLASSES, "test": [[0, 5, 3]], "zero_shot": []}  # class 5 of 2
    ex.write_json(ExperimentLayout.run_confusion("shots0-seed2"), matrix)

    where, outside = report_into(tmp_path, shared)

    html = where.read_text()
    notes = re.findall(r"<p class='warn'>Could not read: (.*?)</p>", html)
    assert any("datasets/broken/" in n and "does not describe a synthrec resource" in n for n in notes)
    assert any("kept.jsonl: 2 unreadable line(s) skipped" in n for n in notes)
    assert any("prompts.jsonl: 1 unreadable line(s) skipped" in n for n in notes)
    assert any("shots0-seed1/metrics.json is not a RunMetrics" in n for n in notes)
    assert any("shots0-seed2/curve.json is not a TrainingCurve" in n for n in notes)
    assert any("confusion.json is not a ConfusionDocument" in n and "class 5" in n for n in notes)
    assert "SyntheticDataset pets" in html and "RecognitionExperiment pets-ct" in html
    assert f"img/pets/{KEYS[1]}.jpg" in html  # the good index row still has its picture
    assert outside == set()


def test_an_oversized_document_is_not_read(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "shared")
    (tmp_path / "shared" / DatasetLayout.manifest).write_bytes(b" " * (64 * 1024 * 1024 + 1))

    where, _ = report_into(tmp_path, tmp_path / "shared")

    assert "manifest.json is 67108865 bytes, more than the 67108864 bytes" in where.read_text()
    assert ds.exists(DatasetLayout.manifest)


def test_an_existing_folder_that_is_not_a_report_is_never_replaced(tmp_path: Path) -> None:
    write_dataset(tmp_path / "shared")
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("keep me")

    with pytest.raises(ReportError, match="is not a synthrec report"):
        build_report((tmp_path / "shared").as_uri(), out=str(home))

    assert (home / "notes" / "todo.txt").read_text() == "keep me"
    first = Path(build_report((tmp_path / "shared").as_uri(), out=str(tmp_path / "new")))
    again = Path(build_report((tmp_path / "shared").as_uri(), out=str(tmp_path / "new")))
    assert first == again and again.is_file()  # a report folder is replaced by the next report


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_written_as_text() -> None:
    import csv as csv_module

    from synthrec.report.results import to_csv

    hostile = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    text = to_csv(
        ("name", "top1"), [{"name": h, "top1": -0.25} for h in hostile] + [{"name": "ok", "top1": None}]
    )
    rows = list(csv_module.DictReader(io.StringIO(text)))
    assert [r["name"] for r in rows[:-1]] == ["'" + h for h in hostile]
    # numbers stay numbers (a negative number is not text), plain names and empty cells are untouched
    assert {r["top1"] for r in rows[:-1]} == {"-0.25"}
    assert rows[-1] == {"name": "ok", "top1": ""}
