"""Streaming the synthetic datasets' WebDataset shards for pre-training (docs/datasets.md explains it for
users; this is the implementation).

Planning (every process computes the same plan from the manifests, nothing is exchanged):

- ``read_manifest``: a dataset's manifest.json at the digest the task pinned; its shard records carry the
  per-shard index key and the per-class counts of all decodable (``classes``) and kept (``kept_classes``)
  images (workers/reduce.py).
- ``allocate``: the size cap. Every (dataset, shard, class) gets ``cap x available / total`` images,
  rounded down, and the remainder goes one by one to the largest fractional parts (ties broken by a hash
  of the seed and the unit), so the total is exactly the cap and each class keeps its share.
- ``units``: shards, or parts of shards by sample position when there are fewer shards than readers
  (``world size x loader workers``).
- ``assign``: each epoch the units are shuffled with (seed, epoch) and dealt greedily to the least loaded
  reader, which balances the readers by sample count.

Reading (``ShardStream``, an IterableDataset; one reader = one DataLoader worker of one rank):

- a shard's index file says which of its samples are selected: the kept ones (or all) and, under a cap,
  a class's first ``take`` keys ranked by a hash of (cap seed, key); its tar is streamed from file:// or
  S3 (``open_stream``: ranged GETs resume a dropped connection) through webdataset's
  ``tar_file_expander`` and ``group_by_keys``, and other members are skipped before they are read into
  memory;
- ``open_shards`` units are read at once and interleaved at random (a shard of ``sharding.order: class``
  holds a few classes, one of ``interleaved`` every class), then webdataset's shuffle buffer (seeded by
  (seed, epoch, reader)) mixes them;
- optional real data: the real shards dealt to readers the same way, drawn with probability
  ``fraction``; both streams start over when exhausted, so every reader yields exactly its quota;
- after the shuffle, a resumed epoch skips the samples its batches already used (nothing is decoded for
  them); each kept sample is decoded (``torchvision.io.decode_image``) and augmented with the torch RNG
  seeded by (seed, epoch, reader, position), so the batches do not depend on timing or on a restart;
- reader ``w`` of a rank yields the batches ``w, w + W, w + 2W, ...`` of the epoch (the DataLoader's
  round-robin order); on resume the workers' roles are rotated so the first batch comes from the reader
  that owns it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import IterableDataset

from synthrec.contract.manifest import DatasetManifest, ShardRecord
from synthrec.storage import ObjectNotFound, Storage, StorageError, open_storage
from synthrec.workers.runtime import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
MAX_LOGGED_BAD = 20


def stable_hash(*parts: object) -> int:
    """A stable 64-bit hash (independent of PYTHONHASHSEED and of the machine)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# --------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """One shard of one dataset and how many images of each class it contributes per epoch."""

    source: int
    root: str
    shard: int
    tar: str
    index: str
    index_sha256: str | None
    available: int  # selected images before the cap (index consistency check)
    take: tuple[tuple[int, int], ...]  # (class, images) after the cap
    endpoint: str | None = None
    region: str | None = None

    @property
    def count(self) -> int:
        return sum(n for _, n in self.take)


@dataclass(frozen=True)
class Unit:
    """What a reader reads in one go: a shard, or every ``parts``-th selected sample of it."""

    plan: ShardPlan
    part: int = 0
    parts: int = 1

    @property
    def count(self) -> int:
        return len(range(self.part, self.plan.count, self.parts))


@dataclass(frozen=True)
class RealPlan:
    tars: tuple[str, ...]  # URIs, sorted
    fraction: float
    data: Any  # api.RealData (class mapping, uri)


