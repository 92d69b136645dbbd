"""The train stage: one run of a RecognitionExperiment (``task.run``), the paper's Classifier Tuning.

1. Skip at once (before torch is imported) when ``runs/<run>/done.json`` carries this run's spec hash;
   StorageConflict when it carries another.
2. Pin the synthetic datasets: each ``manifest.json`` must still have the sha256 the experiment pinned
   (DataError otherwise: the dataset changed under the experiment), and ``index/kept.jsonl`` the sha256
   the manifest records.
3. Load the backbone (open_clip, frozen) and its zero-shot head: templates ``classifierTuning.
   headInitTemplates`` or the label space's, filled with the classes' head names (synthrec.workers.clip).
4. Features, cached ONCE per (backbone revision, data identity, split) under the experiment's
   ``features/<cache key>/`` (``features.safetensors`` then ``done.json``), shared by every run:
   ``synthetic-<h>`` per dataset digest (the kept images, from the shard tars; or straight from the
   dataset's own features files when the filter's CLIP is the backbone), ``real-train-<h>`` per set of
   sampled shot URIs, ``test-<h>`` / ``validation-<h>`` per list of image URIs. The key is a sha256 of all
   of that, so backbones, datasets, shots and seeds never collide (the official cache key
   ``<dataset class>/<split>`` does; method spec §4.3-2). Real data is identified by its URIs (replacing
   files under the same names needs a new experiment output).
5. Evaluate the zero-shot head on the test split (the baseline), tune (synthrec.workers.tuning), evaluate
   the final (or best-validation) head on the test split. 0 shots and no synthetic data: nothing to
   train, the run reports the zero-shot head.
6. Write ``runs/<run>/metrics.json``, ``head.safetensors``, ``curve.json`` (+ ``curve.png``),
   ``confusion.json`` (sparse, kept out of metrics.json: C x C cells are megabytes for ImageNet), then the
   marker ``done.json`` (spec_hash = task.spec_hash). Summary: run, top1, zero_shot_top1, metrics (URI).

Bad real images follow each RealData's ``onBadImage`` (synthrec.workers.realdata): a skipped test image is
left out of the test set and counted in metrics.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec import confusion
from synthrec.labels import ResolvedLabels, resolve_labels
from synthrec.layout import DatasetLayout, ExperimentLayout
from synthrec.storage import ObjectNotFound, Storage, StorageConflict, open_storage, read_marker, write_marker
from synthrec.workers.runtime import ConfigError, DataError, StageContext, select_device

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_CURVE_POINTS = 2000
SINGLE_THREAD_MACS = 50_000_000  # head-only steps below this many multiply-adds run on one CPU thread


def run(ctx: StageContext) -> dict[str, Any]:
    task = ctx.task
    storage = ctx.storage
    layout = ExperimentLayout(storage.uri)
    name = task.run.name
    done = read_marker(storage, layout.run_marker(name))
    if done is not None:
        if done["spec_hash"] != task.spec_hash:
            raise StorageConflict(
                f"{layout.url(layout.run_marker(name))} is committed by spec hash {done['spec_hash']}, not "
                f"this run's {task.spec_hash}; use a new output URI or delete runs/{name}/"
            )
        metrics = storage.read_json(layout.run_metrics(name))
        return {**_summary(name, metrics, layout.url(layout.run_metrics(name))), "skipped": True}
    return _Run(ctx).execute()


def _summary(name: str, metrics: dict[str, Any], uri: str) -> dict[str, Any]:
    return {"run": name, "top1": metrics["top1"], "zero_shot_top1": metrics["zero_shot_top1"], "metrics": uri}


# ------------------------------------------------------------------------------------------ data sets


@dataclass
class FeatureSet:
    """Cached backbone features of one split plus what is needed to read its images again."""

    name: str
    features: Any  # torch [N, D] float32, L2-normalised
    labels: Any  # torch [N] int64
    ids: list[str]  # image identity per row (URI, or dataset:shard:key)
    items: list[Any]  # reader input per row
    reader: Any  # callable item -> bytes (for the image path)
    cache_key: str
    cache_hit: bool
    skipped: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class RealReader:
    """Reads real image bytes in DataLoader workers: one storage per folder and process, missing objects
    read as empty bytes (then counted as undecodable under the split's onBadImage policy)."""

    def __init__(self, endpoint: str | None, region: str | None) -> None:
        self.endpoint, self.region = endpoint, region
        self._stores: dict[str, Storage] = {}

    def open(self, uri: str) -> Storage:
        if uri not in self._stores:
            self._stores[uri] = open_storage(uri, endpoint=self.endpoint, region=self.region)
        return self._stores[uri]

    def __call__(self, uri: str) -> bytes:
        from synthrec.workers.realdata import read_image_bytes

        try:
            return read_image_bytes(uri, self.open)
        except ObjectNotFound:
            return b""

    def __getstate__(self) -> dict[str, Any]:  # storages (boto3 clients) are made anew in each worker
        return {"endpoint": self.endpoint, "region": self.region, "_stores": {}}


@dataclass
class PinnedDataset:
    name: str | None
    uri: str
    digest: str
    storage: Storage
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]


