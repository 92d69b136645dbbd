"""file:// storage specifics: atomic writes that survive crashes, permissions, and what a listing shows.

Behaviour shared with s3:// is specified once for both backends in tests/integration/test_storage_s3.py.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from synthrec.storage import (
    TMP_SUFFIX,
    FileStorage,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StoragePermissionError,
    atomic_output,
    clean_key,
    open_storage,
)

NOBODY = 65534


def _crash_during_write(root: Path, key: str, data: bytes) -> subprocess.CompletedProcess[str]:
    """Write ``key`` in a child process that is SIGKILLed after the temp file is written, before rename."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from synthrec.storage import open_storage
        storage = open_storage({f"file://{root}"!r})
        os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        storage.write_bytes({key!r}, {data!r})
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_crash_before_the_rename_leaves_no_partial_object(tmp_path: Path) -> None:
    proc = _crash_during_write(tmp_path, "shards/gen-00001.tar", b"x" * 100_000)

    assert proc.returncode == -signal.SIGKILL, proc.stderr
    storage = open_storage(f"file://{tmp_path}")
    assert not storage.exists("shards/gen-00001.tar")
    leftovers = list((tmp_path / "shards").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.endswith(TMP_SUFFIX)  # the crash really was mid-write
    assert list(storage.list()) == []  # and listings never show temp files


def test_a_crash_while_overwriting_keeps_the_previous_content(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    storage.write_bytes("prompts.jsonl", b"committed\n")

    proc = _crash_during_write(tmp_path, "prompts.jsonl", b"new content that never lands\n")

    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert storage.read_bytes("prompts.jsonl") == b"committed\n"
    assert [o.key for o in storage.list()] == ["prompts.jsonl"]


def test_an_error_inside_an_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write(b"partial")
        raise RuntimeError("encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "f") as f:
        f.write(b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_uri_is_normalised_with_a_trailing_slash(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/out")
    assert isinstance(storage, FileStorage)
    assert storage.uri == f"file://{tmp_path}/out/"
    assert storage.url("a/b.json") == f"file://{tmp_path}/out/a/b.json"
    assert open_storage(f"file://{tmp_path}/out/").uri == storage.uri


def test_a_root_that_does_not_exist_yet_is_empty_and_created_on_write(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/not/yet")
    assert list(storage.list()) == []
    assert not storage.exists("k")
    storage.write_bytes("k", b"v")
    assert (tmp_path / "not" / "yet" / "k").read_bytes() == b"v"


def test_a_folder_is_not_an_object(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    storage.write_bytes("shards/a", b"1")
    with pytest.raises(ObjectNotFound, match="shards does not exist"):
        storage.read_bytes("shards")


def test_a_key_below_an_existing_object_is_a_clear_error(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    storage.write_bytes("a", b"1")
    with pytest.raises(StorageError, match=r"cannot write .*/a/b: .*cannot be both an object and a folder"):
        storage.write_bytes("a/b", b"2")


@pytest.mark.parametrize("key", ["a/b.json", "x", "deep/er/key with spaces", "ünï/cödé"])
def test_clean_key_accepts_ordinary_keys(key: str) -> None:
    assert clean_key(key) == key


@pytest.mark.parametrize("prefix", ["", "a/", "a/b/", "a/b"])
def test_clean_key_accepts_folder_prefixes(prefix: str) -> None:
    assert clean_key(prefix, folder=True) == (prefix if prefix.endswith("/") or not prefix else prefix + "/")


@pytest.mark.parametrize("key", ["..", "a/..", "./a", "C:\\x", "a\x00", "/etc/passwd", "a/", 3])
def test_clean_key_rejects_unsafe_keys_and_says_why(key: object) -> None:
    with pytest.raises(InvalidKey, match="storage key"):
        clean_key(key)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- permissions


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="synthrec-perm-"))
    path.chmod(0o755)
    yield path
    for folder, _dirs, _files in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path)


def _as_unprivileged(fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` in a forked child as user 'nobody' (root ignores file modes); return what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            if os.getuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                fn()
                result: BaseException | None = None
            except BaseException as e:
                result = e
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        payload = inp.read()
    os.waitpid(pid, 0)
    return pickle.loads(payload)


def test_writing_into_a_read_only_folder_is_a_permission_error(shared_dir: Path) -> None:
    storage = open_storage(f"file://{shared_dir}")
    (shared_dir / "ro").mkdir()
    (shared_dir / "ro").chmod(0o555)

    error = _as_unprivileged(lambda: storage.write_bytes("ro/marker.json", b"{}"))

    assert isinstance(error, StoragePermissionError), error
    assert f"file://{shared_dir}/ro/marker.json" in str(error)
    assert "permission denied" in str(error) and "read-only" in str(error)
    assert list((shared_dir / "ro").iterdir()) == []


def test_reading_an_unreadable_object_is_a_permission_error(shared_dir: Path) -> None:
    storage = open_storage(f"file://{shared_dir}")
    storage.write_bytes("secret.bin", b"x")
    (shared_dir / "secret.bin").chmod(0o000)

    error = _as_unprivileged(lambda: storage.read_bytes("secret.bin"))

    assert isinstance(error, StoragePermissionError), error
    assert "secret.bin" in str(error)
