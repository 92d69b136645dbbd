"""Real images: index an ImageFolder tree or WebDataset shards against the label space, sample exactly M
shots per class with a seed, and load images as RGB.

Layouts (``RealData.format``):

- ``imagefolder``: ``<uri>/<class folder>/<image>`` (files may sit in sub-folders of the class folder).
  Image files: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp (case-insensitive).
- ``webdataset``: ``*.tar`` objects under ``<uri>`` (recursively). A sample is the members sharing a key
  (the member path up to the first '.' of its file name). Its image is the first of jpg/jpeg/png/webp/...
  and its label the first of: ``<key>.cls`` (text), ``<key>.json`` field ``class``, ``label`` or ``cls``.
  An image of such a sample has the URI ``<tar uri>#<member name>``.

Matching to the label space (``synthrec.api.labels.resolve_labels``):

- Without ``class_mapping``: a folder name (or a string label) matches the class whose ``name`` (or, if no
  name matches, ``head_name``, or the release's ``folder`` a preset knows: EuroSAT's ``AnnualCrop``,
  ImageNet's ``n01440764``, CUB's ``001.Black_footed_Albatross``) is equal after
  ``normalise_folder_name`` (case-insensitive, '_' and '-' read as spaces). An integer WebDataset label
  is the class index of the label space.
- With ``class_mapping`` (folder or label -> class name): only mapped folders/labels are used; the target
  must be a class ``name`` of the label space. Several folders may deliberately map to one class.

Policy (what is an error and what is a counted skip):

=====================================================  ======================================================
situation                                              outcome
=====================================================  ======================================================
``class_mapping`` names a class not in the label space ConfigError (the spec is wrong)
no folder/label matches any class at all                 DataError listing what was found
two folders match one class by name (no mapping)         DataError naming both (ambiguous; add a mapping)
a class of the label space has no images                 DataError naming the classes (missing class, empty
(missing folder, empty folder, nothing readable)         folder); the label space and the data disagree
folders/labels that match no class (the data has more    skipped and counted (``unmatched`` lists them):
classes than the label space, e.g. a ``subset``)         normal when a label space is a subset
integer label outside 0..C-1                             DataError (class-count mismatch)
non-image files, files outside a class folder,           skipped and counted
WebDataset samples without image or without label
zero-byte image files (seen in the listing)              ``on_bad_image``: skip (counted) or fail (DataError)
unreadable or corrupt images (seen when loading)         ``on_bad_image``: ``load_rgb`` returns None (the
                                                         caller counts it) or raises DataError
=====================================================  ======================================================

Shots: ``shot_order`` gives each class's images sorted by URI and then shuffled by a ``random.Random`` seeded
with ``(seed, class index)`` (independent of PYTHONHASHSEED, and a class's order does not change when
other classes are added). ``sample_shots`` takes the first M; ``load_shots`` walks the same order and
replaces an unreadable shot (policy skip) by the next image, so a run still gets exactly M per class.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import shutil
import tarfile
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthrec import limits
from synthrec.api import RealData
from synthrec.api.labels import ResolvedLabels, normalise_folder_name
from synthrec.storage import ObjectNotFound, Storage, StorageError
from synthrec.workers.runtime import ConfigError, DataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Opener = Callable[[str], Storage]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WDS_IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
WDS_LABEL_FIELDS = ("class", "label", "cls")
TAR_MEMBER_SEP = "#"


@dataclass(frozen=True)
class RealImage:
    class_index: int
    uri: str  # the object's URI, or '<tar uri>#<member>' for WebDataset


@dataclass
class RealIndex:
    by_class: dict[int, list[RealImage]]  # every class of the label space, images sorted by URI
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unmatched: list[str] = field(default_factory=list)  # folders / labels that match no class

    def count(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def fingerprint(self) -> list[tuple[int, str]]:
        """(class, uri) of every image, sorted: what a feature cache key of this data is made of."""
        return sorted((img.class_index, img.uri) for imgs in self.by_class.values() for img in imgs)


# ------------------------------------------------------------------------------------------ indexing


def index_real_data(data: RealData, labels: ResolvedLabels, opener: Opener) -> RealIndex:
    """List the images of ``data`` and assign each to a class of ``labels`` (see the module policy)."""
    storage = opener(data.uri)
    resolver = ClassResolver(data, labels)
    skipped: Counter[str] = Counter()
    by_class: dict[int, list[RealImage]] = defaultdict(list)
    try:
        if data.format == "imagefolder":
            _index_imagefolder(storage, data, resolver, by_class, skipped)
        else:
            _index_webdataset(storage, data, resolver, by_class, skipped)
    except ObjectNotFound as e:
        raise DataError(f"real data {data.uri}: {e}") from e
    if not by_class:
        found = ", ".join(repr(u) for u in resolver.unmatched[:10]) or "nothing"
        raise DataError(
            f"real data {data.uri} ({data.format}): no image matches any of the {len(labels)} classes "
            f"(found {found}); class folders must be named after the classes "
            f"(e.g. {labels.names[0]!r}) or mapped with classMapping"
        )
    missing = [c for c in labels.classes if not by_class.get(c.index)]
    if missing:
        names = ", ".join(repr(c.name) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"real data {data.uri}: {len(missing)} of {len(labels)} classes have no images: {names} "
            "(missing or empty folders, or no readable image files); add them, fix the names with "
            "classMapping, or restrict labels.subset to the classes the data has"
        )
    for images in by_class.values():
        images.sort(key=lambda img: img.uri)
    if resolver.unmatched:
        log.warning(
            "real data %s: %d folders/labels match no class and are ignored: %s",
            data.uri,
            len(resolver.unmatched),
            ", ".join(resolver.unmatched[:10]),
        )
    return RealIndex(
        by_class={c.index: by_class[c.index] for c in labels.classes},
        skipped=dict(skipped),
        unmatched=sorted(resolver.unmatched),
    )


class ClassResolver:
    """Folder name / WebDataset label -> class index, following the module's matching rules."""

    def __init__(self, data: RealData, labels: ResolvedLabels) -> None:
        self.data = data
        self.size = len(labels)
        self.unmatched: list[str] = []
        self._seen: dict[str, int | None] = {}
        self._claimed: dict[int, str] = {}
        self.mapping: dict[str, int] | None = None
        if data.class_mapping is not None:
            by_name = {c.name: c.index for c in labels.classes}
            unknown = sorted({v for v in data.class_mapping.values() if v not in by_name})
            if unknown:
                raise ConfigError(
                    f"real data {data.uri}: classMapping targets {', '.join(map(repr, unknown[:10]))} are "
                    f"not class names of the label space (e.g. {labels.names[0]!r})"
                )
            self.mapping = {k: by_name[v] for k, v in data.class_mapping.items()}
        self._by_name: dict[str, int] = {}
        for attr in ("folder", "head_name", "name"):  # name wins over head_name and folder: assigned last
            for c in labels.classes:
                if getattr(c, attr):
                    self._by_name[normalise_folder_name(getattr(c, attr))] = c.index

    def resolve(self, label: str | int) -> int | None:
        token = str(label)
        if token in self._seen:
            return self._seen[token]
        index: int | None
        if self.mapping is not None:
            index = self.mapping.get(token)
        elif isinstance(label, int):
            if not 0 <= label < self.size:
                raise DataError(
                    f"real data {self.data.uri}: label {label} is outside the label space's "
                    f"0..{self.size - 1} (class-count mismatch); map the dataset's labels with classMapping"
                )
            index = label
        else:
            index = self._by_name.get(normalise_folder_name(token))
            if index is not None and index in self._claimed:
                raise DataError(
                    f"real data {self.data.uri}: {self._claimed[index]!r} and {token!r} both match class "
                    f"index {index}; rename one or say which to use with classMapping"
                )
        self._seen[token] = index
        if index is None:
            self.unmatched.append(token)
        elif self.mapping is None and not isinstance(label, int):
            self._claimed[index] = token
        return index


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _bad_listing(data: RealData, uri: str, what: str, skipped: Counter[str]) -> None:
    if data.on_bad_image == "fail":
        raise DataError(f"real data: {uri} is {what} (onBadImage: fail); remove or replace it")
    skipped["empty_file"] += 1


