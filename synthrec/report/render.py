"""The HTML report of a storage (or of one resource): what was generated, what the filter kept, how well
the classifiers do.

One self-contained page, ``index.html``, with its images and PNG plots in ``img/`` and ``plots/`` beside it,
referenced relatively: no JavaScript, no external CSS or fonts, so the folder can be copied, mailed or
served from a bucket as it is. For each SyntheticDataset: the models, counts and accept rates per class
(table and plot), samples of the prompts, and per class a grid of kept and rejected images with their
prompts and CLIP scores. For each RecognitionExperiment: the accuracy table of all runs, top-1 against
shots with the zero-shot baseline, the training curves, and where the best run errs (its weakest classes
against zero-shot CLIP, the classes it confuses most, and its confusion matrix). Runs with the built-in
tiny models say in red that the weights are random and the accuracy is meaningless.

Everything is read from the artifacts (``synthrec.contract.artifacts``); class names and prompts are data
and are escaped. Plots use matplotlib's Agg backend, imported only here.
"""

from __future__ import annotations

import html
import io
import json
import shutil
import struct
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthrec.contract import artifacts, confusion
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.storage import FileStorage, ObjectNotFound, Storage, StorageError, open_storage, upload_tree
from synthrec.tiny import references_tiny

REPORT_DIR = "report/"  # DatasetLayout.report / ExperimentLayout.report / StorageLayout.report live here
MAX_GRID_CLASSES = 24  # classes with image grids (the accept-rate table and plot show every class)
GRID_IMAGES = 8  # kept and rejected images shown per class
PROMPTS_PER_CLASS = 3
THUMBNAIL_PX = 128
WEAKEST_CLASSES = 20  # rows of the best run's per-class table
CONFUSED_PAIRS = 10
HEATMAP_MAX_CLASSES = 40  # a confusion-matrix plot beyond this is unreadable; the pairs table stays
TINY_NOTE = (
    "These results come from synthrec's built-in tiny models (tiny://), which have RANDOM weights: the "
    "images are coloured noise and every accuracy below is meaningless. The report shows the mechanics "
    "of the pipeline only; use real models (see the README) for real numbers."
)


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
        found = artifacts.find_resources(uri, endpoint=endpoint)
    except artifacts.ArtifactError as exc:
        raise ReportError(str(exc)) from None
    return write_report(found, out or default_target(uri), source=uri, endpoint=endpoint)


def build_report_for(roots: list[str], *, out_uri: str) -> str:
    """The report of several resource roots (``synthrec run --storage spec``)."""
    found = []
    for root in roots:
        res = artifacts.read_resource(open_storage(root))
        if res is not None:
            found.append(res)
    if not found:
        raise ReportError(f"none of {', '.join(roots)} holds a spec.json yet; nothing to report")
    return write_report(found, out_uri, source=", ".join(roots))


def write_report(
    found: list[artifacts.FoundResource], target: str, *, source: str, endpoint: str | None = None
) -> str:
    """Render into ``target`` (local folder or s3:// folder: rendered locally, then uploaded)."""
    if "://" not in target:
        target = Path(target).resolve().as_uri()
    if target.startswith("file://"):
        folder = Path(target[len("file://") :])
        _render_into(found, folder, source)
        return str(folder / "index.html")
    storage = open_storage(target, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="synthrec-report-") as tmp:
        _render_into(found, Path(tmp), source)
        upload_tree(storage, tmp)
    return storage.url("index.html")


def _render_into(found: list[artifacts.FoundResource], folder: Path, source: str) -> None:
    """Render in a fresh sibling folder, then swap it in, so a failed render leaves the old report."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=folder.parent))
    try:
        Renderer(staging).render(found, source)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------- reading


@dataclass
class Sample:
    key: str
    shard: int
    class_index: int
    score: float | None
    kept: bool
    prompt: str = ""
    image: str | None = None  # path relative to the report folder


@dataclass
class ClassGrid:
    index: int
    name: str
    kept: list[Sample] = field(default_factory=list)
    rejected: list[Sample] = field(default_factory=list)


def read_jsonl(storage: Storage, key: str) -> list[dict[str, Any]]:
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        return []
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                rows.append(value)
    return rows


def safetensors_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor dtypes, shapes, offsets and __metadata__)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def safetensors_matrix(data: bytes, name: str) -> list[list[float]]:
    """A 2-D float32 tensor of a safetensors file as rows, without numpy or torch."""
    header = safetensors_header(data)
    info = header[name]
    if info["dtype"] != "F32" or len(info["shape"]) != 2:
        raise ValueError(f"tensor {name} is {info['dtype']} {info['shape']}, expected a 2-D F32 tensor")
    (length,) = struct.unpack("<Q", data[:8])
    start, end = (8 + length + o for o in info["data_offsets"])
    rows, cols = info["shape"]
    values = struct.unpack(f"<{rows * cols}f", data[start:end])
    return [list(values[r * cols : (r + 1) * cols]) for r in range(rows)]


@contextmanager
def local_copy(storage: Storage, key: str) -> Iterator[Path]:
    """A local path of an object: the file itself on file://, a temporary download otherwise."""
    if isinstance(storage, FileStorage):
        yield storage.root / key
        return
    with tempfile.TemporaryDirectory(prefix="synthrec-report-") as tmp:
        path = Path(tmp) / Path(key).name
        storage.download_file(key, path)
        yield path


