"""The images of a dataset's report: per class a grid of kept samples and of the two kinds of images
that were not kept, those below the CLIP filter's threshold and those that passed it but were not among
the K kept (``filter.keepPerClass``: drawn at random from the passing ones, or the top K), with their
CLIP scores and prompts. Read from index/kept.jsonl, the features files and the shard tars (only the
shards that hold grid images are read)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import ClassCounts, DatasetManifest
from synthrec.storage import FileStorage, ObjectNotFound, Storage, StorageError

MAX_GRID_CLASSES = 24  # classes with image grids (the accept-rate table and plot show every class)
GRID_IMAGES = 8  # images shown per class and group (kept, passed but not kept, below the threshold)
GRID_SHARDS = 4  # shards whose features a class's not-kept images are looked for in
THUMBNAIL_PX = 128


@dataclass
class Sample:
    key: str
    shard: int
    class_index: int
    score: float | None
    kept: bool
    passed: bool | None = None  # score above the threshold (None: not recorded)
    prompt: str = ""
    image: str | None = None  # path relative to the report folder


@dataclass
class ClassGrid:
    index: int
    name: str
    kept: list[Sample] = field(default_factory=list)
    not_chosen: list[Sample] = field(default_factory=list)  # passed the threshold, not among the K kept
    below: list[Sample] = field(default_factory=list)  # at or below the threshold

    @property
    def samples(self) -> list[Sample]:
        return self.kept + self.not_chosen + self.below


def read_jsonl(storage: Storage, key: str) -> list[dict[str, Any]]:
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        return []
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                rows.append(value)
    return rows


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor dtypes, shapes, offsets and __metadata__)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def safetensors_matrix(data: bytes, name: str) -> list[list[float]]:
    """A 2-D float32 tensor of a safetensors file as rows, without numpy or torch."""
    header = safetensors_header(data)
    info = header[name]
    if info["dtype"] != "F32" or len(info["shape"]) != 2:
        raise ValueError(f"tensor {name} is {info['dtype']} {info['shape']}, expected a 2-D F32 tensor")
    (length,) = struct.unpack("<Q", data[:8])
    start, end = (8 + length + o for o in info["data_offsets"])
    rows, cols = info["shape"]
    values = struct.unpack(f"<{rows * cols}f", data[start:end])
    return [list(values[r * cols : (r + 1) * cols]) for r in range(rows)]


@contextmanager
def local_copy(storage: Storage, key: str) -> Iterator[Path]:
    """A local path of an object: the file itself on file://, a temporary download otherwise."""
    if isinstance(storage, FileStorage):
        yield storage.root / key
        return
    with tempfile.TemporaryDirectory(prefix="synthrec-report-") as tmp:
        path = Path(tmp) / Path(key).name
        storage.download_file(key, path)
        yield path


def dataset_grids(
    storage: Storage, manifest: DatasetManifest, max_classes: int = MAX_GRID_CLASSES
) -> list[ClassGrid]:
    """Per class (the first ``max_classes``) up to GRID_IMAGES kept samples, and as many of each kind of
    not-kept sample, with scores.

    Kept samples come from index/kept.jsonl. The others are the remaining images of the shards holding
    the class's kept images (the first GRID_SHARDS of them), scored from those shards' features files and
    split by the reduce stage's rule: a score above ``filter.threshold`` passed. Only those shards are read.
    """
    classes = manifest.labels.classes
    threshold = manifest.filter.threshold
    kept_rows = read_jsonl(storage, DatasetLayout.index)
    grids = {i: ClassGrid(i, str(name)) for i, name in enumerate(classes[:max_classes])}
    kept_keys = {(int(r["shard"]), str(r["key"])) for r in kept_rows if "shard" in r and "key" in r}
    shards: dict[int, list[int]] = defaultdict(list)  # class -> shards of its kept images, in order
    for row in kept_rows:
        c, shard = int(row.get("class", -1)), int(row.get("shard", -1))
        if c not in grids:
            continue
        if shard not in shards[c]:
            shards[c].append(shard)
        if len(grids[c].kept) < GRID_IMAGES:
            passed = row.get("passed") if isinstance(row.get("passed"), bool) else None
            grids[c].kept.append(Sample(str(row["key"]), shard, c, number(row.get("score")), True, passed))
    if not manifest.filter.enabled:
        return [grids[i] for i in sorted(grids)]
    features: dict[int, _ShardScores | None] = {}
    for c in sorted(shards):
        grid = grids[c]
        for shard in shards[c][:GRID_SHARDS]:
            if shard not in features:
                features[shard] = _shard_scores(storage, shard)
            scores = features[shard]
            for sample in scores.not_kept(c, kept_keys) if scores else []:
                sample.passed = _passed(sample.score, threshold)
                group = grid.not_chosen if sample.passed else grid.below
                if len(group) < GRID_IMAGES:
                    group.append(sample)
            if len(grid.not_chosen) >= GRID_IMAGES and len(grid.below) >= GRID_IMAGES:
                break
    return [grids[i] for i in sorted(grids)]


