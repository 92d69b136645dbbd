"""Deterministic WebDataset tar writing on a background thread.

The same samples always give the same bytes: members in submission order, fixed mtime, mode, uid/gid and
empty owner names, ustar format, names made of the sample key (indexes only) and an extension. JPEG
encoding and tar writing run on one background thread fed through a bounded queue, so the model thread
only waits when encoding falls behind by more than ``max_pending`` batches (``seconds_waiting`` says how
long it did).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, and not "implausibly old" to GNU tar
_STOP = object()


class DeterministicTar:
    """A tar file whose bytes depend only on the names and contents added, in order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT
        )
        self.members = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))
        self.members += 1

    def flush(self) -> None:
        """Hand what was added to the file (so a reader of the file sees it)."""
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()


def to_uint8(images: Any) -> Any:
    """Float images in [0, 1] (N, H, W, 3) as uint8, rounded as diffusers' numpy_to_pil does; a batch made
    uint8 on the device (``numpy()``, e.g. synthrec.workers.diffusion.HostImages) as it is."""
    import numpy as np

    if callable(getattr(images, "numpy", None)) and not isinstance(images, np.ndarray):
        images = images.numpy()  # waits for its copy to the host
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_jpeg(pixels: Any, quality: int, size: int | None = None) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 image, first resized to ``size`` x ``size`` when it is another size
    (Lanczos: antialiased, so a 512 px generation stored at 256 px does not alias)."""
    from PIL import Image

    image = Image.fromarray(pixels, "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sample_json(meta: dict[str, Any]) -> bytes:
    """A sample's metadata; class names and prompts stay as text (UTF-8), never in member names."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


class BackgroundShardWriter:
    """Encodes batches of images to JPEG and appends ``<key>.jpg`` + ``<key>.json`` (+ ``<key>.cls`` when
    ``label`` is given: the class index as ASCII digits, WebDataset's convention) to a tar, off-thread.

    Images are stored at ``size`` x ``size`` (resized with antialiasing when generated at another size).
    ``put(items, images)`` hands a batch over (blocking only when ``max_pending`` batches are queued);
    ``close()`` waits for everything to be written and closes the tar; an error on the writer thread
    is re-raised in the caller at the next ``put`` or at ``close``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: Callable[[Any], str],
        metadata: Callable[[Any], dict[str, Any]],
        label: Callable[[Any], int] | None = None,
        quality: int = 95,
        size: int | None = None,
        max_pending: int = 3,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._tar = DeterministicTar(path)
        self._key = key
        self._metadata = metadata
        self._label = label
        self._quality = quality
        self._size = size
        self._on_written = on_written
        self.on_flushed: Callable[[], None] | None = None  # after each batch reached the file
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self.count = 0
        self.seconds_busy = 0.0  # writer thread: encoding + writing
        self.seconds_waiting = 0.0  # caller: blocked on a full queue
        self._thread = threading.Thread(target=self._run, name="synthrec-shard-writer", daemon=True)
        self._thread.start()

    def put(self, items: Sequence[Any], images: Any) -> None:
        if len(items) != len(images):
            raise ValueError(f"{len(items)} items but {len(images)} images")
        self._hand_over((items, images))

    def close(self) -> None:
        self._hand_over(_STOP)
        self._thread.join()
        self._raise_if_failed()
        self._tar.close()

    def abort(self) -> None:
        """Stop without finishing (the tar is left incomplete; the caller deletes it)."""
        self._abort.set()
        while True:  # unblock the thread if it waits on an empty queue
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout=30)
        self._tar.discard()

    def _hand_over(self, payload: Any) -> None:
        started = time.perf_counter()
        while True:
            self._raise_if_failed()
            if not self._thread.is_alive():
                raise RuntimeError("the shard writer thread stopped unexpectedly")
            try:
                self._queue.put(payload, timeout=0.2)
                break
            except queue.Full:
                continue
        self.seconds_waiting += time.perf_counter() - started

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the shard failed: {self._error}") from self._error

    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                payload = self._queue.get()
                if payload is _STOP:
                    return
                items, images = payload
                started = time.perf_counter()
                pixels = to_uint8(images)
                for item, image in zip(items, pixels, strict=True):
                    if self._abort.is_set():
                        return
                    key = self._key(item)
                    self._tar.add(f"{key}.jpg", encode_jpeg(image, self._quality, self._size))
                    self._tar.add(f"{key}.json", sample_json(self._metadata(item)))
                    if self._label is not None:
                        self._tar.add(f"{key}.cls", str(int(self._label(item))).encode())
                    self.count += 1
                self._tar.flush()
                self.seconds_busy += time.perf_counter() - started
                if self._on_written is not None:
                    self._on_written(len(items))
                if self.on_flushed is not None:
                    self.on_flushed()
        except BaseException as exc:  # handed to the caller; the thread must not die silently
            self._error = exc
