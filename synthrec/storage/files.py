"""``file://`` storage and the local file helpers both backends use.

Single objects are never visible half-written: a write goes to a temporary file in the same folder, is
fsynced and renamed into place (``atomic_output``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, BinaryIO

from synthrec.storage import base
from synthrec.storage.base import CHUNK, ObjectInfo, Storage, clean_key, missing_message, too_large
from synthrec.storage.errors import ObjectNotFound, StorageError, StoragePermissionError, local_error
from synthrec.storage.staged import PartUpload

# Temporary files of atomic writes end with this; listings skip them (a crash can leave one behind).
TMP_SUFFIX = ".synthrec-tmp"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    with suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@contextmanager
def _staged(path: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside ``path`` (same filesystem, a normal file mode); removed on the way out
    unless it was renamed away. Yields the open file and its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; make it a normal file
        with os.fdopen(fd, "wb") as f:
            yield f, Path(tmp)
    finally:
        with suppress(OSError):
            os.unlink(tmp)


def _seal(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a local file atomically: a temp file in the same folder, fsync, then ``os.replace``.

    If the block raises (or the process dies) the final path keeps its previous content or stays absent.
    """
    path = Path(path)
    with _staged(path) as (f, tmp):
        yield f
        _seal(f)
        os.replace(tmp, path)
    _fsync_dir(path.parent)


# link(2) fails with these where a filesystem has no hard links (vfat, some FUSE and SMB mounts).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def create_exclusive(path: Path, fill: Callable[[IO[bytes]], None]) -> tuple[bool, bool]:
    """Write ``path`` only if it does not exist, never visible half-written: the content goes to a temp
    file, which is then published with ``publish_exclusive``. Returns (created, atomic) as that does."""
    if path.exists():
        return False, True
    with _staged(path) as (f, tmp):
        fill(f)
        _seal(f)
        return publish_exclusive(tmp, path)


def publish_exclusive(tmp: Path, path: Path) -> tuple[bool, bool]:
    """Make the complete temp file ``tmp`` (in ``path``'s folder) the file ``path`` only if ``path`` does
    not exist: hard-link it (link(2) fails if ``path`` exists, atomically); ``tmp`` stays for the caller
    to remove. Returns (created, atomic). Where the filesystem has no hard links it checks, then renames
    (``atomic`` False): the caller must not rely on a single winner then."""
    if path.exists():
        return False, True
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False, True
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        if path.exists():
            return False, False
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return True, False
    _fsync_dir(path.parent)
    return True, True


@contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the local file ``path``, across processes."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every filesystem allows opening a directory, so best effort.
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------- file://


