"""The report page: one self-contained ``index.html`` rendered from the typed artifacts."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthrec.contract import artifacts, confusion
from synthrec.contract.confusion import parse_confusion
from synthrec.contract.curve import parse_curve
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.contract.manifest import DatasetManifest
from synthrec.contract.prompts import PromptRow
from synthrec.limits import bounded
from synthrec.report.files import ReportFiles
from synthrec.report.images import MAX_GRID_CLASSES, NotKept, attach_images, dataset_grids
from synthrec.report.inputs import read_document, read_lines
from synthrec.report.plots import (
    accept_rates_figure,
    confusion_figure,
    loss_curves,
    losses_figure,
    png,
    top1_figure,
    transfer_figure,
)
from synthrec.report.results import (
    RESULT_FIELDS,
    RESULTS_CSV,
    TABLE_CSV,
    TABLE_FIELDS,
    TRANSFER_CSV,
    TRANSFER_FIELDS,
    ResultTable,
    Stats,
    result_rows,
    result_table,
    run_state,
    series_of,
    table_rows,
    tensorboard_dir,
    to_csv,
    transfer_rows,
)
from synthrec.storage import Storage
from synthrec.tiny.layout import references_random_tiny, references_toy_world

INDEX = "index.html"
PROMPTS_PER_CLASS = 3
WEAKEST_CLASSES = 20  # rows of the best run's per-class table
CONFUSED_PAIRS = 10
HEATMAP_MAX_CLASSES = 40  # a confusion-matrix plot beyond this is unreadable; the pairs table stays
TINY_NOTE = (
    "These results come from synthrec's built-in tiny models (tiny://), which have RANDOM weights: the "
    "images are coloured noise and every accuracy below is meaningless. The report shows the mechanics "
    "of the pipeline only; use real models (see the README) for real numbers."
)
TOY_WORLD_NOTE = (
    "These results come from synthrec's TOY WORLD (tiny://world/): coloured shapes drawn by a program and "
    "tiny models trained on them in a few CPU minutes. The paper's effects show in kind (synthetic data "
    "helps an imperfect zero-shot CLIP, the CLIP Filter removes wrong drawings); the numbers are not the "
    "paper's numbers and say nothing about real datasets."
)


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
figure img { width: 128px; height: 128px; object-fit: cover; display: block; border: 3px solid #2e7d32; }
figure.nc img { border-color: #ef8f00; } figure.b img { border-color: #c62828; }
.k { color: #2e7d32; } .nc { color: #b86e00; } .b { color: #c62828; }
figcaption { overflow-wrap: anywhere; } .score { font-weight: bold; }
code { background: #f3f3f3; padding: 0 .2em; } td.uri { max-width: 30em; overflow-wrap: anywhere; }
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
        self.files = ReportFiles(folder)  # every file of the report is named and opened through it
        # the page's own names (constants the page links to)
        for own in (INDEX, RESULTS_CSV, TABLE_CSV, TRANSFER_CSV):
            self.files.reserve(own)
        self.results: list[dict[str, Any]] = []  # results.csv: every run of every experiment
        self.table: list[dict[str, Any]] = []  # table.csv: per experiment, series and shots
        self.transfer: list[dict[str, Any]] = []  # transfer.csv: every pre-training run

    def write(self, rel: str, data: str | bytes) -> None:
        """Write one file of the report (the page, the CSVs, the plots): ``rel`` is a name ``self.files``
        made, never a stored string."""
        self.files.write(rel, data)

    def render(self, found: list[artifacts.FoundResource], source: str, problems: Sequence[str] = ()) -> None:
        """The page; ``problems``: what could not be read at all (one warning line each)."""
        notes = [TINY_NOTE] if any(references_random_tiny(res.spec) for res in found) else []
        if any(references_toy_world(res.spec) for res in found):
            notes.append(TOY_WORLD_NOTE)
        datasets = [r for r in found if r.kind == "SyntheticDataset"]
        experiments = [r for r in found if r.kind == "RecognitionExperiment"]
        body = [f"<h1>synthrec report</h1><p class='note'>{_e(source)} &middot; {_e(_now())}</p>"]
        body += [f"<p class='warn'>{_e(note)}</p>" for note in notes]
        body.extend(_problem(p) for p in problems)
        pretraining = [r for r in experiments if getattr(r.spec.method, "pretrain", None) is not None]
        few_shot = [r for r in experiments if r not in pretraining]
        csvs = []
        if few_shot:
            csvs.append(
                f"<a href='{RESULTS_CSV}'>{RESULTS_CSV}</a> (every run) and "
                f"<a href='{TABLE_CSV}'>{TABLE_CSV}</a> (top-1 over seeds per variant and shots)"
            )
        if pretraining:
            csvs.append(f"<a href='{TRANSFER_CSV}'>{TRANSFER_CSV}</a> (pre-training runs and their transfer)")
        if csvs:
            body.append(f"<p>All results as CSV: {'; '.join(csvs)}.</p>")
        body.append("<ul>")
        for res in datasets + experiments:
            body.append(f"<li><a href='#{_e(_anchor(res))}'>{_e(res.kind)} {_e(res.name)}</a></li>")
        body.append("</ul>")
        for res in datasets:
            body.append(self.dataset(res))
        for res in experiments:
            body.append(self.experiment(res))
        body += [f"<p class='warn'>{_e(note)}</p>" for note in notes]
        page = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>synthrec report</title><style>{CSS}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )
        if few_shot:
            self.write(RESULTS_CSV, to_csv(RESULT_FIELDS, self.results))
            self.write(TABLE_CSV, to_csv(TABLE_FIELDS, self.table))
        if pretraining:
            self.write(TRANSFER_CSV, to_csv(TRANSFER_FIELDS, self.transfer))
        self.write(INDEX, page)

    # ---- datasets

    def dataset(self, res: artifacts.FoundResource) -> str:
        state = res.dataset_state()
        spec = state.spec
        out = [f"<h2 id='{_e(_anchor(res))}'>SyntheticDataset {_e(res.name)}</h2>"]
        out.append(f"<p class='note'>{_e(res.uri)}</p>")
        gen, prompts, filt, rg = spec.generator, spec.prompts, spec.filter, spec.real_guidance
        out.append("<table>")
        for label, value in (
            ("prompts", f"{prompts.strategy} {prompts.model or ''}".strip()),
            ("generator", f"{gen.model} ({gen.steps} steps, guidance {gen.guidance_scale})"),
            ("real guidance", json.dumps(rg.wire()) if rg else "no"),
            ("CLIP filter", json.dumps(filt.clip.wire()) if filt.enabled else "disabled"),
            ("keep per class", filt.keep_per_class),
        ):
            out.append(f"<tr><th class='l'>{_e(label)}</th><td class='l'>{_e(value)}</td></tr>")
        out.append("</table>")
        stages = ", ".join(f"{s.stage} {len(s.committed)}/{s.shards}" for s in state.stages if s.enabled)
        if state.manifest is None:
            if state.manifest_problem:
                out.append(_problem(state.manifest_problem))
            out.append(
                f"<p class='warn'>Not complete yet (no manifest.json); committed shards: {_e(stages)}</p>"
            )
            out.append(self.prompt_samples(res.storage, None))
            return "\n".join(out)
        manifest = state.manifest
        counts = manifest.counts
        out.append(f"<p>{self.counts_sentence(manifest)} Shards: {_e(stages)}. Dataset card: ")
        out.append(
            f"<code>manifest.json</code> (sha256 <code>{_e(str(state.manifest_digest)[:16])}</code>).</p>"
        )
        per_class = manifest.per_class
        rf = counts.real_filtered > 0 or manifest.filter.real_filtering is not None
        corrupt = counts.corrupt > 0
        out.append("<h3>Accept rates per class</h3><table><tr><th class='l'>class</th><th>generated</th>")
        out.append("<th>corrupt</th>" if corrupt else "")
        out.append("<th>dropped by Real Filtering</th>" if rf else "")
        out.append("<th>passed</th><th>kept</th><th>passed, not kept</th><th>below the threshold</th>")
        out.append("<th>accept rate</th><th>keep rate</th></tr>")
        for c in per_class:
            split = NotKept.of([c])
            out.append(
                f"<tr><td class='l'>{_e(c.name)}</td><td>{c.generated}</td>"
                + (f"<td>{c.corrupt}</td>" if corrupt else "")
                + (f"<td>{c.real_filtered}</td>" if rf else "")
                + f"<td>{c.passed}</td><td>{c.kept}</td><td>{split.not_chosen}</td><td>{split.below}</td>"
                f"<td>{_rate(c.accept_rate)}</td><td>{_rate(c.keep_rate)}</td></tr>"
            )
        out.append("</table>")
        if per_class:
            rel = self.files.name("plots", f"{res.name}-accept-rates", ext="png")
            self.write(rel, png(accept_rates_figure(per_class, f"{res.name}: CLIP filter per class")))
            out.append(f"<img src='{_e(rel)}' alt='accept rates per class'>")
        out.append(self.prompt_samples(res.storage, manifest))
        out.append(self.grids(res, manifest))
        return "\n".join(out)

    def prompt_samples(self, storage: Storage, manifest: DatasetManifest | None) -> str:
        lines, problem = read_lines(storage, DatasetLayout.prompts, PromptRow.from_json)
        rows = lines.rows
        if not rows:
            return (_problem(problem) if problem else "") + "<p class='note'>No prompts yet.</p>"
        per_class: dict[int, list[PromptRow]] = defaultdict(list)
        totals: dict[int, int] = defaultdict(int)
        for row in rows:
            c = row.class_index
            totals[c] += 1
            if len(per_class[c]) < PROMPTS_PER_CLASS:
                per_class[c].append(row)
        out = [_problem(problem)] if problem else []
        out += [f"<h3>Prompt samples</h3><p class='note'>{len(rows)} prompts in prompts.jsonl.</p><table>"]
        out.append("<tr><th class='l'>class</th><th>prompts</th><th class='l'>samples</th></tr>")
        for c in sorted(per_class)[:MAX_GRID_CLASSES]:
            samples = "<br>".join(
                f"{_e(r.prompt)} <span class='note'>({_e(r.source)}, {_e(r.images)} images)</span>"
                for r in per_class[c]
            )
            name = per_class[c][0].class_name
            out.append(
                f"<tr><td class='l'>{_e(name)}</td><td>{totals[c]}</td><td class='l'>{samples}</td></tr>"
            )
        out.append("</table>")
        if len(per_class) > MAX_GRID_CLASSES:
            out.append(f"<p class='note'>First {MAX_GRID_CLASSES} of {len(per_class)} classes shown.</p>")
        return "\n".join(out)

    def counts_sentence(self, manifest: DatasetManifest) -> str:
        """What happened to the generated images, with the two kinds of not-kept images apart."""
        counts, filt = manifest.counts, manifest.filter
        if not filt.enabled:
            return f"{counts.generated} images generated, {counts.kept} kept (the CLIP filter is disabled)."
        split = NotKept.of(manifest.per_class)
        below_kept = sum(c.kept_below_threshold for c in manifest.per_class)
        threshold = "-" if filt.threshold is None else f"{filt.threshold:.3g}"
        rule = f", {filt.threshold_rule}" if filt.threshold_rule else ""
        text = (
            f"{counts.generated} images generated, {counts.passed} passed the CLIP filter threshold "
            f"(score &gt; {_e(threshold + rule)}; {_e(_rate(counts.accept_rate))}), {counts.kept} kept "
            f"({_e(filt.keep_per_class)} per class, {_e(_selection(filt.selection))}"
        )
        if below_kept:
            text += f"; {below_kept} of them below the threshold, as too few passed"
        text += (
            f"). Not kept: <b>{split.not_chosen} passed the threshold but were not among the kept</b>, "
            f"<b>{split.below} were below the threshold</b>"
        )
        if split.real_filtered:
            text += f", {split.real_filtered} were dropped by Real Filtering"
        if split.corrupt:
            text += f", {split.corrupt} could not be decoded"
        return text + "."

    def grids(self, res: artifacts.FoundResource, manifest: DatasetManifest) -> str:
        grids, problem = dataset_grids(res.storage, manifest)
        attach_images(res.storage, grids, self.files, res.name)
        filt = manifest.filter
        out = ["<h3>Kept and not kept images</h3>"]
        if problem:
            out.append(_problem(problem))
        why = (
            "the K kept are drawn at random from those that passed, so these can score as high as kept ones"
            if filt.selection == "random"
            else f"the K kept are {_e(_selection(filt.selection))}"
        )
        out.append(
            "<p class='note'>The score is the CLIP zero-shot probability of the intended class. "
            "<span class='k'>Green: kept</span>. <span class='nc'>Amber: passed the threshold but not kept"
            f"</span>: {why}. <span class='b'>Red: at or below the threshold</span>.</p>"
        )
        if filt.real_filtering is not None:
            out.append(
                "<p class='note'>Real Filtering was on: the images it dropped are among the not-kept ones, "
                "grouped by their score here; the table above counts them apart.</p>"
            )
        by_index = {c.index: c for c in manifest.per_class}
        for grid in grids:
            counts = by_index.get(grid.index)
            split = NotKept.of([counts]) if counts else None
            summary = (
                f" <span class='note'>{counts.kept} kept, {split.not_chosen} passed but not kept, "
                f"{split.below} below the threshold</span>"
                if counts and split and filt.enabled
                else ""
            )
            out.append(f"<h4>{_e(grid.name)}{summary}</h4>")
            for title, samples, css in (
                ("kept", grid.kept, "k"),
                ("passed the threshold, not kept", grid.not_chosen, "nc"),
                ("below the threshold", grid.below, "b"),
            ):
                if not samples:
                    continue
                out.append(f"<div class='note'>{title}</div><div class='grid'>")
                for s in samples:
                    img = f"<img src='{_e(s.image)}' alt='{_e(s.key)}'>" if s.image else ""
                    score = "-" if s.score is None else f"{s.score:.2f}"
                    below = s.kept and s.passed is False  # kept to fill K when too few passed
                    flag = " <span class='note'>(below the threshold)</span>" if below else ""
                    out.append(
                        f"<figure class='{css}'>{img}<figcaption><span class='score'>{score}</span>{flag} "
                        f"{_e(s.prompt)}</figcaption></figure>"
                    )
                out.append("</div>")
        classes = manifest.labels.classes
        if len(classes) > len(grids):
            out.append(f"<p class='note'>Grids for the first {len(grids)} of {len(classes)} classes.</p>")
        return "\n".join(out)

    # ---- experiments

    def experiment(self, res: artifacts.FoundResource) -> str:
        state = res.experiment_state()
        if state.spec.method.pretrain is not None:
            return self.pretraining(res, state)
        out = [f"<h2 id='{_e(_anchor(res))}'>RecognitionExperiment {_e(res.name)}</h2>"]
        out.append(f"<p class='note'>{_e(res.uri)}</p>")
        out.append(f"<p>Backbone: <code>{_e(json.dumps(state.spec.backbone.wire()))}</code>. ")
        out.append(f"{sum(r.done for r in state.runs)} of {len(state.runs)} runs done.</p>")
        table = result_table(state.runs)
        self.results += result_rows(res, state)
        self.table += table_rows(res.name, table)
        out.append(self.seeds_table(table, "Top-1 over seeds"))
        out.append(self.top1_plot(table, f"{res.name}-top1-vs-shots", f"{res.name}: top-1"))
        if any(r.top1_best_validation is not None for r in state.runs):
            # both selections, never the test set: the best-validation models next to the reported ones
            best = result_table(state.runs, best_validation=True)
            out.append(self.seeds_table(best, "Top-1 over seeds, best-validation models"))
            out.append(
                "<p class='note'>Each run that had a validation set (<code>data.validation</code>, else "
                "real shots held out) scored its best-validation epoch on the test split too; runs with "
                "one model (zero-shot CLIP, Tip-Adapter, no validation set) count with it. Per run in the "
                "<i>last epoch</i> and <i>best validation</i> columns below.</p>"
            )
            stem = f"{res.name}-top1-best-validation-vs-shots"
            out.append(self.top1_plot(best, stem, f"{res.name}: top-1, best-validation models"))
        out.append(self.runs_table(res, state))
        out.append(self.losses(res, state))
        out.append(self.best_run(res, state))
        return "\n".join(out)

    def top1_plot(self, table: ResultTable, stem: str, title: str) -> str:
        """The plot of ``table`` as ``plots/<stem>.png`` (a slug of it: ``stem`` holds a stored name)."""
        fig = top1_figure(table, f"{title} against shots")
        if fig is None:
            return ""
        rel = self.files.name("plots", stem, ext="png")
        self.write(rel, png(fig))
        return f"<img src='{_e(rel)}' alt='{_e(title)} against shots'>"

    def seeds_table(self, table: ResultTable, heading: str) -> str:
        """The paper's table: a row per series (zero-shot CLIP first), a column per number of shots."""
        if not table.rows:
            return ""
        out = [f"<h3>{_e(heading)}</h3><table><tr><th class='l'>top-1 (%)</th>"]
        out += [f"<th>{s} shot{'' if s == 1 else 's'}</th>" for s in table.shots]
        out.append("</tr>")
        for name, cells in table.rows.items():
            out.append(f"<tr><td class='l'>{_e(name)}</td>")
            for shots in table.shots:
                out.append(f"<td>{_cell(cells.get(shots))}</td>")
            out.append("</tr>")
        out.append("</table>")
        out.append(
            "<p class='note'>Mean &plusmn; sample standard deviation over the finished runs (seeds), their "
            "min&ndash;max and their number. Zero-shot CLIP as each column's runs measured it. The same "
            f"numbers, unrounded, are in <a href='{TABLE_CSV}'>{TABLE_CSV}</a>; every run in "
            f"<a href='{RESULTS_CSV}'>{RESULTS_CSV}</a>.</p>"
        )
        return "\n".join(out)

    def runs_table(self, res: artifacts.FoundResource, state: artifacts.ExperimentState) -> str:
        out = ["<h3>All runs</h3>"]
        if any(tensorboard_dir(r) for r in state.runs):
            layout = ExperimentLayout(res.storage.uri)
            logdir = layout.url(layout.tensorboard)
            out.append(
                "<p>TensorBoard shows every run of this experiment, their scalars and hyper-parameters: "
                f"<code>tensorboard --logdir {_e(logdir)}</code>; each run's own log dir is in its row.</p>"
            )
        out.append("<table><tr><th class='l'>run</th><th>shots</th><th>seed</th><th class='l'>variant</th>")
        out.append("<th class='l'>method</th><th>top-1</th><th>last epoch</th><th>best validation</th>")
        out.append("<th>zero-shot top-1</th><th>change</th><th>synthetic images</th>")
        out.append("<th>real images</th><th class='l'>logs</th></tr>")
        for r in state.runs:
            counts = r.metrics.counts if r.metrics else None
            change = (
                "-" if r.top1 is None or r.zero_shot_top1 is None else f"{r.top1 - r.zero_shot_top1:+.1f}"
            )
            out.append(
                f"<tr><td class='l'>{_e(r.name)}</td><td>{r.shots}</td><td>{r.seed}</td>"
                f"<td class='l'>{_e(r.variant or '-')}</td><td class='l'>{_e(r.method)}</td>"
                f"<td>{_pct(r.top1) if r.done else _e(run_state(r))}</td><td>{_pct(r.top1_last)}</td>"
                f"<td>{_pct(r.top1_best_validation)}</td><td>{_pct(r.zero_shot_top1)}</td>"
                f"<td>{change}</td><td>{counts.synthetic if counts else '-'}</td>"
                f"<td>{counts.real_train if counts else '-'}</td>"
                f"<td class='l uri'>{_tracking_links(r)}</td></tr>"
            )
        out.append("</table>")
        out.append("</table>")
        out.extend(_problem(r.problem) for r in state.runs if r.problem)
        return "\n".join(out)

    def losses(self, res: artifacts.FoundResource, state: artifacts.ExperimentState) -> str:
        curves, notes = {}, []
        for r in state.runs:
            if r.done:
                curve, problem = read_document(
                    res.storage, ExperimentLayout.run(r.name, "curve.json"), parse_curve
                )
                if problem:
                    notes.append(_problem(problem))
                if curve is not None:
                    curves[r.name] = loss_curves(curve.document())
        series = {r.name: series_of(r) for r in state.runs}
        fig = losses_figure(curves, series, f"{res.name}: training curves")
        if fig is None:
            if state.runs:
                notes.append(
                    "<p class='note'>No training curves (no run trained a head, e.g. zero-shot only).</p>"
                )
            return "\n".join(notes)
        rel = self.files.name("plots", f"{res.name}-curves", ext="png")
        self.write(rel, png(fig))
        return "\n".join(
            [
                *notes,
                "<h3>Training curves</h3><p class='note'>Each objective on its own axes: they are different "
                "losses on different scales. Per step, at its place in the epochs.</p>"
                f"<img src='{_e(rel)}' alt='training curves'>",
            ]
        )

    def pretraining(self, res: artifacts.FoundResource, state: artifacts.ExperimentState) -> str:
        """A pre-training experiment as the paper's Tables 8-11: per evaluation, the result against the
        synthetic data size for each initialisation (objective, label space), a plot of the same, and
        every run with its pre-training numbers."""
        method = state.spec.method.pretrain
        assert method is not None
        rows = artifacts.pretrain_rows(state)
        self.transfer += transfer_rows(res.name, state)
        out = [f"<h2 id='{_e(_anchor(res))}'>RecognitionExperiment {_e(res.name)} (pre-training)</h2>"]
        out.append(f"<p class='note'>{_e(res.uri)}</p>")
        out.append(
            f"<p>Backbone <code>{_e(method.backbone)}</code>, global batch {method.batch_size}, "
            f"{_e(method.epochs or 'recipe')} epochs, {method.distributed.nodes} node(s); "
            f"{sum(r.done for r in state.pretraining)} of {len(state.pretraining)} runs done. Data size 0: "
            "no synthetic pre-training (the init is transferred as it is).</p>"
        )
        for key, title in TRANSFER_COLUMNS:
            if all(row[key] is None for row in rows):
                continue
            sizes = sorted({row["size"] for row in rows}, key=lambda s: -1 if s is None else s)
            groups: dict[tuple[str, str, str], dict[int | None, float | None]] = defaultdict(dict)
            for row in rows:
                groups[row["label_space"] or "-", row["objective"], row["init"]][row["size"]] = row[key]
            out.append(f"<h3>{_e(title)}</h3><table><tr><th class='l'>label space</th>")
            out.append("<th class='l'>objective</th><th class='l'>init</th>")
            out.extend(f"<th>{_e(_size(size))}</th>" for size in sizes)
            out.append("</tr>")
            for (space, objective, init), cells in groups.items():
                out.append(
                    f"<tr><td class='l'>{_e(space)}</td><td class='l'>{_e(objective)}</td>"
                    f"<td class='l'>{_e(init)}</td>"
                    + "".join(f"<td>{_pct(cells.get(size))}</td>" for size in sizes)
                    + "</tr>"
                )
            out.append("</table>")
        out.append(
            f"<p class='note'>The same numbers, unrounded, with each run's pre-training steps and loss: "
            f"<a href='{TRANSFER_CSV}'>{TRANSFER_CSV}</a>.</p>"
        )
        rel = self.files.name("plots", f"{res.name}-transfer-vs-size", ext="png")
        fig = transfer_figure(rows, TRANSFER_AXES, f"{res.name}: transfer")
        if fig is not None:
            self.write(rel, png(fig))
            out.append(f"<img src='{_e(rel)}' alt='transfer results against synthetic data size'>")
        out.append("<h3>Runs</h3><table><tr><th class='l'>run</th><th class='l'>stage</th>")
        out.append("<th>steps</th><th>final loss</th><th>fine-tune top-1</th><th>linear probe</th>")
        out.append("<th>AP50 (VOC07)</th></tr>")
        for row in rows:
            loss = "-" if row["pretrain_loss"] is None else f"{row['pretrain_loss']:.3f}"
            out.append(
                f"<tr><td class='l'>{_e(row['name'])}</td><td class='l'>{_e(row['stage'])}</td>"
                f"<td>{_e(row['pretrain_steps'] or '-')}</td><td>{loss}</td>"
                f"<td>{_pct(row['classification_top1'])}</td><td>{_pct(row['linear_probe_top1'])}</td>"
                f"<td>{_pct(row['ap50'])}</td></tr>"
            )
        out.append("</table>")
        return "\n".join(out)

    def best_run(self, res: artifacts.FoundResource, state: artifacts.ExperimentState) -> str:
        """Where the best finished run errs: its weakest classes, its most confused pairs, its matrix."""
        done = [r for r in state.runs if r.done and r.top1 is not None]
        if not done:
            return ""
        best = max(done, key=lambda r: r.top1 or 0.0)  # the first of equals, in matrix order
        out = [f"<h3>Where the best run errs: {_e(best.name)} ({_pct(best.top1)} top-1)</h3>"]
        per_class = [c for c in (best.metrics.per_class if best.metrics else []) if c.top1 is not None]
        if per_class:
            weakest = sorted(per_class, key=lambda c: (c.top1 or 0.0, c.index))[:WEAKEST_CLASSES]
            out.append("<table><tr><th class='l'>class</th><th>test images</th><th>top-1</th>")
            out.append("<th>zero-shot top-1</th><th>change</th></tr>")
            for c in weakest:
                zs = c.zero_shot_top1
                change = "-" if zs is None or c.top1 is None else f"{c.top1 - zs:+.1f}"
                out.append(
                    f"<tr><td class='l'>{_e(c.name)}</td><td>{c.count}</td><td>{_pct(c.top1)}</td>"
                    f"<td>{_pct(zs)}</td><td>{change}</td></tr>"
                )
            out.append("</table>")
            if len(per_class) > len(weakest):
                out.append(f"<p class='note'>The {len(weakest)} weakest of {len(per_class)} classes.</p>")
        parsed, problem = read_document(
            res.storage, ExperimentLayout.run_confusion(best.name), parse_confusion
        )
        if parsed is None:
            out.append("<p class='note'>No readable confusion matrix for this run (confusion.json).</p>")
            if problem:
                out.append(_problem(problem))
            return "\n".join(out)
        doc = parsed.document()
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
            rel = self.files.name("plots", f"{res.name}-confusion", ext="png")
            self.write(rel, png(confusion_figure(doc, f"{best.name}: confusion on the test split")))
            out.append(f"<img src='{_e(rel)}' alt='confusion matrix of {_e(best.name)}'>")
            out.append("<p class='note'>Numbers: test images; colour: their share of the true class.</p>")
        return "\n".join(out)


