"""Storage failures inside each stage end with the exit code of their class (synthrec.storage.errors), so
that the Job's podFailurePolicy does the right thing: a missing input fails only its index (42, FailIndex),
storage that stays overloaded or a full disk is retried (1), and only a configuration error (credentials
refused) fails the whole Job (3).

Faults come from the S3 fault proxy in front of moto, on the one input (or output) of each stage; the
stages run in this process under the worker contract (tests.harness.stages.run_task), a full disk in a
worker process of its own whose file-size limit is below the model it downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from synthrec import contract
from synthrec.api import RecognitionExperimentSpec, SyntheticDatasetSpec
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task, experiment_runs, train_task
from synthrec.plan.tasks import DatasetInput, ResourceRef, dump_task
from synthrec.storage import open_storage, upload_tree, write_marker
from tests.harness.artifacts import dataset_manifest
from tests.harness.stages import run_task, write_shard

DATASET = ResourceRef(kind="SyntheticDataset", name="ds", namespace="team-a", uid="uid-ds")
EXPERIMENT = ResourceRef(kind="RecognitionExperiment", name="exp", namespace="team-a", uid="uid-exp")

# (status, S3 code) of the fault -> the exit code and error class the worker must end with
MISSING = (404, "NoSuchKey")
DENIED = (403, "AccessDenied")
OVERLOADED = (503, "SlowDown")
EXPECTED = {
    MISSING: (contract.EXIT_DATA_ERROR, "data"),
    DENIED: (contract.EXIT_CONFIG_ERROR, "config"),
    OVERLOADED: (contract.EXIT_RETRYABLE, "retryable"),
}


def dataset_spec(uri: str, clip: str = "file:///models/clip") -> SyntheticDatasetSpec:
    return SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "prompts": {"strategy": "basic"},
            "generator": {"model": "file:///models/sd"},
            "filter": {"clip": {"model": clip}},
            "sharding": {"shards": 2},
            "output": {"uri": uri},
        }
    )


def prompts_stage(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Nothing to read: the fault hits its output, prompts.jsonl."""
    return dataset_task(dataset_spec(uri), "prompts", DATASET), "PUT", "prompts.jsonl"


def generate_stage(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Input: prompts.jsonl, committed by a real prompts stage."""
    spec = dataset_spec(uri)
    code, _ = run_task(dataset_task(spec, "prompts", DATASET), tmp_path / "setup", monkeypatch)
    assert code == contract.EXIT_OK
    return dataset_task(spec, "generate", DATASET), "GET", "prompts.jsonl"


def filter_stage(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Input: the generated shard (its marker is there)."""
    task = dataset_task(dataset_spec(uri), "filter", DATASET)
    write_shard(open_storage(uri), 0, task.hashes["generate"], 1, tmp_path)
    return task, "GET", "gen-00000.tar"


def reduce_stage(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Input: the features of each shard (their markers are there)."""
    task = dataset_task(dataset_spec(uri), "reduce", DATASET)
    storage = open_storage(uri)
    for shard in range(2):
        write_marker(storage, DatasetLayout.shard_marker(shard), spec_hash=task.hashes["generate"], count=4)
        storage.write_bytes(DatasetLayout.features(shard), b"features")
        write_marker(
            storage,
            DatasetLayout.features_marker(shard),
            spec_hash=task.hashes["filter"],
            sha256=hashlib.sha256(b"features").hexdigest(),
        )
    return task, "GET", "gen-00000.safetensors"


def train_stage(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Input: the pinned synthetic dataset's index."""
    data_uri = uri + "data/"
    storage = open_storage(data_uri)
    index = b'{"shard": 0, "key": "k", "class": 0}\n'
    storage.write_bytes("index/kept.jsonl", index)
    manifest = dataset_manifest("h", ["a", "b"])
    manifest.index.sha256 = hashlib.sha256(index).hexdigest()
    raw = json.dumps(manifest.model_dump(mode="json")).encode()
    storage.write_bytes("manifest.json", raw)
    spec = RecognitionExperimentSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "backbone": {"model": "file:///models/clip"},
            "data": {"synthetic": [{"uri": data_uri}], "test": {"uri": uri + "real/test/"}},
            "output": {"uri": uri + "exp/"},
        }
    )
    run = experiment_runs(spec)[0]
    pinned = [DatasetInput(uri=data_uri, digest=hashlib.sha256(raw).hexdigest())]
    return train_task(spec, run, pinned, EXPERIMENT), "GET", "index/kept.jsonl"


STAGES = {
    "prompts": prompts_stage,
    "generate": generate_stage,
    "filter": filter_stage,
    "reduce": reduce_stage,
    "train": train_stage,
}
CASES = [
    (stage, fault)
    for stage in STAGES
    for fault in (DENIED, OVERLOADED, *([MISSING] if stage != "prompts" else []))
]


@pytest.mark.parametrize(("stage", "fault"), CASES, ids=[f"{s}-{f[1]}" for s, f in CASES])
def test_a_storage_failure_inside_a_stage_ends_with_the_exit_code_of_its_class(
    stage: str, fault: tuple[int, str], s3_faults: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, method, path = STAGES[stage](s3_faults.uri + "team-a/ds/", tmp_path, monkeypatch)
    status, code = fault
    s3_faults.proxy.fail(None, status=status, code=code, method=method, path=path)
    exit_code, summary = run_task(task, tmp_path / "run", monkeypatch, shard=0)
    assert s3_faults.proxy.count(method=method, path=path) >= 1  # the fault was met inside the stage
    assert (exit_code, summary.error) == EXPECTED[fault], summary
    assert path in summary.message


def test_a_full_disk_during_a_model_download_is_retried_not_a_configuration_error(
    tiny_models: Any, s3_faults: Any, tmp_path: Path
) -> None:
    """The filter stage downloads its CLIP model from S3 into the model cache; the worker process may write
    no file larger than 1 MiB (RLIMIT_FSIZE, which the kernel enforces like a full disk: EFBIG)."""
    models = open_storage(s3_faults.uri + "models/clip/")
    upload_tree(models, tiny_models.clip)
    uri = s3_faults.uri + "team-a/ds/"
    task = dataset_task(dataset_spec(uri, clip=models.uri), "filter", DATASET)
    write_shard(open_storage(uri), 0, task.hashes["generate"], 1, tmp_path)
    task_file, log = tmp_path / "task.json", tmp_path / "termination-log"
    task_file.write_text(dump_task(task))
    env = {
        **os.environ,
        contract.ENV_TERMINATION_LOG: str(log),
        contract.ENV_CACHE: str(tmp_path / "cache"),
        "SYNTHREC_DEVICE": "cpu",
        "PYTHONDONTWRITEBYTECODE": "1",
    }

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    worker = subprocess.run(
        [sys.executable, "-m", "synthrec.workers", "filter", "--task", str(task_file), "--shard", "0"],
        env=env,
        preexec_fn=small_disk,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = contract.parse_summary(log.read_text())
    assert worker.returncode == contract.EXIT_RETRYABLE, worker.stderr[-3000:]
    assert summary is not None and summary.error == "retryable"
    assert "no space left" in summary.message and "open_clip_model.safetensors" in summary.message
