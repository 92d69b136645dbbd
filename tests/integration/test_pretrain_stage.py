"""The pretrain and transfer stages end to end on CPU, with timm's tiny ``test_resnet`` and drawn data:

- the shard stream over a dataset written by the real generate shard writer and reduce stage: every
  selected image once per epoch over ranks x loader workers, the same batches from the same seed, a
  resumed epoch equal to the rest of the uninterrupted one, the size cap, S3 like file://;
- supervised and MoCo v2 pre-training through torchrun with 2 processes on gloo;
- SIGTERM at a chosen step (an event: the progress reporter's own step count), a checkpoint, and a resumed
  run that reproduces the uninterrupted loss curve;
- transfer of the pre-trained backbone: fine-tuning and a linear probe on a drawn classification set,
  Faster R-CNN on a drawn VOC set, and the refusal of a ViT for detection.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from synthrec import contract
from synthrec.api import LabelSpace
from synthrec.api.labels import resolve_labels
from synthrec.plan.tasks import PretrainTask, TransferTask
from synthrec.storage import open_storage, upload_tree
from synthrec.workers.pretrain import stage
from synthrec.workers.pretrain.data import (
    LoaderConfig,
    ShardStream,
    plan_data,
    read_manifest,
    unit_samples,
    units,
)
from tests.harness.pretraining import (
    CLASSES,
    VOC_NAMES,
    write_imagefolder,
    write_synthetic_dataset,
    write_voc,
)

pytestmark = pytest.mark.slow

RESOURCE = {"kind": "RecognitionExperiment", "name": "pre"}
LABELS = {"classes": [{"name": n} for n in CLASSES]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4 classes x 32 drawn 32 px images in 16 class-contiguous shards, reduced (everything kept)."""
    root = tmp_path_factory.mktemp("pretrain-data")
    uri, manifest = write_synthetic_dataset(root, per_class=32, shards=16)
    return {"uri": uri, "manifest": manifest, "root": root}