def _index_imagefolder(
    storage: Storage,
    data: RealData,
    resolver: ClassResolver,
    by_class: dict[int, list[RealImage]],
    skipped: Counter[str],
) -> None:
    for info in storage.list():
        folder, sep, rest = info.key.partition("/")
        if not sep:
            skipped["outside_class_folder"] += 1
            continue
        if not _is_image(rest):
            skipped["not_image"] += 1
            continue
        index = resolver.resolve(folder)
        if index is None:
            skipped["unmatched"] += 1
            continue
        uri = storage.url(info.key)
        if info.size == 0:
            _bad_listing(data, uri, "an empty file", skipped)
            continue
        by_class[index].append(RealImage(index, uri))


def _index_webdataset(
    storage: Storage,
    data: RealData,
    resolver: ClassResolver,
    by_class: dict[int, list[RealImage]],
    skipped: Counter[str],
) -> None:
    tars = [info for info in storage.list() if info.key.endswith(".tar")]
    if not tars:
        raise DataError(f"real data {data.uri} (webdataset): no .tar shards under it")
    for info in tars:
        tar_uri = storage.url(info.key)
        path = _TARS.local(tar_uri, lambda p, key=info.key: storage.download_file(key, p))
        for sample in _tar_samples(path, tar_uri):
            if sample.image is None:
                skipped["no_image"] += 1
                continue
            if sample.label is None:
                skipped["no_label"] += 1
                continue
            index = resolver.resolve(sample.label)
            if index is None:
                skipped["unmatched"] += 1
                continue
            uri = f"{tar_uri}{TAR_MEMBER_SEP}{sample.image.name}"
            if sample.image.size == 0:
                _bad_listing(data, uri, "an empty file", skipped)
                continue
            by_class[index].append(RealImage(index, uri))