@dataclass(frozen=True)
class DataPlan:
    shards: tuple[ShardPlan, ...]
    classes: tuple[str, ...]
    images: str  # kept | all
    cap_seed: int
    selected: int  # synthetic images per epoch
    available: int  # synthetic images before the cap
    real: RealPlan | None = None
    digests: tuple[str, ...] = ()

    @property
    def epoch_samples(self) -> int:
        """Samples per epoch: the synthetic selection plus, with real mixing, the real share on top."""
        if self.real is None:
            return self.selected
        return int(self.selected / (1.0 - self.real.fraction))

    def describe(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "available": self.available,
            "selected": self.selected,
            "cap_seed": self.cap_seed,
            "shards": len(self.shards),
            "classes": len(self.classes),
            "epoch_samples": self.epoch_samples,
            "manifest_digests": list(self.digests),
            "real": None
            if self.real is None
            else {"uri": self.real.data.uri, "shards": len(self.real.tars), "fraction": self.real.fraction},
        }


def read_manifest(
    source: Any, endpoint: str | None, region: str | None
) -> tuple[DatasetManifest, str, Storage]:
    """A synthetic dataset's manifest, its sha256 and its storage; DataError when the dataset is
    incomplete or changed since it was pinned."""
    from synthrec.workers.features import read_pinned_manifest

    storage = open_storage(source.uri, endpoint=source.endpoint or endpoint, region=source.region or region)
    manifest, digest = read_pinned_manifest(storage, source.uri, source.digest)
    return manifest, digest, storage


