"""Where the tiny models live and how ``tiny://`` references map onto them, without building anything.

``resolve_uri`` turns ``tiny://sd``, ``tiny://clip``, ``tiny://t5`` and ``tiny://real/...`` into the
``file://`` folders of a build; whoever runs a task builds them first (``ensure_tiny_models``), once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec.contract.worker import ENV_TINY_MODELS, cache_root
from synthrec.storage.uris import TOY_WORLD_PREFIX

# Bump whenever the output of the builder changes, so that cached folders are rebuilt.
BUILDER_VERSION = 1

MANIFEST_NAME = "tiny-models.json"
README_NAME = "README.txt"
RANDOM_WEIGHTS_NOTICE = (
    "These models have RANDOM weights (the T5 was trained for a few hundred steps on template captions). "
    "They exist so that tests and the offline demo run without downloads. Generated images are noise and "
    "any accuracy measured with them is meaningless."
)

#: The ``tiny`` label space, in class-index order (the same names as the ``tiny`` preset; a test checks).
TINY_CLASSES: tuple[str, ...] = ("red circle", "green square", "blue triangle", "yellow cross")
IMAGE_SIZE = 64
REAL_TRAIN_PER_CLASS = 16
REAL_TEST_PER_CLASS = 20

TINY_SCHEME = "tiny://"
_COMPONENTS = ("sd", "clip", "t5", "real")


@dataclass(frozen=True)
class TinyModels:
    """Where the tiny models live. All paths are absolute."""

    root: Path
    sd: Path
    clip: Path
    t5: Path
    real: Path

    @classmethod
    def at(cls, root: Path | str) -> TinyModels:
        """The layout under ``root`` (built or not; see ``build_tiny_models``)."""
        root = Path(root).expanduser().resolve()
        return cls(root=root, sd=root / "sd", clip=root / "clip", t5=root / "t5", real=root / "real")

    def as_refs(self) -> dict[str, str]:
        """``file://`` model references for each folder (keys: sd, clip, t5, real, root)."""
        return {name: getattr(self, name).as_uri() for name in ("sd", "clip", "t5", "real", "root")}

    def is_built(self, *, seed: int = 0) -> bool:
        """True when a complete build of this builder version, ``seed`` and library versions is present."""
        manifest = self.root / MANIFEST_NAME
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return False
        return (
            data.get("builder_version") == BUILDER_VERSION
            and data.get("seed") == seed
            and data.get("versions") == _library_versions()
            and all(getattr(self, name).is_dir() for name in _COMPONENTS)
        )


def default_tiny_dir() -> Path:
    """Where tiny:// references are built: $SYNTHREC_TINY_MODELS, else <cache root>/tiny-models."""
    override = os.environ.get(ENV_TINY_MODELS)
    return Path(override) if override else cache_root() / "tiny-models"


def resolve_uri(uri: str, root: Path | str | None = None, *, world: Path | str | None = None) -> str:
    """``tiny://real/test`` -> ``file:///<build>/real/test`` (likewise tiny://sd, tiny://clip, tiny://t5);
    ``tiny://world/...`` -> the toy world build at ``world`` (default: the cached seed-0 build); any other
    URI is returned as it is. Builds nothing: the folder may not exist yet."""
    if not uri.startswith(TINY_SCHEME):
        return uri
    rest = uri[len(TINY_SCHEME) :].strip("/")
    if references_toy_world(uri):
        from synthrec.toyworld.builder import ToyWorld, default_root

        built = Path(world) if world is not None else ToyWorld.at(default_root()).root
        folder = built / rest.removeprefix(TOY_WORLD_PREFIX)
        return folder.as_uri() + ("/" if uri.endswith("/") else "")
    folder = TinyModels.at(root if root is not None else default_tiny_dir()).root / rest
    return folder.as_uri() + ("/" if uri.endswith("/") else "")


def references_tiny(value: Any) -> bool:
    """Whether a spec, task or any JSON-able value mentions a ``tiny://`` reference (random weights or the
    toy world)."""
    return TINY_SCHEME in _text(value)


def references_toy_world(value: Any) -> bool:
    """Whether a spec, task or JSON-able value mentions the trained toy world (``tiny://world/...``)."""
    return TINY_SCHEME + TOY_WORLD_PREFIX in _text(value)


def references_random_tiny(value: Any) -> bool:
    """Whether it mentions a random-weight tiny model or the tiny data (``tiny://`` but not the toy world)."""
    text = _text(value)
    return text.count(TINY_SCHEME) > text.count(TINY_SCHEME + TOY_WORLD_PREFIX)


def _text(value: Any) -> str:
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "diffusers", "transformers", "open_clip_torch", "sentencepiece", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out
