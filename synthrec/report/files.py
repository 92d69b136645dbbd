"""Where the report writes: only inside its own folder, under names it makes itself.

Stored strings (resource names, sample keys, tar member names) are data that anyone with write access to
a shared prefix can plant, so they never become paths as they are. ``ReportFiles.name`` turns them into
slugs of ``[a-z0-9_-]`` of at most 64 characters (with a short hash of the original whenever sanitising
changed it, so different strings stay different files), unique within the report, and ``path`` only
opens names it made. Images are decoded (with synthrec.limits' pixel cap) and re-encoded as JPEG
thumbnails: bytes read from storage are never copied through.
"""

from __future__ import annotations

import hashlib
import os
import re
from io import BytesIO
from pathlib import Path

from synthrec.limits import open_image

MAX_SLUG = 64
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def slug(text: str, limit: int = MAX_SLUG) -> str:
    """A file-name part made from ``text``: itself when it is already a short ``[a-z0-9_-]`` name,
    otherwise its sanitised start and 8 hex digits of its sha256."""
    clean = _UNSAFE.sub("-", text.lower()).strip("-")
    if clean == text and 0 < len(clean) <= limit:
        return clean
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    head = clean[: limit - 9].rstrip("-")
    return f"{head}-{digest}" if head else digest


class ReportFiles:
    """The files of one report folder (``root``), named by ``name`` and opened by ``path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = root.resolve()
        self._names: set[str] = set()

    def name(self, *parts: str, ext: str) -> str:
        """A new relative name ``part/part/last.ext`` of slugs (``-2``, ``-3`` ... when taken)."""
        folders = "".join(f"{slug(p)}/" for p in parts[:-1])
        stem = slug(parts[-1])
        rel, n = f"{folders}{stem}.{ext}", 1
        while rel in self._names:
            n += 1
            rel = f"{folders}{stem}-{n}.{ext}"
        self._names.add(rel)
        return rel

    def reserve(self, rel: str) -> str:
        """Take a constant name of the report's own (``index.html``, ``results.csv``) as it is; one that
        ``name`` would change is refused."""
        stem, _, ext = rel.rpartition(".")
        made = self.name(stem, ext=ext)
        if made != rel:
            raise ValueError(f"{rel!r} is not a plain report file name (it would be {made!r})")
        return made

    def path(self, rel: str) -> Path:
        """The path of a name this object made, its folder created; anything else is refused."""
        if rel not in self._names:
            raise ValueError(f"{rel!r} is not a name of this report (ReportFiles.name makes them)")
        path = self.root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._real_root not in path.resolve().parents:  # cannot happen with slugs; never write outside
            raise ValueError(f"{rel!r} resolves outside the report folder {self.root}")
        return path

    def write(self, rel: str, data: str | bytes) -> None:
        """Write a file this object named (text as UTF-8)."""
        self._write_new(self.path(rel), data.encode("utf-8") if isinstance(data, str) else data)

    def write_thumbnail(self, rel: str, data: bytes, size: int) -> bool:
        """Decode ``data`` and write it as a JPEG of at most ``size`` pixels a side. False (and no file)
        when it is not a decodable image or is over the pixel cap."""
        try:
            with open_image(data) as image:
                thumb = image.convert("RGB")
            thumb.thumbnail((size, size))
        except Exception:  # ImageTooLarge, or whatever PIL raises on damaged data (many kinds)
            return False
        out = BytesIO()
        thumb.save(out, format="JPEG", quality=90)
        self._write_new(self.path(rel), out.getvalue())
        return True

    @staticmethod
    def _write_new(path: Path, data: bytes) -> None:
        # A new file, never through a link: the folder is fresh, and this keeps it so.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
