"""The local executor drives real worker processes the way a Job would: shard maps, retries, failure policy,
Ctrl-C, resuming. The worker here is tests/harness/fake_worker.py (the real worker runtime and commit
markers, instant stages), so these tests run in seconds; tests/e2e/test_local_run.py runs the real ones."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from synthrec import plan
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.local import LocalRunner, QuietUI, RunError, RunRequest, execute, load_resources, rehome
from synthrec.storage import open_storage

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a few worker processes per test: seconds each, more on a busy machine

FAKE = "tests.harness.fake_worker"
DATASET = ("cats",)  # the dataset only: most tests need no experiment

FILE = """\
apiVersion: synthrec.io/v1alpha1
kind: SyntheticDataset
metadata: {name: cats}
spec:
  labels: {classes: [{name: cat}, {name: dog}]}
  prompts: {strategy: basic}
  generator: {model: tiny://sd}
  filter: {clip: {model: tiny://clip}}
  sharding: {shards: 3, retriesPerShard: 1, maxFailedShards: MAXFAILED, maxAttempts: 1}
  output: {uri: "file:///nonexistent/cats/"}
---
apiVersion: synthrec.io/v1alpha1
kind: RecognitionExperiment
metadata: {name: cats-ct}
spec:
  labels: {classes: [{name: cat}, {name: dog}]}
  backbone: {model: tiny://clip}
  data:
    synthetic: [{datasetRef: cats}]
    test: {uri: "tiny://real/test"}
  matrix: {shots: [0], seeds: [1, 2]}
  output: {uri: "file:///nonexistent/cats-ct/"}
"""


class RecordingUI(QuietUI):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"warning: {text}")

    def error(self, text: str) -> None:
        self.lines.append(f"error: {text}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Harness:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.storage = tmp / "store"
        self.state = tmp / "state"
        self.state.mkdir()
        self.plan_file = tmp / "plan.json"
        self.plan_file.write_text("{}")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # the runner's work folders stay in tmp
        monkeypatch.setenv("FAKE_STATE", str(self.state))
        monkeypatch.setenv("FAKE_PLAN", str(self.plan_file))
        monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.file = self.write_file()

    def write_file(self, max_failed: int = 0, text: str = FILE) -> Path:
        path = self.tmp / "resources.yaml"
        path.write_text(text.replace("MAXFAILED", str(max_failed)))
        return path

    def behave(self, **actions: list[str]) -> None:
        """generate_1=["retry", "ok"] -> {"generate:1": [...]}; resets the try counters."""
        for counter in self.state.glob("tries-*"):
            counter.unlink()
        self.plan_file.write_text(json.dumps({k.replace("_", ":"): v for k, v in actions.items()}))

    def run(
        self, *, parallel: int | None = 3, only: tuple[str, ...] = (), storage: str | None = None
    ) -> tuple[int, RecordingUI]:
        ui = RecordingUI()
        request = RunRequest(
            file=str(self.file),
            storage=storage or self.storage.as_uri(),
            parallel=parallel,
            only=only,
            report=False,
            worker_module=FAKE,
            grace_s=10,
        )
        return execute(request, ui), ui

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        path.unlink(missing_ok=True)
        return rows

    @property
    def dataset(self) -> Path:
        return self.storage / "datasets" / "cats"

    @property
    def experiment(self) -> Path:
        return self.storage / "experiments" / "cats-ct"


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(tmp_path, monkeypatch)


def shards_of(calls: list[dict[str, Any]], stage: str) -> list[int]:
    return sorted(c["shard"] for c in calls if c["stage"] == stage)


def test_runs_every_stage_in_order_then_the_experiment_and_a_rerun_runs_nothing(h: Harness) -> None:
    code, ui = h.run()
    assert code == 0, ui.text
    calls = h.calls()
    stages = [c["stage"] for c in calls]
    assert (
        stages.index("prompts") < stages.index("generate") < stages.index("filter") < stages.index("reduce")
    )
    assert stages.index("reduce") < stages.index("train")
    assert shards_of(calls, "generate") == [0, 1, 2] and shards_of(calls, "filter") == [0, 1, 2]
    assert len([c for c in calls if c["stage"] == "train"]) == 2
    assert (h.dataset / "manifest.json").is_file() and (h.dataset / "spec.json").is_file()
    summary = json.loads((h.experiment / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["shots0-seed1", "shots0-seed2"] and summary["complete"]

    code, ui = h.run()
    assert code == 0, ui.text
    assert h.calls() == []  # everything committed: no worker started
    assert "3/3 shard(s) already committed, skipped" in ui.text


def test_markup_in_class_names_is_printed_as_text_and_the_report_is_still_written(h: Harness) -> None:
    """A class named ``[/bold]`` crashed the summary after every stage had finished: no report."""
    import io

    from rich.console import Console

    from synthrec.local.ui import RichUI

    hostile = '{name: "[/bold]"}, {name: "[red]dog[/red]"}'
    h.file = h.write_file(text=FILE.replace("{name: cat}, {name: dog}", hostile))
    ui = RichUI()
    ui.console = Console(file=io.StringIO(), width=200, highlight=False)
    ui.err = Console(file=io.StringIO(), width=200, highlight=False)
    request = RunRequest(
        file=str(h.file), storage=h.storage.as_uri(), parallel=3, worker_module=FAKE, grace_s=10
    )

    assert execute(request, ui) == 0, ui.err.file.getvalue()  # type: ignore[attr-defined]

    out = ui.console.file.getvalue()  # type: ignore[attr-defined]
    assert "[/bold]" in out and "[red]dog[/red]" in out and "done in" in out
    index = h.storage / "report" / "index.html"
    assert f"report: {index}" in out
    assert "[/bold]" in index.read_text()


def test_a_lost_marker_reruns_only_that_shard_through_the_task_shard_map(h: Harness) -> None:
    assert h.run(only=DATASET)[0] == 0
    h.calls()
    (h.dataset / DatasetLayout.shard_marker(1)).unlink()
    code, ui = h.run(only=DATASET)
    assert code == 0, ui.text
    calls = h.calls()
    assert [(c["stage"], c["shard"], c["index"], c["shard_ids"]) for c in calls] == [("generate", 1, 0, [1])]


def test_each_worker_gets_its_share_of_the_cpus(h: Harness) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert h.run(parallel=1, only=DATASET)[0] == 0
    calls = h.calls()
    assert {c["omp"] for c in calls} == {str(cpus)} and {c["cpus"] for c in calls} == {cpus}
    for path in h.storage.rglob("*.done.json"):
        path.unlink()
    (h.dataset / "manifest.json").unlink()
    assert h.run(parallel=2, only=DATASET)[0] == 0
    generate = [c for c in h.calls() if c["stage"] == "generate"]
    assert {c["omp"] for c in generate} == {str(max(1, cpus // 2))}
    assert all(c["cpus"] == int(c["omp"]) for c in generate)


def test_each_worker_of_a_gpu_resource_gets_its_own_gpu_and_cpu_resources_see_none(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # what this machine may use
    assert h.run(parallel=None, only=DATASET)[0] == 0  # resources.gpus defaults to 1
    generate = [c for c in h.calls() if c["stage"] == "generate"]
    assert {c["cuda"] for c in generate} == {"3", "5"}  # one worker per GPU, 3 shards
    h.write_file(
        text=FILE.replace(
            '  output: {uri: "file:///nonexistent/cats/"}',
            '  resources: {gpus: 0}\n  output: {uri: "file:///nonexistent/cats/"}',
        )
    )
    for path in h.storage.rglob("*.done.json"):
        path.unlink()
    assert h.run(parallel=None, only=DATASET)[0] == 0
    assert {c["cuda"] for c in h.calls()} == {""}  # a pod without GPUs sees none


def test_a_retryable_failure_is_retried_within_retries_per_shard(h: Harness) -> None:
    h.behave(generate_1=["retry", "ok"])
    code, ui = h.run(only=DATASET)
    assert code == 0, ui.text
    assert shards_of(h.calls(), "generate") == [0, 1, 1, 2]
    assert "generate shard 1 failed (exit code 1; try 1 of 2), retrying: fake transient failure" in ui.text


def test_retries_exhausted_fail_the_stage_and_nothing_after_it_runs(h: Harness) -> None:
    h.behave(generate_1=["retry"])
    # one worker at a time, so shards 0 and 2 finish before shard 1's last try fails the stage; in parallel
    # they may still be starting then, and are stopped as a Job stops its pods (see the data error test)
    code, ui = h.run(parallel=1)
    assert code == 1
    calls = h.calls()
    generate = [c["shard"] for c in calls if c["stage"] == "generate"]
    assert generate == [0, 1, 2, 1]  # a failed try goes to the back of the queue; 1 + retriesPerShard tries
    assert not [c for c in calls if c["stage"] in ("filter", "reduce", "train")]
    assert "cats generate: 1 shard(s) (1) failed after 1 attempt(s) of 2 tries each" in ui.text
    assert "fake transient failure" in ui.text
    assert "cats-ct: skipped: dataset cats did not complete" in ui.text
    assert (h.dataset / DatasetLayout.shard_marker(0)).is_file()  # the good shards stay committed
    assert (h.dataset / DatasetLayout.shard_marker(2)).is_file()


def test_a_crash_without_a_summary_counts_as_retryable(h: Harness) -> None:
    h.behave(generate_2=["crash", "ok"])
    assert h.run(only=DATASET)[0] == 0
    assert shards_of(h.calls(), "generate") == [0, 1, 2, 2]


def test_a_worker_that_exits_0_without_committing_does_not_let_the_next_stage_start(h: Harness) -> None:
    h.behave(generate_1=["noop"])
    code, ui = h.run(only=DATASET)
    assert code == 1
    assert "shard(s) 1 have no commit marker although their workers exited 0" in ui.text
    assert not [c for c in h.calls() if c["stage"] == "filter"]


def test_a_data_error_fails_the_shard_without_retrying(h: Harness) -> None:
    h.behave(generate_2=["data"])
    code, ui = h.run(only=DATASET)
    assert code == 1
    # not retried; the other shards may have been stopped (more than maxFailedShards failed), as a Job does
    assert shards_of(h.calls(), "generate").count(2) == 1
    assert "generate shard 2 failed (data error, not retried): fake bad input in shard 2" in ui.text


def test_a_data_error_beyond_the_budget_is_not_worth_another_attempt(h: Harness) -> None:
    h.write_file(text=FILE.replace("maxAttempts: 1", "maxAttempts: 3"))
    h.behave(generate_2=["data"])
    code, ui = h.run(parallel=1, only=DATASET)  # one at a time: shards 0 and 1 commit first
    assert code == 1
    assert shards_of(h.calls(), "generate") == [0, 1, 2]  # shard 2 neither retried nor in an attempt 2
    assert "cats generate: 1 shard(s) (2) failed after 1 attempt(s)" in ui.text


def test_data_errors_within_max_failed_shards_are_tolerated_and_later_stages_skip_those_shards(
    h: Harness,
) -> None:
    h.write_file(max_failed=1)
    h.behave(generate_2=["data"])
    code, ui = h.run(only=DATASET)
    assert code == 0, ui.text
    calls = h.calls()
    assert shards_of(calls, "generate") == [0, 1, 2]
    assert shards_of(calls, "filter") == [0, 1]  # shard 2 has no images to filter
    assert shards_of(calls, "reduce") == [0]
    assert "shard(s) 2 failed; tolerated (sharding.maxFailedShards=1)" in ui.text


def test_a_config_error_stops_the_stage_at_once_and_stops_the_running_shards(h: Harness) -> None:
    h.behave(generate_0=["config"], generate_1=["hang"], generate_2=["hang"])
    code, ui = h.run(parallel=3, only=DATASET)  # returns: the hanging workers never end by themselves
    assert code == 1
    for hanging in h.state.glob("hanging-generate-*"):
        with pytest.raises(ProcessLookupError):
            os.kill(int(hanging.read_text()), 0)  # stopped, not orphaned
    assert (
        "cats generate: stopped: generate shard 0: fake configuration error: the model does not exist"
        in ui.text
    )
    assert not list((h.dataset / "shards").glob("*.done.json"))
    assert not [c for c in h.calls() if c["stage"] == "filter"]


def test_ctrl_c_stops_the_workers_cleanly_and_the_next_run_continues(h: Harness) -> None:
    h.behave(generate_1=["hang"])
    hanging = h.state / "hanging-generate-1"

    def interrupt_when_hanging() -> None:
        deadline = time.monotonic() + 60
        while not hanging.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_when_hanging)
    thread.start()
    code, ui = h.run(parallel=1, only=DATASET)
    thread.join()
    assert code == 130
    pid = int(hanging.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone, not orphaned
    committed = sorted(p.name for p in (h.dataset / "shards").glob("*.done.json"))
    assert committed == ["gen-00000.done.json"]
    before = (h.dataset / DatasetLayout.shard(0)).stat().st_mtime_ns

    h.behave()
    h.calls()
    code, ui = h.run(parallel=1, only=DATASET)
    assert code == 0, ui.text
    assert shards_of(h.calls(), "generate") == [1, 2]
    assert (h.dataset / DatasetLayout.shard(0)).stat().st_mtime_ns == before


def test_experiment_runs_are_pinned_to_the_manifest_digest_and_done_runs_are_skipped(h: Harness) -> None:
    assert h.run()[0] == 0
    train = [c for c in h.calls() if c["stage"] == "train"]
    digest = hashlib.sha256((h.dataset / "manifest.json").read_bytes()).hexdigest()
    for call in train:
        assert call["synthetic"] == [
            {
                "name": "cats",
                "uri": h.dataset.as_uri() + "/",
                "digest": digest,
                "endpoint": None,
                "region": None,
            }
        ]
    (h.experiment / ExperimentLayout.run_marker("shots0-seed2")).unlink()
    assert h.run()[0] == 0
    assert [c["run"] for c in h.calls() if c["stage"] == "train"] == ["shots0-seed2"]


def test_only_an_experiment_uses_its_dataset_from_storage(h: Harness) -> None:
    assert h.run(only=("cats",))[0] == 0
    assert not [c for c in h.calls() if c["stage"] == "train"]
    code, ui = h.run(only=("cats-ct",))
    assert code == 0, ui.text
    assert {c["stage"] for c in h.calls()} == {"train"}


def test_only_an_experiment_without_its_dataset_in_storage_is_refused_before_any_work(h: Harness) -> None:
    code, ui = h.run(only=("cats-ct",))
    assert code == 1
    assert (
        "RecognitionExperiment cats-ct: datasetRef 'cats' is in the file but not selected with --only"
        in ui.text
    )
    assert str(h.dataset.as_uri()) in ui.text
    assert h.calls() == []


def test_a_reference_to_a_dataset_neither_in_the_file_nor_in_storage_names_both(h: Harness) -> None:
    text = FILE.split("---\n")[1].replace("datasetRef: cats", "datasetRef: birds")
    h.write_file(text=text)
    code, ui = h.run()
    assert code == 1
    assert (
        "RecognitionExperiment cats-ct: datasetRef 'birds' is neither a SyntheticDataset in the file nor a "
        "committed dataset in the storage" in ui.text
    )
    assert (h.storage / "datasets" / "birds" / "manifest.json").as_uri() in ui.text
    assert h.calls() == []


def test_storage_spec_keeps_each_output_uri(h: Harness, tmp_path: Path) -> None:
    text = FILE.replace("file:///nonexistent/", (tmp_path / "own").as_uri() + "/")
    h.write_file(text=text)
    code, ui = h.run(storage="spec")
    assert code == 0, ui.text
    assert (tmp_path / "own" / "cats" / "manifest.json").is_file()
    assert (tmp_path / "own" / "cats-ct" / "runs" / "shots0-seed1" / "done.json").is_file()


def test_unknown_only_names_are_refused(h: Harness) -> None:
    code, ui = h.run(only=("dogs",))
    assert code == 1 and "--only dogs: no such resource in the file (it has: cats, cats-ct)" in ui.text


def test_an_unwritable_storage_is_refused_before_any_work(h: Harness, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, ui = h.run(storage=(blocker / "store").as_uri())
    assert code == 1
    assert f"cannot write to the storage {(blocker / 'store').as_uri()}/datasets/cats/" in ui.text
    assert h.calls() == []


def test_a_full_disk_while_writing_a_task_file_is_a_clear_error(h: Harness, tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    resources = rehome(load_resources(h.file), h.storage.as_uri() + "/")
    work = tmp_path / "work"
    (work / "cats").mkdir(parents=True)
    (work / "cats" / "prompts-attempt1.json").symlink_to("/dev/full")  # every write: ENOSPC
    runner = LocalRunner(resources, work_dir=work, worker_module=FAKE)
    with pytest.raises(RunError, match=r"cannot write the task file .*: no space left on the device"):
        runner.run()
    assert h.calls() == []


def test_dataset_stage_hashes_ignore_the_output_so_rehomed_artifacts_stay_valid(h: Harness) -> None:
    original = load_resources(h.file)
    moved = rehome(original, "s3://bucket/prefix/")
    assert moved[0].spec.output.uri == "s3://bucket/prefix/datasets/cats/"
    assert moved[1].spec.output.uri == "s3://bucket/prefix/experiments/cats-ct/"
    assert plan.dataset_hashes(moved[0].spec) == plan.dataset_hashes(original[0].spec)
    assert original[0].spec.output.uri == "file:///nonexistent/cats/"  # the input is not modified


def test_s3_storage_works_the_same(h: Harness, s3_bucket: Any) -> None:
    root = s3_bucket.uri + "team/"
    code, ui = h.run(storage=root)
    assert code == 0, ui.text
    dataset = open_storage(root + "datasets/cats/")
    assert dataset.exists("manifest.json") and dataset.exists(DatasetLayout.shard_marker(2))
    train = [c for c in h.calls() if c["stage"] == "train"]
    assert {c["synthetic"][0]["uri"] for c in train} == {root + "datasets/cats/"}
    assert {c["synthetic"][0]["digest"] for c in train} == {dataset.sha256("manifest.json")}
    assert open_storage(root + "experiments/cats-ct/").exists("summary.json")
    assert h.run(storage=root)[0] == 0
    assert h.calls() == []


def per_seed_file() -> str:
    """A dataset per seed (as Figure 1's Real Guidance has one per shots and seed) and one experiment whose
    datasetRef names them with {seed}."""
    dataset, experiment = FILE.split("---\n")
    per_seed = [
        dataset.replace("name: cats}", f"name: cats-seed{s}}}").replace("/cats/", f"/cats-seed{s}/")
        for s in (1, 2)
    ]
    experiment = experiment.replace("datasetRef: cats}", "datasetRef: 'cats-seed{seed}'}")
    return "---\n".join([*per_seed, experiment])


def test_each_run_trains_on_the_dataset_of_its_own_cell(h: Harness) -> None:
    h.write_file(text=per_seed_file())
    code, ui = h.run()
    assert code == 0, ui.text
    train = {c["run"]: c["synthetic"] for c in h.calls() if c["stage"] == "train"}
    for seed in (1, 2):
        root = h.storage / "datasets" / f"cats-seed{seed}"
        digest = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
        assert [(i["name"], i["uri"], i["digest"]) for i in train[f"shots0-seed{seed}"]] == [
            (f"cats-seed{seed}", root.as_uri() + "/", digest)
        ]


def test_a_missing_cell_dataset_is_refused_by_its_filled_in_name_before_any_work(h: Harness) -> None:
    h.write_file(text=per_seed_file())
    assert h.run(only=("cats-seed1",))[0] == 0
    h.calls()
    code, ui = h.run(only=("cats-seed1", "cats-ct"))
    assert code == 1
    assert (
        "RecognitionExperiment cats-ct: datasetRef 'cats-seed2' is in the file but not selected with --only"
        in ui.text
    )
    assert h.calls() == []


def test_a_failed_cell_dataset_skips_the_experiment_and_names_it(h: Harness) -> None:
    h.write_file(text=per_seed_file())
    h.behave(prompts_0=["config"])  # both datasets' prompts stage
    code, ui = h.run()
    assert code == 1
    assert "cats-ct: skipped: dataset cats-seed1, cats-seed2 did not complete" in ui.text
    assert not [c for c in h.calls() if c["stage"] == "train"]
