"""The images of a dataset's report: per class a grid of kept and rejected samples with their CLIP
scores and prompts, read from index/kept.jsonl, the features files and the shard tars (only the
shards that hold grid images are read)."""

from __future__ import annotations

import json
import struct
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from synthrec.contract.kept import parse_kept_row
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.manifest import DatasetManifest
from synthrec.contract.samples import parse_sample_meta
from synthrec.limits import MAX_IMAGE_BYTES, MAX_JSON_MEMBER_BYTES, MemberTooLarge, read_member
from synthrec.report.files import ReportFiles
from synthrec.report.inputs import read_lines
from synthrec.storage import FileStorage, ObjectNotFound, ObjectTooLarge, Storage, StorageError

MAX_GRID_CLASSES = 24  # classes with image grids (the accept-rate table and plot show every class)
GRID_IMAGES = 8  # kept and rejected images shown per class
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
    prompt: str = ""
    image: str | None = None  # path relative to the report folder


@dataclass
class ClassGrid:
    index: int
    name: str
    kept: list[Sample] = field(default_factory=list)
    rejected: list[Sample] = field(default_factory=list)


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
) -> tuple[list[ClassGrid], str | None]:
    """Per class (the first ``max_classes``) up to GRID_IMAGES kept and rejected samples, with scores,
    and a note on index rows that could not be read.

    Kept samples come from index/kept.jsonl. Rejected ones are the other images of the shard holding the
    class's first kept image, scored from that shard's features file. Only those shards are read.
    """
    classes = manifest.labels.classes
    lines, problem = read_lines(storage, DatasetLayout.index, parse_kept_row)
    grids = {i: ClassGrid(i, str(name)) for i, name in enumerate(classes[:max_classes])}
    kept_keys = {(r.shard, r.key) for r in lines.rows}
    first_shard: dict[int, int] = {}
    for row in lines.rows:
        c = row.class_index
        if c in grids and len(grids[c].kept) < GRID_IMAGES:
            grids[c].kept.append(Sample(row.key, row.shard, c, row.score, True))
            first_shard.setdefault(c, row.shard)
    if manifest.filter.enabled:
        for c, shard in sorted(first_shard.items()):
            for sample in _rejected_in_shard(storage, shard, c, kept_keys):
                if len(grids[c].rejected) >= GRID_IMAGES:
                    break
                grids[c].rejected.append(sample)
    return [grids[i] for i in sorted(grids)], problem


def _rejected_in_shard(storage: Storage, shard: int, c: int, kept: set[tuple[int, str]]) -> list[Sample]:
    try:
        data = storage.read_bytes(DatasetLayout.features(shard), max_bytes=MAX_FEATURES_BYTES)
        meta = safetensors_header(data).get("__metadata__") or {}
        keys = _KEYS.validate_json(meta.get("keys", "[]"))
        probs = safetensors_matrix(data, "probs")
    except (ObjectNotFound, ObjectTooLarge, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return []  # a missing, damaged or planted features file: no rejected samples to show
    out = []
    labels = _class_column(data, len(keys))
    for row, key in enumerate(keys):
        if (shard, key) in kept:
            continue
        if (labels[row] if labels else _class_of_key(key)) != c:
            continue
        out.append(Sample(key, shard, c, probs[row][c] if row < len(probs) else None, False))
    return out


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
        for sample in grid.kept + grid.rejected:
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
