"""synthrec: synthetic data from generative models for image recognition, on Kubernetes and on one machine.

The core package (this one) imports neither torch nor kopf: the API models, presets, storage, artifact
layout, planning and the command line live here. ``synthrec.operator`` holds the Kopf operator and
``synthrec.workers`` the GPU stages.
"""

__version__ = "0.1.0"


def _add_source_checkout_path() -> None:
    # pyproject maps the top-level folders operator/ and workers/ to synthrec.operator and synthrec.workers.
    # An installed wheel has them inside this package; in a source checkout (also an editable install)
    # they sit beside it, so look there too. operator/ has no __init__.py on purpose, so that
    # `import operator` from the repo root stays the standard library even under `python -S`.
    from pathlib import Path

    here = Path(__file__).resolve().parent
    root = here.parent
    beside = (root / "operator").is_dir() and (root / "pyproject.toml").is_file()
    if beside and not (here / "operator").exists():
        __path__.append(str(root))


_add_source_checkout_path()
