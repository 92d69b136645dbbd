"""Valid typed artifacts for tests that need a manifest.json, a metrics.json or a resource's spec.json
without running the workers that write them: the same models (synthrec.contract) the workers build,
filled with small numbers."""

from __future__ import annotations

from typing import Any

from synthrec import api, plan
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import DatasetManifest
from synthrec.contract.metrics import RunMetrics
from synthrec.plan.tasks import ResourceRef, Run
from synthrec.storage import Storage


def write_dataset_spec(storage: Storage, name: str, spec: dict[str, Any]) -> dict[str, str]:
    """spec.json of a SyntheticDataset ``name`` at the root of ``storage``, as the workers write it;
    returns its stage hashes (for commit markers)."""
    from synthrec.workers.runtime import spec_document

    res = api.parse_resource(_body("SyntheticDataset", name, spec))
    task = plan.dataset_task(res.spec, "prompts", ResourceRef(kind="SyntheticDataset", name=name))
    storage.write_json(DatasetLayout.spec, spec_document(task))
    return plan.dataset_hashes(res.spec)


def write_experiment_spec(storage: Storage, name: str, spec: dict[str, Any]) -> list[Run]:
    """spec.json of a RecognitionExperiment ``name`` at the root of ``storage``; returns its runs."""
    from synthrec.workers.runtime import spec_document

    res = api.parse_resource(_body("RecognitionExperiment", name, spec))
    runs = plan.experiment_runs(res.spec)
    ref = ResourceRef(kind="RecognitionExperiment", name=name)
    storage.write_json(DatasetLayout.spec, spec_document(plan.train_task(res.spec, runs[0], [], ref)))
    return runs


def _body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"output": {"uri": "file:///unused/"}, **spec},
    }


def dataset_manifest(
    spec_hash: str,
    classes: list[str],
    *,
    generated: int = 2,
    passed: int = 1,
    kept: int = 1,
    filter_enabled: bool = True,
    **fields: Any,
) -> DatasetManifest:
    """A manifest of ``classes``, each with ``generated``, ``passed`` and ``kept`` images."""
    n = len(classes)
    per_class = [
        {
            "index": i,
            "name": name,
            "generated": generated,
            "corrupt": 0,
            "passed": passed,
            "kept": kept,
            "kept_below_threshold": 0,
            "accept_rate": passed / generated if generated else None,
            "keep_rate": kept / generated if generated else None,
        }
        for i, name in enumerate(classes)
    ]
    document: dict[str, Any] = {
        "resource": {"kind": "SyntheticDataset", "name": "ds"},
        "spec_hash": spec_hash,
        "hashes": {"reduce": spec_hash},
        "created_at": "2026-01-01T00:00:00Z",
        "labels": {
            "source": "test",
            "classes": classes,
            "head_names": classes,
            "templates": ["a photo of a {c}."],
        },
        "models": {"prompts": {"strategy": "basic"}, "generator": {"model": "file:///models/sd"}},
        "generation": {
            "steps": 50,
            "guidance_scale": 2.0,
            "generation_resolution_source": "the pipeline's native size",
            "resolution": 64,
        },
        "filter": {"enabled": filter_enabled, "seed": 0},
        "counts": {
            "generated": generated * n,
            "corrupt": 0,
            "real_filtered": 0,
            "passed": passed * n,
            "kept": kept * n,
            "rejected": (generated - kept) * n,
            "accept_rate": passed / generated if generated else None,
            "keep_rate": kept / generated if generated else None,
        },
        "per_class": per_class,
        "index": {"key": "index/kept.jsonl", "sha256": "0" * 64, "rows": kept * n},
        "shards": [],
        "shards_total": 1,
        "shards_missing": [],
        "timings": {},
    }
    document.update(fields)
    return DatasetManifest.model_validate(document)