def dataset_grids(
    storage: Storage, manifest: dict[str, Any], max_classes: int = MAX_GRID_CLASSES
) -> list[ClassGrid]:
    """Per class (the first ``max_classes``) up to GRID_IMAGES kept and rejected samples, with scores.

    Kept samples come from index/kept.jsonl. Rejected ones are the other images of the shard holding the
    class's first kept image, scored from that shard's features file. Only those shards are read.
    """
    classes = list((manifest.get("labels") or {}).get("classes") or [])
    kept_rows = read_jsonl(storage, DatasetLayout.index)
    grids = {i: ClassGrid(i, str(name)) for i, name in enumerate(classes[:max_classes])}
    kept_keys = {(int(r["shard"]), str(r["key"])) for r in kept_rows if "shard" in r and "key" in r}
    first_shard: dict[int, int] = {}
    for row in kept_rows:
        c, shard = int(row.get("class", -1)), int(row.get("shard", -1))
        if c in grids and len(grids[c].kept) < GRID_IMAGES:
            score = row.get("score")
            grids[c].kept.append(Sample(str(row["key"]), shard, c, _num(score), True))
            first_shard.setdefault(c, shard)
    filter_enabled = bool((manifest.get("filter") or {}).get("enabled", True))
    if filter_enabled:
        for c, shard in sorted(first_shard.items()):
            for sample in _rejected_in_shard(storage, shard, c, kept_keys):
                if len(grids[c].rejected) >= GRID_IMAGES:
                    break
                grids[c].rejected.append(sample)
    return [grids[i] for i in sorted(grids)]


def _rejected_in_shard(storage: Storage, shard: int, c: int, kept: set[tuple[int, str]]) -> list[Sample]:
    try:
        data = storage.read_bytes(DatasetLayout.features(shard))
        meta = safetensors_header(data).get("__metadata__") or {}
        keys = json.loads(meta.get("keys", "[]"))
        probs = safetensors_matrix(data, "probs")
    except (ObjectNotFound, ValueError, KeyError, struct.error):
        return []
    out = []
    labels = _class_column(data, len(keys))
    for row, key in enumerate(keys):
        if (shard, key) in kept:
            continue
        if (labels[row] if labels else _class_of_key(key)) != c:
            continue
        out.append(Sample(key, shard, c, probs[row][c] if row < len(probs) else None, False))
    return out


def _class_column(data: bytes, n: int) -> list[int] | None:
    """The features file's class_index tensor (I64), or None."""
    try:
        header = safetensors_header(data)
        info = header["class_index"]
        if info["dtype"] != "I64":
            return None
        (length,) = struct.unpack("<Q", data[:8])
        start, end = (8 + length + o for o in info["data_offsets"])
        return list(struct.unpack(f"<{n}q", data[start:end]))
    except (KeyError, ValueError, struct.error):
        return None


