"""Every asv benchmark runs once on tiny data; ``asv_bench/compare.py`` prints its table.

Each benchmark class is run over the full product of its ``params`` (not a zip of
them, which would leave most combinations untried), with ``setup`` / ``teardown``
around every method as asv does. A ``NotImplementedError`` from ``setup`` is asv's
"this combination does not apply": the combination is passed over, as asv does.
Sizes shrink through ``XENTSTREAM_ASV_TINY`` (read by ``benchmarks/common/sizes.py``).
Nothing here checks a timing: benchmarks measure, tests only check that they run.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import math
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ASV_BENCH = Path(__file__).resolve().parent.parent / "asv_bench"
if str(ASV_BENCH) not in sys.path:
    sys.path.insert(0, str(ASV_BENCH))

import benchmarks  # noqa: E402
import compare  # noqa: E402
from benchmarks import common  # noqa: E402

#: Method prefixes asv collects (mem_ is asv's object-size benchmark).
BENCHMARK_PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")
MODULES = sorted(
    info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name != "common"
)


def _classes() -> Iterator[tuple[str, type]]:
    for name in MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        for attr, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == module.__name__:
                if not attr.startswith("_"):
                    yield f"{name}.{attr}", cls


CLASSES = dict(_classes())


def _methods(cls: type) -> list[str]:
    return sorted(
        name
        for name in dir(cls)
        if name.startswith(BENCHMARK_PREFIXES) and callable(getattr(cls, name))
    )


def _combinations(cls: type) -> list[tuple[Any, ...]]:
    params = getattr(cls, "params", None)
    if not params:
        return [()]
    if not isinstance(params[0], list | tuple):
        params = [params]  # asv's rule: a flat list is the values of one parameter
    return list(itertools.product(*params))


def _check_timeraw(method: Any, code: Any) -> None:
    statement, setup = code if isinstance(code, tuple) else (code, "")
    compile(setup, "<timeraw setup>", "exec")
    compile(statement, "<timeraw statement>", "exec")
    if getattr(method, "compiles_kernels", False):
        return  # a cold compilation takes tens of seconds: compiling the code must do
    done = subprocess.run(
        [sys.executable, "-c", f"{setup}\n{statement}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _run_once(instance: Any, name: str, args: tuple[Any, ...]) -> None:
    method = getattr(instance, name)
    result = method(*args)
    if name.startswith("track_"):
        assert isinstance(result, int | float) and math.isfinite(result), (name, args, result)
    elif name.startswith("timeraw_"):
        _check_timeraw(method, result)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(common.TINY_ENV, "1")
    monkeypatch.chdir(tmp_path)  # setup_cache may write files in the working directory


def test_every_module_has_benchmarks() -> None:
    found = {qualified.split(".")[0] for qualified in CLASSES}
    assert found == set(MODULES)
    assert {"kernels", "metrics", "feeders", "startup", "peers"} <= found


@pytest.mark.parametrize("qualified", sorted(CLASSES))
def test_class_has_benchmark_methods(qualified: str) -> None:
    cls = CLASSES[qualified]
    assert _methods(cls), f"{qualified} has no time_/peakmem_/track_/timeraw_ method"
    # asv never collects test_* / bench_* methods (the pandas pitfall)
    assert not [n for n in dir(cls) if n.startswith(("test_", "bench_"))], qualified


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("qualified", sorted(CLASSES))
def test_benchmark_runs_once(qualified: str) -> None:
    cls = CLASSES[qualified]
    cache = ()
    if hasattr(cls, "setup_cache"):
        cache = (cls().setup_cache(),)  # asv passes it first to setup, methods, teardown
    applicable = 0
    for combination in _combinations(cls):
        args = (*cache, *combination)
        for name in _methods(cls):
            instance = cls()
            setup = getattr(instance, "setup", None)
            try:
                if setup is not None:
                    setup(*args)
            except NotImplementedError:
                continue  # asv's way of saying this combination does not apply
            applicable += 1
            try:
                _run_once(instance, name, args)
            finally:
                teardown = getattr(instance, "teardown", None)
                if teardown is not None:
                    teardown(*args)
    assert applicable, f"every parameter combination of {qualified} was skipped"


def test_tiny_sizes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(common.TINY_ENV, "1")
    tiny = common.elements()
    monkeypatch.delenv(common.TINY_ENV)
    assert tiny < common.elements()


def test_compare_times_each_side_in_its_own_process(tmp_path: Path) -> None:
    """A tiny run of three cases (a kernel, the 32-row update, a Parquet file): the table,
    the JSON and the README table made from it. Every case's data and peers are run by
    the asv benchmarks above; this checks compare.py's processes, rounds and output."""
    import readme_table

    out = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ASV_BENCH / "compare.py"),
            "--tiny",
            "--rounds=2",
            "--cases",
            "logits-hard-C10",
            "update-32rows",
            "parquet-logits",
            f"--json={out}",
            f"--markdown={tmp_path / 'run.md'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run.md").read_text() == done.stdout
    lines = done.stdout.splitlines()
    assert any(line.startswith("machine: ") for line in lines), done.stdout
    assert any("load average" in line for line in lines), done.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    assert "peer / ours" in lines[header] and "read-BW fraction" in lines[header]

    result = json.loads(out.read_text())
    rows = {(row["case"], row["peer"]): row for row in result["rows"]}
    expected = {
        (key, peer)
        for key in ("logits-hard-C10", "update-32rows-C10", "parquet-logits-C10")
        for peer in common.CASES[key].peers
        if peer in compare.DEFAULT_PEERS
    }
    assert set(rows) == expected
    for (_, peer), row in rows.items():
        if not common.PEERS[peer].available():
            assert row["status"] == "not installed"
            assert any(peer in note for note in result["notes"])
            continue
        assert row["status"] == "ok", row  # the peer agreed with xentstream
        assert math.isclose(row["peer_value"], row["ours_value"], rel_tol=1e-4)
        assert row["ratio"] == pytest.approx(row["peer_s"] / row["ours_s"])
        assert row["ratio"] > 0 and row["read_fraction"] > 0
    assert rows[("update-32rows-C10", "torch-mean")]["calls"] == common.TINY_SMALL_BATCH_CALLS

    generated = readme_table.table([result, result])
    assert "| logits, hard labels, C=10 | torch |" in generated
    assert "(per call)" in generated


def test_readme_table_is_generated_from_the_committed_runs() -> None:
    """No hand-typed figures: README's table is what readme_table.py makes of the runs
    committed in docs/benchmarks/."""
    import readme_table

    assert readme_table.main(["--check"]) == 0


def test_compare_refuses_a_peer_that_disagrees() -> None:
    import compare

    assert compare.agrees(1.0, 1.0 + 1e-6, rtol=1e-4)
    assert not compare.agrees(1.0, 1.01, rtol=1e-4)
