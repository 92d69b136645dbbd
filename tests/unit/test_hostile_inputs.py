"""Inputs that cannot hurt: a resource file, a stored artifact or an image that is hostile or broken ends
in a clear, short error (or is skipped), never in a traceback, a hang or a machine out of memory."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from synthrec import api, plan
from synthrec.api.validation import FileError, load_documents, validate_file
from synthrec.cli import main
from synthrec.contract import artifacts
from synthrec.local.executor import DatasetOutcome, ExperimentOutcome, RunOutcome
from synthrec.local.ui import RichUI
from synthrec.storage import StorageError, open_storage
from synthrec.storage.uris import OUTPUT_URI_PATTERN, URIError, parse_storage_uri
from tests.harness.artifacts import dataset_manifest, run_metrics, tar_bytes

HEADER = "apiVersion: synthrec.io/v1alpha1\nkind: SyntheticDataset\nmetadata: {name: hostile}\n"
SPEC = "spec:\n  labels: {classes: [{name: cat}]}\n  generator: {model: hf://org/sd}\n  output: {uri: 's3://bkt/x/'}\n"


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "resource.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ---------------------------------------------------------------------------------------------- YAML


def test_an_alias_bomb_is_refused_before_anything_expands_it(tmp_path: Path) -> None:
    """Ten levels of ten aliases: 10^10 strings if anything walked it (the issue's took 3 GB)."""
    levels = ['  l0: &l0 ["a photo of a {c}.", "a photo of a {c}."]']
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = (
        HEADER
        + "anchors:\n"
        + "\n".join(levels)
        + "\n"
        + SPEC.replace("classes:", "templates: *l9, classes:")
    )

    with pytest.raises(FileError, match=r"aliases expand to more than 1000000 values \(an alias bomb\?\)"):
        load_documents(write(tmp_path, text))


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="alias bomb"):
        load_documents(write(tmp_path, HEADER + "loop: &a [1, *a]\n" + SPEC))


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path: Path) -> None:
    text = HEADER + "spec: " + "[" * 50_000 + "]" * 50_000 + "\n"
    with pytest.raises(FileError, match=r"resource\.yaml.*more than 64 levels of nesting"):
        load_documents(write(tmp_path, text))


def test_aliases_nested_in_one_another_beyond_the_depth_limit_are_refused(tmp_path: Path) -> None:
    """Each anchor 60 levels deep (under the limit) holding the one before: 120 anchors nest 7,200 deep,
    far past what anything that walks the values recursively survives, in 100 KB of YAML."""
    anchors = [f"  a{i}: &a{i} " + "{k: " * 60 + (f"*a{i - 1}" if i else "1") + "}" * 60 for i in range(120)]
    text = HEADER + "anchors:\n" + "\n".join(anchors) + "\n" + SPEC.replace("{name: cat}", "*a119")

    with pytest.raises(FileError, match="its aliases nest more than 64 levels deep"):
        load_documents(write(tmp_path, text))


def test_a_file_that_is_not_utf8_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, (HEADER.replace("hostile", "caf\xe9") + SPEC).encode("latin-1"))

    assert main(["validate", str(path)]) == 1

    err = capsys.readouterr().err
    assert "not UTF-8 text (byte 0xe9 at line 3" in err and "save the file as UTF-8" in err
    assert "Traceback" not in err


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    assert load_documents(write(tmp_path, b"\xef\xbb\xbf" + (HEADER + SPEC).encode()))[0].body["kind"]