def _class_of_key(key: str) -> int:
    """c00003-p00012-i00004 -> 3 (the generate stage's key layout), -1 when it is not one."""
    try:
        return int(key.split("-")[0].lstrip("c"))
    except ValueError:
        return -1


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attach_images(storage: Storage, grids: list[ClassGrid], out_dir: Path, prefix: str) -> None:
    """Copy the grids' images (thumbnails) into ``out_dir/prefix`` and fill in prompts from the tars."""
    by_shard: dict[int, list[Sample]] = defaultdict(list)
    for grid in grids:
        for sample in grid.kept + grid.rejected:
            by_shard[sample.shard].append(sample)
    (out_dir / prefix).mkdir(parents=True, exist_ok=True)
    for shard, samples in sorted(by_shard.items()):
        wanted = {s.key: s for s in samples}
        try:
            with local_copy(storage, DatasetLayout.shard(shard)) as path, tarfile.open(path) as tar:
                for member in tar:
                    stem, _, ext = member.name.rpartition(".")
                    sample = wanted.get(stem)
                    if sample is None or not member.isfile():
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    data = handle.read()
                    if ext == "json":
                        with suppress(ValueError, AttributeError):
                            sample.prompt = str(json.loads(data).get("prompt", ""))
                    elif ext in ("jpg", "jpeg", "png", "webp"):
                        rel = f"{prefix}/{stem}.jpg"
                        _write_thumbnail(data, out_dir / rel)
                        sample.image = rel
        except (StorageError, OSError, tarfile.TarError):
            continue  # a missing or damaged shard: its samples show without a picture


def _write_thumbnail(data: bytes, path: Path) -> None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            im.save(path, format="JPEG", quality=90)
    except Exception:  # no Pillow or an undecodable image: keep the original bytes
        path.write_bytes(data)


