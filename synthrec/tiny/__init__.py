"""Tiny random-weight models and a tiny drawn dataset, built offline (tests and the offline demo)."""

from synthrec.tiny.build import (
    BUILDER_VERSION,
    IMAGE_SIZE,
    MANIFEST_NAME,
    RANDOM_WEIGHTS_NOTICE,
    README_NAME,
    REAL_TEST_PER_CLASS,
    REAL_TRAIN_PER_CLASS,
    SD_DDIM_CONFIG,
    TINY_CLASSES,
    TinyModels,
    build_tiny_models,
    class_folder_name,
    default_tiny_dir,
    ensure_tiny_models,
)

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
    "TinyModels",
    "build_tiny_models",
    "class_folder_name",
    "default_tiny_dir",
    "ensure_tiny_models",
]