# The transfer table's evaluations (artifacts.pretrain_rows keys) and their titles.
TRANSFER_COLUMNS = (
    ("classification_top1", "Fine-tuning top-1 (%) by synthetic data size"),
    ("linear_probe_top1", "Linear probe top-1 (%) by synthetic data size"),
    ("ap50", "Detection AP50 (VOC07 11-point, %) by synthetic data size"),
)


# The plot's axes: the same evaluations, titled as a y axis.
TRANSFER_AXES = tuple((key, title.split(" by ")[0]) for key, title in TRANSFER_COLUMNS)


def _size(size: int | None) -> str:
    return "all" if size is None else f"{size:,}"


def _problem(text: str) -> str:
    """A note on something stored that could not be read (the rest of the report goes on)."""
    return f"<p class='warn'>Could not read: {_e(bounded(text, 600))}</p>"


def _cell(stats: Stats | None) -> str:
    """One cell of the seeds table: mean +- std, then min-max and how many runs it is over."""
    if stats is None or stats.mean is None:
        return "-" if stats is None else f"<span class='note'>0 of {stats.planned} runs</span>"
    text = f"<b>{stats.mean:.1f}</b>"
    if stats.std is not None:
        text += f" &plusmn; {stats.std:.1f}"
    runs = f"n={stats.n}" if stats.n == stats.planned else f"n={stats.n} of {stats.planned}"
    spread = f"{stats.low:.1f}&ndash;{stats.high:.1f}, " if stats.n > 1 else ""
    return f"{text}<br><span class='note'>{spread}{runs}</span>"