def allocate(available: list[int], cap: int, seed: int, ids: list[Any]) -> list[int]:
    """Split ``cap`` over units with ``available`` images each, proportionally and exactly (largest
    remainders; ties by a hash of the seed and the unit id). Integer arithmetic only."""
    total = sum(available)
    if cap > total:
        raise ValueError(f"cap {cap} exceeds the {total} images available")
    base = [cap * a // total for a in available]
    remainders = [cap * a % total for a in available]
    missing = cap - sum(base)
    order = sorted(range(len(available)), key=lambda i: (-remainders[i], stable_hash("cap", seed, ids[i])))
    for i in order[:missing]:
        base[i] += 1
    return base


def plan_data(
    task: Any, manifests: list[tuple[DatasetManifest, str, Storage]], real_tars: list[str]
) -> DataPlan:
    """The epoch plan of a pretrain task from its datasets' manifests (pure)."""
    data = task.data
    classes: tuple[str, ...] | None = None
    rows: list[tuple[int, ShardRecord, Storage, dict[int, int]]] = []
    for i, (manifest, _, storage) in enumerate(manifests):
        names = tuple(manifest.labels.classes)
        if classes is None:
            classes = names
        elif names != classes and task.objective == "supervised":
            raise ConfigError(
                f"data.synthetic[{i}] ({task.data.synthetic[i].uri}) has another label space than "
                f"data.synthetic[0] ({len(names)} vs {len(classes)} classes, first {names[:2]} vs "
                f"{classes[:2]}); supervised pre-training needs one label space"
            )
        for record in manifest.shards:
            if record.index is None or record.classes is None or record.kept_classes is None:
                raise DataError(
                    f"dataset {storage.uri} was reduced by an older synthrec without per-shard index files; "
                    f"delete {storage.url('manifest.json')} and run its reduce stage again (it only reads "
                    "the committed shards)"
                )
            counts = record.kept_classes if data.images == "kept" else record.classes
            rows.append((i, record, storage, {int(c): int(n) for c, n in counts.items()}))
    assert classes is not None
    units = [(i, r.shard, c, n) for i, r, _, counts in rows for c, n in sorted(counts.items()) if n]
    available = sum(n for *_, n in units)
    if data.size is not None:
        if data.size > available:
            raise ConfigError(
                f"data.size {data.size} exceeds the {available} {data.images} images of the datasets; "
                "lower it or use images: all"
            )
        taken = allocate([n for *_, n in units], data.size, data.cap_seed, [u[:3] for u in units])
    else:
        taken = [n for *_, n in units]
    take: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (i, shard, c, _), n in zip(units, taken, strict=True):
        if n:
            take.setdefault((i, shard), []).append((c, n))
    shards = []
    for i, record, storage, counts in rows:
        t = take.get((i, record.shard))
        if not t:
            continue
        source = task.data.synthetic[i]
        shards.append(
            ShardPlan(
                source=i,
                root=storage.uri,
                shard=record.shard,
                tar=record.tar,
                index=record.index,  # type: ignore[arg-type]  # checked above
                index_sha256=record.index_sha256,
                available=sum(counts.values()),
                take=tuple(t),
                endpoint=source.endpoint or task.output.endpoint,
                region=source.region or task.output.region,
            )
        )
    selected = sum(s.count for s in shards)
    if selected == 0:
        raise DataError(f"the datasets have no {data.images} images to pre-train on")
    real = None
    if data.real is not None:
        if not real_tars:
            raise DataError(f"data.real.data {data.real.data.uri}: no .tar shards under it")
        real = RealPlan(tuple(sorted(real_tars)), data.real.fraction, data.real.data)
    return DataPlan(
        shards=tuple(shards),
        classes=classes,
        images=data.images,
        cap_seed=data.cap_seed,
        selected=selected,
        available=available,
        real=real,
        digests=tuple(d for _, d, _ in manifests),
    )


def class_mixing_warning(plan: DataPlan, open_shards: int) -> str | None:
    """What to tell the user when the shards a reader keeps open hold few of the classes, so that its
    batches mix few classes whatever the shuffle buffer does (class-ordered shards, ``sharding.order``);
    None when ``open_shards`` shards hold at least half of the classes."""
    if len(plan.classes) < 2 or not plan.shards:
        return None
    per_shard = sum(len(s.take) for s in plan.shards) / len(plan.shards)
    seen = min(float(len(plan.classes)), open_shards * per_shard)
    if seen >= len(plan.classes) / 2:
        return None
    return (
        f"the synthetic shards hold {per_shard:.1f} of the {len(plan.classes)} classes each on average, so "
        f"a reader with {open_shards} shards open draws from about {seen:.0f} classes at a time and its "
        "batches mix few classes; generate pre-training data with sharding.order: interleaved (every class "
        "in every shard, the same images)"
    )


def units(plan: DataPlan, readers: int) -> list[Unit]:
    """Shards as read units; with fewer shards than readers each shard is split into parts."""
    parts = max(1, math.ceil(readers / len(plan.shards)))
    if len(plan.shards) < 2 * readers:
        log.warning(
            "%d shards for %d readers: readers are balanced by sample count only roughly; generate at least "
            "4 shards per reader (world size x loader workers) for pre-training at scale",
            len(plan.shards),
            readers,
        )
    return [Unit(s, p, parts) for s in plan.shards for p in range(parts) if Unit(s, p, parts).count]


def assign(
    items: list[Any], readers: int, seed: int, epoch: int, size: Callable[[Any], int]
) -> list[list[Any]]:
    """Deal ``items`` to readers for one epoch: shuffled by (seed, epoch), each to the least loaded reader
    (ties: the lowest reader index)."""
    order = list(items)
    random.Random(stable_hash("epoch", seed, epoch)).shuffle(order)
    loads = [0] * readers
    out: list[list[Any]] = [[] for _ in range(readers)]
    for item in order:
        r = min(range(readers), key=lambda i: (loads[i], i))
        out[r].append(item)
        loads[r] += max(1, size(item))
    return out


def batches_of(worker: int, workers: int, first: int, end: int) -> int:
    """How many of the epoch's batches ``first..end-1`` belong to loader worker ``worker`` (batch i comes
    from worker i mod W)."""
    return len([i for i in range(first, end) if i % workers == worker]) if end > first else 0


# ---------------------------------------------------------------------------------------------- reading


def open_stream(root: str, key: str, endpoint: str | None, region: str | None) -> Any:
    """A buffered binary stream of ``root/key`` (file://, or S3 resumed with ranged GETs when a connection
    drops: synthrec.storage ``open_stream``); DataError when it is missing."""
    storage = open_storage(root, endpoint=endpoint, region=region)
    try:
        return storage.open_stream(key)
    except ObjectNotFound:
        raise DataError(f"{storage.url(key)} does not exist; the dataset is incomplete") from None


def select_keys(rows: list[dict[str, Any]], plan: ShardPlan, images: str, cap_seed: int) -> dict[str, int]:
    """The selected keys of one shard (tar order) -> class: kept (or all), then per class the first
    ``take`` ranked by a hash of (cap seed, key)."""
    eligible: dict[int, list[str]] = {}
    for row in rows:
        if images == "all" or row["kept"]:
            eligible.setdefault(int(row["class"]), []).append(row["key"])
    if sum(map(len, eligible.values())) != plan.available:
        raise DataError(
            f"{plan.root}{plan.index} lists {sum(map(len, eligible.values()))} {images} images, "
            f"manifest.json {plan.available}; the dataset changed after its reduce stage: run reduce again"
        )
    chosen: dict[str, int] = {}
    for c, n in plan.take:
        keys = eligible.get(c, [])
        ranked = keys if n >= len(keys) else sorted(keys, key=lambda k: stable_hash("key", cap_seed, k))[:n]
        chosen.update((k, c) for k in ranked)
    return {row["key"]: chosen[row["key"]] for row in rows if row["key"] in chosen}


def _read_index(plan: ShardPlan) -> list[dict[str, Any]]:
    storage = open_storage(plan.root, endpoint=plan.endpoint, region=plan.region)
    try:
        raw = storage.read_bytes(plan.index)
    except ObjectNotFound:
        raise DataError(
            f"{storage.url(plan.index)} is missing; run the dataset's reduce stage again"
        ) from None
    if plan.index_sha256 and hashlib.sha256(raw).hexdigest() != plan.index_sha256:
        raise DataError(f"{storage.url(plan.index)} does not match the sha256 in manifest.json")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def _tar_samples(stream: Any, url: str, wanted: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """webdataset's tar expansion and grouping of one opened tar, reading only members of wanted keys."""
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

    def select(name: str) -> bool:
        key, ext = base_plus_ext(name)
        return key is not None and wanted(key) and ext.lower() in (*IMAGE_FIELDS, "cls", "json")

    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}], select_files=select))
    finally:
        stream.close()


