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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from synthrec.storage.base import CHUNK, ObjectInfo, Storage, clean_key, missing_message
from synthrec.storage.errors import ObjectNotFound, StorageError, StoragePermissionError, local_error

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
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a local file atomically: a temp file in the same folder, fsync, then ``os.replace``.

    If the block raises (or the process dies) the final path keeps its previous content or stays absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; make it a normal file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.uri = "file://" + str(self.root).rstrip("/") + "/"

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

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key, "read"):
            return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(key, "write"), atomic_output(path) as f:
            f.write(data)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        path = self._path(key)
        require_local_file(local_path, self.url(key))
        with self._errors(key, "write"), open(local_path, "rb") as src, atomic_output(path) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

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
        path = self._path(key)
        with self._errors(key, "delete"), suppress(FileNotFoundError):
            path.unlink()

    def sha256(self, key: str) -> str:
        path = self._path(key)
        with self._errors(key, "hash"):
            return sha256_file(path)


def require_local_file(local_path: str | os.PathLike[str], target: str) -> None:
    if not os.path.isfile(local_path):
        raise StorageError(f"cannot upload {local_path} to {target}: it is not a readable local file")
