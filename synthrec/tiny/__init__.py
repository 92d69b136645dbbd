"""Tiny random-weight models and a tiny drawn dataset, built offline, for tests and the offline demo.

- ``layout``: where a build lives (``TinyModels``) and ``resolve_uri``: ``tiny://...`` -> ``file://...``;
- ``build``: ``build_tiny_models`` / ``ensure_tiny_models`` (Stable Diffusion, open_clip, T5; torch and the
  model libraries are imported inside the functions);
- ``real``: the drawn "real" ImageFolder dataset of the ``tiny`` label space.

The weights are RANDOM: images are coloured noise and any accuracy measured with them is meaningless.
Nothing here touches the network, and nothing outside this package builds them as a side effect.
"""

from synthrec.tiny.build import SD_DDIM_CONFIG, build_tiny_models, ensure_tiny_models
from synthrec.tiny.layout import (
    BUILDER_VERSION,
    IMAGE_SIZE,
    MANIFEST_NAME,
    RANDOM_WEIGHTS_NOTICE,
    README_NAME,
    REAL_TEST_PER_CLASS,
    REAL_TRAIN_PER_CLASS,
    TINY_CLASSES,
    TINY_SCHEME,
    TinyModels,
    default_tiny_dir,
    references_tiny,
    resolve_uri,
)
from synthrec.tiny.real import class_folder_name

__all__ = [
    "BUILDER_VERSION",
    "IMAGE_SIZE",
    "MANIFEST_NAME",
    "RANDOM_WEIGHTS_NOTICE",
    "README_NAME",
    "REAL_TEST_PER_CLASS",
    "REAL_TRAIN_PER_CLASS",
    "SD_DDIM_CONFIG",
    "TINY_CLASSES",
    "TINY_SCHEME",
    "TinyModels",
    "build_tiny_models",
    "class_folder_name",
    "default_tiny_dir",
    "ensure_tiny_models",
    "references_tiny",
    "resolve_uri",
]
