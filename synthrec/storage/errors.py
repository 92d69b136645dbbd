"""Storage errors: each message names the URI and says what to do."""

from __future__ import annotations


class StorageError(Exception):
    """Object storage failed; the message names the URI and says what to do."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class StoragePermissionError(StorageError):
    """Credentials or permissions do not allow the operation."""


class TransientStorageError(StorageError):
    """A retryable failure (throttling, 5xx, timeouts) persisted after all retries."""


class StorageConflict(StorageError):
    """The key is already committed by a different spec; nothing was overwritten."""


class InvalidKey(StorageError, ValueError):
    """A key that could escape the storage root or cannot be represented on every backend."""