# --------------------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accept_rates(per_class: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _pyplot()
    names = [str(c.get("name")) for c in per_class]
    rates = [100 * float(c.get("accept_rate") or 0) for c in per_class]
    kept = [100 * float(c.get("keep_rate") or 0) for c in per_class]
    width = min(16, max(5, 0.35 * len(names) + 2))
    fig, ax = plt.subplots(figsize=(width, 3.6), dpi=100)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], rates, width=0.4, label="passed the CLIP filter threshold")
    ax.bar([x + 0.2 for x in xs], kept, width=0.4, label="kept")
    ax.set_xticks(list(xs), names, rotation=60 if len(names) > 6 else 0, ha="right", fontsize=8)
    ax.set_ylabel("% of generated images")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_top1_vs_shots(runs: list[artifacts.RunState], path: Path, title: str) -> bool:
    """top-1 (mean over seeds, min-max bars) against shots per variant, and the zero-shot baseline."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    baseline = [r.zero_shot_top1 for r in runs if r.zero_shot_top1 is not None]
    for r in runs:
        if r.top1 is not None:
            series[r.variant or "top-1"][r.shots].append(r.top1)
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    all_shots = sorted({s for points in series.values() for s in points})
    positions = {s: i for i, s in enumerate(all_shots)}  # even spacing: shots are usually 0,1,2,4,8,16
    for name, points in sorted(series.items()):
        shots = sorted(points)
        means = [sum(points[s]) / len(points[s]) for s in shots]
        lows = [m - min(points[s]) for m, s in zip(means, shots, strict=True)]
        highs = [max(points[s]) - m for m, s in zip(means, shots, strict=True)]
        ax.errorbar(
            [positions[s] for s in shots], means, yerr=[lows, highs], marker="o", capsize=3, label=name
        )
    if baseline:
        zs = sum(baseline) / len(baseline)
        ax.axhline(zs, color="gray", linestyle="--", label=f"zero-shot CLIP ({zs:.1f}%)")
    ax.set_xticks(range(len(all_shots)), [str(s) for s in all_shots])
    ax.set_xlabel("real shots per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_curves(curves: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss per epoch of every run (per step when a run has no epochs)."""
    lines = {}
    for name, curve in curves.items():
        epochs = [e for e in curve.get("epochs") or [] if isinstance(e.get("loss"), int | float)]
        if epochs:
            lines[name] = ([e.get("epoch", i + 1) for i, e in enumerate(epochs)], [e["loss"] for e in epochs])
            continue
        steps = [s for s in curve.get("steps") or [] if isinstance(s.get("loss"), int | float)]
        if steps:
            lines[name] = ([s.get("step", i) for i, s in enumerate(steps)], [s["loss"] for s in steps])
    if not lines:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, (xs, ys) in sorted(lines.items()):
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_confusion(doc: dict[str, Any], path: Path, title: str) -> None:
    """The trained head's confusion matrix, each row as a share of that class's test images."""
    plt = _pyplot()
    names = [str(n) for n in doc["classes"]]
    matrix = confusion.dense(doc["test"], len(names))
    rows = [[100.0 * n / (sum(row) or 1) for n in row] for row in matrix]
    size = min(12, max(4, 0.32 * len(names) + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=100)
    ticks = list(range(len(names)))
    ax.set_xticks(ticks, names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="% of the true class's test images")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the page

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.warn { background: #fde8e8; border: 2px solid #c62828; color: #8e0000; padding: .8em 1em;
        font-weight: bold; }
.note { color: #666; font-size: .9em; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; margin: .3em 0 .8em; }
figure { margin: 0; width: 132px; font-size: .72em; }
figure img { width: 128px; height: 128px; object-fit: cover; display: block; border: 2px solid #2e7d32; }
figure.rej img { border-color: #c62828; }
figcaption { overflow-wrap: anywhere; } .score { font-weight: bold; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _rate(value: Any) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, int | float) else "-"


class Renderer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        (folder / "img").mkdir(parents=True, exist_ok=True)

    def render(self, found: list[artifacts.FoundResource], source: str) -> None:
        tiny = any(references_tiny(res.document.get("spec", {})) for res in found)
        datasets = [r for r in found if r.kind == "SyntheticDataset"]
        experiments = [r for r in found if r.kind == "RecognitionExperiment"]
        body = [f"<h1>synthrec report</h1><p class='note'>{_e(source)} &middot; {_e(_now())}</p>"]
        if tiny:
            body.append(f"<p class='warn'>{_e(TINY_NOTE)}</p>")
        body.append("<ul>")
        for res in datasets + experiments:
            body.append(f"<li><a href='#{_e(_anchor(res))}'>{_e(res.kind)} {_e(res.name)}</a></li>")
        body.append("</ul>")
        for res in datasets:
            body.append(self.dataset(res))
        for res in experiments:
            body.append(self.experiment(res))
        if tiny:
            body.append(f"<p class='warn'>{_e(TINY_NOTE)}</p>")
        page = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>synthrec report</title><style>{CSS}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )
        (self.folder / "index.html").write_text(page, encoding="utf-8")

    # ---- datasets

    def dataset(self, res: artifacts.FoundResource) -> str:
        state = res.dataset_state()
        spec = res.document.get("spec", {})
        out = [f"<h2 id='{_e(_anchor(res))}'>SyntheticDataset {_e(res.name)}</h2>"]
        out.append(f"<p class='note'>{_e(res.uri)}</p>")
        gen, prompts, filt = spec.get("generator", {}), spec.get("prompts", {}), spec.get("filter", {})
        out.append("<table>")
        for label, value in (
            ("prompts", f"{prompts.get('strategy', '')} {prompts.get('model') or ''}".strip()),
            (
                "generator",
                f"{gen.get('model')} ({gen.get('steps')} steps, guidance {gen.get('guidanceScale')})",
            ),
            ("real guidance", json.dumps(spec.get("realGuidance")) if spec.get("realGuidance") else "no"),
            ("CLIP filter", json.dumps(filt.get("clip")) if filt.get("enabled", True) else "disabled"),
            ("keep per class", filt.get("keepPerClass", "")),
        ):
            out.append(f"<tr><th class='l'>{_e(label)}</th><td class='l'>{_e(value)}</td></tr>")
        out.append("</table>")
        stages = ", ".join(f"{s.stage} {len(s.committed)}/{s.shards}" for s in state.stages if s.enabled)
        if state.manifest is None:
            out.append(
                f"<p class='warn'>Not complete yet (no manifest.json); committed shards: {_e(stages)}</p>"
            )
            out.append(self.prompt_samples(res.storage, None))
            return "\n".join(out)
        manifest = state.manifest
        counts = manifest.get("counts", {})
        out.append(
            f"<p>{_e(counts.get('generated'))} images generated, {_e(counts.get('passed'))} passed the CLIP "
            f"filter threshold ({_e(_rate(counts.get('accept_rate')))}), {_e(counts.get('kept'))} kept, "
            f"{_e(counts.get('rejected'))} rejected. Shards: {_e(stages)}. Dataset card: "
            f"<code>manifest.json</code> (sha256 <code>{_e(str(state.manifest_digest)[:16])}</code>).</p>"
        )
        per_class = manifest.get("per_class") or []
        out.append("<h3>Accept rates per class</h3><table><tr><th class='l'>class</th><th>generated</th>")
        out.append("<th>passed</th><th>kept</th><th>accept rate</th><th>keep rate</th></tr>")
        for c in per_class:
            out.append(
                f"<tr><td class='l'>{_e(c.get('name'))}</td><td>{_e(c.get('generated'))}</td>"
                f"<td>{_e(c.get('passed'))}</td><td>{_e(c.get('kept'))}</td>"
                f"<td>{_rate(c.get('accept_rate'))}</td><td>{_rate(c.get('keep_rate'))}</td></tr>"
            )
        out.append("</table>")
        if per_class:
            rel = f"plots/{res.name}-accept-rates.png"
            plot_accept_rates(per_class, self.folder / rel, f"{res.name}: CLIP filter per class")
            out.append(f"<img src='{_e(rel)}' alt='accept rates per class'>")
        out.append(self.prompt_samples(res.storage, manifest))
        out.append(self.grids(res, manifest))
        return "\n".join(out)

    def prompt_samples(self, storage: Storage, manifest: dict[str, Any] | None) -> str:
        rows = read_jsonl(storage, DatasetLayout.prompts)
        if not rows:
            return "<p class='note'>No prompts yet.</p>"
        per_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
        totals: dict[int, int] = defaultdict(int)
        for row in rows:
            c = int(row.get("class", -1))
            totals[c] += 1
            if len(per_class[c]) < PROMPTS_PER_CLASS:
                per_class[c].append(row)
        out = [f"<h3>Prompt samples</h3><p class='note'>{len(rows)} prompts in prompts.jsonl.</p><table>"]
        out.append("<tr><th class='l'>class</th><th>prompts</th><th class='l'>samples</th></tr>")
        for c in sorted(per_class)[:MAX_GRID_CLASSES]:
            samples = "<br>".join(
                f"{_e(r.get('prompt'))} <span class='note'>({_e(r.get('source'))}, "
                f"{_e(r.get('images'))} images)</span>"
                for r in per_class[c]
            )
            name = per_class[c][0].get("class_name", c)
            out.append(
                f"<tr><td class='l'>{_e(name)}</td><td>{totals[c]}</td><td class='l'>{samples}</td></tr>"
            )
        out.append("</table>")
        if len(per_class) > MAX_GRID_CLASSES:
            out.append(f"<p class='note'>First {MAX_GRID_CLASSES} of {len(per_class)} classes shown.</p>")
        return "\n".join(out)

    def grids(self, res: artifacts.FoundResource, manifest: dict[str, Any]) -> str:
        grids = dataset_grids(res.storage, manifest)
        attach_images(res.storage, grids, self.folder, f"img/{res.name}")
        out = ["<h3>Kept and rejected images</h3>"]
        out.append(
            "<p class='note'>Green: kept by the CLIP filter; red: rejected. The score is the CLIP zero-shot "
            "probability of the intended class.</p>"
        )
        for grid in grids:
            out.append(f"<h4>{_e(grid.name)}</h4>")
            for title, samples, css in (("kept", grid.kept, ""), ("rejected", grid.rejected, "rej")):
                if not samples:
                    continue
                out.append(f"<div class='note'>{title}</div><div class='grid'>")
                for s in samples:
                    img = f"<img src='{_e(s.image)}' alt='{_e(s.key)}'>" if s.image else ""
                    score = "-" if s.score is None else f"{s.score:.2f}"
                    out.append(
                        f"<figure class='{css}'>{img}<figcaption><span class='score'>{score}</span> "
                        f"{_e(s.prompt)}</figcaption></figure>"
                    )
                out.append("</div>")
        classes = (manifest.get("labels") or {}).get("classes") or []
        if len(classes) > len(grids):
            out.append(f"<p class='note'>Grids for the first {len(grids)} of {len(classes)} classes.</p>")
        return "\n".join(out)

    # ---- experiments

    def experiment(self, res: artifacts.FoundResource) -> str:
        state = res.experiment_state()
        out = [f"<h2 id='{_e(_anchor(res))}'>RecognitionExperiment {_e(res.name)}</h2>"]
        out.append(f"<p class='note'>{_e(res.uri)}</p>")
        backbone = res.document.get("spec", {}).get("backbone", {})
        out.append(f"<p>Backbone: <code>{_e(json.dumps(backbone))}</code>. ")
        out.append(f"{sum(r.done for r in state.runs)} of {len(state.runs)} runs done.</p>")
        out.append(
            "<h3>Accuracy of all runs</h3><table><tr><th class='l'>run</th><th>shots</th><th>seed</th>"
        )
        out.append("<th class='l'>variant</th><th>top-1</th><th>zero-shot top-1</th><th>change</th>")
        out.append("<th>synthetic images</th><th>real images</th></tr>")
        for r in state.runs:
            counts = (r.metrics or {}).get("counts", {})
            change = (
                "-" if r.top1 is None or r.zero_shot_top1 is None else f"{r.top1 - r.zero_shot_top1:+.1f}"
            )
            out.append(
                f"<tr><td class='l'>{_e(r.name)}</td><td>{r.shots}</td><td>{r.seed}</td>"
                f"<td class='l'>{_e(r.variant or '-')}</td>"
                f"<td>{_pct(r.top1) if r.done else 'not done'}</td><td>{_pct(r.zero_shot_top1)}</td>"
                f"<td>{change}</td><td>{_e(counts.get('synthetic', '-'))}</td>"
                f"<td>{_e(counts.get('real_train', '-'))}</td></tr>"
            )
        out.append("</table>")
        rel = f"plots/{res.name}-top1-vs-shots.png"
        if plot_top1_vs_shots(state.runs, self.folder / rel, f"{res.name}: top-1 against shots"):
            out.append(f"<img src='{_e(rel)}' alt='top-1 against shots'>")
        curves = {}
        for r in state.runs:
            if r.done:
                try:
                    curve = res.storage.read_json(ExperimentLayout.run(r.name, "curve.json"))
                except (ObjectNotFound, ValueError):
                    continue
                if isinstance(curve, dict):
                    curves[r.name] = curve
        rel = f"plots/{res.name}-curves.png"
        if plot_curves(curves, self.folder / rel, f"{res.name}: training curves"):
            out.append(f"<h3>Training curves</h3><img src='{_e(rel)}' alt='training curves'>")
        elif state.runs:
            out.append("<p class='note'>No training curves (no run trained a head, e.g. zero-shot only).</p>")
        out.append(self.best_run(res, state))
        return "\n".join(out)

    def best_run(self, res: artifacts.FoundResource, state: artifacts.ExperimentState) -> str:
        """Where the best finished run errs: its weakest classes, its most confused pairs, its matrix."""
        done = [r for r in state.runs if r.done and r.top1 is not None]
        if not done:
            return ""
        best = max(done, key=lambda r: r.top1 or 0.0)  # the first of equals, in matrix order
        out = [f"<h3>Where the best run errs: {_e(best.name)} ({_pct(best.top1)} top-1)</h3>"]
        per_class = [c for c in (best.metrics or {}).get("per_class") or [] if c.get("top1") is not None]
        if per_class:
            weakest = sorted(per_class, key=lambda c: (c["top1"], c.get("index", 0)))[:WEAKEST_CLASSES]
            out.append("<table><tr><th class='l'>class</th><th>test images</th><th>top-1</th>")
            out.append("<th>zero-shot top-1</th><th>change</th></tr>")
            for c in weakest:
                zs = _num(c.get("zero_shot_top1"))
                change = "-" if zs is None else f"{c['top1'] - zs:+.1f}"
                out.append(
                    f"<tr><td class='l'>{_e(c.get('name', c.get('index')))}</td><td>{_e(c.get('count', '-'))}"
                    f"</td><td>{_pct(c['top1'])}</td><td>{_pct(zs)}</td><td>{change}</td></tr>"
                )
            out.append("</table>")
            if len(per_class) > len(weakest):
                out.append(f"<p class='note'>The {len(weakest)} weakest of {len(per_class)} classes.</p>")
        try:
            doc = res.storage.read_json(ExperimentLayout.run_confusion(best.name))
        except (ObjectNotFound, ValueError):
            doc = None
        if not (isinstance(doc, dict) and isinstance(doc.get("classes"), list) and "test" in doc):
            out.append("<p class='note'>No readable confusion matrix for this run (confusion.json).</p>")
            return "\n".join(out)
        pairs = confusion.most_confused(doc, CONFUSED_PAIRS)
        if pairs:
            out.append("<table><tr><th class='l'>true class</th><th class='l'>predicted as</th>")
            out.append("<th>test images</th><th>% of the class</th><th>same error, zero-shot CLIP</th></tr>")
            for p in pairs:
                out.append(
                    f"<tr><td class='l'>{_e(p.true)}</td><td class='l'>{_e(p.predicted)}</td><td>{p.count}"
                    f"</td><td>{p.share:.1f}</td><td>{p.zero_shot_count}</td></tr>"
                )
            out.append("</table>")
        if len(doc["classes"]) <= HEATMAP_MAX_CLASSES:
            rel = f"plots/{res.name}-confusion.png"
            plot_confusion(doc, self.folder / rel, f"{best.name}: confusion on the test split")
            out.append(f"<img src='{_e(rel)}' alt='confusion matrix of {_e(best.name)}'>")
        return "\n".join(out)


def _anchor(res: artifacts.FoundResource) -> str:
    return f"{'ds' if res.kind == 'SyntheticDataset' else 'ex'}-{res.name}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
