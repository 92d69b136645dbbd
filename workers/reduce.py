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

and ``manifest.json`` (``synthrec.contract.manifest.DatasetManifest``). Termination summary: generated,
passed, kept, rejected, manifest (URI), digest (sha256 of manifest.json).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.api.labels import ResolvedLabels, resolve_labels
from synthrec.contract.base import DocumentError
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import DatasetManifest, parse_manifest
from synthrec.contract.summaries import ReduceSummary
from synthrec.storage import Storage, StorageConflict, existing_commit, read_marker, sha256_file
from synthrec.timestamps import utc_stamp
from synthrec.workers.runtime import ConfigError, DataError, StageContext

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- the rules (pure)


def clip_filter(
    scores: Sequence[float], threshold: float, keep: int, selection: str, seed: int, class_index: int
) -> tuple[list[int], list[bool]]:
    """The CLIP Filter for one class. ``scores`` are in (shard, key) order; returns the kept positions
    (sorted) and whether each position passed the threshold."""
    passed = [s > threshold for s in scores]
    if len(scores) <= keep:
        return list(range(len(scores))), passed
    passing = [i for i, ok in enumerate(passed) if ok]
    if selection == "random" and len(passing) >= keep:
        chosen = random.Random(f"synthrec-cf:{seed}:{class_index}").sample(passing, keep)
    else:
        chosen = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:keep]
    return sorted(chosen), passed


def real_filter_keep(
    syn_feats: Any, syn_class: Any, real_feats: Any, real_class: Any, k: int, rule: str
) -> Any:
    """Bool mask over synthetic images: True = keep (see the module docstring for the rules)."""
    import numpy as np

    syn = np.asarray(syn_feats, dtype=np.float32)
    real = np.asarray(real_feats, dtype=np.float32)
    real_class = np.asarray(real_class)
    syn_class = np.asarray(syn_class)
    k = max(1, min(k, len(real)))
    keep = np.ones(len(syn), dtype=bool)
    classes = int(max(real_class.max(initial=0), syn_class.max(initial=0))) + 1
    for start in range(0, len(syn), 4096):  # bounded memory: 4096 x shots similarities at a time
        sim = syn[start : start + 4096] @ real.T
        # the k most similar shots, most similar first (stable: ties go to the lower shot index)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        labels = real_class[order]
        own = syn_class[start : start + 4096]
        votes = np.zeros((len(labels), classes), dtype=np.int64)
        np.add.at(votes, (np.arange(len(labels))[:, None], labels), 1)
        own_votes = votes[np.arange(len(labels)), own]
        ok = own_votes >= votes.max(axis=1)
        if rule == "strict":
            ok &= labels[:, 0] == own
        keep[start : start + 4096] = ok
    return keep


# ------------------------------------------------------------------------------------------ the stage


@dataclass
class _Item:
    shard: int
    key: str
    cls: int
    row: int | None = None
    score: float | None = None
    passed: bool | None = None


