"""What one input may cost: the bounds synthrec puts on files, documents, images and messages it did not
make itself (a resource file, a stored JSON, a tar member, an image), and the helpers that apply them.

A hostile or broken input must end in a clear error, never in a traceback, a hang or a machine out of
memory: a YAML alias bomb, 50,000 nesting levels, a 12000x12000 PNG (725 MB decoded), a 300 KB gzip
member that expands to 300 MB, a 2 MB error line.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

MiB = 1024 * 1024

# Resource files (synthrec validate / plan / run): a cluster stores at most ~1.5 MiB per object.
MAX_YAML_BYTES = 16 * MiB
MAX_YAML_DEPTH = 64  # nesting of mappings and sequences; our resources need about 8
MAX_YAML_NODES = 1_000_000  # nodes after expanding aliases (what a consumer walking the data visits)

# Decoded images: 40 megapixels (a 7300x5500 photo, 120 MB as RGB). PIL's own default warns at 89 MP
# and only refuses at 179 MP. SYNTHREC_MAX_IMAGE_PIXELS raises it for datasets of huge images.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 64 * MiB  # an encoded image (a tar member, an object) read whole

# Small JSON documents inside tars and stores (a sample's .json, a label): read whole, so capped.
MAX_JSON_MEMBER_BYTES = 4 * MiB

MAX_MESSAGE_CHARS = 2000  # one error line; the rest is cut with a note of how much


class ImageTooLarge(ValueError):
    """An image whose pixel count is over the limit (refused before it is decoded)."""


class MemberTooLarge(ValueError):
    """A tar member larger than what its reader accepts (refused before it is read)."""


def max_image_pixels() -> int:
    raw = os.environ.get("SYNTHREC_MAX_IMAGE_PIXELS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_IMAGE_PIXELS


def open_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image fully, refusing one over ``max_pixels`` from its header, before any pixel is
    decoded (``ImageTooLarge``). PIL raises OSError/SyntaxError/ValueError on damaged data."""
    from PIL import Image

    limit = max_pixels or max_image_pixels()
    with warnings.catch_warnings():  # PIL warns from 89 MP on and refuses from 179 MP: we decide here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{exc}; resize it, or raise SYNTHREC_MAX_IMAGE_PIXELS") from None
        width, height = image.size
        if width * height > limit:
            image.close()
            raise ImageTooLarge(
                f"image of {width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the "
                f"{limit / 1e6:.0f} MP limit; resize it, or raise SYNTHREC_MAX_IMAGE_PIXELS"
            )
        image.load()
    return image


def decode_rgb(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """``open_image`` converted to RGB; raises on bad or too large data."""
    with open_image(data, max_pixels=max_pixels) as image:
        return image.convert("RGB")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    """The content of a tar member, refusing (``MemberTooLarge``) one whose size is over ``limit``
    before reading it: in a compressed tar, a small file can hold a huge member."""
    if member.size > limit:
        raise MemberTooLarge(
            f"tar member {member.name[:200]!r} is {member.size} bytes, over the {limit} allowed"
        )
    handle: IO[bytes] | None = tar.extractfile(member)
    if handle is None:
        return b""
    with handle:
        return handle.read(member.size)


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was cut (error lines stay readable)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters)"
