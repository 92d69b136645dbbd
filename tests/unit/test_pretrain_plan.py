"""Pre-training planning, pure parts: the task's validation, the recipes, the size cap, the split of shards
over readers and the torchrun command lines (synthrec.workers.pretrain)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from synthrec.contract.manifest import DatasetManifest, ShardRecord
from synthrec.plan.tasks import PretrainTask, TransferTask
from synthrec.storage import open_storage
from synthrec.workers.pretrain import distributed
from synthrec.workers.pretrain.data import (
    ShardPlan,
    Unit,
    allocate,
    assign,
    batches_of,
    class_mixing_warning,
    plan_data,
    select_keys,
    units,
)
from synthrec.workers.pretrain.recipes import lr_at, resolve_recipe
from synthrec.workers.runtime import ConfigError, DataError
from tests.harness.artifacts import dataset_manifest

BASE = {
    "resource": {"kind": "RecognitionExperiment", "name": "x"},
    "output": {"uri": "file:///tmp/out/"},
    "spec_hash": "h",
    "run": "r1",
}


def pretrain(**kw: Any) -> PretrainTask:
    doc = {
        **BASE,
        "objective": "supervised",
        "backbone": "resnet50",
        "data": {"synthetic": [{"uri": "file:///d/"}]},
    }
    doc.update(kw)
    return PretrainTask.model_validate(doc)


# ----------------------------------------------------------------------------------------------- task


def test_the_task_rejects_combinations_that_cannot_run_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="batch_size 256 is not divisible by the world size 3"):
        pretrain(distributed={"nproc_per_node": 3})
    with pytest.raises(ValidationError, match=r"world size 6 \(2 node\(s\) x 3 process\(es\)\)"):
        pretrain(distributed={"nnodes": 2, "nproc_per_node": 3})
    with pytest.raises(ValidationError, match=r"moco\.queue 65536 must be a multiple of batch_size 384"):
        pretrain(objective="moco-v2", batch_size=384)
    with pytest.raises(ValidationError, match="format must be webdataset"):
        pretrain(
            data={
                "synthetic": [{"uri": "file:///d/"}],
                "real": {"data": {"uri": "file:///r/"}, "fraction": 0.5},
            }
        )
    with pytest.raises(ValidationError, match="use scratch, timm, timm:<tag>"):
        pretrain(init="imagenet")
    with pytest.raises(ValidationError, match="exactly one of pretrain"):
        TransferTask.model_validate({**BASE, "source": {}, "linear_probe": None})
    with pytest.raises(ValidationError, match="at least one of classification"):
        TransferTask.model_validate({**BASE, "source": {"backbone": "resnet50"}})
    ok = pretrain(objective="moco-v2", init="timm:tv_in1k", distributed={"nproc_per_node": 8})
    assert ok.moco.queue == 65536 and ok.moco.temperature == 0.2 and ok.moco.momentum == 0.999 and ok.moco.mlp


def test_recipes_default_to_the_official_values_scaled_by_batch() -> None:
    moco = resolve_recipe("moco-v2", False, 512)
    assert (moco.optimizer, moco.lr, moco.momentum, moco.weight_decay, moco.epochs) == (
        "sgd",
        0.06,
        0.9,
        1e-4,
        200,
    )
    assert moco.warmup_epochs == 0 and moco.schedule_per == "epoch" and moco.decay_norm_and_bias
    deit = resolve_recipe("supervised", True, 1024)
    assert (deit.optimizer, deit.lr, deit.weight_decay, deit.epochs) == ("adamw", 1e-3, 0.05, 300)
    assert (deit.mixup, deit.cutmix, deit.label_smoothing, deit.random_erasing, deit.drop_path) == (
        0.8,
        1.0,
        0.1,
        0.25,
        0.1,
    )
    assert deit.randaugment and not deit.decay_norm_and_bias and deit.interpolation == "bicubic"
    assert deit.repeated_augmentation == 3  # DeiT's RASampler
    resnet = resolve_recipe("supervised", False, 256)
    assert (resnet.optimizer, resnet.lr, resnet.epochs, resnet.mixup) == ("sgd", 0.1, 90, 0.0)
    assert resnet.repeated_augmentation == moco.repeated_augmentation == 1
    task = pretrain(
        optimizer={"lr": 0.5, "weight_decay": 0.0},
        supervised={"mixup": 0.2, "repeated_augmentation": 1},
        epochs=3,
    )
    custom = resolve_recipe(
        "supervised", True, 256, epochs=task.epochs, optimizer=task.optimizer, supervised=task.supervised
    )
    assert (custom.lr, custom.weight_decay, custom.mixup, custom.epochs, custom.cutmix) == (
        0.5,
        0.0,
        0.2,
        3,
        1.0,
    )
    assert custom.repeated_augmentation == 1


def test_the_schedule_warms_up_per_step_then_follows_the_cosine_per_epoch() -> None:
    deit = resolve_recipe("supervised", True, 512)  # lr 5e-4, warmup 5 epochs from 1e-6, min 1e-5
    assert lr_at(deit, 0, 0, 100) == pytest.approx(1e-6)
    assert lr_at(deit, 2, 50, 100) == pytest.approx(1e-6 + (5e-4 - 1e-6) * 2.5 / 5)
    assert lr_at(deit, 150, 0, 100) == pytest.approx(1e-5 + (5e-4 - 1e-5) * 0.5)
    assert lr_at(deit, 150, 0, 100) == lr_at(deit, 150, 99, 100)  # constant within an epoch
    moco = resolve_recipe("moco-v2", False, 256)
    assert lr_at(moco, 0, 0, 10) == 0.03 and lr_at(moco, 100, 5, 10) == pytest.approx(0.015)
    assert lr_at(moco, 199, 0, 10) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))


# ------------------------------------------------------------------------------------------- size cap


def test_the_cap_is_exact_proportional_and_deterministic() -> None:
    available = [1000, 1000, 1000, 7, 0, 3]
    taken = allocate(available, 1200, seed=0, ids=list(range(6)))
    assert sum(taken) == 1200
    assert all(0 <= t <= a for t, a in zip(taken, available, strict=True))
    assert all(abs(t - 1200 * a / sum(available)) < 1 for t, a in zip(taken, available, strict=True))
    assert allocate(available, 1200, seed=0, ids=list(range(6))) == taken
    with pytest.raises(ValueError, match="exceeds"):
        allocate([1, 2], 4, seed=0, ids=[0, 1])


def _manifest(shards: list[dict[int, tuple[int, int]]], classes: int = 4) -> DatasetManifest:
    """A manifest as reduce writes it: per shard {class: (images, kept)}."""
    records = [
        {
            "shard": s,
            "tar": f"shards/gen-{s:05d}.tar",
            "images": sum(n for n, _ in counts.values()),
            "corrupt": 0,
            "index": f"index/shards/gen-{s:05d}.jsonl",
            "index_sha256": None,
            "kept": sum(k for _, k in counts.values()),
            "classes": {str(c): n for c, (n, _) in counts.items()},
            "kept_classes": {str(c): k for c, (_, k) in counts.items() if k},
        }
        for s, counts in enumerate(shards)
    ]
    return dataset_manifest("r", [f"c{i}" for i in range(classes)], shards=records)


def _storage() -> Any:
    return open_storage("file:///d/")


def test_the_plan_takes_kept_or_all_images_and_caps_keeping_each_class_share() -> None:
    manifest = _manifest([{0: (100, 50), 1: (20, 10)}, {1: (80, 40), 2: (100, 60)}, {3: (100, 0)}])
    kept_only = {"synthetic": [{"uri": "file:///d/"}], "images": "kept"}
    kept = plan_data(pretrain(data=kept_only), [(manifest, "d" * 64, _storage())], [])
    assert kept.selected == kept.available == 160 and len(kept.shards) == 2  # shard 2 has nothing kept
    everything = plan_data(
        pretrain(data={"synthetic": [{"uri": "file:///d/"}], "images": "all"}),
        [(manifest, "d", _storage())],
        [],
    )
    assert everything.selected == 400 and len(everything.shards) == 3
    capped = plan_data(pretrain(data={**kept_only, "size": 80}), [(manifest, "d", _storage())], [])
    per_class = Counter()
    for s in capped.shards:
        for c, n in s.take:
            per_class[c] += n
    assert capped.selected == 80 and dict(per_class) == {0: 25, 1: 25, 2: 30}
    with pytest.raises(ConfigError, match=r"data\.size 161 exceeds the 160 kept images"):
        plan_data(
            pretrain(data={**kept_only, "size": 161}),
            [(manifest, "d", _storage())],
            [],
        )
    old = manifest.model_copy(
        update={"shards": [ShardRecord(shard=0, tar="shards/gen-00000.tar", images=1, corrupt=0)]}
    )
    with pytest.raises(DataError, match="older synthrec without per-shard index files"):
        plan_data(pretrain(data=kept_only), [(old, "d", _storage())], [])


def test_the_loader_warns_when_its_open_shards_hold_few_of_the_classes() -> None:
    """Class-ordered shards of many classes (one class each here): 16 open shards see 16 of 100 classes."""
    everything = {"synthetic": [{"uri": "file:///d/"}], "images": "all"}

    def plan(shards: list[dict[int, tuple[int, int]]], classes: int) -> Any:
        return plan_data(pretrain(data=everything), [(_manifest(shards, classes), "d", _storage())], [])

    class_ordered = plan([{s: (10, 10)} for s in range(100)], classes=100)
    warning = class_mixing_warning(class_ordered, open_shards=16)
    assert warning is not None and "1.0 of the 100 classes" in warning and "about 16 classes" in warning
    assert "sharding.order: interleaved" in warning
    interleaved = plan([{c: (1, 1) for c in range(100)} for _ in range(10)], classes=100)
    assert class_mixing_warning(interleaved, open_shards=16) is None
    few_classes = plan([{s % 4: (10, 10)} for s in range(8)], classes=4)  # 16 open shards hold all 4
    assert class_mixing_warning(few_classes, open_shards=16) is None


def test_a_shard_selects_its_kept_keys_and_the_cap_ranks_keys_by_seed() -> None:
    rows = [{"key": f"k{i:03d}", "class": i % 2, "kept": i % 3 != 0} for i in range(60)]
    kept = [r for r in rows if r["kept"]]
    full = ShardPlan(0, "file:///d/", 0, "t", "i", None, len(kept), ((0, 20), (1, 20)))
    assert list(select_keys(rows, full, "kept", 0)) == [r["key"] for r in kept]  # tar order
    half = ShardPlan(0, "file:///d/", 0, "t", "i", len(kept), len(kept), ((0, 10), (1, 5)))
    chosen = select_keys(
        rows, ShardPlan(0, "file:///d/", 0, "t", "i", None, len(kept), ((0, 10), (1, 5))), "kept", 7
    )
    assert Counter(chosen.values()) == {0: 10, 1: 5} and set(chosen) <= {r["key"] for r in kept}
    assert select_keys(rows, half, "kept", 7) == chosen and select_keys(rows, half, "kept", 8) != chosen
    bigger = ShardPlan(0, "file:///d/", 0, "t", "i", None, len(kept), ((0, 15), (1, 10)))
    assert set(chosen) <= set(select_keys(rows, bigger, "kept", 7))  # a larger cap contains the smaller
    with pytest.raises(DataError, match="changed after its reduce stage"):
        select_keys(rows, ShardPlan(0, "file:///d/", 0, "t", "i", None, 41, ((0, 1),)), "kept", 0)


# ------------------------------------------------------------------------------------ readers, batches


def _plans(counts: list[int]) -> list[ShardPlan]:
    return [ShardPlan(0, "file:///d/", s, "t", "i", None, n, ((0, n),)) for s, n in enumerate(counts)]


def test_shards_are_dealt_to_readers_balanced_by_count_and_shuffled_per_epoch() -> None:
    items = [Unit(p) for p in _plans([100] * 37 + [40] * 11)]
    epoch0 = assign(items, 8, seed=1, epoch=0, size=lambda u: u.count)
    loads = [sum(u.count for u in r) for r in epoch0]
    assert max(loads) - min(loads) <= 100 and sorted(u.plan.shard for r in epoch0 for u in r) == list(
        range(48)
    )
    assert assign(items, 8, seed=1, epoch=0, size=lambda u: u.count) == epoch0
    assert assign(items, 8, seed=1, epoch=1, size=lambda u: u.count) != epoch0


def test_fewer_shards_than_readers_are_split_into_parts_by_position() -> None:
    class Plan:
        shards = tuple(_plans([10, 7]))

    parts = units(Plan(), readers=5)  # type: ignore[arg-type]
    assert [(u.plan.shard, u.part, u.parts, u.count) for u in parts] == [
        (0, 0, 3, 4),
        (0, 1, 3, 3),
        (0, 2, 3, 3),
        (1, 0, 3, 3),
        (1, 1, 3, 2),
        (1, 2, 3, 2),
    ]


def test_loader_worker_w_owns_every_wth_batch_of_the_epoch() -> None:
    assert [batches_of(w, 3, 0, 10) for w in range(3)] == [4, 3, 3]
    assert [batches_of(w, 3, 4, 10) for w in range(3)] == [2, 2, 2]
    assert sum(batches_of(w, 4, 0, 7) for w in range(4)) == 7


# ------------------------------------------------------------------------------------------- torchrun


def test_the_local_launch_is_standalone_with_one_process_per_gpu_or_one_on_cpu() -> None:
    task = pretrain()
    cpu = distributed.launch_for_task(task, "/t.json", python="py", gpus=0, cpus=8, results_dir="/r")
    assert cpu.argv == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=1",
        "--max-restarts=0",
        "--shutdown-timeout=120",
        "--standalone",
        "-m",
        "synthrec.workers",
        "pretrain",
        "--task",
        "/t.json",
    ]
    assert cpu.env == {"OMP_NUM_THREADS": "8", distributed.ENV_RESULTS: "/r"}
    gpu = distributed.launch_for_task(task, "/t.json", python="py", gpus=4, cpus=32, results_dir=None)
    assert gpu.nproc_per_node == 4 and gpu.env == {"OMP_NUM_THREADS": "8"}
    forced = distributed.launch_for_task(
        pretrain(distributed={"nproc_per_node": 2}), "/t", python="py", gpus=0, cpus=2, results_dir=None
    )
    assert forced.nproc_per_node == 2


def test_a_multi_node_launch_meets_at_index_0s_stable_hostname_which_hosts_the_store() -> None:
    task = pretrain(distributed={"nnodes": 4, "nproc_per_node": 8, "shutdown_timeout": 270}, attempt=2)
    task_file = "/etc/synthrec/task/task.json"
    pods = {
        index: distributed.launch_for_task(
            task,
            task_file,
            python="python",
            gpus=8,
            cpus=64,
            results_dir=None,
            environ={"SYNTHREC_RDZV_ENDPOINT": "x-r3-pretrain-a2-0.x-r3-pretrain-a2:29500", **index_env},
        )
        for index, index_env in ((0, {"JOB_COMPLETION_INDEX": "0"}), (3, {"JOB_COMPLETION_INDEX": "3"}))
    }
    for index, cmd in pods.items():
        assert "--standalone" not in cmd.argv
        assert cmd.argv[3:11] == [
            "--nnodes=4",
            "--nproc-per-node=8",
            "--max-restarts=3",
            "--shutdown-timeout=270",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=x-r3-pretrain-a2-0.x-r3-pretrain-a2:29500",
            "--rdzv-id=x-r1-a2",  # the same on every pod of the attempt
            f"--rdzv-conf=join_timeout=900,is_host={int(index == 0)}",
        ]
        assert cmd.argv[-5:] == [
            "-m",
            "synthrec.workers",
            "pretrain",
            "--task",
            "/etc/synthrec/task/task.json",
        ]
    with pytest.raises(ConfigError, match="needs SYNTHREC_RDZV_ENDPOINT"):
        distributed.launch_for_task(task, "t", python="p", gpus=8, cpus=8, results_dir=None, environ={})
    with pytest.raises(ValueError, match="needs the rendezvous endpoint"):
        distributed.launch_command(
            stage="pretrain", task_path="t", python="p", nnodes=2, nproc_per_node=1, max_restarts=0
        )
