"""The prompts stage end to end: basic templates and Language Enhancement with the tiny T5, written to S3
(moto) or file:// under the worker contract."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthrec.api import SyntheticDatasetSpec
from synthrec.contract import ENV_TERMINATION_LOG, parse_summary
from synthrec.plan import dataset_hashes, dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage
from synthrec.tiny import TINY_CLASSES, TinyModels
from synthrec.workers import prompts
from synthrec.workers.runtime import run_stage
from synthrec.workers.workitems import parse_rows

RESOURCE = ResourceRef(kind="SyntheticDataset", name="tiny-prompts")


def make_spec(tiny: TinyModels, out: str, **prompt_settings: Any) -> SyntheticDatasetSpec:
    return SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "prompts": prompt_settings,
            "generator": {"model": tiny.sd.as_uri(), "imagesPerClass": 10},
            "output": {"uri": out},
        }
    )


def le_spec(tiny: TinyModels, out: str, **settings: Any) -> SyntheticDatasetSpec:
    defaults = {
        "strategy": "language-enhancement",
        "model": tiny.t5.as_uri(),
        "sentencesPerClass": 6,
        "oversample": 6,
        "wrapper": "a photo of {}",
        "seed": 3,
    }
    return make_spec(tiny, out, **{**defaults, **settings})


def run_prompts(spec: SyntheticDatasetSpec, folder: Path) -> tuple[int, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    task = folder / f"prompts-{dataset_hashes(spec)['prompts'][:8]}.json"
    task.write_text(dump_task(dataset_task(spec, "prompts", RESOURCE)))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_stage("prompts", prompts.run, str(task), None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = parse_summary(Path(os.environ[ENV_TERMINATION_LOG]).read_text())
    assert summary is not None
    return code, summary


@pytest.fixture(autouse=True)
def _contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import torch

    monkeypatch.setenv(ENV_TERMINATION_LOG, str(tmp_path / "termination-log"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: one thread is faster and steadier on a shared CPU
    yield
    torch.set_num_threads(before)


def rows_and_marker(uri: str) -> tuple[list[Any], dict[str, Any]]:
    storage = open_storage(uri)
    return parse_rows(storage.read_bytes("prompts.jsonl"), uri), storage.read_json("prompts.done.json")


def test_basic_prompts_on_s3_with_counts_and_a_noop_rerun(
    tiny_models: TinyModels, s3_bucket: Any, tmp_path: Path
) -> None:
    spec = make_spec(tiny_models, s3_bucket.uri + "basic/", templates=["a photo of a {}.", "art of the {}."])
    code, summary = run_prompts(spec, tmp_path)
    assert code == 0, summary
    rows, marker = rows_and_marker(s3_bucket.uri + "basic/")
    assert [(r.class_index, r.index, r.prompt, r.images, r.source) for r in rows[:2]] == [
        (0, 0, "a photo of a red circle.", 5, "basic"),
        (0, 1, "art of the red circle.", 5, "basic"),
    ]
    assert len(rows) == 8 and {r.class_name for r in rows} == set(TINY_CLASSES)
    assert marker["spec_hash"] == dataset_hashes(spec)["prompts"]
    assert marker["counts"] == {"0": 2, "1": 2, "2": 2, "3": 2}
    assert (marker["images"], marker["filled"], marker["strategy"]) == (40, 0, "basic")
    assert (summary.prompts, summary.images, summary.skipped) == (8, 40, False)

    code, again = run_prompts(spec, tmp_path)
    assert code == 0 and again.skipped is True and again.prompts == 8
    assert rows_and_marker(s3_bucket.uri + "basic/")[1] == marker  # not rewritten


def test_language_enhancement_is_deterministic_and_deduplicated(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    first = le_spec(tiny_models, (tmp_path / "a").as_uri() + "/")
    same = le_spec(tiny_models, (tmp_path / "b").as_uri() + "/")
    other_seed = le_spec(tiny_models, (tmp_path / "c").as_uri() + "/", seed=4)
    for spec in (first, same, other_seed):
        code, summary = run_prompts(spec, tmp_path / "tasks")
        assert code == 0, summary
    text = {name: (tmp_path / name / "prompts.jsonl").read_bytes() for name in "abc"}
    assert text["a"] == text["b"]  # same spec and seed: same sentences, same order
    assert text["a"] != text["c"]  # another seed: other draws

    rows, marker = rows_and_marker((tmp_path / "a").as_uri() + "/")
    assert marker["counts"] == {str(c): 6 for c in range(4)}
    assert marker["strategy"] == "language-enhancement" and marker["model"] == tiny_models.t5.as_uri()
    for c in range(4):
        mine = [r for r in rows if r.class_index == c]
        le = [r.prompt for r in mine if r.source == "le"]
        assert len(le) == len(set(le))  # exact duplicates were dropped
        assert all(p.startswith("a photo of ") for p in le)  # wrapped
        assert sum(r.source == "fill" for r in mine) == marker["fills"].get(str(c), 0)
        assert sum(r.images for r in mine) == 10  # imagesPerClass spread over the class's prompts


def test_too_few_unique_sentences_are_filled_and_recorded(tiny_models: TinyModels, tmp_path: Path) -> None:
    # Greedy decoding writes one sentence per class, whatever is asked: 4 of 5 prompts must be filled.
    spec = le_spec(
        tiny_models,
        (tmp_path / "out").as_uri() + "/",
        sentencesPerClass=5,
        oversample=0,
        decoding={"doSample": False},
        templates=["a photo of a {}.", "a drawing of a {}."],
    )
    code, summary = run_prompts(spec, tmp_path / "tasks")
    assert code == 0, summary
    assert (summary.filled, summary.filled_classes) == (16, 4)
    rows, marker = rows_and_marker((tmp_path / "out").as_uri() + "/")
    assert marker["fills"] == {str(c): 4 for c in range(4)} and marker["filled"] == 16
    for c, name in enumerate(TINY_CLASSES):
        mine = [r for r in rows if r.class_index == c]
        assert Counter(r.source for r in mine) == {"le": 1, "fill": 4}
        fills = [r.prompt for r in mine if r.source == "fill"]
        assert fills[:2] == [f"a photo of a {name}.", f"a drawing of a {name}."]  # basic prompts first


@pytest.mark.parametrize(
    ("model", "expected"),
    [("file:///nonexistent/t5", "does not exist"), ("sd", "cannot load a seq2seq model")],
)
def test_an_unusable_language_model_is_a_configuration_error(
    tiny_models: TinyModels, tmp_path: Path, model: str, expected: str
) -> None:
    ref = tiny_models.sd.as_uri() if model == "sd" else model
    spec = le_spec(tiny_models, (tmp_path / "out").as_uri() + "/", model=ref)
    code, summary = run_prompts(spec, tmp_path)
    assert code == 3 and summary.error == "config"
    assert "prompts.model" in summary.message and expected in summary.message
    assert not (tmp_path / "out" / "prompts.done.json").exists()


def test_prompts_committed_by_another_spec_are_never_overwritten(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    out = (tmp_path / "out").as_uri() + "/"
    assert run_prompts(make_spec(tiny_models, out, templates=["a {}"]), tmp_path)[0] == 0
    before = (tmp_path / "out" / "prompts.jsonl").read_bytes()
    code, summary = run_prompts(make_spec(tiny_models, out, templates=["the {}"]), tmp_path)
    assert code == 3 and "another spec" in summary.message
    assert (tmp_path / "out" / "prompts.jsonl").read_bytes() == before
    assert json.loads((tmp_path / "out" / "prompts.done.json").read_text())["rows"] == 4
