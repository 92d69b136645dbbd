"""Planning a pre-training experiment (synthrec.plan.pretraining): the matrix of data size x init x
objective x label space x seed, the stages of each run, chained hashes that cover the method's settings and
the pinned dataset digests (and nothing about where it runs), and the pretrain / transfer tasks."""

from __future__ import annotations

import copy
from typing import Any

from synthrec import api, plan
from synthrec.plan.tasks import DatasetInput, ResourceRef

REF = ResourceRef(kind="RecognitionExperiment", name="t8")


def spec(**changes: Any) -> api.RecognitionExperimentSpec:
    """Table 8's setting: CIFAR-100 Syn at 0 / 1.2M / 2.4M images, from scratch and from IN-1K weights."""
    body: dict[str, Any] = {
        "labels": {"preset": "cifar100"},
        "data": {
            "synthetic": [{"datasetRef": "c100-syn"}],
            "realTrain": {"uri": "s3://bucket/cifar100/train/"},
            "test": {"uri": "s3://bucket/cifar100/test/"},
        },
        "method": {
            "pretrain": {
                "backbone": "resnet50",
                "batchSize": 1024,
                "distributed": {"nodes": 2, "terminationGraceSeconds": 600},
                "transfer": {"classification": {"epochs": 100}},
            }
        },
        "matrix": {"dataSizes": [0, 1200000, 2400000], "inits": ["scratch", "timm:tv_in1k"]},
        "resources": {"gpus": 8},
        "output": {"uri": "s3://bucket/exp/t8/"},
    }
    for path, value in changes.items():
        node = body
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return api.RecognitionExperimentSpec.model_validate(copy.deepcopy(body))


def pinned(digest: str = "a" * 64) -> list[DatasetInput]:
    return [DatasetInput(name="c100-syn", uri="s3://bucket/ds/c100-syn/", digest=digest)]


def test_the_matrix_expands_to_one_run_per_cell_and_size_0_only_transfers_the_init() -> None:
    s = spec()
    runs = plan.pretrain_runs(s)
    assert [r.name for r in runs] == [
        "sup-0-scratch",
        "sup-1.2m-scratch",
        "sup-2.4m-scratch",
        "sup-0-tv-in1k",
        "sup-1.2m-tv-in1k",
        "sup-2.4m-tv-in1k",
    ]
    assert [r.size for r in runs[3:]] == [0, 1200000, 2400000]
    assert {r.init for r in runs[3:]} == {"timm:tv_in1k"}
    assert plan.run_stages(s, runs[0]) == ["transfer"] and runs[0].synthetic == []
    assert plan.run_stages(s, runs[1]) == ["pretrain", "transfer"]
    assert plan.referenced_datasets(s) == ["c100-syn"]


def test_label_spaces_objectives_and_seeds_are_axes_too() -> None:
    s = spec(
        **{
            "data.synthetic": [],
            "matrix": {
                "dataSizes": [2400000],
                "objectives": ["supervised", "moco-v2"],
                "labelSpaces": [
                    {"name": "in1k-syn", "synthetic": [{"datasetRef": "in1k"}]},
                    {"name": "in2k-syn", "synthetic": [{"datasetRef": "in2k-a"}, {"datasetRef": "in2k-b"}]},
                ],
                "seeds": [1, 2],
            },
        }
    )
    runs = plan.pretrain_runs(s)
    assert len(runs) == 8 and runs[0].name == "sup-in1k-syn-2.4m-scratch-s1"
    assert runs[-1].name == "moco-in2k-syn-2.4m-scratch-s2" and runs[-1].objective == "moco-v2"
    assert [x.dataset_ref for x in runs[-1].synthetic] == ["in2k-a", "in2k-b"]
    assert plan.referenced_datasets(s) == ["in1k", "in2k-a", "in2k-b"]
    task = plan.pretrain_task(s, runs[-1], pinned(), REF, cluster=False)
    assert (task.objective, task.seed, task.moco.queue, task.moco.temperature) == ("moco-v2", 2, 65536, 0.2)


