"""Storage errors: each message names the URI and says what to do, and each class says what kind of failure
it is for a worker (``failure``), which the worker runtime turns into its exit code:

- ``config``: it cannot work anywhere (credentials refused, no such bucket, a bad URI, another spec's
  commit): the Job fails at once;
- ``data``: this shard's input is bad or missing: the index fails (no retry of the same input);
- ``retryable``: it may work on another try or another node (throttling, a full disk, trouble not known
  better): the pod is retried, within the shard's retries.
"""

from __future__ import annotations

import errno
from typing import ClassVar, Literal

Failure = Literal["retryable", "data", "config"]
# A local file system out of room: the disk, a quota, or the process's file-size limit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class StorageError(Exception):
    """Object storage failed; the message names the URI and says what to do."""

    failure: ClassVar[Failure] = "retryable"  # unknown trouble: retried, then the index fails


class ObjectNotFound(StorageError):
    """The object does not exist (a missing input fails its shard)."""

    failure: ClassVar[Failure] = "data"


class CorruptObject(StorageError):
    """The object exists but is not what synthrec wrote there (damaged, or not synthrec's)."""

    failure: ClassVar[Failure] = "data"


class StoragePermissionError(StorageError):
    """Credentials or permissions do not allow the operation."""

    failure: ClassVar[Failure] = "config"


class StorageConfigError(StorageError):
    """The storage itself is misconfigured: no such bucket, a bad URI, bad retry settings."""

    failure: ClassVar[Failure] = "config"


class TransientStorageError(StorageError):
    """A retryable failure (throttling, 5xx, timeouts) persisted after all retries."""


class StorageFull(StorageError):
    """A local disk (a download's target, a scratch file) is full: another try, maybe on another node."""


class StorageConflict(StorageError):
    """The key is already committed by a different spec; nothing was overwritten."""

    failure: ClassVar[Failure] = "config"


class InvalidKey(StorageError, ValueError):
    """A key that could escape the storage root or cannot be represented on every backend."""

    failure: ClassVar[Failure] = "data"


class ObjectTooLarge(StorageError):
    """An object larger than the reader's cap; nothing beyond the cap was read (bad input: the index
    fails)."""

    failure: ClassVar[Failure] = "data"


def local_error(e: OSError, message: str) -> StorageError:
    """A StorageError for an OSError on the local side: StorageFull when the disk is full."""
    if e.errno in NO_SPACE:
        return StorageFull(f"{message}: no space left on the device ({e.strerror or e})")
    return StorageError(f"{message}: {e}")