def read_pinned_manifest(storage: Storage, uri: str, pinned: str | None) -> tuple[dict[str, Any], str]:
    """A synthetic dataset's manifest.json and its sha256; DataError when it is missing (the dataset is
    not complete) or differs from the ``pinned`` digest (the dataset changed under the experiment)."""
    try:
        raw = storage.read_bytes(DatasetLayout(storage.uri).manifest)
    except ObjectNotFound as e:
        raise DataError(
            f"synthetic dataset {uri} has no manifest.json: it is not complete (its reduce stage has not "
            "committed)"
        ) from e
    digest = hashlib.sha256(raw).hexdigest()
    if pinned and digest != pinned:
        raise DataError(
            f"synthetic dataset {uri} changed since the experiment pinned it: manifest.json sha256 is "
            f"{digest}, pinned {pinned}; create a new experiment to use the new data"
        )
    return json.loads(raw), digest


def pin_dataset(ctx: StageContext, inp: Any) -> PinnedDataset:
    """Open a synthetic dataset at the digest the experiment pinned (DataError if it changed)."""
    endpoint = inp.endpoint or ctx.task.output.endpoint
    region = inp.region or ctx.task.output.region
    storage = open_storage(inp.uri, endpoint=endpoint, region=region)
    manifest, digest = read_pinned_manifest(storage, inp.uri, inp.digest)
    index = storage.read_bytes(manifest["index"]["key"])
    if hashlib.sha256(index).hexdigest() != manifest["index"]["sha256"]:
        raise DataError(f"{storage.url(manifest['index']['key'])} does not match the sha256 in manifest.json")
    rows = [json.loads(line) for line in index.decode("utf-8").splitlines() if line.strip()]
    return PinnedDataset(inp.name, inp.uri, digest, storage, manifest, rows)


# ------------------------------------------------------------------------------------------ the run


