"""The HTML report of a storage (or of one resource): what was generated, what the filter kept, how well
the classifiers do.

One self-contained page, ``index.html``, with its images and PNG plots in ``img/`` and ``plots/`` and the
results as ``results.csv`` (every run) and ``table.csv`` (top-1 over seeds) beside it, referenced
relatively: no JavaScript, no external CSS or fonts, so the folder can be copied, mailed or served from a
bucket as it is. For each SyntheticDataset: the models, counts and accept rates per class (table and
plot), samples of the prompts, and per class a grid of the kept images and, apart, of those that passed
the threshold but were not kept and those below it, with their prompts and CLIP scores. For each
RecognitionExperiment: top-1 over seeds per variant and shots (mean +- std, min-max) with zero-shot CLIP,
as a table and a plot with a min-max band, and both again for the best-validation models where runs had
a validation set; every run with its method, last-epoch and best-validation top-1 and TensorBoard log
dir; each training
objective on its own axes; and where the best run errs (its weakest classes against zero-shot CLIP, the
classes it confuses most, and its confusion matrix with counts). Runs with the built-in tiny models say
in red that the weights are random and the accuracy is meaningless.

Everything is read from the artifacts (``synthrec.contract.artifacts``); class names and prompts are data
and are escaped. Plots use matplotlib's object API, imported only here.

The package: ``render`` (the page), ``results`` (the numbers over seeds, the CSVs), ``images`` (the
grids), ``plots``; this module holds the entry points.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from synthrec.contract import artifacts
from synthrec.report.images import safetensors_matrix
from synthrec.report.render import TINY_NOTE, Renderer
from synthrec.storage import open_storage, upload_tree

__all__ = [
    "REPORT_DIR",
    "TINY_NOTE",
    "ReportError",
    "build_report",
    "build_report_for",
    "default_target",
    "safetensors_matrix",
    "write_report",
]

REPORT_DIR = "report/"  # DatasetLayout.report / ExperimentLayout.report / StorageLayout.report live here


class ReportError(Exception):
    """Nothing to report at the given location."""


# ------------------------------------------------------------------------------------------ entry points


def default_target(uri: str) -> str:
    """Where the report of ``uri`` goes by default: ``<uri>/report/``."""
    return uri.rstrip("/") + "/" + REPORT_DIR


def build_report(uri: str, *, out: str | None = None, endpoint: str | None = None) -> str:
    """Write the report of everything at ``uri`` (a storage root or a resource root).

    ``out`` is a local folder or a folder URI (default: ``<uri>/report/``); returns where index.html is.
    """
    try:
        scan = artifacts.scan_resources(uri, endpoint=endpoint)
    except artifacts.ArtifactError as exc:
        raise ReportError(str(exc)) from None
    problems = [f"{u.uri}: {u.problem}" for u in scan.unreadable]
    return write_report(
        scan.found, out or default_target(uri), source=uri, endpoint=endpoint, problems=problems
    )


def build_report_for(roots: list[str], *, out_uri: str) -> str:
    """The report of several resource roots (``synthrec run --storage spec``)."""
    found, problems = [], []
    for root in roots:
        try:
            res = artifacts.read_resource(open_storage(root))
        except artifacts.ArtifactError as exc:
            problems.append(f"{root}: {exc}")
            continue
        if res is not None:
            found.append(res)
    if not found and not problems:
        raise ReportError(f"none of {', '.join(roots)} holds a spec.json yet; nothing to report")
    return write_report(found, out_uri, source=", ".join(roots), problems=problems)


def write_report(
    found: list[artifacts.FoundResource],
    target: str,
    *,
    source: str,
    endpoint: str | None = None,
    problems: Sequence[str] = (),
) -> str:
    """Render into ``target`` (local folder or s3:// folder: rendered locally, then uploaded).
    ``problems``: resources that could not be read, noted on the page."""
    if "://" not in target:
        target = Path(target).resolve().as_uri()
    if target.startswith("file://"):
        folder = Path(target[len("file://") :])
        _render_into(found, folder, source, problems)
        return str(folder / "index.html")
    storage = open_storage(target, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="synthrec-report-") as tmp:
        _render_into(found, Path(tmp), source, problems)
        upload_tree(storage, tmp)
    return storage.url("index.html")


# Left in every report folder: a folder that holds it (or only what reports hold) may be replaced.
REPORT_MARKER = ".synthrec-report"
_REPORT_ENTRIES = {"index.html", "img", "plots", "results.csv", "table.csv", REPORT_MARKER}


def _render_into(
    found: list[artifacts.FoundResource], folder: Path, source: str, problems: Sequence[str] = ()
) -> None:
    """Render in a fresh sibling folder, then swap it in, so a failed render leaves the old report.
    An existing ``folder`` is only replaced when it is empty or an earlier report.

    The folder is made with the user's umask (mkdtemp would make it 0700): on a shared filesystem the
    report is for others to open too, as every other file synthrec writes.
    """
    if folder.exists() and not _replaceable(folder):
        raise ReportError(
            f"{folder} exists and is not a synthrec report (no {REPORT_MARKER} in it); the report replaces "
            "its folder as a whole, so choose a new or empty folder for --out"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".report-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        Renderer(staging).render(found, source, problems)
        (staging / REPORT_MARKER).write_text("a synthrec report; `synthrec report` replaces this folder\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replaceable(folder: Path) -> bool:
    if folder.is_symlink() or not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return REPORT_MARKER in names or names <= _REPORT_ENTRIES
