"""The reduce stage's input: every committed shard, read a few at a time (synthrec.workers.fetch) and kept
as compact columns (``Images``), so its memory per image is bounded (MAX_BYTES_PER_IMAGE) whatever the
number of shards. Real Filtering runs here, a shard at a time, against the real shots encoded once.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.api.labels import ResolvedLabels
from synthrec.contract.layout import DatasetLayout
from synthrec.storage import Storage, StorageConflict, read_marker, sha256_file
from synthrec.workers.runtime import ConfigError, DataError, StageContext
from synthrec.workers.selection import real_filter_keep

# Reduce's memory per image, whatever the number of shards: the columns (shard, row, class, key rank:
# int32; score: float32; two flags), the key (fixed-width bytes: 20 for the generator's keys) and the
# sort order of the selection (int64), at most this many bytes in all (tests/unit/test_reduce_memory.py
# measures it; bench/reduce_memory.py at 4M images): 4M images in under 400 MB. Beyond that, only the
# shards in flight (synthrec.workers.fetch) and the kept rows.
MAX_BYTES_PER_IMAGE = 96


@dataclass
class ShardColumns:
    """One shard's images, as compact columns (its features file or tar is not kept)."""

    shard: int
    keys: Any  # numpy S[n]: the WebDataset keys, row order
    classes: Any  # numpy int32 [n]
    scores: Any | None  # numpy float32 [n] (None with the filter disabled)
    rf_keep: Any | None  # numpy bool [n] (None without Real Filtering)
    corrupt: dict[int, int]
    record: dict[str, Any]
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Collected:
    shards: list[ShardColumns] = field(default_factory=list)
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

    def add(self, shard: ShardColumns) -> None:
        self.shards.append(shard)
        meta = shard.meta
        if self.clip is None and meta.get("clip"):
            self.clip = json.loads(meta["clip"])
        if self.filter_prompts is None and meta.get("filter_prompts"):
            self.filter_prompts = json.loads(meta["filter_prompts"])
        if self.generator is None and meta.get("generator"):
            self.generator = json.loads(meta["generator"])
        if self.logit_scale is None and meta.get("logit_scale"):
            self.logit_scale = float(meta["logit_scale"])
        shard.meta = {}

    def corrupt(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.shards:
            for c, n in s.corrupt.items():
                out[c] = out.get(c, 0) + n
        return out


class Images:
    """Every collected image as columns over the shards (in shard order): the only per-image state."""

    def __init__(self, collected: Collected) -> None:
        import numpy as np

        shards = collected.shards
        sizes = [len(s.classes) for s in shards]
        self.n = sum(sizes)
        self.shard_pos = np.repeat(np.arange(len(shards), dtype=np.int32), sizes)  # index into shards
        self.row = (
            np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]) if sizes else np.zeros(0, np.int32)
        )
        self.cls = concat([s.classes for s in shards], np.int32)
        self.score = (
            concat([s.scores for s in shards], np.float32)
            if all(s.scores is not None for s in shards)
            else None
        )
        self.rf_keep = (
            concat([s.rf_keep for s in shards], bool)
            if shards and all(s.rf_keep is not None for s in shards)
            else None
        )
        # each image's rank among its shard's keys, so (shard, key) order is a sort of two int columns
        self.rank = concat(
            [np.argsort(np.argsort(s.keys, kind="stable"), kind="stable") for s in shards], np.int32
        )
        self.passed = np.full(self.n, -1, dtype=np.int8)  # -1 not judged, 0 failed, 1 passed
        self.shards = shards
        for s in shards:  # the columns hold them now; a shard keeps only its keys
            s.classes = s.scores = s.rf_keep = None

    def key(self, i: int) -> str:
        return bytes(self.shards[self.shard_pos[i]].keys[self.row[i]]).decode("utf-8")

    def shard_id(self, i: int) -> int:
        return self.shards[self.shard_pos[i]].shard

    def by_class(self) -> tuple[Any, Any]:
        """Image ids grouped by class, each class in (shard, key) order, and each class's [start, end)."""
        import numpy as np

        shard_ids = np.array([s.shard for s in self.shards], dtype=np.int32)[self.shard_pos]
        order = np.lexsort((self.rank, shard_ids, self.cls))
        del shard_ids
        return order, np.searchsorted(self.cls[order], np.arange(int(self.cls.max(initial=-1)) + 2))

    def in_order(self, ids: Any) -> Any:
        """``ids`` sorted by (shard, key)."""
        import numpy as np

        shard_ids = np.array([s.shard for s in self.shards], dtype=np.int32)[self.shard_pos[ids]]
        return ids[np.lexsort((self.rank[ids], shard_ids))]


def concat(parts: list[Any], dtype: Any) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(p, dtype=dtype) for p in parts]) if parts else np.zeros(0, dtype=dtype)


def collect(ctx: StageContext, n_shards: int, read: Any) -> Collected:
    """Every shard read with ``read`` (a few at a time, see synthrec.workers.fetch), in shard order."""
    from synthrec.workers.fetch import map_bounded

    out = Collected()
    for shard, result in map_bounded(read, range(n_shards)):
        ctx.progress.advance()
        if result is None:
            out.missing.append(shard)
            continue
        gmarker, compact = result
        out.note_generation(gmarker)
        out.add(compact)
    return out


def _markers(
    ctx: StageContext, shard: int, filtered: bool
) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    task, storage = ctx.task, ctx.storage
    gmarker = read_marker(storage, DatasetLayout.shard_marker(shard))
    fmarker = read_marker(storage, DatasetLayout.features_marker(shard)) if filtered else None
    if gmarker is None or (filtered and fmarker is None):
        return None
    if gmarker["spec_hash"] != task.hashes["generate"] or (
        fmarker is not None and fmarker["spec_hash"] != task.hashes["filter"]
    ):
        raise StorageConflict(
            f"shard {shard} of {storage.uri} was committed by another spec (generate hash "
            f"{gmarker['spec_hash']}"
            + (f", filter hash {fmarker['spec_hash']}" if fmarker else "")
            + "); use a new output URI"
        )
    return gmarker, fmarker


