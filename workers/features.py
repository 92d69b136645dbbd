"""The features of a run's data: each split encoded once by the backbone and cached under the
experiment's ``features/<cache key>/`` (see step 4 of synthrec.workers.train), the synthetic datasets
opened at the digest the experiment pinned, and the readers that give the images back."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.api.labels import ResolvedLabels
from synthrec.contract.base import DocumentError
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.contract.manifest import DatasetManifest, parse_manifest
from synthrec.storage import ObjectNotFound, Storage, open_storage, read_marker, write_marker
from synthrec.workers.runtime import DataError, StageContext, open_location

log = logging.getLogger(__name__)

CACHE_VERSION = 1


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
            self._stores[uri] = open_location(uri, endpoint=self.endpoint, region=self.region)
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
class SyntheticData:
    """A synthetic dataset opened at the manifest digest the experiment pinned."""

    name: str | None
    uri: str
    digest: str
    storage: Storage
    manifest: DatasetManifest
    rows: list[dict[str, Any]]


def read_pinned_manifest(storage: Storage, uri: str, pinned: str | None) -> tuple[DatasetManifest, str]:
    """A synthetic dataset's manifest.json and its sha256; DataError when it is missing (the dataset is
    not complete), unreadable, or differs from the ``pinned`` digest (the dataset changed under the
    experiment)."""
    layout = DatasetLayout(storage.uri)
    try:
        raw = storage.read_bytes(layout.manifest)
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
    try:
        return parse_manifest(raw, storage.url(layout.manifest)), digest
    except DocumentError as exc:
        raise DataError(str(exc)) from None


def open_synthetic(ctx: StageContext, inp: Any) -> SyntheticData:
    """Open a synthetic dataset at the digest the experiment pinned (DataError if it changed)."""
    endpoint = inp.endpoint or ctx.task.output.endpoint
    region = inp.region or ctx.task.output.region
    storage = open_storage(inp.uri, endpoint=endpoint, region=region)
    manifest, digest = read_pinned_manifest(storage, inp.uri, inp.digest)
    index = storage.read_bytes(manifest.index.key)
    if hashlib.sha256(index).hexdigest() != manifest.index.sha256:
        raise DataError(f"{storage.url(manifest.index.key)} does not match the sha256 in manifest.json")
    rows = [json.loads(line) for line in index.decode("utf-8").splitlines() if line.strip()]
    return SyntheticData(inp.name, inp.uri, digest, storage, manifest, rows)


def held_out_per_class(shots: int) -> int:
    """Real shots per class held out for validation when the data has no validation split: a quarter, at
    least 1 and at most 4 (CoOp validates on min(shots, 4) per class)."""
    return min(4, max(1, shots // 4))


def held_out_shots(real: FeatureSet, per_class: int) -> tuple[FeatureSet, FeatureSet]:
    """Split the run's shots into the ones it trains on and ``per_class`` per class it validates on: the
    last ones of each class in the seeded shot order, so the split is the same on every run and attempt."""
    import torch

    labels = real.labels.tolist()
    by_class: dict[int, list[int]] = {}
    for row, c in enumerate(labels):
        by_class.setdefault(c, []).append(row)
    if any(len(rows) <= per_class for rows in by_class.values()):
        raise DataError(
            f"{real.name}: holding out {per_class} shot(s) per class leaves a class without shots"
        )
    held = {row for rows in by_class.values() for row in rows[-per_class:]}
    keep_rows = [r for r in range(len(labels)) if r not in held]
    held_rows = [r for r in range(len(labels)) if r in held]

    def part(name: str, rows: list[int], info: dict[str, Any], skipped: int) -> FeatureSet:
        index = torch.tensor(rows, dtype=torch.long, device=real.labels.device)
        return FeatureSet(
            name,
            real.features[index],
            real.labels[index],
            [real.ids[r] for r in rows],
            [real.items[r] for r in rows] if real.items else [],
            real.reader,
            real.cache_key,
            real.cache_hit,
            skipped,
            info,
        )

    held_info = {"validation": {"source": "held-out shots", "images": len(held_rows), "per_class": per_class}}
    return part(real.name, keep_rows, dict(real.info), real.skipped), part(
        "validation", held_rows, held_info, 0
    )


class RunFeatures:
    """The feature sets of one run (a part of the train stage's ``_Run``: it provides ``ctx``, ``task``,
    ``spec``, ``plan``, ``ct``, ``storage``, ``layout``, ``labels``, ``clip``, ``device`` and ``tmp``)."""

    ctx: StageContext
    task: Any
    spec: Any
    plan: Any
    ct: Any
    storage: Storage
    layout: ExperimentLayout
    labels: ResolvedLabels
    clip: Any
    device: str
    tmp: Path

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

    def _store(self, key: str, feats: Any, labels: Any, ids: list[str], info: dict[str, Any]) -> Any:
        """Cache ``feats`` (as float16) and return them as a later hit reads them back: float16 values in
        float32, so a run computes the same on a cache miss as on a hit."""
        from safetensors.torch import save

        stored = feats.half().contiguous()
        data = save({"features": stored, "labels": labels.long().contiguous()})
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
        return stored.float()

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
            from synthrec.workers.clip import encode_dataset

            dataset = self.clip.dataset(all_items, reader)
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
        feats = self._store(key, feats, labs, kept_ids, {"split": name, "skipped": len(bad), **info})
        kept_items = [all_items[i] for i in keep] if need_items else []
        return FeatureSet(
            name,
            feats.to(self.device),
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
        batch = torch.stack([self.clip.pixels.geometric(rgb) for _, rgb in pairs])
        size = self.ct.feature_batch_size
        feats = torch.cat([self.clip.encode(batch[i : i + size]).cpu() for i in range(0, len(batch), size)])
        labs = torch.tensor([img.class_index for img, _ in pairs], dtype=torch.int64)
        feats = self._store(key, feats, labs, ids, {"split": "real-train", "skipped": bad, **info})
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

    def _synthetic(self, datasets: list[SyntheticData]) -> FeatureSet:
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

    def _synthetic_one(self, d: SyntheticData) -> FeatureSet:
        """The kept images of one dataset: from the dataset's own features files when the filter's CLIP is
        the backbone (same revision), else encoded from the shard tars."""
        from synthrec.workers.shards import read_range

        ids = [f"{d.digest[:16]}:{r['shard']}:{r['key']}" for r in d.rows]
        labels = [int(r["class"]) for r in d.rows]
        filter_clip = d.manifest.models.filter_clip
        revision = filter_clip.revision if filter_clip else None
        same_model = revision == self.clip.revision and all("row" in r for r in d.rows)
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

    def _shard_items(self, d: SyntheticData) -> list[tuple[str, int, int]]:
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

    def _from_filter_features(self, d: SyntheticData) -> Any:
        def encode() -> tuple[Any, Any]:
            """The kept rows' features from the dataset's features files, fetched a few at a time
            (synthrec.workers.fetch): only each file's kept rows stay in memory."""
            import numpy as np
            import torch

            from synthrec.workers.fetch import map_bounded
            from synthrec.workers.shards import read_features

            wanted: dict[str, list[int]] = {}
            for r in d.rows:
                wanted.setdefault(r["features"], []).append(int(r["row"]))

            def fetch(key: str) -> Any:
                path = self.tmp / f"{d.digest[:16]}-{Path(key).name}"
                d.storage.download_file(key, path)
                try:
                    features = read_features(path, ("features",)).features
                    return np.asarray(features[np.asarray(wanted[key])], dtype=np.float32)
                finally:
                    path.unlink(missing_ok=True)

            picked = dict(map_bounded(fetch, list(wanted)))
            position = {key: 0 for key in wanted}
            rows = []
            for r in d.rows:  # back in index order
                key = r["features"]
                rows.append(picked[key][position[key]])
                position[key] += 1
            feats = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, 0))
            return torch.nn.functional.normalize(feats, dim=-1), torch.ones(len(rows), dtype=torch.bool)

        return encode
