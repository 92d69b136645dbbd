"""What the local runner tells the user: ``QuietUI`` (problems to stderr only) and ``RichUI`` (progress
bars per stage and per running shard on a terminal, plain lines otherwise, a summary table at the end)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthrec.limits import bounded

if TYPE_CHECKING:
    from synthrec.local.executor import RunOutcome


class QuietUI:
    """What the runner tells the user; this one prints problems to stderr only (the CLI shows more)."""

    def section(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def banner(self, text: str) -> None: ...

    def warn(self, text: str) -> None:
        print(f"warning: {bounded(text)}", file=sys.stderr)

    def error(self, text: str) -> None:
        print(f"error: {bounded(text)}", file=sys.stderr)

    def add_stage(self, title: str, *, total: int, completed: int) -> Any:
        return None

    def advance(self, handle: Any) -> None: ...
    def finish_stage(self, handle: Any) -> None: ...

    def add_shard(self, label: str) -> Any:
        return None

    def update_shard(self, handle: Any, progress_file: Path) -> None: ...
    def remove_shard(self, handle: Any) -> None: ...
    def summary(self, outcome: RunOutcome, *, tiny: bool) -> None: ...
    def report(self, where: str, *, tiny: bool) -> None: ...

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        yield


class RichUI(QuietUI):
    """Progress bars per stage and per running shard on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.progress: Any = None
        self._titles: dict[Any, str] = {}

    # ---- set-up

    def prepare(self, resources: list[Any]) -> None:
        from synthrec.local.input import uses_tiny_models, uses_toy_world

        if uses_toy_world(resources):
            from synthrec.toyworld.__main__ import RichProgress
            from synthrec.toyworld.builder import ToyWorld, build_toy_world, default_root

            if not ToyWorld.at(default_root()).is_built():
                self.note(f"building the toy world in {default_root()} (once, a few minutes)")
            with RichProgress() as progress:
                build_toy_world(default_root(), progress=progress)
        if uses_tiny_models(resources):
            from synthrec.tiny import TinyModels, default_tiny_dir, ensure_tiny_models

            where = default_tiny_dir()
            if not TinyModels.at(where).is_built():
                self.note(f"building the tiny models in {where} (once, about a minute)")
            ensure_tiny_models()

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        with self.progress:
            try:
                yield
            finally:
                self.progress = None

    # ---- messages

    def _print(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style, markup=False, soft_wrap=True)

    def section(self, text: str) -> None:
        self._print(text, "bold")

    def note(self, text: str) -> None:
        self._print(f"  {text}", "dim")

    def banner(self, text: str) -> None:
        from rich.panel import Panel

        self.console.print(Panel(_text(text), title="NOTE", style="yellow"))

    def warn(self, text: str) -> None:
        self._print(f"  warning: {bounded(text)}", "yellow")

    def error(self, text: str) -> None:
        self.err.print(f"error: {bounded(text)}", style="red", markup=False, highlight=False, soft_wrap=True)

    # ---- bars

    def add_stage(self, title: str, *, total: int, completed: int) -> Any:
        if self.progress is None:
            self._print(f"  {title}: {completed}/{total} committed, running the rest")
            return title
        handle = self.progress.add_task(title, total=total, completed=completed)
        self._titles[handle] = title
        return handle

    def advance(self, handle: Any) -> None:
        if self.progress is not None:
            self.progress.advance(handle)

    def finish_stage(self, handle: Any) -> None:
        if self.progress is not None:
            task = self.progress.tasks[self.progress.task_ids.index(handle)]
            self.progress.stop_task(handle)
            self.progress.update(handle, description=f"{task.description} (done)")

    def add_shard(self, label: str) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(f"  {label}", total=None)

    def update_shard(self, handle: Any, progress_file: Path) -> None:
        if self.progress is None or handle is None:
            return
        try:
            data = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            return
        total, done = data.get("total"), data.get("done")
        if isinstance(total, int) and total > 0 and isinstance(done, int):
            self.progress.update(handle, total=total, completed=min(done, total))

    def remove_shard(self, handle: Any) -> None:
        if self.progress is not None and handle is not None:
            with contextlib.suppress(KeyError):
                self.progress.remove_task(handle)

    # ---- the end

    def summary(self, outcome: RunOutcome, *, tiny: bool) -> None:
        from rich.table import Table

        for ds in outcome.datasets:
            state = ds.state
            if state is None or state.manifest is None:
                self._print(f"SyntheticDataset {ds.name}: FAILED ({ds.message})", "red")
                continue
            table = Table(title=_text(f"SyntheticDataset {ds.name}"), title_justify="left")
            for column in ("class", "generated", "passed CF", "kept", "accept rate"):
                table.add_column(column, justify="left" if column == "class" else "right")
            for row in state.manifest.per_class:
                rate = row.accept_rate
                table.add_row(
                    _text(row.name),
                    str(row.generated),
                    str(row.passed),
                    str(row.kept),
                    f"{rate:.0%}" if rate is not None else "-",
                )
            counts = state.manifest.counts
            table.add_section()
            table.add_row("total", str(counts.generated), str(counts.passed), str(counts.kept), "")
            self.console.print(table)
            self.note(f"dataset card: {state.uri}manifest.json")
        for ex in outcome.experiments:
            if ex.state is None:
                self._print(f"RecognitionExperiment {ex.name}: FAILED ({ex.message})", "red")
                continue
            title = f"RecognitionExperiment {ex.name}" + (
                " (tiny models: accuracy is meaningless)" if tiny else ""
            )
            if ex.state.spec.method.pretrain is not None:
                self.console.print(transfer_table(ex.state, title))
                if not ex.ok:
                    self._print(f"  {ex.message}", "red")
                continue
            table = Table(title=_text(title), title_justify="left")
            for column in ("run", "shots", "seed", "variant", "top-1", "zero-shot", "change"):
                table.add_column(column, justify="left" if column in ("run", "variant") else "right")
            for run in ex.state.runs:
                top1, zs = run.top1, run.zero_shot_top1
                delta = f"{top1 - zs:+.1f}" if top1 is not None and zs is not None else "-"
                table.add_row(
                    _text(run.name),
                    str(run.shots),
                    str(run.seed),
                    _text(run.variant or "-"),
                    _pct(top1) if run.done else "not done",
                    _pct(zs),
                    delta,
                )
            self.console.print(table)
            if not ex.ok:
                self._print(f"  {ex.message}", "red")
        status = "done" if outcome.ok else "FAILED"
        self._print(f"{status} in {outcome.seconds:.0f} s", "bold green" if outcome.ok else "bold red")

    def report(self, where: str, *, tiny: bool) -> None:
        self._print(f"report: {where}", "bold")