def filtered_shard(
    ctx: StageContext, shard: int, labels: ResolvedLabels, real_filter: RealFilter | None
) -> tuple[dict[str, Any], ShardColumns] | None:
    """One shard's features file, reduced to columns (its features only for Real Filtering)."""
    import numpy as np

    from synthrec.workers.shards import read_features

    markers = _markers(ctx, shard, filtered=True)
    if markers is None:
        return None
    gmarker, fmarker = markers
    storage = ctx.storage
    assert fmarker is not None
    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        local = Path(tmp) / f"{shard}.safetensors"
        storage.download_file(DatasetLayout.features(shard), local)
        if sha256_file(local) != fmarker.get("sha256"):
            raise DataError(
                f"{storage.url(DatasetLayout.features(shard))} does not match its marker's sha256; "
                "delete the features file and its marker to filter the shard again"
            )
        wanted = ("filter_logits", "features") if real_filter is not None else ("filter_logits",)
        sf = read_features(local, wanted)
    if int(sf.meta.get("classes", len(labels))) != len(labels):
        raise DataError(f"features of shard {shard} have {sf.meta.get('classes')} classes, not {len(labels)}")
    classes = np.asarray(sf.class_index, dtype=np.int32)
    rf_keep = None
    if real_filter is not None:
        real_filter.check_model(shard, sf.meta)
        rf_keep = real_filter.keep(sf.features, classes)
    compact = ShardColumns(
        shard=shard,
        keys=np.array([k.encode("utf-8") for k in sf.keys], dtype=bytes),
        classes=classes,
        scores=sf.scores(),
        rf_keep=rf_keep,
        corrupt=_corrupt_by_class(sf.corrupt),
        record=_shard_record(storage, shard, gmarker, fmarker, len(sf.keys), len(sf.corrupt)),
        meta={k: sf.meta[k] for k in ("clip", "filter_prompts", "generator", "logit_scale") if k in sf.meta},
    )
    return gmarker, compact


def unfiltered_shard(
    ctx: StageContext, shard: int, labels: ResolvedLabels
) -> tuple[dict[str, Any], ShardColumns] | None:
    import numpy as np

    from synthrec.workers.shards import download_shard, scan_shard

    markers = _markers(ctx, shard, filtered=False)
    if markers is None:
        return None
    gmarker, _ = markers
    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-") as tmp:
        path = download_shard(ctx.storage, shard, Path(tmp), gmarker)
        contents = scan_shard(path, len(labels))
    first = contents.samples[0].meta if contents.samples else {}
    compact = ShardColumns(
        shard=shard,
        keys=np.array([s.key.encode("utf-8") for s in contents.samples], dtype=bytes),
        classes=np.array([s.class_index for s in contents.samples], dtype=np.int32),
        scores=None,
        rf_keep=None,
        corrupt=_corrupt_by_class(contents.corrupt),
        record=_shard_record(ctx.storage, shard, gmarker, None, len(contents.samples), len(contents.corrupt)),
        meta={"generator": json.dumps({"model": first.get("model"), "revision": first.get("revision")})}
        if contents.samples
        else {},
    )
    return gmarker, compact


def _corrupt_by_class(corrupt: list[dict[str, Any]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for bad in corrupt:
        if bad.get("class") is not None:
            out[bad["class"]] = out.get(bad["class"], 0) + 1
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


@dataclass
class RealFilter:
    """The real shots' features (encoded once with the filter's CLIP), applied a shard at a time."""

    real_feats: Any
    real_class: Any
    k: int
    rule: str
    revision: str
    info_base: dict[str, Any]

    @classmethod
    def load(cls, ctx: StageContext, labels: ResolvedLabels) -> RealFilter:
        import numpy as np
        import torch

        from synthrec.workers.clip import set_torch_threads
        from synthrec.workers.mirror import load_dataset_clip
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
        clip = load_dataset_clip(ctx, select_device())  # as the filter stage loaded it
        shots_list = [(c, img) for c in sorted(loaded) for _, img in loaded[c]]
        batch = torch.stack([clip.pixels.geometric(img) for _, img in shots_list])
        real_feats = (
            torch.cat([clip.encode(batch[i : i + 256]) for i in range(0, len(batch), 256)]).cpu().numpy()
        )
        real_class = np.array([c for c, _ in shots_list])
        info = {
            "rule": rf.rule,
            "k": min(rf.k, len(real_class)),
            "source": source.uri,
            "shots": shots,
            "seed": seed,
            "shot_uris": sorted(img.uri for c in loaded for img, _ in loaded[c])[:10_000],
            "unreadable_shots_replaced": bad,
            "order": "before the CLIP Filter",
        }
        return cls(real_feats, real_class, rf.k, rf.rule, clip.revision, info)

    def check_model(self, shard: int, meta: dict[str, str]) -> None:
        revision = json.loads(meta.get("clip", "null") or "null") or {}
        if revision.get("revision") not in (None, self.revision):
            raise DataError(
                f"the filter CLIP model changed since shard {shard} was filtered "
                f"({revision.get('revision')} -> {self.revision}); real and synthetic features must come "
                "from the same model"
            )

    def keep(self, features: Any, classes: Any) -> Any:
        return real_filter_keep(features, classes, self.real_feats, self.real_class, self.k, self.rule)

    def info(self, dropped: int) -> dict[str, Any]:
        return {**self.info_base, "dropped": dropped}
