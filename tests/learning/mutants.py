"""Deliberate bugs for the learning tests: ``python -m tests.learning.mutants STAGE --task TASK`` is the real
worker (``synthrec.workers``) with one bug planted, chosen by $SYNTHREC_TEST_MUTATION. The local runner
starts it through its ``worker_module`` (RunRequest.worker_module), so no worker carries a test hook.

- ``shift-classes``: the train stage reads every synthetic image's class as the next class (images
  generated for class c are trained as class c+1): "classes shifted by one between generation and
  training".
- ``swap-kept``: the reduce stage keeps the images the CLIP Filter rejects and drops the ones it keeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV_MUTATION = "SYNTHREC_TEST_MUTATION"


def shift_classes() -> None:
    from synthrec.api.labels import resolve_labels
    from synthrec.workers import train

    open_synthetic = train.open_synthetic

    def shifted(ctx, inp):  # type: ignore[no-untyped-def]
        dataset = open_synthetic(ctx, inp)
        classes = len(resolve_labels(ctx.task.experiment.labels))
        for row in dataset.rows:
            row["class"] = (int(row["class"]) + 1) % classes
        return dataset

    train.open_synthetic = shifted


def swap_kept() -> None:
    import numpy as np

    from synthrec.workers import reduce

    select_class = reduce.select_class

    def rejected_instead(scores, threshold, keep, selection, seed, class_index):  # type: ignore[no-untyped-def]
        kept, passed = select_class(scores, threshold, keep, selection, seed, class_index)
        return np.setdiff1d(np.arange(len(scores)), kept), passed

    reduce.select_class = rejected_instead


MUTATIONS: dict[str, Callable[[], None]] = {"shift-classes": shift_classes, "swap-kept": swap_kept}


def main() -> int:
    from synthrec.workers.__main__ import main as worker_main

    name = os.environ.get(ENV_MUTATION, "")
    if name not in MUTATIONS:
        raise SystemExit(f"{ENV_MUTATION}={name!r}: expected one of {', '.join(MUTATIONS)}")
    MUTATIONS[name]()
    return worker_main()


if __name__ == "__main__":
    raise SystemExit(main())