def links_work(folder: Path) -> bool:
    """Whether link(2) works in ``folder`` (created if missing): what ``create_exclusive`` relies on."""
    folder.mkdir(parents=True, exist_ok=True)
    with _staged(folder / ".links") as (_f, tmp):
        probe = tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX) + ".link" + TMP_SUFFIX)
        try:
            os.link(tmp, probe)
        except OSError as e:
            if e.errno in _NO_LINKS:
                return False
            raise
        os.unlink(probe)
    return True


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.uri = "file://" + str(self.root).rstrip("/") + "/"
        self._links: bool | None = None  # does link(2) work here? (create_exclusive) None: not known yet

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    @contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        target = self.uri + key  # the caller has validated key
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            if action in ("read", "download", "hash"):
                raise ObjectNotFound(missing_message(target)) from e
            raise StorageError(
                f"cannot {action} {target}: {e.strerror} ({e.filename}); on file:// a key cannot be both an "
                "object and a folder, and the folders on the way must be creatable"
            ) from e
        except PermissionError as e:
            raise StoragePermissionError(
                f"cannot {action} {target}: permission denied ({e.filename}); check the owner and mode of "
                "the folder, or whether the volume is mounted read-only"
            ) from e
        except OSError as e:
            if e.errno == errno.EROFS:
                raise StoragePermissionError(
                    f"cannot {action} {target}: read-only file system; mount the volume read-write"
                ) from e
            raise local_error(e, f"cannot {action} {target}") from e

    def child(self, prefix: str) -> FileStorage:
        return FileStorage(self.root / clean_key(prefix, folder=True))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        with self._errors(key, "read"), open(path, "rb") as f:
            if max_bytes is None:
                return f.read()
            size = os.fstat(f.fileno()).st_size
            data = base.read_at_most(f.read, max_bytes, size)
            if len(data) > max_bytes:
                raise too_large(self.uri + key, size, max_bytes)
            return data

    def open_stream(self, key: str) -> BinaryIO:
        path = self._path(key)
        with self._errors(key, "read"):
            return open(path, "rb")

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(key, "write"), atomic_output(path) as f:
            f.write(data)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        path = self._path(key)
        require_local_file(local_path, self.url(key))
        with self._errors(key, "write"), open(local_path, "rb") as src, atomic_output(path) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    @property
    def atomic_creates(self) -> bool:
        if self._links is None:
            with self._errors("", "write"):
                self._links = links_work(self.root)
        return self._links

    def create_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> bool:
        if not self.atomic_creates:
            return super().create_bytes(key, data, sha256=sha256)
        path = self._path(key)
        with self._errors(key, "write"):
            created, atomic = create_exclusive(path, lambda f: f.write(data))
        self.note_atomic(atomic)
        return created

    def create_file(self, local_path: str | os.PathLike[str], key: str, *, sha256: str | None = None) -> bool:
        if not self.atomic_creates:
            return super().create_file(local_path, key, sha256=sha256)
        path = self._path(key)
        require_local_file(local_path, self.url(key))

        def fill(dst: IO[bytes]) -> None:
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)

        with self._errors(key, "write"):
            created, atomic = create_exclusive(path, fill)
        self.note_atomic(atomic)
        return created

    def replace_file(
        self, local_path: str | os.PathLike[str], key: str, *, current_tag: str | None, sha256: str
    ) -> bool:
        require_local_file(local_path, self.url(key))

        def put(path: Path) -> None:
            with open(local_path, "rb") as src, atomic_output(path) as dst:
                shutil.copyfileobj(src, dst, CHUNK)

        return self.swap(key, current_tag, put)

    def swap(self, key: str, current_tag: str | None, put: Callable[[Path], None]) -> bool:
        """Compare-and-swap under an exclusive lock (flock) on a hidden lock file beside the object: every
        replacer checks the content it is about to replace while holding it, then ``put`` writes the path
        atomically. Creators need no lock: the key is never absent during a replace (``os.replace``), so
        their link(2) fails."""
        path = self._path(key)
        lock = path.with_name(f".{path.name[:100]}.lock{TMP_SUFFIX}")  # listings skip it
        with self._errors(key, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(lock):
                try:
                    if sha256_file(path) != current_tag:
                        return False
                except FileNotFoundError:
                    return False
                put(path)
        return True

    def note_atomic(self, atomic: bool) -> None:
        """A create found the filesystem without hard links: later creates check, then write."""
        self._links = bool(self._links is not False and atomic)

    def open_upload(self, key: str) -> PartUpload:
        return _FileUpload(self, key)

    def content_tag(self, key: str) -> str | None:
        return self.sha256(key)  # computed: a local file has nowhere to record it

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        path = self._path(key)
        with self._errors(key, "download"), open(path, "rb") as src, atomic_output(local_path) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = clean_key(prefix, folder=True) if prefix.endswith("/") or not prefix else clean_key(prefix)
        start = self.root / prefix.rpartition("/")[0]
        found: list[ObjectInfo] = []
        with self._errors(prefix, "list"):
            for folder, _dirs, files in os.walk(start):
                rel = Path(folder).relative_to(self.root).as_posix()
                for name in files:
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix) and not name.endswith(TMP_SUFFIX):
                        with suppress(FileNotFoundError):  # deleted while listing
                            found.append(ObjectInfo(key, os.stat(os.path.join(folder, name)).st_size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Delete an object, and the folders it leaves empty (as on S3, a folder is its objects)."""
        path = self._path(key)
        with self._errors(key, "delete"), suppress(FileNotFoundError):
            path.unlink()
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone, or not ours to remove): stop
                break
            folder = folder.parent

    def sha256(self, key: str) -> str:
        path = self._path(key)
        with self._errors(key, "hash"):
            return sha256_file(path)


def require_local_file(local_path: str | os.PathLike[str], target: str) -> None:
    if not os.path.isfile(local_path):
        raise StorageError(f"cannot upload {local_path} to {target}: it is not a readable local file")


class _FileUpload(PartUpload):
    """An upload in parts on file://: a hidden temp file in the object's folder (listings skip it),
    published by link(2) (create) or rename under the object's lock (replace); ``discard`` removes it and
    the folders it made."""

    def __init__(self, storage: FileStorage, key: str) -> None:
        self.storage, self.key = storage, key
        path = storage._path(key)
        with storage._errors(key, "write"):
            self.made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=TMP_SUFFIX)
            os.fchmod(fd, 0o666 & ~_umask())
        self.path, self.tmp = path, Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.published = False

    def upload_part(self, data: bytes) -> None:
        with self.storage._errors(self.key, "upload"):
            self.file.write(data)

    def seal(self, sha256: str, size: int) -> PartUpload:
        with self.storage._errors(self.key, "upload"):
            _seal(self.file)
            self.file.close()
        return super().seal(sha256, size)

    def create(self) -> bool:
        if not self.storage.atomic_creates:
            if self.path.exists():
                return False
            with self.storage._errors(self.key, "write"):
                os.replace(self.tmp, self.path)
                _fsync_dir(self.path.parent)
            self.published = True
            return True
        with self.storage._errors(self.key, "write"):
            created, atomic = publish_exclusive(self.tmp, self.path)
        self.storage.note_atomic(atomic)
        self.published = created
        return created

    def replace(self, current_tag: str | None) -> bool:
        def put(path: Path) -> None:
            os.replace(self.tmp, path)
            _fsync_dir(path.parent)

        self.published = self.storage.swap(self.key, current_tag, put)
        return self.published

    def discard(self) -> None:
        with suppress(OSError):
            self.file.close()
        with suppress(OSError):
            self.tmp.unlink()
        if self.published:
            return
        for folder in self.made:  # deepest first; only those still empty
            with suppress(OSError):
                folder.rmdir()