def test_the_pretrain_hash_covers_the_settings_and_digests_but_not_where_or_how_often_it_checkpoints() -> (
    None
):
    s = spec()
    run = plan.pretrain_runs(s)[1]
    base = plan.pretrain_task(s, run, pinned(), REF, cluster=True).spec_hash
    same = [
        spec(**{"method.pretrain.distributed": {"nodes": 4}, "resources": {"gpus": 4}}),
        spec(**{"method.pretrain.checkpoint": {"everyMinutes": 1}}),
        spec(**{"method.pretrain.data": {"loaderWorkers": 2}}),
    ]
    for other in same:
        assert plan.pretrain_task(other, run, pinned(), REF, cluster=True).spec_hash == base
    assert plan.pretrain_task(s, run, pinned(), REF, cluster=False).spec_hash == base  # local = cluster
    different = [
        spec(**{"method.pretrain.epochs": 10}),
        spec(**{"method.pretrain.data": {"capSeed": 1}}),
        spec(**{"method.pretrain.backbone": "resnet18"}),
    ]
    for other in different:
        assert plan.pretrain_task(other, run, pinned(), REF, cluster=True).spec_hash != base
    assert plan.pretrain_task(s, run, pinned("b" * 64), REF, cluster=True).spec_hash != base
    other_size = plan.pretrain_runs(s)[2]
    assert plan.pretrain_task(s, other_size, pinned(), REF, cluster=True).spec_hash != base


def test_the_transfer_hash_chains_on_the_pretrain_hash_and_covers_its_own_settings() -> None:
    s = spec()
    none_run, run = plan.pretrain_runs(s)[:2]
    base = plan.transfer_task(s, run, pinned(), REF, cluster=True).spec_hash
    assert plan.transfer_task(s, run, pinned("b" * 64), REF, cluster=True).spec_hash != base
    tuned = spec(**{"method.pretrain.transfer": {"classification": {"epochs": 50}}})
    assert plan.transfer_task(tuned, run, pinned(), REF, cluster=True).spec_hash != base
    assert plan.pretrain_task(tuned, run, pinned(), REF, cluster=True).spec_hash == (
        plan.pretrain_task(s, run, pinned(), REF, cluster=True).spec_hash
    )
    # size 0: the init alone, whatever the datasets
    zero = plan.transfer_task(s, none_run, [], REF, cluster=True)
    assert (
        zero.source.backbone == "resnet50" and zero.source.init == "scratch" and zero.source.pretrain is None
    )


def test_the_tasks_carry_the_run_the_pinned_data_and_the_placement_of_the_executor() -> None:
    s = spec()
    run = plan.pretrain_runs(s)[4]  # 1.2M, IN-1K init
    cluster = plan.pretrain_task(s, run, pinned(), REF, cluster=True)
    assert (cluster.run, cluster.init, cluster.data.size, cluster.batch_size) == (
        "sup-1.2m-tv-in1k",
        "timm:tv_in1k",
        1200000,
        1024,
    )
    assert cluster.data.synthetic == pinned() and cluster.data.images == "all"
    placement = cluster.distributed
    assert (placement.nnodes, placement.nproc_per_node, placement.shutdown_timeout) == (2, 8, 570)
    local = plan.pretrain_task(s, run, pinned(), REF, cluster=False).distributed
    assert (local.nnodes, local.nproc_per_node) == (1, None)  # one process per visible GPU, decided there
    transfer = plan.transfer_task(s, run, pinned(), REF, cluster=True)
    assert transfer.source.pretrain == "s3://bucket/exp/t8/runs/sup-1.2m-tv-in1k/pretrain/"
    fine_tune = transfer.classification
    assert fine_tune is not None and fine_tune.epochs == 100 and fine_tune.batch_size == 768
    assert (
        fine_tune.labels == s.labels
        and fine_tune.train == s.data.real_train
        and fine_tune.test == s.data.test
    )
    assert transfer.linear_probe is None and transfer.detection is None
