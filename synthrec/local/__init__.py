"""The local executor (`synthrec run`): the plan, task JSON and workers of the operator, on one machine.

- ``command``: ``execute`` (load, select, run, summarise, report) and its ``RunRequest``;
- ``input``: the resources of a file, validated, re-rooted under the storage and selected;
- ``executor``: ``LocalRunner``, which observes commit markers and worker processes and asks the shared
  stage decision (``synthrec.plan.decision``) what to run next;
- ``pool``: worker processes run the way an Indexed Job runs its pods;
- ``ui``: what the user sees (progress bars, warnings, the summary table).
"""

from synthrec.local.command import TINY_WARNING, RunRequest, execute
from synthrec.local.executor import DatasetOutcome, ExperimentOutcome, LocalRunner, RunOutcome
from synthrec.local.input import (
    DEFAULT_STORAGE_DIR,
    STORAGE_FROM_SPEC,
    Interrupted,
    Resource,
    RunError,
    load_resources,
    rehome,
    select,
    storage_root,
    uses_tiny_models,
    uses_toy_world,
)
from synthrec.local.ui import QuietUI, RichUI

__all__ = [
    "DEFAULT_STORAGE_DIR",
    "STORAGE_FROM_SPEC",
    "TINY_WARNING",
    "DatasetOutcome",
    "ExperimentOutcome",
    "Interrupted",
    "LocalRunner",
    "QuietUI",
    "Resource",
    "RichUI",
    "RunError",
    "RunOutcome",
    "RunRequest",
    "execute",
    "load_resources",
    "rehome",
    "select",
    "storage_root",
    "uses_tiny_models",
    "uses_toy_world",
]
