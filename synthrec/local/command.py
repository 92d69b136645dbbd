"""``synthrec run``: load, select, run, summarise and report (exit status 0, 1 or 130)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec.local.executor import LocalRunner
from synthrec.local.input import (
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
from synthrec.storage import StorageError

TINY_WARNING = (
    "The tiny:// models have RANDOM weights: the images are coloured noise and every accuracy is "
    "meaningless. This run shows the mechanics of the pipeline only."
)


@dataclass
class RunRequest:
    file: str
    storage: str | None = None
    parallel: int | None = None
    only: Sequence[str] = ()
    report: bool = True
    worker_module: str = "synthrec.workers"
    grace_s: float = 30.0


def execute(request: RunRequest, ui: Any, *, prepare: Callable[[list[Resource]], None] | None = None) -> int:
    """``synthrec run``: returns the exit status (0 all done, 1 failed or bad input, 130 interrupted)."""
    try:
        resources = load_resources(request.file)
        root = storage_root(request.storage)
        resources = rehome(resources, root)
        selected = select(resources, request.only)
    except RunError as exc:
        ui.error(str(exc))
        return 1
    tiny = uses_tiny_models(selected)
    banners = [TINY_WARNING] if tiny else []
    if uses_toy_world(selected):
        from synthrec.toyworld.builder import NOTICE

        banners.append(NOTICE)
    for text in banners:
        ui.banner(text)
    if prepare is not None:
        prepare(selected)
    runner = LocalRunner(
        selected,
        parallel=request.parallel,
        ui=ui,
        worker_module=request.worker_module,
        grace_s=request.grace_s,
        storage_root=root,
        available=[r for r in resources if r not in selected],
    )
    try:
        with ui.live():
            outcome = runner.run()
    except Interrupted:
        ui.error(
            "interrupted: the workers were stopped; every committed shard is kept. Run the same command "
            "again to continue where it stopped."
        )
        return 130
    except RunError as exc:
        ui.error(str(exc))
        return 1
    except StorageError as exc:
        ui.error(f"storage error: {exc}")
        return 1
    ui.summary(outcome, tiny=tiny)
    if not outcome.ok:
        kept = runner.keep_logs()
        ui.error(f"the run did not complete; worker logs and task files are kept in {kept}")
    if request.report:
        _report(ui, root, selected, tiny)
    for text in banners:
        ui.banner(text)
    return 0 if outcome.ok else 1


def _report(ui: Any, root: str | None, resources: list[Resource], tiny: bool) -> None:
    from synthrec import report

    try:
        if root is not None:
            where = report.build_report(root)
        else:
            roots = [res.spec.output.uri for res in resources]
            where = report.build_report_for(roots, out_uri=Path.cwd().joinpath("synthrec-report").as_uri())
    except (StorageError, OSError, report.ReportError) as exc:
        ui.warn(f"the report could not be written: {exc}")
        return
    ui.report(where, tiny=tiny)
