"""The runs of a pre-training experiment (``method.pretrain``): the matrix expanded, their hashes and the
pretrain and transfer tasks of each run.

A run is one cell of labelSpaces x objectives x inits x dataSizes x seeds. It has up to two stages: a
``pretrain`` stage (skipped for data size 0, the paper's "0" column: the init is transferred as it is)
and a ``transfer`` stage (when ``method.pretrain.transfer`` is set) that reads the pre-trained backbone.
Their hashes chain: the transfer hash covers the pretrain hash, which covers the method's settings and
the pinned digests of the datasets, so a changed dataset or setting never reuses old results.
"""

from __future__ import annotations

from typing import Any

from synthrec.api import RecognitionExperimentSpec, SyntheticSource
from synthrec.api.pretraining import init_label
from synthrec.contract.layout import ExperimentLayout
from synthrec.plan.stages import HASH_VERSION, digest, storage_target
from synthrec.plan.tasks import (
    ClassificationTransfer,
    DatasetInput,
    LinearProbe,
    Placement,
    PretrainedSource,
    PretrainRun,
    PretrainTask,
    PretrainTaskData,
    ResourceRef,
    TransferTask,
)
from synthrec.storage.uris import join

PRETRAIN_STAGE = "pretrain"
TRANSFER_STAGE = "transfer"
LOCAL_SHUTDOWN_TIMEOUT = 120  # seconds torchrun gives the ranks after Ctrl-C in local mode
CHECKPOINT_MARGIN = 30  # seconds of the pod's grace period left for the launcher after the ranks' timeout
OBJECTIVE_LABELS = {"supervised": "sup", "moco-v2": "moco"}


def size_label(size: int | None) -> str:
    """'all', '0', '1.2m', '3m', '50k' or the number: exact, so distinct sizes get distinct labels."""
    if size is None:
        return "all"
    if size and size % 1_000_000 == 0:
        return f"{size // 1_000_000}m"
    if size and size % 100_000 == 0:
        return f"{size / 1_000_000:g}m"
    if size and size % 1000 == 0:
        return f"{size // 1000}k"
    return str(size)


def pretrain_runs(spec: RecognitionExperimentSpec) -> list[PretrainRun]:
    """The matrix expanded in a stable order (label space, objective, init, data size, seed)."""
    method, matrix = spec.method.pretrain, spec.matrix
    assert method is not None, "not a pre-training experiment"
    default_sizes: list[int | None] = list(matrix.data_sizes or [None])
    spaces: list[tuple[str | None, list[SyntheticSource], list[int | None]]] = [
        (s.name, list(s.synthetic), list(s.data_sizes or default_sizes)) for s in matrix.label_spaces or []
    ] or [(None, list(spec.data.synthetic), default_sizes)]
    objectives = list(matrix.objectives or [method.objective])
    inits = list(matrix.inits or [method.init])
    seeds = matrix.seeds
    runs: list[PretrainRun] = []
    for space, synthetic, sizes in spaces:
        for objective in objectives:
            for init in inits:
                for size in sizes:
                    for seed in seeds:
                        parts = [OBJECTIVE_LABELS[objective], space, size_label(size), init_label(init)]
                        if len(seeds) > 1:
                            parts.append(f"s{seed}")
                        runs.append(
                            PretrainRun(
                                index=len(runs),
                                name="-".join(p for p in parts if p),
                                objective=objective,
                                label_space=space,
                                size=size,
                                init=init,
                                seed=seed,
                                synthetic=synthetic if size != 0 else [],
                            )
                        )
    return runs


def _method_wire(spec: RecognitionExperimentSpec) -> dict[str, Any]:
    assert spec.method.pretrain is not None
    return spec.method.pretrain.wire()


def pretrain_hash(spec: RecognitionExperimentSpec, run: PretrainRun, inputs: list[DatasetInput]) -> str:
    """What a pre-trained backbone depends on: the method's settings (not how it is placed on machines,
    how often it checkpoints, or how many loader processes read), the cell of the matrix and the pinned
    datasets."""
    w = _method_wire(spec)
    data = {k: v for k, v in w.get("data", {}).items() if k not in ("loaderWorkers", "prefetchFactor")}
    settings = {k: v for k, v in w.items() if k not in ("distributed", "checkpoint", "transfer", "data")}
    return digest(
        {
            "v": HASH_VERSION,
            "pretrain": {**settings, "data": data},
            "run": {
                "objective": run.objective,
                "init": run.init,
                "size": run.size,
                "seed": run.seed,
            },
            "synthetic": [{"uri": i.uri, "digest": i.digest} for i in inputs],
        }
    )


