"""The reduce stage (one pod, after every filter shard): CLIP Filter, Real Filtering, soft targets, the
kept index and the dataset card ``manifest.json`` (the dataset's commit, written last).

CLIP Filter (paper §1.6, official ``select_glide_ims_by_clip.py``), per class c over its images' scores
``p(c | image)`` (the zero-shot softmax of the filter stage):

- scores: the softmax over the classes of logit_scale * cos(image, class prompt), the prompts being
  ``filter.prompts`` (default: the official one prompt per class, the filter template with the
  generation name; the card records which);
- threshold t = ``filter.threshold`` or 1/C; an image *passes* when its score is > t (beats chance);
- K = ``filter.keepPerClass``; selection ``random`` (the official rule): when at least K pass, K of the
  passing images are drawn uniformly at random with ``random.Random(f"synthrec-cf:{seed}:{c}")`` from
  the passing images sorted by (shard, key); when fewer pass, the top K by score are kept (which may
  include images below t). ``top``: always the top K by score. Ties in score go to (shard, key) order.
  A class with fewer than K images keeps all of them.

Real Filtering (paper §2.2; not in the official code, so this is our reading, method spec §2.2/§5.7),
applied BEFORE the CLIP Filter so that the CF still keeps K per class from the survivors. The real shots
are ``realFiltering.shots`` (default ``realGuidance.shots``) per class of ``realFiltering.source``
(default ``realGuidance.source``), sampled with ``realFiltering.seed`` (synthrec.workers.realdata) and
encoded with the filter's CLIP model. With cosine similarity between L2-normalised features and the
k = min(``realFiltering.k``, shots available) most similar real shots of a synthetic image of class c:

- ``nearest``: drop it when the majority label of its k nearest shots is not c (a tie that includes c
  keeps it). With k = 1: drop it when its nearest real shot belongs to another class.
- ``strict``: drop it under ``nearest``, and also when any other-class shot is more similar than the best
  class-c shot among the k nearest (i.e. its single nearest shot is of another class).

Soft targets (paper §1.7): ``softmax(logits / T)`` of a text-initialised zero-shot head, with logits =
logit_scale (100) * cos. The filter's head logits are not copied into the index: each kept row points at
its features file and row, whose ``logits`` give the filter's soft target at any T
(``synthrec.workers.shards.soft_targets``). Training uses its own: the train stage computes its teacher
from its own backbone's initial head, as the official code does, at the experiment's
``classifierTuning.softTarget.temperature`` (paper: 2), the one temperature in the API.

Filter disabled: everything generated is kept (no threshold, no K, no soft targets); the card says so.

Outputs: ``index/kept.jsonl`` (one JSON object per kept image, sorted by shard and key)::

    {"shard": 3, "key": "c00002-p00010-i00004", "class": 2, "class_name": "...", "score": 0.81,
     "passed": true, "features": "features/gen-00003.safetensors", "row": 17}

``index/shards/gen-NNNNN.jsonl`` per committed shard: every decodable sample of the shard in tar order with
its kept flag, so a reader of one shard (the pre-training loader, or a user with the webdataset library,
docs/datasets.md) knows which samples to use without reading the dataset-wide index::

    {"key": "c00002-p00010-i00004", "class": 2, "kept": true}

Each shard record in the manifest gains ``index`` (that key), ``index_sha256``, ``kept`` and the per-class
counts ``classes`` / ``kept_classes`` ({"2": 17}), from which a size cap is planned without reading any
shard. And ``manifest.json`` (``synthrec.contract.manifest.DatasetManifest``). Termination summary:
generated, passed, kept, rejected, manifest (URI), digest (sha256 of manifest.json).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from synthrec.api.labels import ResolvedLabels, resolve_labels
from synthrec.contract.base import DocumentError
from synthrec.contract.kept import KeptRow
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import DatasetManifest, parse_manifest
from synthrec.contract.summaries import ReduceSummary
from synthrec.storage import Storage, existing_commit, sha256_file
from synthrec.timestamps import utc_stamp
from synthrec.workers.reduce_collect import (
    Collected,
    Images,
    RealFilter,
    collect,
    filtered_shard,
    unfiltered_shard,
)
from synthrec.workers.runtime import DataError, StageContext
from synthrec.workers.selection import select_class

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> ReduceSummary:
    task = ctx.task
    storage = ctx.storage
    layout = DatasetLayout(storage.uri)
    reduce_hash = task.hashes["reduce"]
    existing = _existing_manifest(storage, layout, reduce_hash)
    if existing is not None:
        return existing

    started = time.monotonic()
    spec = task.dataset
    labels = resolve_labels(spec.labels)
    n_shards = spec.sharding.shards
    rf_cfg = spec.filter.real_filtering
    real_filter = RealFilter.load(ctx, labels) if spec.filter.enabled and rf_cfg and rf_cfg.enabled else None
    ctx.progress.start(n_shards)
    if spec.filter.enabled:
        collected = collect(ctx, n_shards, lambda shard: filtered_shard(ctx, shard, labels, real_filter))
    else:
        collected = collect(ctx, n_shards, lambda shard: unfiltered_shard(ctx, shard, labels))
    if not collected.shards:
        raise DataError(
            f"no shard of {storage.uri} is committed (generate{'/filter' if spec.filter.enabled else ''}); "
            "nothing to reduce"
        )
    t_collect = time.monotonic() - started
    images = Images(collected)
    corrupt = collected.corrupt()

    rf_info: dict[str, Any] | None = None
    rf_dropped: dict[int, int] = {}
    if real_filter is not None and images.rf_keep is not None:
        import numpy as np

        dropped = np.bincount(images.cls[~images.rf_keep], minlength=len(labels))
        rf_dropped = {c: int(n) for c, n in enumerate(dropped) if n}
        rf_info = real_filter.info(int((~images.rf_keep).sum()))

    per_class, kept = _select(spec, labels, images, corrupt)
    for c in per_class:
        c["real_filtered"] = rf_dropped.get(c["index"], 0)

    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        index_path = Path(tmp) / "kept.jsonl"
        with open(index_path, "w", encoding="utf-8") as fh:
            for i in kept.tolist():
                fh.write(json.dumps(_row(images, i, labels), ensure_ascii=False, sort_keys=True) + "\n")
        index_sha = sha256_file(index_path)
        storage.upload_file(index_path, layout.index)
        _write_shard_indexes(storage, Path(tmp), images, kept)
    manifest = _manifest(
        task,
        labels,
        collected,
        per_class,
        len(kept),
        index_sha,
        rf_info,
        started=started,
        t_collect=t_collect,
    )
    storage.write_json(layout.manifest, manifest.document())
    digest = storage.sha256(layout.manifest)
    return _summary(manifest, layout.url(layout.manifest), digest)


def _existing_manifest(storage: Storage, layout: DatasetLayout, reduce_hash: str) -> ReduceSummary | None:
    """manifest.json is the dataset's own commit marker."""
    url = layout.url(layout.manifest)
    if existing_commit(storage, layout.manifest, reduce_hash, what=url) is None:
        return None
    try:
        manifest = parse_manifest(storage.read_bytes(layout.manifest), url)
    except DocumentError as exc:
        raise DataError(f"{exc}; delete it to reduce the dataset again") from None
    return _summary(manifest, url, storage.sha256(layout.manifest), skipped=True)