def wds_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member name into (key, field): the field starts at the first '.' of the
    file name, e.g. 'a/b/00012.seg.png' -> ('a/b/00012', 'seg.png')."""
    folder, _, name = member_name.rpartition("/")
    stem, _, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def tar_members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, field, member) of every regular file of a WebDataset tar, in tar order."""
    for member in tar:
        if member.isfile():
            key, ext = wds_key(member.name)
            yield key, ext, member


@dataclass
class _WdsSample:
    key: str
    image: tarfile.TarInfo | None = None
    label: str | int | None = None


def _tar_samples(path: Path, tar_uri: str) -> list[_WdsSample]:
    """One pass over a tar: each key's image member and label (``cls`` text wins over ``json`` fields)."""
    samples: dict[str, _WdsSample] = {}
    from_cls: set[str] = set()
    try:
        with tarfile.open(path) as tar:
            for key, ext, member in tar_members(tar):
                sample = samples.setdefault(key, _WdsSample(key))
                if ext in WDS_IMAGE_FIELDS and sample.image is None:
                    sample.image = member
                elif ext == "cls" or (ext == "json" and key not in from_cls):
                    raw = limits.read_member(tar, member, limits.MAX_JSON_MEMBER_BYTES)
                    label = parse_label(ext, raw, tar_uri, member.name)
                    if ext == "cls":
                        from_cls.add(key)
                    if label is not None:
                        sample.label = label
    except (tarfile.TarError, OSError, limits.MemberTooLarge) as e:
        raise DataError(f"real data: {tar_uri} is not a readable tar ({e}); replace the shard") from e
    return list(samples.values())


def parse_label(ext: str, raw: bytes, tar_uri: str, member: str) -> str | int | None:
    if ext == "cls":
        text = raw.decode("utf-8", "replace").strip()
        return int(text) if text.lstrip("-").isdigit() else (text or None)
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise DataError(f"real data: {tar_uri}{TAR_MEMBER_SEP}{member} is not JSON ({e})") from e
    for name in WDS_LABEL_FIELDS:
        value = meta.get(name) if isinstance(meta, dict) else None
        if isinstance(value, int | str) and not isinstance(value, bool):
            return value
    return None


class _TarCache:
    """WebDataset shards downloaded once per process into a temporary folder (removed at exit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._members: dict[str, dict[str, tarfile.TarInfo]] = {}
        self._dir: Path | None = None

    def local(self, tar_uri: str, download: Callable[[Path], None]) -> Path:
        with self._lock:
            if tar_uri not in self._paths:
                if self._dir is None:
                    self._dir = Path(tempfile.mkdtemp(prefix="synthrec-real-"))
                    atexit.register(shutil.rmtree, self._dir, True)
                path = self._dir / f"{len(self._paths):06d}.tar"
                download(path)
                self._paths[tar_uri] = path
            return self._paths[tar_uri]

    def member(self, tar_uri: str, name: str, opener: Opener) -> bytes:
        folder, _, key = tar_uri.rpartition("/")
        path = self.local(tar_uri, lambda p: opener(folder + "/").download_file(key, p))
        with self._lock:
            if tar_uri not in self._members:
                with tarfile.open(path) as tar:
                    self._members[tar_uri] = {m.name: m for m in tar if m.isfile()}
            info = self._members[tar_uri].get(name)
        if info is None:
            raise ObjectNotFound(f"{tar_uri} has no member {name}")
        if info.size > limits.MAX_IMAGE_BYTES:
            raise limits.MemberTooLarge(
                f"{tar_uri}#{name} is {info.size} bytes, over {limits.MAX_IMAGE_BYTES}"
            )
        with open(path, "rb") as fh:
            fh.seek(info.offset_data)
            return fh.read(info.size)


_TARS = _TarCache()


# ------------------------------------------------------------------------------------------- shots


def shot_order(index: RealIndex, seed: int) -> dict[int, list[RealImage]]:
    """Each class's images sorted by URI, then shuffled with a generator seeded by (seed, class)."""
    out = {}
    for class_index, images in index.by_class.items():
        order = sorted(images, key=lambda img: img.uri)
        random.Random(f"synthrec-shots:{seed}:{class_index}").shuffle(order)
        out[class_index] = order
    return out


