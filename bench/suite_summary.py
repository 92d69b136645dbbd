"""The GPU suite's summary: the headline ratios from the benches' JSON lines (bench/gpu_suite.sh), each a
median of per-round ratios with its spread, beside the goal of issue 16.

    python bench/suite_summary.py gpu_suite.jsonl

Prints a table, then one line of JSON; exits 1 when a headline is missing (a bench that did not report).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (headline, bench, where its ratio is in that bench's JSON, goal, what the goal says)
HEADLINES: tuple[tuple[str, str, tuple[str, ...], float, str], ...] = (
    ("generation / FLOP ceiling (datasheet)", "generate_gpu", ("share_of_ceiling",), 0.45, ">= 45 %"),
    (
        "generation / FLOP ceiling (measured matmul)",
        "generate_gpu",
        ("share_of_measured_ceiling",),
        0.45,
        ">= 45 %",
    ),
    ("generation end to end / model only", "generate_gpu", ("end_to_end_over_model_only",), 0.95, ">= 0.95"),
    ("filtering end to end / encoder only", "features_gpu", ("end_to_end_over_encoder",), 0.80, ">= 0.80"),
    (
        "tuning per epoch: re-encoding / cached",
        "train_features",
        ("results", "-1", "reencode_over_cached_per_epoch"),
        50.0,
        ">= 50x",
    ),
)


def _find(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if doc is None:
            return None
        doc = doc[int(key)] if isinstance(doc, list) else doc.get(key)
    return doc


def summarise(lines: list[str]) -> dict[str, Any]:
    benches = {}
    for line in lines:
        if line.strip():
            doc = json.loads(line)
            benches[doc["bench"]] = doc
    smoke = any(doc.get("smoke") for doc in benches.values())
    rows = []
    for name, bench, path, goal, goal_text in HEADLINES:
        ratio = _find(benches.get(bench), path)
        row: dict[str, Any] = {
            "headline": name,
            "goal": goal_text,
            "ratio": ratio,
            "reported": bench in benches,
        }
        if ratio is not None:
            row["meets_goal"] = None if smoke else ratio["median"] >= goal
        rows.append(row)
    device = _find(benches.get("generate_gpu"), ("device",))
    return {"bench": "gpu_suite", "smoke": smoke, "device": device, "headlines": rows}


def main(argv: list[str]) -> int:
    summary = summarise(Path(argv[0]).read_text().splitlines())
    print(
        f"GPU suite on {summary['device']}"
        + (" (smoke: code paths only, no goal judged)" if summary["smoke"] else "")
    )
    missing = 0
    for row in summary["headlines"]:
        r = row["ratio"]
        if r is None and row["reported"]:  # the datasheet share on a device without a table entry
            print(f"  {row['headline']:45s} n/a (no datasheet peak for this device: --peak-tflops)")
            continue
        if r is None:
            print(f"  {row['headline']:45s} missing (its bench failed)")
            missing += 1
            continue
        verdict = "" if row["meets_goal"] is None else ("meets" if row["meets_goal"] else "BELOW")
        print(
            f"  {row['headline']:45s} {r['median']:9.4g}  ({r['min']:.4g}-{r['max']:.4g}, "
            f"{len(r['rounds'])} rounds)  goal {row['goal']} {verdict}"
        )
    print(json.dumps(summary))
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