def _summary(manifest: DatasetManifest, uri: str, digest: str, *, skipped: bool = False) -> ReduceSummary:
    counts = manifest.counts
    return ReduceSummary(
        generated=counts.generated,
        passed=counts.passed,
        kept=counts.kept,
        rejected=counts.rejected,
        manifest=uri,
        digest=digest,
        skipped=skipped,
    )


def _select(
    spec: Any, labels: ResolvedLabels, images: Images, corrupt: dict[int, int]
) -> tuple[list[dict[str, Any]], Any]:
    """The CLIP Filter per class; returns the per-class counts and the kept image ids in (shard, key)
    order. Works on the columns: a class's scores are one slice of a numpy array."""
    import numpy as np

    fcfg = spec.filter
    threshold = fcfg.threshold if fcfg.threshold is not None else 1.0 / len(labels)
    order, bounds = images.by_class()
    kept_parts = []
    per_class = []
    for c in labels.classes:
        lo, hi = (int(bounds[c.index]), int(bounds[c.index + 1])) if c.index + 1 < len(bounds) else (0, 0)
        positions = order[lo:hi]
        generated = len(positions) + corrupt.get(c.index, 0)
        if images.rf_keep is not None:
            positions = positions[images.rf_keep[positions]]
        if fcfg.enabled:
            assert images.score is not None
            chosen, passed = select_class(
                images.score[positions], threshold, fcfg.keep_per_class, fcfg.selection, fcfg.seed, c.index
            )
            images.passed[positions] = passed.astype(np.int8)
            kept = positions[chosen]
            n_passed = int(passed.sum())
            below = int((~passed[chosen]).sum())
        else:
            kept, n_passed, below = positions, len(positions), 0
        kept_parts.append(kept)
        per_class.append(
            {
                "index": c.index,
                "name": c.name,
                "generated": generated,
                "corrupt": corrupt.get(c.index, 0),
                "passed": n_passed,
                "kept": len(kept),
                "kept_below_threshold": below,
                "accept_rate": round(n_passed / generated, 6) if generated else None,
                "keep_rate": round(len(kept) / generated, 6) if generated else None,
            }
        )
        if fcfg.enabled and len(kept) < fcfg.keep_per_class:
            log.warning("class %r: only %d images to keep, K = %d", c.name, len(kept), fcfg.keep_per_class)
    kept_ids = np.concatenate(kept_parts) if kept_parts else np.zeros(0, dtype=np.int64)
    return per_class, images.in_order(kept_ids)