@dataclass
class _Collected:
    items: list[_Item] = field(default_factory=list)
    features: list[Any] = field(default_factory=list)  # per shard numpy arrays (real filtering only)
    corrupt: dict[int, int] = field(default_factory=dict)  # class -> count
    shards: list[dict[str, Any]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    clip: dict[str, Any] | None = None
    filter_prompts: dict[str, Any] | None = None
    generator: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None  # sizes and Real Guidance's start, from a generate marker
    logit_scale: float | None = None

    def note_generation(self, marker: dict[str, Any]) -> None:
        if self.generation is None and "generation_resolution" in marker:
            self.generation = {
                "generation_resolution": marker.get("generation_resolution"),
                "resolution": marker.get("resolution"),
                "real_guidance": marker.get("real_guidance"),
            }


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
    ctx.progress.start(n_shards)
    if spec.filter.enabled:
        collected = _collect_features(ctx, n_shards, labels)
    else:
        collected = _collect_unfiltered(ctx, n_shards, labels)
    if not collected.shards:
        raise DataError(
            f"no shard of {storage.uri} is committed (generate{'/filter' if spec.filter.enabled else ''}); "
            "nothing to reduce"
        )
    t_collect = time.monotonic() - started

    rf_info: dict[str, Any] | None = None
    rf_dropped: dict[int, int] = {}
    rf_keep = None
    rf_cfg = spec.filter.real_filtering
    if spec.filter.enabled and rf_cfg is not None and rf_cfg.enabled:
        rf_keep, rf_info = _real_filtering(ctx, collected, labels)
        for item, keep in zip(collected.items, rf_keep.tolist(), strict=True):
            if not keep:
                rf_dropped[item.cls] = rf_dropped.get(item.cls, 0) + 1

    per_class, kept = _select(spec, labels, collected, rf_keep)
    for c in per_class:
        c["real_filtered"] = rf_dropped.get(c["index"], 0)

    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        index_path = Path(tmp) / "kept.jsonl"
        with open(index_path, "w", encoding="utf-8") as fh:
            for item in kept:
                fh.write(json.dumps(_row(item, labels), ensure_ascii=False, sort_keys=True) + "\n")
        index_sha = sha256_file(index_path)
        storage.upload_file(index_path, layout.index)
    manifest = _manifest(
        task, labels, collected, per_class, kept, index_sha, rf_info, started=started, t_collect=t_collect
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


def _collect_features(ctx: StageContext, n_shards: int, labels: ResolvedLabels) -> _Collected:
    from synthrec.workers.shards import read_features

    task, storage = ctx.task, ctx.storage
    need_features = bool(task.dataset.filter.real_filtering and task.dataset.filter.real_filtering.enabled)
    out = _Collected()
    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        for shard in range(n_shards):
            ctx.progress.advance()
            fmarker = read_marker(storage, DatasetLayout.features_marker(shard))
            gmarker = read_marker(storage, DatasetLayout.shard_marker(shard))
            if fmarker is None or gmarker is None:
                out.missing.append(shard)
                continue
            if (
                fmarker["spec_hash"] != task.hashes["filter"]
                or gmarker["spec_hash"] != task.hashes["generate"]
            ):
                raise StorageConflict(
                    f"shard {shard} of {storage.uri} was committed by another spec (filter hash "
                    f"{fmarker['spec_hash']}, generate hash {gmarker['spec_hash']}); use a new output URI"
                )
            local = Path(tmp) / f"{shard}.safetensors"
            storage.download_file(DatasetLayout.features(shard), local)
            if sha256_file(local) != fmarker.get("sha256"):
                raise DataError(
                    f"{storage.url(DatasetLayout.features(shard))} does not match its marker's sha256; "
                    "delete the features file and its marker to filter the shard again"
                )
            sf = read_features(local)
            local.unlink()
            if int(sf.meta.get("classes", len(labels))) != len(labels):
                raise DataError(
                    f"features of shard {shard} have {sf.meta.get('classes')} classes, not {len(labels)}"
                )
            out.note_generation(gmarker)
            out.clip = out.clip or json.loads(sf.meta.get("clip", "null"))
            out.filter_prompts = out.filter_prompts or json.loads(sf.meta.get("filter_prompts", "null"))
            out.generator = out.generator or json.loads(sf.meta.get("generator", "null"))
            out.logit_scale = out.logit_scale or float(sf.meta.get("logit_scale", "nan"))
            rows = range(len(sf.keys))
            for row, key, cls in zip(rows, sf.keys, sf.class_index.tolist(), strict=True):
                out.items.append(_Item(shard, key, int(cls), row, float(sf.probs[row, cls])))
            for bad in sf.corrupt:
                if bad.get("class") is not None:
                    out.corrupt[bad["class"]] = out.corrupt.get(bad["class"], 0) + 1
            if need_features:
                out.features.append(sf.features)
            out.shards.append(_shard_record(storage, shard, gmarker, fmarker, len(sf.keys), len(sf.corrupt)))
    return out


def _collect_unfiltered(ctx: StageContext, n_shards: int, labels: ResolvedLabels) -> _Collected:
    from synthrec.workers.shards import download_shard, scan_shard

    task, storage = ctx.task, ctx.storage
    out = _Collected()
    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        for shard in range(n_shards):
            ctx.progress.advance()
            gmarker = read_marker(storage, DatasetLayout.shard_marker(shard))
            if gmarker is None:
                out.missing.append(shard)
                continue
            if gmarker["spec_hash"] != task.hashes["generate"]:
                raise StorageConflict(
                    f"shard {shard} of {storage.uri} was generated by another spec ({gmarker['spec_hash']})"
                )
            out.note_generation(gmarker)
            path = download_shard(storage, shard, Path(tmp), gmarker)
            contents = scan_shard(path, len(labels))
            path.unlink()
            for s in contents.samples:
                out.items.append(_Item(shard, s.key, s.class_index))
                if out.generator is None:
                    out.generator = {"model": s.meta.get("model"), "revision": s.meta.get("revision")}
            for bad in contents.corrupt:
                if bad.get("class") is not None:
                    out.corrupt[bad["class"]] = out.corrupt.get(bad["class"], 0) + 1
            out.shards.append(
                _shard_record(storage, shard, gmarker, None, len(contents.samples), len(contents.corrupt))
            )
    return out


def _shard_record(
    storage: Storage,
    shard: int,
    gmarker: dict[str, Any],
    fmarker: dict[str, Any] | None,
    images: int,
    corrupt: int,
) -> dict[str, Any]:
    return {
        "shard": shard,
        "tar": DatasetLayout.shard(shard),
        "tar_sha256": gmarker.get("sha256"),
        "tar_size": gmarker.get("size"),
        "features": DatasetLayout.features(shard) if fmarker else None,
        "features_sha256": fmarker.get("sha256") if fmarker else None,
        "images": images,
        "corrupt": corrupt,
        "generate_seconds": gmarker.get("seconds"),
        "filter_seconds": (fmarker or {}).get("seconds"),
    }


def _real_filtering(
    ctx: StageContext, collected: _Collected, labels: ResolvedLabels
) -> tuple[Any, dict[str, Any]]:
    import numpy as np

    from synthrec.workers.clip import load_clip, set_torch_threads
    from synthrec.workers.realdata import index_real_data, load_shots
    from synthrec.workers.runtime import select_device

    spec = ctx.task.dataset
    rf = spec.filter.real_filtering
    rg = spec.real_guidance
    source = rf.source or (rg.source if rg else None)
    shots = rf.shots or (rg.shots if rg else None)
    if source is None or shots is None:
        raise ConfigError(
            "filter.realFiltering needs real shots: set realFiltering.source and .shots, or realGuidance"
        )
    set_torch_threads()
    index = index_real_data(source, labels, ctx.open)
    seed = rf.seed if rf.seed is not None else (rg.seed if rg else 0)
    loaded, bad = load_shots(index, shots, seed, ctx.open, source.on_bad_image)
    clip = load_clip(
        spec.filter.clip.model,
        spec.filter.clip.pretrained,
        select_device(),
        storage_opts={"endpoint": ctx.task.output.endpoint, "region": ctx.task.output.region},
    )
    if collected.clip and clip.revision != collected.clip.get("revision"):
        raise DataError(
            "the filter CLIP model changed since the shards were filtered "
            f"({collected.clip.get('revision')} -> {clip.revision}); real and synthetic features must come "
            "from the same model"
        )
    import torch

    shots_list = [(c, img) for c in sorted(loaded) for _, img in loaded[c]]
    batch = torch.stack([clip.preprocess(img) for _, img in shots_list])
    real_feats = torch.cat([clip.encode(batch[i : i + 256]) for i in range(0, len(batch), 256)]).cpu().numpy()
    real_class = np.array([c for c, _ in shots_list])
    syn_feats = (
        np.concatenate(collected.features) if collected.features else np.zeros((0, real_feats.shape[1]))
    )
    syn_class = np.array([it.cls for it in collected.items], dtype=np.int64)
    keep = real_filter_keep(syn_feats, syn_class, real_feats, real_class, rf.k, rf.rule)
    info = {
        "rule": rf.rule,
        "k": min(rf.k, len(real_class)),
        "source": source.uri,
        "shots": shots,
        "seed": seed,
        "shot_uris": sorted(img.uri for c in loaded for img, _ in loaded[c])[:10_000],
        "unreadable_shots_replaced": bad,
        "dropped": int((~keep).sum()),
        "order": "before the CLIP Filter",
    }
    return keep, info


def _select(
    spec: Any, labels: ResolvedLabels, collected: _Collected, rf_keep: Any
) -> tuple[list[dict[str, Any]], list[_Item]]:
    by_class: dict[int, list[int]] = {c.index: [] for c in labels.classes}
    for i, item in enumerate(collected.items):
        by_class[item.cls].append(i)
    fcfg = spec.filter
    threshold = fcfg.threshold if fcfg.threshold is not None else 1.0 / len(labels)
    kept_positions: list[int] = []
    per_class = []
    for c in labels.classes:
        positions = sorted(
            by_class[c.index], key=lambda i: (collected.items[i].shard, collected.items[i].key)
        )
        generated = len(positions) + collected.corrupt.get(c.index, 0)
        if rf_keep is not None:
            positions = [i for i in positions if rf_keep[i]]
        if fcfg.enabled:
            scores = [collected.items[i].score for i in positions]
            chosen, passed = clip_filter(
                scores, threshold, fcfg.keep_per_class, fcfg.selection, fcfg.seed, c.index
            )
            for i, ok in zip(positions, passed, strict=True):
                collected.items[i].passed = ok
            kept = [positions[j] for j in chosen]
            n_passed = sum(passed)
            below = sum(1 for j in chosen if not passed[j])
        else:
            kept, n_passed, below = positions, len(positions), 0
        kept_positions += kept
        per_class.append(
            {
                "index": c.index,
                "name": c.name,
                "generated": generated,
                "corrupt": collected.corrupt.get(c.index, 0),
                "passed": n_passed,
                "kept": len(kept),
                "kept_below_threshold": below,
                "accept_rate": round(n_passed / generated, 6) if generated else None,
                "keep_rate": round(len(kept) / generated, 6) if generated else None,
            }
        )
        if fcfg.enabled and len(kept) < fcfg.keep_per_class:
            log.warning("class %r: only %d images to keep, K = %d", c.name, len(kept), fcfg.keep_per_class)
    kept_items = sorted((collected.items[i] for i in kept_positions), key=lambda it: (it.shard, it.key))
    return per_class, kept_items


def _row(item: _Item, labels: ResolvedLabels) -> dict[str, Any]:
    row: dict[str, Any] = {
        "shard": item.shard,
        "key": item.key,
        "class": item.cls,
        "class_name": labels.classes[item.cls].name,
        "score": None if item.score is None else round(item.score, 6),
        "passed": item.passed,
    }
    if item.row is not None:
        row["features"] = DatasetLayout.features(item.shard)
        row["row"] = item.row
    return row


def _generation(spec: Any, collected: _Collected) -> dict[str, Any]:
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
    collected: _Collected,
    per_class: list[dict[str, Any]],
    kept: list[_Item],
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
    n_kept = len(kept)
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
            "index": {"key": DatasetLayout.index, "sha256": index_sha, "rows": n_kept},
            "shards": collected.shards,
            "shards_total": spec.sharding.shards,
            "shards_missing": collected.missing,
            "timings": {
                "reduce_seconds": round(time.monotonic() - started, 3),
                "collect_seconds": round(t_collect, 3),
            },
        }
    )
