"""The images of a dataset's report: per class a grid of kept samples and of the two kinds of images
that were not kept, those below the CLIP filter's threshold and those that passed it but were not among
the K kept (``filter.keepPerClass``: drawn at random from the passing ones, or the top K), with their
CLIP scores and prompts. Read from index/kept.jsonl, the features files and the shard tars (only the
shards that hold grid images are read)."""

from __future__ import annotations

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

from pydantic import TypeAdapter

from synthrec.contract.kept import parse_kept_row
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import ClassCounts, DatasetManifest
from synthrec.contract.samples import parse_sample_meta
from synthrec.limits import MAX_IMAGE_BYTES, MAX_JSON_MEMBER_BYTES, MemberTooLarge, read_member
from synthrec.report.files import ReportFiles
from synthrec.report.inputs import read_lines
from synthrec.storage import FileStorage, ObjectNotFound, ObjectTooLarge, Storage, StorageError

MAX_GRID_CLASSES = 24  # classes with image grids (the accept-rate table and plot show every class)
GRID_IMAGES = 8  # images shown per class and group (kept, passed but not kept, below the threshold)
GRID_SHARDS = 4  # shards whose features a class's not-kept images are looked for in
THUMBNAIL_PX = 128
MAX_FEATURES_BYTES = 1024 * 1024 * 1024  # a features file of a 10,000-image shard is ~50 MB
_KEYS = TypeAdapter(list[str])  # the sample keys in a features file's metadata


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


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor dtypes, shapes, offsets and __metadata__)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


_FLOAT_CODES = {"F32": "f", "F16": "e"}


def safetensors_matrix(data: bytes, name: str) -> list[list[float]]:
    """A 2-D float32 or float16 tensor of a safetensors file as rows, without numpy or torch."""
    header = safetensors_header(data)
    info = header[name]
    code = _FLOAT_CODES.get(info["dtype"])
    if code is None or len(info["shape"]) != 2:
        raise ValueError(f"tensor {name} is {info['dtype']} {info['shape']}, expected a 2-D F32/F16 tensor")
    (length,) = struct.unpack("<Q", data[:8])
    start, end = (8 + length + o for o in info["data_offsets"])
    rows, cols = info["shape"]
    values = struct.unpack(f"<{rows * cols}{code}", data[start:end])
    return [list(values[r * cols : (r + 1) * cols]) for r in range(rows)]


def filter_scores(data: bytes) -> list[list[float]]:
    """Per row of a features file, the CLIP Filter's probabilities: the softmax of its float16 logits
    (``filter_logits``, else ``logits``: format 2), or the stored ``probs`` (format 1)."""
    import math

    header = safetensors_header(data)
    if "probs" in header:
        return safetensors_matrix(data, "probs")
    out = []
    for row in safetensors_matrix(data, "filter_logits" if "filter_logits" in header else "logits"):
        top = max(row, default=0.0)
        e = [math.exp(v - top) for v in row]
        total = sum(e)
        out.append([v / total for v in e])
    return out


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
) -> tuple[list[ClassGrid], str | None]:
    """Per class (the first ``max_classes``) up to GRID_IMAGES kept samples, and as many of each kind of
    not-kept sample, with scores; and a note on index rows that could not be read.

    Kept samples come from index/kept.jsonl. The others are the remaining images of the shards holding
    the class's kept images (the first GRID_SHARDS of them), scored from those shards' features files and
    split by the reduce stage's rule: a score above ``filter.threshold`` passed. Only those shards are read.
    """
    classes = manifest.labels.classes
    threshold = manifest.filter.threshold
    lines, problem = read_lines(storage, DatasetLayout.index, parse_kept_row)
    grids = {i: ClassGrid(i, str(name)) for i, name in enumerate(classes[:max_classes])}
    kept_keys = {(r.shard, r.key) for r in lines.rows}
    shards: dict[int, list[int]] = defaultdict(list)  # class -> shards of its kept images, in order
    for row in lines.rows:
        c, shard = row.class_index, row.shard
        if c not in grids:
            continue
        if shard not in shards[c]:
            shards[c].append(shard)
        if len(grids[c].kept) < GRID_IMAGES:
            grids[c].kept.append(Sample(row.key, shard, c, row.score, True, row.passed))
    if not manifest.filter.enabled:
        return [grids[i] for i in sorted(grids)], problem
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
    return [grids[i] for i in sorted(grids)], problem


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
        data = storage.read_bytes(DatasetLayout.features(shard), max_bytes=MAX_FEATURES_BYTES)
        meta = safetensors_header(data).get("__metadata__") or {}
        keys = _KEYS.validate_json(meta.get("keys", "[]"))
        probs = filter_scores(data)  # format 2: the softmax of the fp16 logits; format 1: stored probs
    except (ObjectNotFound, ObjectTooLarge, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None  # a missing, damaged or planted features file: no not-kept samples to show
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
    except (KeyError, ValueError, TypeError, AttributeError, struct.error):
        return None


def _class_of_key(key: str) -> int:
    """c00003-p00012-i00004 -> 3 (the generate stage's key layout), -1 when it is not one."""
    try:
        return int(key.split("-")[0].lstrip("c"))
    except ValueError:
        return -1


def attach_images(storage: Storage, grids: list[ClassGrid], files: ReportFiles, resource: str) -> None:
    """Write the grids' images as thumbnails (``img/<resource>/<key>.jpg``, names made by ``files``) and
    fill in prompts from the tars. Members are read with a size cap; images are decoded and re-encoded."""
    by_shard: dict[int, list[Sample]] = defaultdict(list)
    for grid in grids:
        for sample in grid.samples:
            by_shard[sample.shard].append(sample)
    for shard, samples in sorted(by_shard.items()):
        wanted = {s.key: s for s in samples}
        try:
            with local_copy(storage, DatasetLayout.shard(shard)) as path, tarfile.open(path) as tar:
                for member in tar:
                    stem, _, ext = member.name.rpartition(".")
                    sample = wanted.get(stem)
                    if sample is None or not member.isfile():
                        continue
                    if ext == "json":
                        with suppress(ValueError):
                            sample.prompt = parse_sample_meta(
                                read_member(tar, member, MAX_JSON_MEMBER_BYTES)
                            ).prompt
                    elif ext in ("jpg", "jpeg", "png", "webp"):
                        with suppress(MemberTooLarge):
                            rel = files.name("img", resource, stem, ext="jpg")
                            if files.write_thumbnail(
                                rel, read_member(tar, member, MAX_IMAGE_BYTES), THUMBNAIL_PX
                            ):
                                sample.image = rel
        except (StorageError, OSError, tarfile.TarError):
            continue  # a missing or damaged shard: its samples show without a picture