def _write_shard_indexes(storage: Storage, folder: Path, images: Images, kept: Any) -> None:
    """Write index/shards/gen-NNNNN.jsonl of every committed shard (its images in tar order, each with its
    kept flag) and add its counts to the shard's record."""
    import numpy as np

    flags = np.zeros(images.n, dtype=bool)
    flags[kept] = True
    start = 0
    for shard in images.shards:
        n = len(shard.keys)
        cls, kept_here = images.cls[start : start + n], flags[start : start + n]
        path = folder / f"shard-{shard.shard}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in range(n):
                key = bytes(shard.keys[r]).decode("utf-8")
                fh.write(json.dumps({"key": key, "class": int(cls[r]), "kept": bool(kept_here[r])}) + "\n")
        key = DatasetLayout.shard_index(shard.shard)
        record = shard.record
        record["index_sha256"] = sha256_file(path)
        storage.upload_file(path, key)
        path.unlink()
        classes, counts = np.unique(cls, return_counts=True)
        kept_classes, kept_counts = np.unique(cls[kept_here], return_counts=True)
        record["index"] = key
        record["kept"] = int(kept_here.sum())
        record["classes"] = {str(int(c)): int(k) for c, k in zip(classes, counts, strict=True)}
        record["kept_classes"] = {str(int(c)): int(k) for c, k in zip(kept_classes, kept_counts, strict=True)}
        start += n


def _row(images: Images, i: int, labels: ResolvedLabels) -> dict[str, Any]:
    """A line of index/kept.jsonl (synthrec.contract.kept, which readers parse it with)."""
    cls = int(images.cls[i])
    shard = images.shard_id(i)
    passed = int(images.passed[i])
    filtered = images.score is not None
    return KeptRow(
        shard=shard,
        key=images.key(i),
        class_index=cls,
        class_name=labels.classes[cls].name,
        score=round(float(images.score[i]), 6) if images.score is not None else None,
        passed=None if passed < 0 else bool(passed),
        features=DatasetLayout.features(shard) if filtered else None,
        row=int(images.row[i]) if filtered else None,
    ).document()