def unit_samples(unit: Unit, images: str, cap_seed: int) -> Iterator[dict[str, Any]]:
    """The selected samples of a unit, in tar order: {key, image bytes, cls}."""
    plan = unit.plan
    keys = select_keys(_read_index(plan), plan, images, cap_seed)
    if unit.parts > 1:
        keys = {k: c for i, (k, c) in enumerate(keys.items()) if i % unit.parts == unit.part}
    url = f"{plan.root}{plan.tar}"
    stream = open_stream(plan.root, plan.tar, plan.endpoint, plan.region)
    for sample in _tar_samples(stream, url, keys.__contains__):
        image = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
        if image is not None:
            yield {
                "key": f"{plan.source}/{sample['__key__']}",
                "image": image,
                "cls": keys[sample["__key__"]],
            }


def real_samples(
    tar_uri: str, part: int, parts: int, resolver: Any, endpoint: str | None, region: str | None
) -> Iterator[dict[str, Any]]:
    """Samples of a real WebDataset shard (every ``parts``-th from ``part``) with a label of the label
    space; samples without image or with a label outside it are skipped."""
    from synthrec.workers.realdata import parse_label

    folder, _, name = tar_uri.rpartition("/")
    stream = open_stream(folder + "/", name, endpoint, region)
    for i, sample in enumerate(_tar_samples(stream, tar_uri, lambda key: True)):
        if i % parts != part:
            continue
        image = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
        label = None
        for ext in ("cls", "json"):
            if ext in sample and label is None:
                label = parse_label(ext, sample[ext], tar_uri, sample["__key__"])
        index = resolver.resolve(label) if label is not None else None
        if image is not None and index is not None:
            yield {"key": f"real/{sample['__key__']}", "image": image, "cls": index}