class _Run:
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.task = ctx.task
        self.spec = ctx.task.experiment
        self.plan = ctx.task.run
        self.ct = ctx.task.run.classifier_tuning
        self.storage = ctx.storage
        self.layout = ExperimentLayout(ctx.storage.uri)
        self.labels: ResolvedLabels = resolve_labels(ctx.task.labels)
        self.timing: dict[str, float] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="synthrec-train-"))

    def execute(self) -> dict[str, Any]:
        import shutil

        try:
            return self._execute()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _execute(self) -> dict[str, Any]:
        started = time.monotonic()
        data = self.spec.data
        if self.plan.shots > 0 and data.real_train is None:
            raise ConfigError(f"run {self.plan.name}: {self.plan.shots} shots need data.realTrain")
        if self.ct.selection == "best-validation" and data.validation is None:
            raise ConfigError("selection best-validation needs data.validation (never the test set)")
        datasets = [pin_dataset(self.ctx, inp) for inp in self.plan.synthetic]

        import torch

        from synthrec.workers.clip import load_clip, set_torch_threads
        from synthrec.workers.tuning import LinearHead, evaluate

        set_torch_threads()
        self.device = select_device()
        t = time.monotonic()
        self.clip = load_clip(
            self.spec.backbone.model,
            self.spec.backbone.pretrained,
            self.device,
            storage_opts={"endpoint": self.task.output.endpoint, "region": self.task.output.region},
        )
        templates = self.ct.head_init_templates or list(self.labels.templates)
        text = self.clip.text_head(self.labels.head_names, templates)
        scale = self.clip.logit_scale
        self.timing["model"] = time.monotonic() - t

        t = time.monotonic()
        test = self._real_split("test", data.test)
        val = self._real_split("validation", data.validation) if data.validation is not None else None
        real = self._real_shots() if self.plan.shots > 0 else None
        syn = self._synthetic(datasets) if datasets else None
        self.timing["features"] = time.monotonic() - t

        C = len(self.labels)
        teacher = LinearHead.from_text(text, scale).to(self.device)
        zero_shot = evaluate(self._logits(teacher, test), test.labels, C)
        trained = bool(syn or real)  # 0 shots and no synthetic data: the zero-shot head is the result
        if self.ct.head_init == "text" or not trained:
            head = LinearHead.from_text(text, scale).to(self.device)
        else:
            head = LinearHead.random(C, text.shape[1], self.plan.seed, self.device)
        t = time.monotonic()
        result = None
        encoder = None
        if trained:
            result, encoder = self._tune(head, teacher, syn, real, val)
        self.timing["train"] = time.monotonic() - t
        t = time.monotonic()
        with torch.no_grad():
            final = evaluate(self._logits(head, test, encoder), test.labels, C)
            val_final = evaluate(self._logits(head, val, encoder), val.labels, C) if val is not None else None
        self.timing["evaluate"] = time.monotonic() - t
        self.timing["total"] = time.monotonic() - started
        metrics = self._metrics(zero_shot, final, val_final, result, datasets, test, val, real, syn, trained)
        confusions = confusion.document(self.labels.names, final["confusion"], zero_shot["confusion"])
        self._write(head, metrics, confusions, result)
        return _summary(self.plan.name, metrics, self.layout.url(self.layout.run_metrics(self.plan.name)))

    # ----------------------------------------------------------------------------------- features

    def _cache_key(self, kind: str, material: Any) -> str:
        blob = json.dumps(
            {"v": CACHE_VERSION, "backbone": self.clip.describe(), "kind": kind, "data": material},
            sort_keys=True,
            separators=(",", ":"),
        )
        return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"

    def _cached(self, key: str, ids: list[str] | None) -> tuple[Any, Any, list[str], dict[str, Any]] | None:
        """The cached (features, labels, kept ids, marker) when present, intact and (if ``ids`` is given)
        about a subset of these images."""
        from safetensors.torch import load

        marker = read_marker(self.storage, self.layout.features(key, "done.json"))
        if marker is None or marker["spec_hash"] != key:
            return None
        try:
            raw = self.storage.read_bytes(self.layout.features(key, "features.safetensors"))
        except ObjectNotFound:
            return None
        if hashlib.sha256(raw).hexdigest() != marker.get("sha256"):
            log.warning("feature cache %s does not match its marker; computing it again", key)
            return None
        tensors = load(raw)
        kept = json.loads(self.storage.read_bytes(self.layout.features(key, "ids.json")))
        if ids is not None and not set(kept) <= set(ids):
            return None
        return tensors["features"].float(), tensors["labels"].long(), kept, marker

    def _store(self, key: str, feats: Any, labels: Any, ids: list[str], info: dict[str, Any]) -> None:
        from safetensors.torch import save

        data = save({"features": feats.half().contiguous(), "labels": labels.long().contiguous()})
        self.storage.write_bytes(self.layout.features(key, "ids.json"), json.dumps(ids).encode())
        self.storage.write_bytes(self.layout.features(key, "features.safetensors"), data)
        write_marker(
            self.storage,
            self.layout.features(key, "done.json"),
            spec_hash=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            rows=len(ids),
            backbone=self.clip.describe(),
            **info,
        )

    def _feature_set(
        self,
        name: str,
        material: Any,
        ids: list[str],
        labels: list[int],
        items: Callable[[], list[Any]],
        reader: Any,
        on_bad: str,
        info: dict[str, Any],
        encode: Callable[[], tuple[Any, Any]] | None = None,
    ) -> FeatureSet:
        """Features of the images ``ids`` from the cache, or encoded (``encode``, else the backbone over
        ``items()`` read by ``reader``) and cached. ``items()`` is called only when images are needed."""
        import torch

        if not ids:
            raise DataError(f"{name}: the data has no images")
        key = self._cache_key(name, material)
        need_items = self.ct.trainable_scope != "head"
        hit = self._cached(key, ids)
        if hit is not None:
            feats, labs, kept, _ = hit
            kept_set = set(kept)
            rows = [n for n, i in enumerate(ids) if i in kept_set] if need_items else []
            all_items = items() if need_items else []
            kept_items = [all_items[r] for r in rows] if need_items else []
            return FeatureSet(
                name,
                feats.to(self.device),
                labs.to(self.device),
                kept,
                kept_items,
                reader,
                key,
                True,
                len(ids) - len(kept),
                info,
            )
        all_items = items() if (encode is None or need_items) else []
        if encode is not None:
            feats, ok = encode()
        else:
            from synthrec.workers.clip import ImageDataset, encode_dataset

            dataset = ImageDataset(all_items, reader, self.clip.preprocess, self.clip.image_shape())
            self.ctx.progress.start(len(all_items))
            feats, ok = encode_dataset(self.clip, dataset, self.ct.feature_batch_size, self.ctx.progress)
        bad = [ids[i] for i, good in enumerate(ok.tolist()) if not good]
        if bad and on_bad == "fail":
            raise DataError(
                f"{name}: {len(bad)} images cannot be decoded, e.g. {bad[0]} (onBadImage: fail); remove or "
                "replace them, or set onBadImage: skip"
            )
        keep = [i for i, good in enumerate(ok.tolist()) if good]
        if not keep:
            raise DataError(f"{name}: no image could be decoded")
        feats = feats[keep]
        labs = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
        kept_ids = [ids[i] for i in keep]
        self._store(key, feats, labs, kept_ids, {"split": name, "skipped": len(bad), **info})
        kept_items = [all_items[i] for i in keep] if need_items else []
        return FeatureSet(
            name,
            feats.float().to(self.device),
            labs.to(self.device),
            kept_ids,
            kept_items,
            reader,
            key,
            False,
            len(bad),
            info,
        )

    def _real_split(self, name: str, data: Any) -> FeatureSet:
        from synthrec.workers.realdata import describe, index_real_data

        index = index_real_data(data, self.labels, self.ctx.open)
        pairs = index.fingerprint()
        ids = [uri for _, uri in pairs]
        info = {"uri": data.uri, "format": data.format, "index": describe(index) | {"per_class": None}}
        material = {
            "uri": data.uri,
            "images": hashlib.sha256("\n".join(f"{c} {u}" for c, u in pairs).encode()).hexdigest(),
        }
        reader = RealReader(self.task.output.endpoint, self.task.output.region)
        labels = [c for c, _ in pairs]
        return self._feature_set(name, material, ids, labels, lambda: ids, reader, data.on_bad_image, info)

    def _real_shots(self) -> FeatureSet:
        """Exactly ``shots`` real images per class, sampled with the run's seed (an unreadable shot is
        replaced by the class's next image in the seeded order, see synthrec.workers.realdata)."""
        import torch

        from synthrec.workers.realdata import index_real_data, load_shots, sample_shots

        data = self.spec.data.real_train
        shots, seed = self.plan.shots, self.plan.seed
        index = index_real_data(data, self.labels, self.ctx.open)
        wanted = sample_shots(index, shots, seed)
        material = {
            "uri": data.uri,
            "shots": shots,
            "seed": seed,
            "images": [img.uri for c in sorted(wanted) for img in wanted[c]],
        }
        key = self._cache_key("real-train", material)
        reader = RealReader(self.task.output.endpoint, self.task.output.region)
        info = {"uri": data.uri, "shots": shots, "seed": seed}
        hit = self._cached(key, None)
        if hit is not None:
            feats, labs, kept, marker = hit
            return FeatureSet(
                "real-train",
                feats.to(self.device),
                labs.to(self.device),
                kept,
                list(kept),
                reader,
                key,
                True,
                int(marker.get("skipped", 0)),
                info,
            )
        loaded, bad = load_shots(index, shots, seed, self.ctx.open, data.on_bad_image)
        pairs = [(img, rgb) for c in sorted(loaded) for img, rgb in loaded[c]]
        ids = [img.uri for img, _ in pairs]
        batch = torch.stack([self.clip.preprocess(rgb) for _, rgb in pairs])
        size = self.ct.feature_batch_size
        feats = torch.cat([self.clip.encode(batch[i : i + size]).cpu() for i in range(0, len(batch), size)])
        labs = torch.tensor([img.class_index for img, _ in pairs], dtype=torch.int64)
        self._store(key, feats, labs, ids, {"split": "real-train", "skipped": bad, **info})
        return FeatureSet(
            "real-train",
            feats.to(self.device),
            labs.to(self.device),
            ids,
            list(ids),
            reader,
            key,
            False,
            bad,
            info,
        )

    def _synthetic(self, datasets: list[PinnedDataset]) -> FeatureSet:
        import torch

        parts = [self._synthetic_one(d) for d in datasets]
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return FeatureSet(
            "synthetic",
            torch.cat([p.features for p in parts]),
            torch.cat([p.labels for p in parts]),
            [i for p in parts for i in p.ids],
            [i for p in parts for i in p.items],
            first.reader,
            "+".join(p.cache_key for p in parts),
            all(p.cache_hit for p in parts),
            sum(p.skipped for p in parts),
            {"datasets": [p.info for p in parts]},
        )

    def _synthetic_one(self, d: PinnedDataset) -> FeatureSet:
        """The kept images of one dataset: from the dataset's own features files when the filter's CLIP is
        the backbone (same revision), else encoded from the shard tars."""
        from synthrec.workers.shards import read_range

        ids = [f"{d.digest[:16]}:{r['shard']}:{r['key']}" for r in d.rows]
        labels = [int(r["class"]) for r in d.rows]
        filter_clip = (d.manifest.get("models") or {}).get("filter_clip") or {}
        same_model = filter_clip.get("revision") == self.clip.revision and all("row" in r for r in d.rows)
        info = {
            "uri": d.uri,
            "digest": d.digest,
            "kept": len(d.rows),
            "features_from": "dataset features files" if same_model else "backbone",
        }
        encode = self._from_filter_features(d) if same_model else None
        return self._feature_set(
            "synthetic",
            {"digest": d.digest},
            ids,
            labels,
            lambda: self._shard_items(d),
            read_range,
            "skip",
            info,
            encode=encode,
        )

    def _shard_items(self, d: PinnedDataset) -> list[tuple[str, int, int]]:
        """Download the shards holding kept images; (local tar, offset, size) per kept row."""
        from synthrec.workers.shards import download_shard, scan_shard

        by_shard: dict[int, dict[str, Any]] = {}
        folder = self.tmp / d.digest[:16]
        folder.mkdir(exist_ok=True)
        items = []
        for r in d.rows:
            shard = int(r["shard"])
            if shard not in by_shard:
                marker = read_marker(d.storage, DatasetLayout.shard_marker(shard)) or {}
                path = download_shard(d.storage, shard, folder, marker)
                by_shard[shard] = {
                    s.key: (str(path), s.offset, s.size) for s in scan_shard(path, len(self.labels)).samples
                }
            try:
                items.append(by_shard[shard][r["key"]])
            except KeyError:
                raise DataError(f"{d.uri}: kept image {r['key']} is not in shard {shard}") from None
        return items

    def _from_filter_features(self, d: PinnedDataset) -> Any:
        def encode() -> tuple[Any, Any]:
            import torch

            from synthrec.workers.shards import read_features

            cache: dict[str, Any] = {}
            rows = []
            for r in d.rows:
                key = r["features"]
                if key not in cache:
                    path = self.tmp / f"{d.digest[:16]}-{Path(key).name}"
                    d.storage.download_file(key, path)
                    cache[key] = read_features(path).features
                rows.append(cache[key][int(r["row"])])
            import numpy as np

            feats = torch.from_numpy(np.stack(rows).astype("float32")) if rows else torch.zeros((0, 0))
            return torch.nn.functional.normalize(feats, dim=-1), torch.ones(len(rows), dtype=torch.bool)

        return encode

    # ------------------------------------------------------------------------------------- training

    def _logits(self, head: Any, fs: FeatureSet | None, encoder: Any = None) -> Any:
        import torch

        if fs is None:
            return None
        with torch.no_grad():
            if encoder is None:
                return head(fs.features)
            return head(self._encode_with(encoder, fs))

    def _encode_with(self, encoder: Any, fs: FeatureSet) -> Any:
        """Features of ``fs`` through the tuned image tower (eval mode), for evaluation."""
        import torch

        from synthrec.workers.clip import ImageDataset, image_loader

        encoder.visual.eval()
        dataset = ImageDataset(fs.items, fs.reader, self.clip.preprocess, self.clip.image_shape())
        chunks = []
        with torch.no_grad():
            for images, _, _ in image_loader(
                dataset, batch_size=self.ct.feature_batch_size, device=self.device
            ):
                chunks.append(torch.nn.functional.normalize(encoder.encode(images), dim=-1))
        return torch.cat(chunks)

    def _tune(
        self, head: Any, teacher: Any, syn: FeatureSet | None, real: FeatureSet | None, val: FeatureSet | None
    ) -> tuple[Any, Any]:
        from synthrec.workers.clip import ImageDataset, image_loader
        from synthrec.workers.tuning import CachedFeatures, EncoderFeatures, TuneConfig, tune

        cfg = TuneConfig.from_spec(self.ct, self.plan.lr, self.plan.seed)
        encoder = None
        if self.ct.trainable_scope == "head":
            source: Any = CachedFeatures(syn.features if syn else None, real.features if real else None)
        else:
            sets = {"syn": syn, "real": real}

            def make_loader(split: str, batches: list[list[int]]) -> Any:
                fs = sets[split]
                dataset = ImageDataset(fs.items, fs.reader, self.clip.preprocess, self.clip.image_shape())
                return image_loader(dataset, batch_sampler=batches, device=self.device)

            encoder = source = EncoderFeatures(
                self.clip.visual, self.ct.trainable_scope, make_loader, self.device, self.ct.freeze_batch_norm
            )
        validate = None
        if val is not None and self.ct.selection == "best-validation":
            from synthrec.workers.tuning import evaluate

            def validate() -> float:
                return evaluate(self._logits(head, val, encoder), val.labels, len(self.labels))["top1"]

        from synthrec.workers.tuning import plan_phases, steps_per_epoch

        n_syn, n_real = (len(syn) if syn else 0), (len(real) if real else 0)
        self.ctx.progress.start(
            sum(
                p.epochs
                * steps_per_epoch(p.kind, n_syn, n_real, cfg.batch_size_synthetic, cfg.batch_size_real)
                for p in plan_phases(cfg.mixing, n_syn, n_real, cfg.epochs)
            )
        )
        with small_kernel_threads(
            self.device, encoder is None, head.weight.numel() * cfg.batch_size_synthetic
        ):
            result = tune(
                head,
                teacher,
                source,
                syn.features if syn else None,
                syn.labels if syn else None,
                real.labels if real else None,
                cfg,
                validate=validate,
                on_step=self.ctx.progress.advance,
            )
        return result, encoder

    # ----------------------------------------------------------------------------------- artifacts

    def _metrics(
        self,
        zero_shot: dict,
        final: dict,
        val_final: dict | None,
        result: Any,
        datasets: list[PinnedDataset],
        test: FeatureSet,
        val: FeatureSet | None,
        real: FeatureSet | None,
        syn: FeatureSet | None,
        trained: bool,
    ) -> dict[str, Any]:
        names = self.labels.names
        per_class = [
            {**pc, "name": names[pc["index"]], "zero_shot_top1": zs["top1"]}
            for pc, zs in zip(final["per_class"], zero_shot["per_class"], strict=True)
        ]
        ct = self.ct
        return {
            "run": self.plan.name,
            "index": self.plan.index,
            "variant": self.plan.variant,
            "spec_hash": self.task.spec_hash,
            "shots": self.plan.shots,
            "seed": self.plan.seed,
            "seeds": {"shots": self.plan.seed, "shuffle": self.plan.seed, "head_init": self.plan.seed},
            "top1": final["top1"],
            "zero_shot_top1": zero_shot["top1"],
            "trained": trained,
            "selection": ct.selection,
            "selected_epoch": result.selected_epoch if result else None,
            "validation_top1": val_final["top1"] if val_final else None,
            "per_class": per_class,
            "confusion": self.layout.run_confusion(self.plan.name),
            "classes": names,
            "epochs": ct.epochs,
            "epochs_run": len(result.epochs) if result else 0,
            "phases": result.phases if result else [],
            "steps": len(result.steps) if result else 0,
            "lr": self.plan.lr,
            "schedule": {
                "warmup_steps": ct.warmup_steps,
                "kind": "linear warmup + cosine to 0 over the real steps",
            },
            "classifier_tuning": ct.model_dump(mode="json"),
            "backbone": self.clip.describe(),
            "head_templates": ct.head_init_templates or list(self.labels.templates),
            "counts": {
                "synthetic": len(syn) if syn else 0,
                "real_train": len(real) if real else 0,
                "real_train_replaced": real.skipped if real else 0,
                "test": len(test),
                "test_skipped": test.skipped,
                "validation": len(val) if val else 0,
                "validation_skipped": val.skipped if val else 0,
            },
            "datasets": [
                {"name": d.name, "uri": d.uri, "digest": d.digest, "kept": len(d.rows)} for d in datasets
            ],
            "feature_cache": {
                fs.name: {"key": fs.cache_key, "hit": fs.cache_hit}
                for fs in (test, val, real, syn)
                if fs is not None
            },
            "device": self.device,
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
        }

    def _write(self, head: Any, metrics: dict[str, Any], confusions: dict[str, Any], result: Any) -> None:
        from safetensors.torch import save

        name = self.plan.name
        layout = self.layout
        weights = save(
            {
                "weight": head.weight.detach().cpu().contiguous(),
                "bias": head.bias.detach().cpu().contiguous(),
            },
            metadata={
                "run": name,
                "backbone": json.dumps(self.clip.describe()),
                "classes": json.dumps(self.labels.names),
                "input": "image features, L2-normalised inside the head: logits = normalize(x) @ W.T + b",
            },
        )
        self.storage.write_bytes(layout.run(name, "head.safetensors"), weights)
        curve = _curve(result)
        self.storage.write_json(layout.run(name, "curve.json"), curve)
        png = _plot(curve, name)
        if png is not None:
            self.storage.write_bytes(layout.run(name, "curve.png"), png)
        self.storage.write_json(layout.run_confusion(name), confusions)
        self.storage.write_json(layout.run_metrics(name), metrics)
        write_marker(
            self.storage,
            layout.run_marker(name),
            spec_hash=self.task.spec_hash,
            top1=metrics["top1"],
            zero_shot_top1=metrics["zero_shot_top1"],
        )


