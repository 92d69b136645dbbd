"""Uploading a file while another thread still writes it: parts go up as they are ready
(``Storage.open_upload``: S3 multipart upload, a hidden temporary file beside the object on file://), and
the object appears only when the commit protocol publishes it (synthrec.storage.commit.commit_staged,
create-if-absent). Until then nothing is visible, and discarding it leaves nothing behind.

``FileTail`` follows a local file another thread appends to (the generate stage's shard tar) and uploads it
in parts of ``part_size`` bytes as they fill, hashing as it goes; ``finish`` sends the rest once the writer
has closed the file and returns the upload, sealed, for ``commit_staged``. So the upload overlaps the
generation, and at the end only the last part is left.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthrec.storage.base import MiB, Storage
from synthrec.storage.staged import PartUpload

DEFAULT_PART = 16 * MiB


class FileTail:
    """Uploads ``path`` to ``key`` of ``storage`` while another thread appends to it (see the module
    docstring). ``poke()`` after each append; ``finish()`` after the writer closed the file returns the
    sealed upload (its sha256 and size known) to commit; ``abort()`` on failure discards it. A failed part
    upload is re-raised at the next poke or finish."""

    def __init__(
        self,
        storage: Storage,
        key: str,
        path: str | os.PathLike[str],
        part_size: int = DEFAULT_PART,
        on_part: Callable[[int], None] | None = None,
    ):
        self.path = Path(path)
        self.upload = storage.open_upload(key)
        self.part_size = max(self.upload.min_part, part_size)
        self.on_part = on_part  # called with the bytes sent so far, after each part
        self.digest = hashlib.sha256()
        self.sent = 0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="synthrec-upload", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._raise()
        self._wake.set()

    def finish(self) -> PartUpload:
        self._closed.set()
        self._wake.set()
        self._thread.join()
        self._raise()
        return self.upload.seal(self.digest.hexdigest(), self.sent)

    def abort(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.upload.discard()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                while True:
                    self._wake.wait()
                    self._wake.clear()
                    closed = self._closed.is_set()
                    self._send(fh, closed)
                    if closed:
                        return
        except BaseException as exc:  # handed to the caller
            self._error = exc

    def _send(self, fh: Any, everything: bool) -> None:
        """Full parts while enough bytes are written; with ``everything`` the rest too."""
        while True:
            ready = os.path.getsize(self.path) - self.sent
            if ready < self.part_size and not (everything and ready > 0):
                return
            fh.seek(self.sent)
            data = fh.read(self.part_size if ready >= self.part_size else ready)
            self.upload.upload_part(data)
            self.digest.update(data)
            self.sent += len(data)
            if self.on_part is not None:
                self.on_part(self.sent)
