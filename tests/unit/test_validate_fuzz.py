"""Property: no resource file hurts ``synthrec validate`` or the planner. Generated and mutated resources
(the examples with values, keys and structure changed to hostile ones, and their YAML text corrupted) end
in exit status 0 or 1 with short error lines: no traceback, no hang, bounded memory; and whatever
validates also plans (stages, hashes, runs, tasks).

CI runs the ``ci`` Hypothesis profile (tests/conftest.py): derandomised, a fixed number of examples, so
every run checks the same 1,000 inputs (750 mutated resources, 250 corrupted files);
``HYPOTHESIS_PROFILE=dev`` explores new ones, four times as many.

Memory is measured (tracemalloc) on the corrupted files, where alias bombs and deep nesting are spliced
in: a small file that expands is the attack. Tracing costs about three times the validation itself, so
the mutated resources (built from Python values, no bombs) are checked for everything but that.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthrec import api, plan
from synthrec.cli import main
from synthrec.operator.planning import Context, Observed
from synthrec.operator.planning import plan as operator_plan
from synthrec.plan.tasks import ResourceRef

celpy.Environment()  # it raises the recursion limit: here, not while Hypothesis holds the old one
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MAX_LINE = 2100  # limits.MAX_MESSAGE_CHARS plus the file name and field path around it
MAX_PEAK_BYTES = 256 * 1024 * 1024  # Python allocations while one input is validated and planned
OPERATOR = Context(now=datetime(2026, 1, 1, tzinfo=UTC))


def _seeds() -> list[dict[str, Any]]:
    bodies = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        bodies += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    assert len(bodies) >= 5, "the examples are the seeds of the mutations"
    return bodies


SEEDS = _seeds()

HOSTILE_STRINGS = [
    "[/bold]",
    "[red]x[/red]",
    "../../../etc/passwd",
    "s3://bkt/./x/",
    "s3://bkt/a//b/",
    "s3://bkt/a/../b/",
    "file:///tmp/../x/",
    "file:///tmp/./x/",
    "file://relative/",
    "tiny://sd",
    "tiny://real/../x",
    "hf://org/name@../../x",
    "http://169.254.169.254/latest/",
    "a\x00b",
    "line\nbreak",
    "\u202eevil",
    "🐱" * 50,
    "x" * 5000,
    "{c}" * 200,
    "$(rm -rf /)",
    "%s%s%n",
    "-1",
    "1e309",
    "NaN",
    "",
    " ",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(HOSTILE_STRINGS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=12) | st.sampled_from(["name", "uri"]), inner, max_size=5),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        body = body[part]
    return body


@st.composite
def mutated_resources(draw: st.DrawFn) -> dict[str, Any]:
    """An example resource with 1-4 changes at random places: a hostile value, a deleted or unknown key,
    a list grown to thousands of items, a deeply nested value, a wrong type."""
    body = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(body) if p]
        path = draw(st.sampled_from(paths))
        parent, last = _parent(body, path), path[-1]
        op = draw(st.sampled_from(["value", "value", "delete", "unknown", "grow", "deep", "wrap"]))
        if op == "value":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "unknown" and isinstance(parent[last], dict):
            parent[last][draw(st.text(min_size=1, max_size=20))] = draw(values)
        elif op == "grow" and isinstance(parent[last], list) and parent[last]:
            parent[last] = parent[last] * draw(st.sampled_from([2, 50, 5000]))
        elif op == "deep":
            nested: Any = draw(scalars)
            for _ in range(draw(st.sampled_from([10, 60, 200]))):
                nested = [nested]
            parent[last] = nested
        elif op == "wrap":
            parent[last] = [parent[last]]
    return body


def _text(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


@st.composite
def corrupted_texts(draw: st.DrawFn) -> bytes:
    """The YAML text of an example with bytes inserted, deleted or repeated, or an alias bomb, deep
    nesting or invalid UTF-8 spliced in."""
    data = _text(draw(st.sampled_from(SEEDS))).encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "repeat", "splice"]))
        if op == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif op == "repeat":
            data = data[:at] + data[at : at + 40] * draw(st.sampled_from([2, 100])) + data[at:]
        else:
            snippet = draw(
                st.sampled_from(
                    [
                        b"\nx: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [" + b"*a, " * 10 + b"]\n"
                        b"z: &c [" + b"*b, " * 10 + b"]\nv: &d [" + b"*c, " * 10 + b"]\n"
                        b"w: [" + b"*d, " * 10 + b"]\n",
                        b"\nloop: &l [1, *l]\n",
                        b"[" * 3000 + b"]" * 3000,
                        b"\xff\xfe\xe9",
                        b"\n---\n",
                        b"\n- not a mapping\n",
                        b"\n{{{{\n",
                        b"\n!!python/object/apply:os.system ['echo owned']\n",
                    ]
                )
            )
            data = data[:at] + snippet + data[at:]
    return data


def _plan(body: dict[str, Any]) -> None:
    """What the operator and the local runner do with a valid resource."""
    res = api.parse_resource(body)
    ref = ResourceRef(kind=res.kind, name=res.metadata.name)
    if isinstance(res, api.SyntheticDataset):
        for stage in plan.dataset_stages(res.spec):
            plan.dataset_task(res.spec, stage.stage, ref)
    else:
        runs = plan.experiment_runs(res.spec)
        plan.referenced_datasets(res.spec)
        for run in runs[:3]:
            plan.train_task(res.spec, run, [], ref)
    served = copy.deepcopy(body)  # as the API server hands it to the operator
    served["metadata"] = {**body["metadata"], "namespace": "team", "uid": "uid-1", "generation": 1}
    actions = operator_plan(served, Observed(), OPERATOR)
    assert actions.status.get("conditions"), "the operator's first pass writes conditions"


@contextlib.contextmanager
def peak_memory(limit: int, what: str) -> Iterator[None]:
    """Fails when Python's allocations inside the block peak above ``limit`` bytes."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes at the peak for {what}"


def check(path: Path, data: bytes, *, memory: bool = False) -> None:
    path.write_bytes(data)
    err = io.StringIO()
    traced = peak_memory(MAX_PEAK_BYTES, f"a {len(data)}-byte file") if memory else contextlib.nullcontext()
    with traced:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["validate", str(path)])
        if status == 0:
            for body in yaml.safe_load_all(data.decode()):
                if body is not None:
                    _plan(body)
    assert status in (0, 1)
    lines = err.getvalue().splitlines()
    assert all(len(line) < MAX_LINE for line in lines), max(lines, key=len)[:300]
    assert "Traceback" not in err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# The module's fixture only gives a folder (nothing to reset between examples); inputs are slow on purpose.
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.slow
@settings(max_examples=settings().max_examples * 3, suppress_health_check=HEALTH)
@given(body=mutated_resources())
def test_mutated_resources_validate_or_fail_cleanly_and_valid_ones_plan(
    workdir: Path, body: dict[str, Any]
) -> None:
    check(workdir / "resource.yaml", _text(body).encode())


@pytest.mark.slow
@settings(suppress_health_check=HEALTH)
@given(data=corrupted_texts())
def test_corrupted_resource_files_fail_cleanly(workdir: Path, data: bytes) -> None:
    check(workdir / "corrupted.yaml", data, memory=True)