def test_a_huge_spec_gets_short_error_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's 100,000 classes printed a 2 MB line; 10,000 (over the 4,096 allowed) printed 200 KB
    the same way, and parse ten times faster."""
    classes = "".join(f"      - name: c{i}\n" for i in range(10_000))
    text = HEADER + "spec:\n  labels:\n    classes:\n" + classes + "  generator: {model: hf://org/sd}\n"
    text += "  output: {uri: 's3://bkt/x/'}\n"

    assert main(["validate", str(write(tmp_path, text))]) == 1

    lines = capsys.readouterr().err.splitlines()
    assert any("spec.labels.classes: 10000 items, more than the 4096 allowed" in line for line in lines)
    assert max(len(line) for line in lines) < 2000


def test_many_problems_are_counted_not_all_printed(tmp_path: Path) -> None:
    bad = "".join(f"      - {{name: c{i}, unknown{i}: 1}}\n" for i in range(300))
    text = HEADER + "spec:\n  labels:\n    classes:\n" + bad + "  generator: {model: hf://org/sd}\n"
    text += "  output: {uri: 's3://bkt/x/'}\n"

    [(_, problems)] = validate_file(write(tmp_path, text)).results

    assert len(problems) == 51 and str(problems[-1]) == "... and 250 more problems"


# ---------------------------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bkt/./x/",
        "s3://bkt/a//b/",
        "s3://bkt/a/../b/",
        "s3://bkt/a\\b/",
        "s3://bkt/a\x00b/",
        "file:///data/./out/",
        "file:///data//out/",
        "file:///data/a\nb/",
    ],
)
def test_a_uri_that_would_fail_at_run_time_does_not_validate(uri: str, tmp_path: Path) -> None:
    import re

    with pytest.raises(URIError, match="its path"):
        parse_storage_uri(uri)
    assert not re.match(OUTPUT_URI_PATTERN, uri)  # the CRD schema (the API server) refuses it too
    with pytest.raises(StorageError):
        open_storage(uri)  # and the run refuses it the same way, before touching anything
    text = HEADER + SPEC.replace(
        "s3://bkt/x/", uri.replace("\\", "\\\\").replace("\n", "\\n").replace("\x00", "\\0")
    )
    path = write(tmp_path, text.replace("{uri: '", '{uri: "').replace("'}", '"}'))
    [(_, problems)] = validate_file(path).results
    assert [p.path for p in problems] == ["spec.output.uri"] and "its path" in problems[0].message


@pytest.mark.parametrize(
    "uri", ["s3://bkt/x/", "s3://bkt", "s3://bkt//x/", "s3://bkt/.../a..b/.c/", "file:///"]
)
def test_a_uri_that_validates_opens(uri: str) -> None:
    import re

    assert re.match(OUTPUT_URI_PATTERN, uri)
    parsed = parse_storage_uri(uri)
    if parsed.scheme == "s3":
        from synthrec.storage.base import clean_key

        clean_key(parsed.path, folder=True)  # what S3Storage does with it
    else:
        open_storage(uri)


# ------------------------------------------------------------------------------------ printed strings


def test_markup_in_class_and_variant_names_is_printed_as_text() -> None:
    """A class named ``[/bold]`` crashed the run's summary after every stage had finished."""
    hostile = ["[/bold]", "[red]cat[/red]", "[link=file:///etc/passwd]x"]
    body = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": "ex"},
        "spec": {
            "labels": {"classes": [{"name": c} for c in hostile]},
            "data": {
                "synthetic": [{"datasetRef": "ds"}],
                "realTrain": {"uri": "file:///real/train/"},
                "test": {"uri": "file:///real/test/"},
            },
            "matrix": {"shots": [0], "seeds": [1], "variants": [{"name": "v-1"}]},
            "output": {"uri": "file:///unused/"},
        },
    }
    res = api.parse_resource(body)
    runs = [artifacts.RunState(r, done=True) for r in plan.experiment_runs(res.spec)]
    for state in runs:
        state.metrics = run_metrics(state.name, top1=50.0, zero_shot_top1=40.0, classes=hostile)
    experiment = artifacts.ExperimentState("ex", "file:///unused/", res.spec, runs)
    dataset = artifacts.DatasetState("ds", "file:///ds/", None, {}, [])  # type: ignore[arg-type]
    dataset.manifest = dataset_manifest("h", hostile)
    outcome = RunOutcome(
        datasets=[DatasetOutcome("ds", True, state=dataset), DatasetOutcome("[/x]", False, "[/bold] failed")],
        experiments=[ExperimentOutcome("ex", True, state=experiment)],
    )
    ui = RichUI()
    ui.console = Console(file=io.StringIO(), width=200, highlight=False)

    ui.summary(outcome, tiny=False)
    ui.banner("[/bold] in a banner")
    ui.warn("[/bold] in a warning")

    text = ui.console.file.getvalue()  # type: ignore[attr-defined]
    for name in [*hostile, "[/bold] in a banner", "[/bold] failed"]:
        assert name in text


# ---------------------------------------------------------------------------------- artifacts read back


def test_a_planted_oversized_marker_is_not_a_commit_and_is_not_read(tmp_path: Path) -> None:
    storage = open_storage(tmp_path.as_uri())
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "gen-00000.done.json").write_bytes(b" " * (2 * 1024 * 1024))

    assert artifacts._marker_hash(storage, "shards/gen-00000.done.json") == ""


def test_a_huge_json_member_in_a_gzip_shard_counts_as_corrupt_without_being_read(tmp_path: Path) -> None:

    from synthrec.workers.shards import scan_shard

    path = tmp_path / "gen-00000.tar"
    path.write_bytes(tar_bytes({"k1.json": b" " * (64 * 1024 * 1024), "k1.jpg": b"jpg"}, mode="w:gz"))
    assert path.stat().st_size < 300 * 1024

    contents = scan_shard(path, classes=2)

    assert contents.samples == [] and contents.corrupt[0]["reason"] == "missing or unreadable json"


def test_a_real_image_over_the_pixel_cap_is_skipped_like_an_unreadable_one(tmp_path: Path) -> None:
    from synthrec.workers.realdata import RealImage, load_rgb
    from tests.unit.test_report_safety import _huge_png

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bomb.png").write_bytes(_huge_png(12_000))
    image = RealImage(0, (tmp_path / "cat" / "bomb.png").as_uri())

    assert load_rgb(image, lambda uri: open_storage(uri), on_bad="skip") is None
    with pytest.raises(Exception, match=r"12000x12000 pixels \(144 MP\) is over the 40 MP limit"):
        load_rgb(image, lambda uri: open_storage(uri), on_bad="fail")