@contextlib.contextmanager
def small_kernel_threads(device: str, head_only: bool, macs_per_step: int) -> Iterator[None]:
    """Head-only tuning on a CPU runs tiny matmuls; with several OpenMP threads each kernel waits at a
    barrier, which on a shared host made it ~20x slower (bench/train_features.py). One thread then."""
    import torch

    if device != "cpu" or not head_only or macs_per_step > SINGLE_THREAD_MACS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _curve(result: Any) -> dict[str, Any]:
    if result is None:
        return {"epochs": [], "steps": [], "step_stride": 1, "phases": []}
    stride = max(1, -(-len(result.steps) // MAX_CURVE_POINTS))
    steps = [{"step": i, **s} for i, s in enumerate(result.steps) if i % stride == 0]
    return {"epochs": result.epochs, "steps": steps, "step_stride": stride, "phases": result.phases}


def _plot(curve: dict[str, Any], name: str) -> bytes | None:
    """A PNG of the loss and learning rate per step, or None (no steps, or no matplotlib). Uses the
    Figure API directly: importing pyplot costs seconds and a GUI backend lookup."""
    if not curve["steps"]:
        return None
    try:
        import io

        from matplotlib.figure import Figure
    except ImportError:
        return None
    steps = [s["step"] for s in curve["steps"]]
    fig = Figure(figsize=(7, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(steps, [s["loss"] for s in curve["steps"]], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [s["lr"] for s in curve["steps"]], color="tab:orange", label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(name)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