def transfer_hash(spec: RecognitionExperimentSpec, run: PretrainRun, source: str) -> str:
    """What the transfer results depend on: the transfer settings, their data and the source (the
    pretrain hash, or the backbone and init of a data-size-0 run)."""
    w = spec.wire()
    transfer = _method_wire(spec).get("transfer") or {}
    return digest(
        {
            "v": HASH_VERSION,
            "transfer": transfer,
            "labels": w["labels"],
            "data": {k: w["data"].get(k) for k in ("realTrain", "test")},
            "source": source,
            "seed": run.seed,
        }
    )


def placement(spec: RecognitionExperimentSpec, *, cluster: bool) -> Placement:
    """torchrun's layout: on a cluster ``distributed.nodes`` pods of ``resources.gpus`` processes (one on
    CPU pods); locally one node and one process per visible GPU (decided by the worker)."""
    assert spec.method.pretrain is not None
    d = spec.method.pretrain.distributed
    if not cluster:
        return Placement(
            nnodes=1, max_restarts=d.max_restarts, backend=d.backend, shutdown_timeout=LOCAL_SHUTDOWN_TIMEOUT
        )
    return Placement(
        nnodes=d.nodes,
        nproc_per_node=max(1, spec.resources.gpus),
        max_restarts=d.max_restarts,
        backend=d.backend,
        shutdown_timeout=max(1, d.termination_grace_seconds - CHECKPOINT_MARGIN),
    )


def _common(
    spec: RecognitionExperimentSpec,
    run: PretrainRun,
    resource: ResourceRef,
    spec_hash: str,
    *,
    cluster: bool,
    attempt: int,
) -> dict[str, Any]:
    """What both stages' tasks carry: where, which run, the spec (for spec.json), precision, seed,
    placement and checkpoints."""
    method = spec.method.pretrain
    assert method is not None
    return {
        "resource": resource,
        "output": storage_target(spec.output),
        "spec_hash": spec_hash,
        "attempt": attempt,
        "run": run.name,
        "experiment": spec,
        "precision": method.precision,
        "seed": run.seed,
        "distributed": placement(spec, cluster=cluster),
        "checkpoint": method.checkpoint,
    }


def pretrain_task(
    spec: RecognitionExperimentSpec,
    run: PretrainRun,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    cluster: bool,
    attempt: int = 1,
) -> PretrainTask:
    """The pre-training task of a run (data size > 0); ``inputs`` are its datasets pinned."""
    method = spec.method.pretrain
    assert method is not None and run.size != 0
    data = PretrainTaskData.model_validate(
        {**method.data.model_dump(), "synthetic": inputs, "size": run.size}
    )
    return PretrainTask(
        **_common(spec, run, resource, pretrain_hash(spec, run, inputs), cluster=cluster, attempt=attempt),
        objective=run.objective,
        backbone=method.backbone,
        init=run.init,
        data=data,
        epochs=method.epochs,
        max_steps=method.max_steps,
        batch_size=method.batch_size,
        optimizer=method.optimizer,
        supervised=method.supervised,
        moco=method.moco,
        log_every=method.log_every,
    )


def transfer_task(
    spec: RecognitionExperimentSpec,
    run: PretrainRun,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    cluster: bool,
    attempt: int = 1,
) -> TransferTask:
    """The transfer task of a run: the run's own pre-trained backbone, or (data size 0) the init."""
    method = spec.method.pretrain
    assert method is not None and method.transfer is not None
    if run.size == 0:
        source = PretrainedSource(backbone=method.backbone, init=run.init)
        source_hash = digest({"backbone": method.backbone, "init": run.init})
    else:
        folder = join(spec.output.uri, ExperimentLayout.pretrain(run.name)).rstrip("/") + "/"
        source = PretrainedSource(pretrain=folder)
        source_hash = pretrain_hash(spec, run, inputs)
    t = method.transfer
    split = {"labels": spec.labels, "train": spec.data.real_train, "test": spec.data.test}
    return TransferTask(
        **_common(
            spec, run, resource, transfer_hash(spec, run, source_hash), cluster=cluster, attempt=attempt
        ),
        source=source,
        classification=ClassificationTransfer.model_validate({**t.classification.model_dump(), **split})
        if t.classification
        else None,
        linear_probe=LinearProbe.model_validate({**t.linear_probe.model_dump(), **split})
        if t.linear_probe
        else None,
        detection=t.detection,
    )


def run_stages(spec: RecognitionExperimentSpec, run: PretrainRun) -> list[str]:
    """The stages of a run, in order."""
    assert spec.method.pretrain is not None
    stages = [PRETRAIN_STAGE] if run.size != 0 else []
    if spec.method.pretrain.transfer is not None:
        stages.append(TRANSFER_STAGE)
    return stages


def stage_task(
    spec: RecognitionExperimentSpec,
    run: PretrainRun,
    stage: str,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    cluster: bool,
    attempt: int = 1,
) -> PretrainTask | TransferTask:
    make = pretrain_task if stage == PRETRAIN_STAGE else transfer_task
    return make(spec, run, inputs, resource, cluster=cluster, attempt=attempt)