def pretrain_task(out: Path, dataset_uri: str, **kw: Any) -> PretrainTask:
    doc: dict[str, Any] = {
        "resource": RESOURCE,
        "output": {"uri": out.as_uri() + "/"},
        "spec_hash": "spec-1",
        "run": "r1",
        "objective": "supervised",
        "backbone": "test_resnet",
        "data": {
            "synthetic": [{"uri": dataset_uri}],
            "image_size": 32,
            "loader_workers": 1,
            "shuffle_buffer": 64,
        },
        "batch_size": 16,
        "epochs": 4,
        "log_every": 4,
        "optimizer": {"lr": 0.05, "warmup_epochs": 0},
    }
    for key, value in kw.items():
        doc[key] = (
            {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
        )
    return PretrainTask.model_validate(doc)


def worker(stage_name: str, task: Any, folder: Path) -> tuple[int, Any]:
    """``python -m synthrec.workers STAGE --task F`` as the executors start it; exit code and summary."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage_name}-task.json"
    path.write_text(task.model_dump_json())
    log = folder / f"{stage_name}-termination.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        contract.ENV_TERMINATION_LOG: str(log),
        "PYTHONPATH": str(Path.cwd()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.workers", stage_name, "--task", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = contract.parse_summary(log.read_text()) if log.exists() else None
    assert summary is not None, proc.stderr[-3000:]
    return proc.returncode, summary


def curve(out: Path, run: str = "r1") -> list[dict[str, Any]]:
    return json.loads((out / "runs" / run / "pretrain" / "curve.json").read_text())["points"]


# ------------------------------------------------------------------------------------------ the loader


def _plan(task: PretrainTask) -> Any:
    return plan_data(task, [read_manifest(s, None, None) for s in task.data.synthetic], [])


def _config(rank: int, world: int, workers: int, task: PretrainTask, steps: int) -> LoaderConfig:
    return LoaderConfig(
        rank=rank,
        world=world,
        workers=workers,
        local_batch=task.batch_size // world,
        steps_per_epoch=steps,
        seed=task.seed,
        image_size=32,
        objective=task.objective,
        shuffle_buffer=16,
    )


def _batches(stream: ShardStream, workers: int, epoch: int, first: int = 0) -> list[tuple[Any, ...]]:
    stream.set_epoch(epoch, first)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_an_epoch_deals_every_image_once_over_ranks_and_workers(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = pretrain_task(tmp_path, dataset["uri"])
    plan = _plan(task)
    assert plan.selected == 128 and len(plan.shards) == 16
    seen: Counter[str] = Counter()
    for rank in (0, 1):
        stream = ShardStream(plan, _config(rank, 2, 2, task, steps=8))
        for worker_id in (0, 1):  # what each DataLoader worker of each rank reads: 4 batches of 8
            samples = stream._samples(rank * 2 + worker_id)
            for _ in range(4 * 8):
                sample = next(samples)
                assert sample["cls"] == int(
                    sample["key"].split("/")[1][1:6]
                )  # the label is the image's class
                seen[sample["key"]] += 1
    assert len(seen) == 128 and set(seen.values()) == {1}


def test_the_same_seed_gives_the_same_batches_and_a_resumed_epoch_continues_it(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = pretrain_task(tmp_path, dataset["uri"])
    stream = ShardStream(_plan(task), _config(1, 2, 2, task, steps=8))
    first = _batches(stream, 2, epoch=0)
    assert len(first) == 8 and first[0][0].shape == (8, 3, 32, 32) and first[0][0].dtype == torch.uint8
    # a run stopped after 3 batches of this epoch continues with exactly the batches it had not seen,
    # although the DataLoader asks worker 0 first and batch 3 belongs to worker 1
    rest = _batches(stream, 2, epoch=0, first=3)
    assert len(rest) == 5
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[3:], rest, strict=True)
    )
    # each epoch deals and shuffles anew
    keys = [next(stream._samples(3))["key"] for stream.epoch in (0, 0, 1)]
    assert keys[0] == keys[1] != keys[2]


def test_repeated_augmentation_puts_each_image_in_a_batch_n_times_each_copy_augmented_apart(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = pretrain_task(tmp_path, dataset["uri"])
    config = _config(0, 1, 0, task, steps=4)
    config.repeats = 3
    stream = ShardStream(_plan(task), config)
    read: list[str] = []
    samples = stream._samples

    def counted(reader: int) -> Any:
        for sample in samples(reader):
            read.append(sample["key"])
            yield sample

    stream._samples = counted  # type: ignore[method-assign]
    batches = _batches(stream, 0, epoch=0)
    size = config.local_batch
    runs = [(start, min(start + 3, size)) for start in range(0, size, 3)]  # the last image's copies cut
    assert len(batches) == 4 and all(len(labels) == size for _, labels in batches)
    assert len(read) == 4 * len(runs) < 4 * size  # an epoch keeps its steps and reads a third of the images
    for images, labels in batches:
        for start, end in runs:
            assert len(set(labels[start:end].tolist())) == 1
            copies = images[start:end]
            assert all(not torch.equal(copies[0], other) for other in copies[1:]), "each copy augmented apart"

    # the copies are one image: without augmentation they are equal, and a resumed epoch continues it
    stream.transform = lambda: lambda image: image[:, :32, :32]  # type: ignore[method-assign]
    plain = _batches(stream, 0, epoch=0)
    for images, _ in plain:
        for start, end in runs:
            assert all(torch.equal(images[start], other) for other in images[start + 1 : end])
    resumed = _batches(stream, 0, epoch=0, first=2)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain[2:], resumed, strict=True)
    )


def test_the_size_cap_takes_exactly_that_many_images_keeping_each_class_share(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = pretrain_task(tmp_path, dataset["uri"], data={"size": 50, "cap_seed": 3})
    plan = _plan(task)
    keys = [s for u in units(plan, 1) for s in unit_samples(u, plan.images, plan.cap_seed)]
    assert len(keys) == len({s["key"] for s in keys}) == 50
    assert sorted(Counter(s["cls"] for s in keys).values()) == [12, 12, 13, 13]
    again = [s["key"] for u in units(_plan(task), 1) for s in unit_samples(u, plan.images, plan.cap_seed)]
    assert again == [s["key"] for s in keys]


def test_real_images_are_mixed_in_at_the_fraction_with_their_labels_matched(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    import webdataset as wds

    from tests.harness.pretraining import draw, jpeg

    real = tmp_path / "real"
    real.mkdir()
    rng = random.Random(9)
    for part in range(2):
        with wds.TarWriter(str(real / f"real-{part}.tar")) as sink:
            for i in range(20):
                c = i % 4
                label = (
                    {"cls": str(c).encode()}
                    if part == 0
                    else {"json": json.dumps({"class": CLASSES[c]}).encode()}
                )
                sink.write({"__key__": f"r{part}-{i:03d}", "jpg": jpeg(draw(c, rng)), **label})
    task = pretrain_task(
        tmp_path,
        dataset["uri"],
        data={"real": {"data": {"uri": real.as_uri() + "/", "format": "webdataset"}, "fraction": 0.5}},
    )
    plan = plan_data(
        task,
        [read_manifest(s, None, None) for s in task.data.synthetic],
        [f"{real.as_uri()}/real-{p}.tar" for p in (0, 1)],
    )
    assert plan.epoch_samples == 256  # 128 synthetic images are half of an epoch
    config = _config(0, 1, 1, task, steps=16)
    config.labels = resolve_labels(LabelSpace.model_validate(LABELS))
    samples = ShardStream(plan, config)._samples(0)
    drawn = [next(samples) for _ in range(256)]
    reals = [s for s in drawn if s["key"].startswith("real/")]
    assert 96 <= len(reals) <= 160  # 128 expected
    assert all(s["cls"] == int(s["key"].split("-")[1]) % 4 for s in reals)  # cls text and json class names
    assert {s["key"].split("/")[1][:2] for s in reals} == {"r0", "r1"}
    assert len({s["key"] for s in drawn if not s["key"].startswith("real/")}) == len(drawn) - len(reals)


def test_shards_stream_from_s3_as_from_files_through_a_dropped_connection(
    dataset: dict[str, Any], s3_faults: Any, tmp_path: Path
) -> None:
    upload_tree(open_storage(s3_faults.uri + "ds/"), dataset["root"] / "dataset")
    local = pretrain_task(tmp_path, dataset["uri"])
    remote = pretrain_task(tmp_path, s3_faults.uri + "ds/")
    s3_faults.proxy.drop(1, method="GET", path="shards/gen-00003.tar")
    for rank in (0, 1):
        files = ShardStream(_plan(local), _config(rank, 2, 1, local, steps=8))._samples(rank)
        s3 = ShardStream(_plan(remote), _config(rank, 2, 1, remote, steps=8))._samples(rank)
        for _ in range(64):
            a, b = next(files), next(s3)
            assert (a["key"], a["cls"], a["image"]) == (b["key"], b["cls"], b["image"])
    dropped = [s for s in s3_faults.proxy.seen if s.status == 0]
    assert [s.path.endswith("shards/gen-00003.tar") for s in dropped] == [True]  # dropped once, then retried


# ------------------------------------------------------------------------------------ pre-training


@pytest.fixture(scope="module")
def supervised_run(dataset: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("supervised")
    task = pretrain_task(out, dataset["uri"], distributed={"nproc_per_node": 2})
    code, summary = worker("pretrain", task, out / "tasks")
    return {"out": out, "code": code, "summary": summary, "task": task}


def test_supervised_pretraining_with_two_processes_learns_and_writes_its_card(
    supervised_run: dict[str, Any],
) -> None:
    out, summary = supervised_run["out"], supervised_run["summary"]
    assert supervised_run["code"] == 0, summary
    assert summary.steps == 32 and summary.run == "r1"
    points = curve(out)
    assert [p["step"] for p in points] == list(range(4, 33, 4))
    assert sum(p["loss"] for p in points[-2:]) < 0.7 * sum(p["loss"] for p in points[:2])
    folder = out / "runs" / "r1" / "pretrain"
    card = json.loads((folder / "card.json").read_text())
    assert (card["backbone"], card["objective"], card["world_size"], card["steps"]) == (
        "test_resnet",
        "supervised",
        2,
        32,
    )
    assert card["classes"] == list(CLASSES) and card["data"]["selected"] == 128
    assert card["recipe"]["family"] == "resnet" and card["recipe"]["lr"] == 0.05
    import hashlib

    assert (
        card["files"]["backbone.safetensors"]
        == hashlib.sha256((folder / "backbone.safetensors").read_bytes()).hexdigest()
    )
    pointer = json.loads((folder / "checkpoints" / "latest.json").read_text())
    assert (
        pointer["final"]
        and pointer["step"] == 32
        and card["files"]["checkpoint"]["sha256"] == pointer["sha256"]
    )
    from safetensors.torch import load_file

    assert not any(k.startswith("fc.") for k in load_file(folder / "backbone.safetensors"))  # no classifier
    # the committed run answers at once the second time
    code, again = worker("pretrain", supervised_run["task"], out / "tasks")
    assert code == 0 and again.skipped is True and again.loss == summary.loss


def test_moco_v2_pretraining_with_two_processes_learns_instance_discrimination(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = pretrain_task(
        tmp_path,
        dataset["uri"],
        objective="moco-v2",
        distributed={"nproc_per_node": 2},
        epochs=12,
        log_every=8,
        moco={"queue": 16, "momentum": 0.9},
        optimizer={"lr": 0.03, "min_lr": 0.03},  # a constant rate: 96 steps are the very start of MoCo
    )
    code, summary = worker("pretrain", task, tmp_path / "tasks")
    assert code == 0, summary
    losses = [p["loss"] for p in curve(tmp_path)]
    assert len(losses) == 12
    # the first point is scored against the random initial queue; from the second on, the loss against
    # real keys (chance: log 17 = 2.83) must go down: a negative trend and a lower end than start
    later = losses[1:]
    steps = range(len(later))
    mean_x, mean_y = sum(steps) / len(later), sum(later) / len(later)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, later, strict=True))
    assert slope < 0, losses
    assert sum(losses[-3:]) / 3 < sum(losses[1:3]) / 2, losses
    card = json.loads((tmp_path / "runs" / "r1" / "pretrain" / "card.json").read_text())
    assert card["moco"]["queue"] == 16 and card["classes"] is None and card["world_size"] == 2


class _SigtermAt:
    """A progress reporter that sends this process SIGTERM when the training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from synthrec.workers.runtime import Progress

        at = self.step

        class Reporter(Progress):
            def advance(self, n: int = 1) -> None:
                super().advance(n)
                if self.done == at:
                    os.kill(os.getpid(), signal.SIGTERM)

        return Reporter(*args, **kwargs)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_repeats_the_uninterrupted_curve(
    dataset: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "termination.log"))
    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    torch.set_num_threads(1)
    try:
        kw = {
            "data": {"loader_workers": 2},
            "log_every": 1,
            "epochs": 3,
            "checkpoint": {"every_minutes": 1000},
        }
        whole = pretrain_task(tmp_path / "whole", dataset["uri"], **kw)
        broken = pretrain_task(tmp_path / "broken", dataset["uri"], **kw)
        for name, task in (("whole", whole), ("broken", broken)):
            (tmp_path / f"{name}.json").write_text(task.model_dump_json())
        assert stage.run_rank("pretrain", str(tmp_path / "whole.json")) == 0
        # SIGTERM in the middle of the second epoch (step 11 of 24: batch 3, which loader worker 1 owns)
        monkeypatch.setattr(stage, "Progress", _SigtermAt(11))
        code = stage.run_rank("pretrain", str(tmp_path / "broken.json"))
        summary = contract.parse_summary((tmp_path / "termination.log").read_text())
        assert code == contract.EXIT_RETRYABLE and "stopped at step 11 of 24" in summary.message
        pointer = json.loads((tmp_path / "broken/runs/r1/pretrain/checkpoints/latest.json").read_text())
        assert pointer["step"] == 11 and not pointer["final"]
        assert not (tmp_path / "broken/runs/r1/pretrain/done.json").exists()
        monkeypatch.undo()
        monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "termination.log"))
        assert stage.run_rank("pretrain", str(tmp_path / "broken.json")) == 0
        metrics = json.loads((tmp_path / "broken/runs/r1/pretrain/metrics.json").read_text())
        assert metrics["resumed_at"] == [11]  # it continued from the checkpoint, it did not start over
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    a, b = curve(tmp_path / "whole"), curve(tmp_path / "broken")
    assert [p["step"] for p in a] == [p["step"] for p in b] == list(range(1, 25))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5) and y["lr"] == pytest.approx(x["lr"])