def run_metrics(
    run: str,
    *,
    top1: float | None,
    zero_shot_top1: float | None,
    classes: list[str] = ("cat", "dog"),  # type: ignore[assignment]
    shots: int = 0,
    seed: int = 1,
    **fields: Any,
) -> RunMetrics:
    """The metrics.json of a run with ``top1`` against ``zero_shot_top1``, ten test images per class."""
    document: dict[str, Any] = {
        "run": run,
        "index": 0,
        "spec_hash": "test",
        "shots": shots,
        "seed": seed,
        "seeds": {"shots": seed, "shuffle": seed, "head_init": seed},
        "top1": top1,
        "zero_shot_top1": zero_shot_top1,
        "trained": top1 != zero_shot_top1,
        "selection": "last",
        "per_class": [
            {"index": i, "name": name, "count": 10, "top1": top1, "zero_shot_top1": zero_shot_top1}
            for i, name in enumerate(classes)
        ],
        "confusion": f"runs/{run}/confusion.json",
        "classes": list(classes),
        "epochs": 1,
        "epochs_run": 1,
        "phases": [],
        "steps": 1,
        "lr": 1e-3,
        "schedule": {"warmup_steps": 0, "kind": "linear warmup + cosine to 0 over the real steps"},
        "classifier_tuning": {},
        "backbone": {"model": "file:///models/clip"},
        "head_templates": ["a photo of a {c}."],
        "counts": {
            "synthetic": 0,
            "real_train": 0,
            "real_train_replaced": 0,
            "test": 10 * len(classes),
            "test_skipped": 0,
            "validation": 0,
            "validation_skipped": 0,
        },
        "datasets": [],
        "feature_cache": {},
        "device": "cpu",
        "timing": {},
    }
    document.update(fields)
    return RunMetrics.model_validate(document)


def write_pretraining_spec(storage: Storage, name: str, spec: dict[str, Any]) -> list[Any]:
    """spec.json of a pre-training RecognitionExperiment ``name`` (``method.pretrain``) at the root of
    ``storage``, as its pretrain and transfer workers write it; returns its runs (synthrec.plan)."""
    from synthrec.workers.runtime import spec_document

    res = api.parse_resource(_body("RecognitionExperiment", name, spec))
    runs = plan.pretrain_runs(res.spec)
    ref = ResourceRef(kind="RecognitionExperiment", name=name)
    task = plan.stage_task(res.spec, runs[0], plan.run_stages(res.spec, runs[0])[0], [], ref, cluster=False)
    storage.write_json(DatasetLayout.spec, spec_document(task))
    return runs


def pretrain_metrics(run: str, *, steps: int, final_loss: float) -> dict[str, Any]:
    """A pretrain stage's metrics.json (synthrec.contract.pretraining.PretrainMetrics), small numbers."""
    from synthrec.contract.pretraining import DataUse, PretrainMetrics

    data = DataUse(
        images="kept",
        available=100,
        selected=100,
        cap_seed=0,
        shards=1,
        classes=2,
        epoch_samples=100,
        manifest_digests=["a" * 64],
    )
    metrics = PretrainMetrics(
        run=run,
        objective="supervised",
        backbone="resnet50",
        steps=steps,
        steps_per_epoch=steps,
        epochs=1,
        images_seen=100,
        first_loss=final_loss + 1,
        final_loss=final_loss,
        seconds_training=1.0,
        world_size=1,
        precision="fp32",
        device="cpu",
        recipe={},
        data=data,
    )
    return metrics.document()


def transfer_metrics(run: str, kind: str, **numbers: float) -> dict[str, Any]:
    """One transfer evaluation's metrics.json (TransferMetrics): top1, or ap50 and ap50_voc07."""
    from synthrec.contract.pretraining import TransferMetrics

    metrics = TransferMetrics(
        run=run,
        kind=kind,  # type: ignore[arg-type]
        spec_hash="h",
        world_size=1,
        classes=["cat", "dog"],
        per_class=[None, None],
        counts={},
        settings={},
        source={},
        **numbers,
    )
    return metrics.document()


def tar_bytes(members: dict[str, bytes], *, links: dict[str, str] | None = None, mode: str = "w") -> bytes:
    """A tar archive in memory: regular files ``members`` (name -> content) and symbolic ``links``
    (name -> target); ``mode`` "w:gz" compresses it."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()