def transfer_table(state: Any, title: str) -> Any:
    """A pre-training experiment's runs as the paper's Tables 8-11 lay them out: one row per run (data
    size, initialisation, objective, label space) with its transfer results."""
    from rich.table import Table

    from synthrec.contract.artifacts import pretrain_rows

    table = Table(title=_text(title), title_justify="left")
    columns = ("run", "label space", "objective", "init", "data size", "top-1 (fine-tune)", "linear probe")
    for column in (*columns, "AP50 (VOC07)"):
        table.add_column(
            column, justify="right" if column in ("data size", *columns[5:], "AP50 (VOC07)") else "left"
        )
    for row in pretrain_rows(state):
        size = "all" if row["size"] is None else f"{row['size']:,}"
        done = row["state"] == "Succeeded"
        table.add_row(
            _text(row["name"]),
            _text(row["label_space"] or "-"),
            _text(row["objective"]),
            _text(row["init"]),
            size,
            _pct(row["classification_top1"]) if done else f"({row['stage']})",
            _pct(row["linear_probe_top1"]),
            _pct(row["ap50"]),
        )
    return table


def _text(value: str) -> Any:
    """User data (class, run, variant and resource names) as plain text: Rich would read ``[/bold]`` in a
    class name as markup (and fail on it) wherever a bare string goes."""
    from rich.text import Text

    return Text(value)


def _pct(value: float | None) -> str:
    """top-1 as the workers write it: a percentage."""
    return f"{value:.1f}%" if value is not None else "-"