def _generation(spec: Any, collected: Collected) -> dict[str, Any]:
    """Generation settings as run: the pipeline's size, the stored size and Real Guidance's start (the
    strength used and the signal level it reached, next to the paper's level it was matched to)."""
    gen = spec.generator
    seen = collected.generation or {}
    return {
        "steps": gen.steps,
        "guidance_scale": gen.guidance_scale,
        "generation_resolution": seen.get("generation_resolution"),
        "generation_resolution_source": "generator.generationResolution"
        if gen.generation_resolution is not None
        else "pipeline native size",
        "resolution": gen.resolution,
        "resize": "Lanczos (antialiased)" if seen.get("generation_resolution") != gen.resolution else None,
        "real_guidance": seen.get("real_guidance"),
    }


def _manifest(
    task: Any,
    labels: ResolvedLabels,
    collected: Collected,
    per_class: list[dict[str, Any]],
    n_kept: int,
    index_sha: str,
    rf_info: dict[str, Any] | None,
    *,
    started: float,
    t_collect: float,
) -> DatasetManifest:
    spec = task.dataset
    fcfg = spec.filter
    generated = sum(c["generated"] for c in per_class)
    passed = sum(c["passed"] for c in per_class)
    threshold = fcfg.threshold if fcfg.threshold is not None else 1.0 / len(labels)
    return DatasetManifest.model_validate(
        {
            "resource": task.resource.model_dump(mode="json"),
            "spec_hash": task.hashes["reduce"],
            "hashes": dict(task.hashes),
            "created_at": utc_stamp(),
            "labels": {
                "source": labels.source,
                "classes": labels.names,
                "head_names": labels.head_names,
                "templates": list(labels.templates),
            },
            "models": {
                "prompts": {
                    "strategy": spec.prompts.strategy,
                    "model": spec.prompts.model if spec.prompts.strategy == "language-enhancement" else None,
                },
                "generator": collected.generator or {"model": spec.generator.model, "revision": None},
                "filter_clip": collected.clip,
            },
            "generation": _generation(spec, collected),
            "filter": {
                "enabled": fcfg.enabled,
                "note": None if fcfg.enabled else "filter disabled: every generated image is kept",
                "threshold": threshold if fcfg.enabled else None,
                "threshold_rule": ("filter.threshold" if fcfg.threshold is not None else "1/C")
                if fcfg.enabled
                else None,
                "keep_per_class": fcfg.keep_per_class if fcfg.enabled else None,
                "selection": fcfg.selection if fcfg.enabled else None,
                "prompts": collected.filter_prompts if fcfg.enabled else None,
                "seed": fcfg.seed,
                "real_filtering": rf_info,
            },
            "soft_targets": (
                {
                    "formula": "softmax(logits / T); logits = logit_scale * cos(image, class text); T: the "
                    "experiment's classifierTuning.softTarget.temperature",
                    "logit_scale": collected.logit_scale,
                    "source": "kept.jsonl 'features' + 'row' -> tensor 'logits' of that features file",
                }
                if fcfg.enabled
                else None
            ),
            "counts": {
                "generated": generated,
                "corrupt": sum(c["corrupt"] for c in per_class),
                "real_filtered": sum(c.get("real_filtered", 0) for c in per_class),
                "passed": passed,
                "kept": n_kept,
                "rejected": generated - n_kept,
                "accept_rate": round(passed / generated, 6) if generated else None,
                "keep_rate": round(n_kept / generated, 6) if generated else None,
            },
            "per_class": per_class,
            "index": {
                "key": DatasetLayout.index,
                "sha256": index_sha,
                "rows": n_kept,
                "per_shard": "shards[].index: every sample of the shard with its kept flag",
            },
            "shards": [s.record for s in collected.shards],
            "shards_total": spec.sharding.shards,
            "shards_missing": collected.missing,
            "timings": {
                "reduce_seconds": round(time.monotonic() - started, 3),
                "collect_seconds": round(t_collect, 3),
            },
        }
    )