def _forever(make: Callable[[], Iterator[Any]], what: str) -> Iterator[Any]:
    while True:
        produced = False
        for item in make():
            produced = True
            yield item
        if not produced:
            raise DataError(f"{what} yielded no samples")


def _mix(
    syn: Iterator[dict[str, Any]], reals: Iterator[dict[str, Any]], fraction: float, rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Synthetic samples until they run out, each preceded by real ones drawn with probability
    ``fraction`` (so real samples make that share of the pass)."""
    for sample in syn:
        while rng.random() < fraction:
            yield next(reals)
        yield sample


def _interleave(
    items: list[Any], open_one: Callable[[Any], Iterator[Any]], width: int, rng: random.Random
) -> Iterator[Any]:
    """Read up to ``width`` items at once, taking each next sample from a random open one."""
    pending = iter(items)
    open_: list[Iterator[Any]] = []
    while True:
        while len(open_) < width:
            item = next(pending, None)
            if item is None:
                break
            open_.append(open_one(item))
        if not open_:
            return
        i = rng.randrange(len(open_))
        try:
            yield next(open_[i])
        except StopIteration:
            open_.pop(i)


# -------------------------------------------------------------------------------------- the dataset


@dataclass
class LoaderConfig:
    rank: int
    world: int
    workers: int  # DataLoader workers per rank (0 = in the main process, one reader)
    local_batch: int
    steps_per_epoch: int
    seed: int
    image_size: int
    objective: str
    randaugment: bool = False
    interpolation: str = "bilinear"
    shuffle_buffer: int = 5000
    repeats: int = 1  # repeated augmentation: copies of each image in a batch, each augmented apart
    open_shards: int = 16
    endpoint: str | None = None
    region: str | None = None
    labels: Any = None  # ResolvedLabels for real data
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def readers_per_rank(self) -> int:
        return max(1, self.workers)


class ShardStream(IterableDataset):
    """An IterableDataset of ready batches for one rank and epoch (``set_epoch`` before each iterator)."""

    def __init__(self, plan: DataPlan, config: LoaderConfig) -> None:
        super().__init__()
        self.plan = plan
        self.config = config
        self.readers = config.world * config.readers_per_rank
        self.units = units(plan, self.readers)
        if (warning := class_mixing_warning(plan, config.open_shards)) is not None:
            log.warning(warning)
        self.epoch = 0
        self.first_batch = 0  # batches of this epoch already consumed (resume)
        self._transform: Any = None

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.epoch, self.first_batch = epoch, first_batch

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cfg = self.config
        # rotate roles so that the worker the DataLoader asks first owns batch `first_batch`
        worker = (loader_worker + self.first_batch) % workers
        skip = batches_of(worker, workers, 0, self.first_batch)
        quota = batches_of(worker, workers, self.first_batch, cfg.steps_per_epoch)
        reader = cfg.rank * workers + worker
        if info is None:  # in the main process: keep the trainer's RNG untouched
            with torch.random.fork_rng(devices=[]):
                yield from self._batches(reader, skip, quota)
        else:
            yield from self._batches(reader, skip, quota)

    def _batches(self, reader: int, skip_batches: int, quota: int) -> Iterator[tuple[Any, ...]]:
        import torch

        cfg = self.config
        samples = self._samples(reader)
        # a batch reads ceil(batch / repeats) images, the last one's copies cut to fill it exactly
        images_per_batch = -(-cfg.local_batch // cfg.repeats)
        for _ in range(skip_batches * images_per_batch):  # consumed before the restart: never decoded
            next(samples)
        position = skip_batches * cfg.local_batch
        for _ in range(quota):
            batch: list[tuple[Any, ...]] = []
            while len(batch) < cfg.local_batch:
                copies = min(cfg.repeats, cfg.local_batch - len(batch))
                seeds = [
                    stable_hash("aug", cfg.seed, self.epoch, reader, p)
                    for p in range(position, position + copies)
                ]
                position += copies
                batch += self._prepare(next(samples), seeds)
            yield tuple(torch.stack(parts) for parts in zip(*batch, strict=True))

    def _samples(self, reader: int) -> Iterator[dict[str, Any]]:
        """The reader's samples: passes over its units (shuffled within each pass, so an epoch uses each
        selected image once before any repeats), real samples mixed in at the fraction."""
        import webdataset as wds

        cfg, plan = self.config, self.plan
        mine = assign(self.units, self.readers, cfg.seed, self.epoch, lambda u: u.count)[reader]
        rng = random.Random(stable_hash("read", cfg.seed, self.epoch, reader))
        if not mine:
            raise DataError(
                f"reader {reader} was dealt no shards; the selection is too small for {self.readers} readers"
            )
        reals = self._reals(reader, rng) if plan.real is not None else None

        def one_pass() -> Iterator[dict[str, Any]]:
            syn = _interleave(
                mine, lambda u: unit_samples(u, plan.images, plan.cap_seed), cfg.open_shards, rng
            )
            if reals is None:
                return syn
            fraction = plan.real.fraction  # type: ignore[union-attr]
            return _mix(syn, reals, fraction, rng)

        return _forever(
            lambda: wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng)(one_pass()),
            f"reader {reader}'s shards",
        )

    def _reals(self, reader: int, rng: random.Random) -> Iterator[dict[str, Any]]:
        from synthrec.workers.realdata import ClassResolver

        cfg, real = self.config, self.plan.real
        assert real is not None
        resolver = ClassResolver(real.data, cfg.labels)
        # real shards have no sample counts: dealt by number, in parts by position when too few
        parts = max(1, math.ceil(self.readers / len(real.tars)))
        pieces = [(t, p, parts) for t in real.tars for p in range(parts)]
        mine = assign(pieces, self.readers, cfg.seed, self.epoch, lambda _: 1)[reader]
        return _forever(
            lambda: _interleave(
                mine,
                lambda piece: real_samples(*piece, resolver, cfg.endpoint, cfg.region),
                cfg.open_shards,
                rng,
            ),
            f"real data {real.data.uri}",
        )

    def transform(self) -> Callable[[Any], Any]:
        if self._transform is None:
            from synthrec.workers.pretrain import augment

            cfg = self.config
            if cfg.objective == "moco-v2":
                self._transform = augment.moco_v2(cfg.image_size)
            else:
                self._transform = augment.supervised_train(
                    cfg.image_size, randaugment=cfg.randaugment, interpolation=cfg.interpolation
                )
        return self._transform

    def _prepare(self, sample: dict[str, Any], seeds: list[int]) -> list[tuple[Any, ...]]:
        """The sample decoded once and augmented once per seed; nothing when it does not decode."""
        import torch
        from torchvision.io import ImageReadMode, decode_image

        try:
            image = decode_image(
                torch.frombuffer(bytearray(sample["image"]), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        except (RuntimeError, ValueError) as exc:
            bad = self.config.stats["undecodable"] = self.config.stats.get("undecodable", 0) + 1
            if bad <= MAX_LOGGED_BAD:
                log.warning("skipping undecodable image %s: %s", sample["key"], exc)
            return []
        transform = self.transform()
        items: list[tuple[Any, ...]] = []
        for seed in seeds:
            torch.manual_seed(seed)
            random.seed(seed)
            if self.config.objective == "moco-v2":
                items.append((transform(image), transform(image)))
            else:
                items.append((transform(image), torch.tensor(sample["cls"], dtype=torch.int64)))
        return items


def list_real_tars(data: Any, endpoint: str | None, region: str | None) -> list[str]:
    if data is None:
        return []
    try:
        storage = open_storage(data.uri, endpoint=endpoint, region=region)
        return [storage.url(o.key) for o in storage.list() if o.key.endswith(".tar")]
    except StorageError as exc:
        raise DataError(f"data.real.data {data.uri}: {exc}") from None