@dataclass(frozen=True)
class NotKept:
    """Why the images of a class (or of a dataset) were not kept, from the manifest's counts."""

    corrupt: int
    real_filtered: int  # dropped by Real Filtering before the CLIP filter scored the rest
    below: int  # at or below the threshold (and not kept to fill K when too few passed)
    not_chosen: int  # passed the threshold, not among the K kept

    @classmethod
    def of(cls, counts: Iterable[ClassCounts]) -> NotKept:
        corrupt = real_filtered = below = not_chosen = 0
        for c in counts:
            scored_below = c.generated - c.corrupt - c.real_filtered - c.passed
            corrupt += c.corrupt
            real_filtered += c.real_filtered
            below += scored_below - c.kept_below_threshold
            not_chosen += c.passed - (c.kept - c.kept_below_threshold)
        return cls(corrupt, real_filtered, below, not_chosen)


def _passed(score: float | None, threshold: float | None) -> bool:
    """The reduce stage's rule (synthrec.workers.reduce.clip_filter): an image passes when score > t."""
    return score is not None and threshold is not None and score > threshold


@dataclass
class _ShardScores:
    """A shard's features file as far as the grids need it: keys, classes and filter probabilities."""

    shard: int
    keys: list[str]
    labels: list[int] | None
    probs: list[list[float]]

    def not_kept(self, c: int, kept: set[tuple[int, str]]) -> list[Sample]:
        out = []
        for row, key in enumerate(self.keys):
            if (self.shard, key) in kept:
                continue
            if (self.labels[row] if self.labels else _class_of_key(key)) != c:
                continue
            score = self.probs[row][c] if row < len(self.probs) and c < len(self.probs[row]) else None
            out.append(Sample(key, self.shard, c, score, False))
        return out


def _shard_scores(storage: Storage, shard: int) -> _ShardScores | None:
    try:
        data = storage.read_bytes(DatasetLayout.features(shard))
        meta = safetensors_header(data).get("__metadata__") or {}
        keys = [str(k) for k in json.loads(meta.get("keys", "[]"))]
        probs = safetensors_matrix(data, "probs")
    except (ObjectNotFound, ValueError, KeyError, TypeError, struct.error):
        return None
    return _ShardScores(shard, keys, _class_column(data, len(keys)), probs)


def _class_column(data: bytes, n: int) -> list[int] | None:
    """The features file's class_index tensor (I64), or None."""
    try:
        header = safetensors_header(data)
        info = header["class_index"]
        if info["dtype"] != "I64":
            return None
        (length,) = struct.unpack("<Q", data[:8])
        start, end = (8 + length + o for o in info["data_offsets"])
        return list(struct.unpack(f"<{n}q", data[start:end]))
    except (KeyError, ValueError, struct.error):
        return None


def _class_of_key(key: str) -> int:
    """c00003-p00012-i00004 -> 3 (the generate stage's key layout), -1 when it is not one."""
    try:
        return int(key.split("-")[0].lstrip("c"))
    except ValueError:
        return -1


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attach_images(storage: Storage, grids: list[ClassGrid], out_dir: Path, prefix: str) -> None:
    """Copy the grids' images (thumbnails) into ``out_dir/prefix`` and fill in prompts from the tars."""
    by_shard: dict[int, list[Sample]] = defaultdict(list)
    for grid in grids:
        for sample in grid.samples:
            by_shard[sample.shard].append(sample)
    (out_dir / prefix).mkdir(parents=True, exist_ok=True)
    for shard, samples in sorted(by_shard.items()):
        wanted = {s.key: s for s in samples}
        try:
            with local_copy(storage, DatasetLayout.shard(shard)) as path, tarfile.open(path) as tar:
                for member in tar:
                    stem, _, ext = member.name.rpartition(".")
                    sample = wanted.get(stem)
                    if sample is None or not member.isfile():
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    data = handle.read()
                    if ext == "json":
                        with suppress(ValueError, AttributeError):
                            sample.prompt = str(json.loads(data).get("prompt", ""))
                    elif ext in ("jpg", "jpeg", "png", "webp"):
                        rel = f"{prefix}/{stem}.jpg"
                        _write_thumbnail(data, out_dir / rel)
                        sample.image = rel
        except (StorageError, OSError, tarfile.TarError):
            continue  # a missing or damaged shard: its samples show without a picture


def _write_thumbnail(data: bytes, path: Path) -> None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            im.save(path, format="JPEG", quality=90)
    except Exception:  # no Pillow or an undecodable image: keep the original bytes
        path.write_bytes(data)