def sample_shots(index: RealIndex, shots: int, seed: int) -> dict[int, list[RealImage]]:
    """Exactly ``shots`` images per class (the first ``shots`` of ``shot_order``); DataError naming a class
    that has fewer."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    order = shot_order(index, seed)
    short = [(c, len(imgs)) for c, imgs in order.items() if len(imgs) < shots]
    if short:
        detail = ", ".join(f"class {c} has {n}" for c, n in short[:10])
        raise DataError(f"cannot sample {shots} shots per class: {detail}; lower matrix.shots or add images")
    return {c: imgs[:shots] for c, imgs in order.items()}


def load_shots(
    index: RealIndex, shots: int, seed: int, opener: Opener, on_bad: str = "skip"
) -> tuple[dict[int, list[tuple[RealImage, Image.Image]]], int]:
    """``sample_shots`` with images loaded: an unreadable shot (policy skip) is replaced by the class's next
    image in ``shot_order``. Returns the loaded shots and the number of images skipped."""
    sample_shots(index, shots, seed)  # the same up-front error when a class is too small
    out: dict[int, list[tuple[RealImage, Image.Image]]] = {}
    bad = 0
    for class_index, order in shot_order(index, seed).items():
        picked: list[tuple[RealImage, Image.Image]] = []
        for image in order:
            if len(picked) == shots:
                break
            rgb = load_rgb(image, opener, on_bad)
            if rgb is None:
                bad += 1
                continue
            picked.append((image, rgb))
        if len(picked) < shots:
            raise DataError(
                f"class {class_index}: only {len(picked)} of its {len(order)} images are readable, "
                f"{shots} shots are needed"
            )
        out[class_index] = picked
    return out, bad


# ------------------------------------------------------------------------------------------ loading


def read_image_bytes(uri: str, opener: Opener) -> bytes:
    """The bytes of an image URI (an object, or '<tar uri>#<member>')."""
    marker = ".tar" + TAR_MEMBER_SEP
    if marker in uri:
        tar_uri, _, member = uri.partition(marker)
        return _TARS.member(tar_uri + ".tar", member, opener)
    folder, _, name = uri.rpartition("/")
    return opener(folder + "/").read_bytes(name)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode fully (truncation shows up here, not later) and convert to RGB; raises on bad data, and
    ImageTooLarge (a ValueError) on an image over the pixel cap, before decoding it (synthrec.limits)."""
    return limits.decode_rgb(data)


def load_rgb(image: RealImage, opener: Opener, on_bad: str = "skip") -> Image.Image | None:
    """The image as RGB; None for an unreadable/corrupt image under policy 'skip', DataError under 'fail'.
    Storage trouble other than a missing object (throttling, permissions) propagates unchanged."""
    from PIL import Image

    try:
        return decode_rgb(read_image_bytes(image.uri, opener))
    except (ObjectNotFound, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, StorageError) and not isinstance(e, ObjectNotFound):
            raise
        if on_bad == "fail":
            raise DataError(
                f"real image {image.uri} cannot be read ({type(e).__name__}: {e}); remove or replace it, or "
                "set onBadImage: skip"
            ) from e
        log.warning("skipping unreadable real image %s: %s", image.uri, e)
        return None


def describe(index: RealIndex) -> dict[str, Any]:
    """Counts for cards and metrics: images per class, skips and unmatched folders."""
    return {
        "images": index.count(),
        "per_class": {str(c): len(v) for c, v in index.by_class.items()},
        "skipped": dict(index.skipped),
        "unmatched": index.unmatched[:50],
    }