def _link(uri: str, text: str) -> str:
    """A link to a web page (W&B, an MLflow server); any other URI is shown to copy, never linked."""
    if uri.startswith(("http://", "https://")):
        return f"<a href='{_e(uri)}' title='{_e(uri)}'>{_e(text)}</a>"
    return f"<code>{_e(uri)}</code>"


def _tracking_links(run: artifacts.RunState) -> str:
    """Where the run was logged (metrics.json ``tracking``): its TensorBoard log dir, W&B, MLflow."""
    tracking = run.metrics.tracking if run.metrics else {}
    links = []
    tensorboard = tensorboard_dir(run)
    if tensorboard:  # a folder for `tensorboard --logdir`, not a page: shown to copy, and the page keeps
        # referring only to files beside it (a copied report or one served from a bucket has no broken links)
        links.append(f"TensorBoard: <code>{_e(tensorboard)}</code>")
    wandb = tracking.get("wandb")
    if isinstance(wandb, dict) and isinstance(wandb.get("url"), str):
        links.append(_link(wandb["url"], "W&B run"))
    mlflow = tracking.get("mlflow")
    if isinstance(mlflow, dict) and mlflow.get("run_id"):
        server = str(mlflow.get("tracking_uri") or "").rstrip("/")
        run_id, experiment_id = str(mlflow["run_id"]), str(mlflow.get("experiment_id") or "")
        if server.startswith(("http://", "https://")) and experiment_id:
            links.append(_link(f"{server}/#/experiments/{experiment_id}/runs/{run_id}", "MLflow run"))
        else:
            links.append(f"MLflow run <code>{_e(run_id)}</code> at <code>{_e(server)}</code>")
    return "<br>".join(links) or "-"


def _selection(selection: str | None) -> str:
    """How the CLIP filter chose the K kept images of a class (synthrec.workers.reduce.clip_filter)."""
    if selection == "random":
        return "drawn at random"
    if selection == "top":
        return "the top K by score"
    return str(selection or "-")


def _anchor(res: artifacts.FoundResource) -> str:
    return f"{'ds' if res.kind == 'SyntheticDataset' else 'ex'}-{res.name}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
