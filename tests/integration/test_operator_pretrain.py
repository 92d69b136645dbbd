"""The operator runs a pre-training experiment across two nodes: each stage (pretrain, then transfer) is one
Indexed Job of 2 pods plus a headless Service owned by the experiment; every pod runs the real worker,
whose torchrun meets the other pod at ``<job>-0.<service>`` (the fake kubelet resolves that name as cluster
DNS would, and only because the Service selects the pods); the transfer table lands in status and the
Service goes with the Job's task ConfigMap once the results are folded."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from synthrec.storage import open_storage
from tests.harness.k8s import wait_for
from tests.harness.operator import EXPERIMENTS, FAST, NS, operator_harness, record_api_calls
from tests.harness.pretraining import CLASSES, write_imagefolder, write_synthetic_dataset
from tests.k8s.runners import SubprocessRunner

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def experiment(tmp_path: Path, dataset: str, port: int, output: str) -> dict[str, Any]:
    train = write_imagefolder(tmp_path / "real" / "train", per_class=6, seed=1)
    test = write_imagefolder(tmp_path / "real" / "test", per_class=4, seed=2)
    return {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": "RecognitionExperiment",
        "metadata": {"name": "pre", "namespace": NS},
        "spec": {
            "labels": {"classes": [{"name": c} for c in CLASSES]},
            "data": {"synthetic": [{"uri": dataset}], "realTrain": {"uri": train}, "test": {"uri": test}},
            "method": {
                "pretrain": {
                    "backbone": "test_resnet",
                    "batchSize": 8,
                    "epochs": 1,
                    "optimizer": {"lr": 0.05, "warmupEpochs": 0},
                    "logEvery": 1,
                    "data": {"imageSize": 32, "loaderWorkers": 0, "shuffleBuffer": 16},
                    "distributed": {"nodes": 2, "port": port, "terminationGraceSeconds": 90},
                    "transfer": {
                        "linearProbe": {
                            "epochs": 5,
                            "batchSize": 8,
                            "lr": 1.0,
                            "imageSize": 32,
                            "loaderWorkers": 0,
                        }
                    },
                }
            },
            "scheduling": {"queueName": "team-a"},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "sharedMemory": "256Mi"},
            "output": {"uri": output},  # a cluster's output: object storage the pods share
        },
    }


async def test_a_two_node_stage_is_an_indexed_job_and_a_headless_service_that_meet_with_torchrun(
    k8s_op, s3_bucket, tmp_path: Path
) -> None:
    dataset, _ = write_synthetic_dataset(tmp_path / "data", per_class=8, shards=4)
    port = free_port()
    runner = SubprocessRunner(extra_env={"SYNTHREC_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    config = FAST.with_overrides(status_interval=0.2, resync_interval=1.0)
    async with operator_harness(
        k8s_op, runner, tmp_path, config, kubelet_options={"grace_period": 30.0}
    ) as h:
        await h.create(experiment(tmp_path, dataset, port, s3_bucket.uri + "pre/"))
        status = await h.wait_phase(EXPERIMENTS, "pre", "Succeeded", timeout=900)

        # the transfer table in status: one run (all 32 images), its linear probe top-1 in percent
        [row] = status["results"]
        assert (row["name"], row["state"], row["stage"], row["seed"]) == (
            "sup-all-scratch",
            "Succeeded",
            "transfer",
            1,
        )
        assert 0.0 <= row["linearProbeTop1"] <= 100.0 and row["top1"] == row["linearProbeTop1"]
        assert row["metrics"].endswith("/runs/sup-all-scratch/transfer/")
        assert status["best"] == {"name": "sup-all-scratch", "top1": row["top1"]}

        for stage in ("pretrain", "transfer"):
            name = f"pre-r0-{stage}-a1"
            job = h.created("Job", name)
            spec, pod = job["spec"], job["spec"]["template"]["spec"]
            assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"  # one gang for Kueue
            assert spec["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
            assert pod["subdomain"] == name and pod["terminationGracePeriodSeconds"] == 90
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            assert env["SYNTHREC_RDZV_ENDPOINT"] == f"{name}-0.{name}:{port}"
            shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}
            service = h.created("Service", name)
            assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
            assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
            owner = service["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"], owner["controller"]) == (
                "RecognitionExperiment",
                "pre",
                True,
            )
            pods = h.kubelet.pods(name)
            assert sorted(p.index for p in pods) == [0, 1] and all(p.phase == "Succeeded" for p in pods)

        # both pods were one torchrun group of 2 processes: the card says so
        out = open_storage(s3_bucket.uri + "pre/runs/sup-all-scratch/")
        card = out.read_json("pretrain/card.json")
        assert card["world_size"] == 2 and card["data"]["selected"] == 32 and card["steps"] == 4
        assert row["card"] == out.url("pretrain/card.json") and row["pretrainSteps"] == 4
        probe = out.read_json("transfer/linear-probe/metrics.json")
        assert probe["world_size"] == 2 and probe["top1"] == row["linearProbeTop1"]

        # the results are folded: each Job gets its TTL and loses its task ConfigMap and its Service
        for stage in ("pretrain", "transfer"):
            name = f"pre-r0-{stage}-a1"
            await wait_for(lambda name=name: k8s_op.get_object("v1/services", name, NS) is None, 30)
            await wait_for(lambda name=name: k8s_op.get_object("v1/configmaps", name, NS) is None, 30)
        assert h.validate_children() == 6  # 2 stages: a Job, its ConfigMap and its Service each
    record_api_calls(k8s_op, "pretrain-two-nodes")