def test_sigterm_to_the_launcher_stops_both_ranks_with_a_checkpoint(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    """What a pod eviction does: SIGTERM to PID 1 (our launcher), forwarded through torchrun to the ranks."""
    task = pretrain_task(tmp_path, dataset["uri"], distributed={"nproc_per_node": 2}, epochs=1000)
    path = tmp_path / "task.json"
    path.write_text(task.model_dump_json())
    progress, log = tmp_path / "progress.json", tmp_path / "termination.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        contract.ENV_TERMINATION_LOG: str(log),
        contract.ENV_PROGRESS_FILE: str(progress),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthrec.workers", "pretrain", "--task", str(path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the event: rank 0 reports its first finished step (8000 steps would take far longer than this)
        while not (progress.exists() and json.loads(progress.read_text() or "{}").get("done", 0) >= 1):
            assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = contract.parse_summary(log.read_text())
    assert proc.returncode == contract.EXIT_RETRYABLE, stderr[-3000:]
    assert summary.error == "retryable" and "after a signal; the checkpoint resumes it" in summary.message
    pointer = json.loads((tmp_path / "runs/r1/pretrain/checkpoints/latest.json").read_text())
    assert 1 <= pointer["step"] < 8000 and not pointer["final"]


# ---------------------------------------------------------------------------------------------- transfer


def test_the_pretrained_backbone_transfers_to_classification_and_detection(
    supervised_run: dict[str, Any], tmp_path: Path
) -> None:
    assert supervised_run["code"] == 0
    train = write_imagefolder(tmp_path / "train", per_class=12, seed=1)
    test = write_imagefolder(tmp_path / "test", per_class=8, seed=2)
    voc = write_voc(tmp_path / "voc", images=16, split="trainval", size=48, seed=3)
    write_voc(tmp_path / "voc", images=8, split="test", size=48, seed=4)
    split = {
        "labels": LABELS,
        "train": {"uri": train},
        "test": {"uri": test},
        "image_size": 32,
        "loader_workers": 0,
    }
    task = TransferTask.model_validate(
        {
            "resource": RESOURCE,
            "output": {"uri": (tmp_path / "out").as_uri() + "/"},
            "spec_hash": "t1",
            "run": "r1",
            "source": {"pretrain": (supervised_run["out"] / "runs/r1/pretrain").as_uri() + "/"},
            "classification": {**split, "epochs": 3, "batch_size": 16, "lr": 0.05},
            "linear_probe": {**split, "epochs": 30, "batch_size": 16, "lr": 1.0},
            "detection": {
                "train": [{"uri": voc}],
                "test": {"uri": voc, "split": "test"},
                "classes": list(VOC_NAMES),
                "iterations": 6,
                "batch_size": 2,
                "min_size_train": [48],
                "min_size_test": 48,
                "max_size": 48,
                "warmup_iterations": 2,
                "loader_workers": 0,
            },
        }
    )
    code, summary = worker("transfer", task, tmp_path / "tasks")
    assert code == 0, summary
    # chance is 25 %: the pre-trained features already separate the drawn classes
    assert summary.classification_top1 > 50 and summary.linear_probe_top1 > 50
    folder = tmp_path / "out" / "runs" / "r1" / "transfer"
    classification = json.loads((folder / "classification" / "metrics.json").read_text())
    assert classification["counts"]["test_images"] == 32 and classification["classes"] == list(CLASSES)
    assert classification["kind"] == "classification" and classification["settings"]["epochs"] == 3
    assert classification["source"]["card"]["backbone"] == "test_resnet"
    detection = json.loads((folder / "detection" / "metrics.json").read_text())
    assert detection["counts"]["images"] == 8 and detection["counts"]["detections"] > 0
    assert 0 <= detection["ap50"] <= 100 and 0 <= detection["ap50_voc07"] <= 100
    assert summary.ap50 == detection["ap50"] and len(detection["per_class"]) == 2
    assert "11-point" in detection["notes"]["evaluator"]
    assert all(
        (folder / kind / "done.json").exists() for kind in ("classification", "linear-probe", "detection")
    )


def test_a_vit_is_refused_for_detection_before_any_data_is_read(tmp_path: Path) -> None:
    task = TransferTask.model_validate(
        {
            "resource": RESOURCE,
            "output": {"uri": (tmp_path / "out").as_uri() + "/"},
            "spec_hash": "t",
            "run": "v",
            "source": {"backbone": "test_vit"},
            "detection": {
                "train": [{"uri": "file:///nonexistent/voc/"}],
                "test": {"uri": "file:///nonexistent/voc/"},
            },
        }
    )
    code, summary = worker("transfer", task, tmp_path / "tasks")
    assert code == contract.EXIT_CONFIG_ERROR and summary.error == "config"
    assert "single-scale feature map" in summary.message and "test_vit" in summary.message
