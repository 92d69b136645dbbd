"""The benchmarks are honest and runnable: each headline is the median of per-round ratios (warm-up left
out, order alternating, at least 3 rounds), the FLOP ceiling tells the H200 NVL from the H200 SXM, and
the one GPU suite runs end to end in --smoke mode on a CPU with every headline reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from rounds import paired_rounds  # noqa: E402


def test_the_headline_is_the_median_of_per_round_ratios_after_an_uncounted_warm_up() -> None:
    calls: list[str] = []
    # one side speeds up with the host's load, the other slows: ratios per round are 2, 1, 4 (warm-up: 100)
    ours = iter([100.0, 2.0, 1.0, 8.0])
    base = iter([1.0, 1.0, 1.0, 2.0])

    def side(name: str, values: object) -> object:
        def run() -> float:
            calls.append(name)
            return next(values)  # type: ignore[call-overload]

        return run

    ratio = paired_rounds(
        "ours / base",
        {"ours": side("ours", ours), "base": side("base", base)},
        lambda v: v["ours"] / v["base"],
    )
    assert ratio.per_round == [2.0, 1.0, 4.0]  # the warm-up's 100 is not counted
    assert ratio.median == 2.0  # not median(ours) / median(base) = 2.0 / 1.0 by luck: see below
    assert ratio.spread() == (1.0, 4.0) and "median of 3 rounds, 1-4" in ratio.text()
    assert calls == ["ours", "base", "base", "ours", "ours", "base", "base", "ours"]  # alternating order

    ours2, base2 = iter([0.0, 3.0, 1.0, 9.0]), iter([1.0, 1.0, 2.0, 3.0])
    per_round = paired_rounds(
        "r", {"a": lambda: next(ours2), "b": lambda: next(base2)}, lambda v: v["a"] / v["b"]
    )
    assert per_round.median == 3.0 and per_round.per_round == [3.0, 0.5, 3.0]  # median of sides: 3/2


def test_fewer_than_three_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 rounds"):
        paired_rounds("r", {"a": lambda: 1.0}, lambda v: 1.0, rounds=2)


def test_the_flop_ceiling_tells_the_h200_nvl_from_the_h200_sxm() -> None:
    from generate_gpu import peak_tflops

    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA H200 NVL") == 835.5
    assert peak_tflops("NVIDIA GH200 480GB") == 989.4
    assert peak_tflops("NVIDIA H100 NVL") == 835.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("some new card") is None


@pytest.mark.slow
def test_the_gpu_suite_runs_in_smoke_mode_on_a_cpu_and_reports_every_headline(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--smoke"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["smoke"] is True and summary["device"].startswith("cpu")
    rows = {row["headline"]: row for row in summary["headlines"]}
    assert rows["generation / FLOP ceiling (datasheet)"]["ratio"] is None  # no datasheet peak for a CPU
    for name in (
        "generation / FLOP ceiling (measured matmul)",
        "generation end to end / model only",
        "filtering end to end / encoder only",
        "tuning per epoch: re-encoding / cached",
    ):
        ratio = rows[name]["ratio"]
        assert ratio is not None, name
        assert (
            len(ratio["rounds"]) >= 3 and ratio["min"] <= ratio["median"] <= ratio["max"] and ratio["min"] > 0
        )
        assert rows[name]["meets_goal"] is None  # smoke mode judges no goal
    benches = [json.loads(line)["bench"] for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
    assert benches == ["generate_gpu", "features_gpu", "train_features"]
