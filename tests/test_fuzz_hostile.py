"""Fuzzing the trust boundary (issue 17): state files, checkpoints, CLI arguments.

hypothesis mutates valid state files and checkpoints (a value replaced by any JSON
value, a key dropped or added, a count scaled) and draws hostile command lines.
Every outcome must be one of:

- a clean refusal: ``ValueError`` (a CLI exit 2 with one line), a bounded message,
  nothing changed;
- an acceptance that is correct: a state file read back exactly as written, a
  resumed run bitwise equal to an uninterrupted one, a CLI result equal to the API's;

and never a traceback, a hang, or unbounded time or memory. ``OUTCOMES`` counts them
(printed with ``-s``), which gives the issue's figures.
"""

from __future__ import annotations

import collections
import copy
import importlib
import json
import math
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_support import report_bits

import xentstream as xs
from xentstream.cli import main

evaluate_module = importlib.import_module("xentstream.evaluation")

OUTCOMES: collections.Counter[str] = collections.Counter()
#: Bounds of one example: far above what a real file needs, far below a blow-up.
MAX_SECONDS = 5.0
MAX_BYTES = 64 << 20
MAX_MESSAGE = 600
#: The same examples on every run (CI must not pass or fail by luck; a random run in a
#: fresh clone found the label-counts hole that ``test_hostile`` now pins down), unless
#: ``XENTSTREAM_FUZZ_RANDOM`` is set: then each run explores new inputs.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize="XENTSTREAM_FUZZ_RANDOM" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes() -> Any:
    yield
    print("\nfuzz outcomes:", dict(sorted(OUTCOMES.items())))


# -- mutations of a JSON document ----------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**62, 2**63 - 1, 2**63, 2**64, 10**300])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["1", " 1_000 ", "-0", "+5", "1e3", "0x10", "9" * 700, "nan", "-" + "9" * 40])
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (the root excluded)."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def _scale_decimal(value: Any, factor: int) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return str(int(value) * factor)
    if isinstance(value, int) and not isinstance(value, bool):
        return value * factor
    return value


@st.composite
def mutated(
    draw: st.DrawFn, document: dict[str, Any], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``document`` with one to three mutations at paths not passing through ``skip``."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if not set(skip) & set(map(str, p))]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "scale", "add", "reorder", "keep"]))
        if action == "keep":  # the document as written: must be accepted
            continue
        if action == "reorder":  # the same JSON object, keys in another order
            if isinstance(parent, dict):
                items = list(parent.items())[::-1]
                parent.clear()
                parent.update(items)
        elif action == "replace":
            parent[key] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "scale":
            parent[key] = _scale_decimal(parent[key], draw(st.sampled_from([-1, 0, 2, 10**6])))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
        else:
            parent.append(draw(JSON_VALUES))
    return document


def _bounded(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
    """Call ``function``; assert its time and peak memory stay bounded."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return function(*args, **kwargs), None
    except Exception as error:  # judged by the caller
        return None, error
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < MAX_SECONDS, f"took {elapsed:.1f} s"
        assert peak < MAX_BYTES, f"peak {peak >> 20} MiB"


def _clean_refusal(error: BaseException) -> None:
    assert type(error) is ValueError, f"{type(error).__name__}: {error}"
    text = str(error)
    assert "\n" not in text and len(text) < MAX_MESSAGE, text[:2000]


# -- state files ---------------------------------------------------------------------------


def _states() -> list[dict[str, Any]]:
    rng = np.random.default_rng(2024)
    probs, labels = rng.dirichlet(np.ones(3), 40), rng.integers(0, 3, 40)
    weights = rng.random(40)
    binary, ml = rng.random(40), rng.random((40, 2))
    metrics = [
        xs.CrossEntropy(per_class=True, window=5).update(probs, labels, weights),
        xs.CrossEntropy(class_weight=[1.0, 2.0, 0.5], ignore_index=1).update(probs, labels),
        xs.CrossEntropy(num_classes=3, per_class=True),
        xs.BinaryCrossEntropy(pos_weight=2.0).update(binary, labels == 0),
        xs.MultiLabelCrossEntropy(per_label=True).update(ml, ml > 0.5),
    ]
    return [json.loads(json.dumps(m.state_dict())) for m in metrics]


STATES = _states()


def _normalized(state: dict[str, Any]) -> Any:
    return json.loads(json.dumps(state, allow_nan=True))


def _state_differences(loaded: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Where a state read back differs from what was written (a per-class metric before
    its first row may gain explicit zero class sums)."""
    loaded, given = _normalized(loaded), _normalized(given)
    if given.get("class_sums") is None and loaded.get("class_sums") is not None:
        loaded = {**loaded, "class_sums": None, "class_counts": None}
    return [
        f"{key}: {str(given.get(key))[:200]} read as {str(loaded.get(key))[:200]}"
        for key in sorted(set(loaded) | set(given))
        if loaded.get(key) != given.get(key)
    ]


@FUZZ
@given(data=st.data(), index=st.integers(0, len(STATES) - 1))
def test_fuzzed_state_files_are_refused_or_read_exactly(data: st.DataObject, index: int) -> None:
    state = data.draw(mutated(STATES[index]))
    text = json.dumps(state, allow_nan=True)
    metric, error = _bounded(xs.Metric.from_state_dict, json.loads(text))
    OUTCOMES["state: tried"] += 1
    if error is not None:
        _clean_refusal(error)
        OUTCOMES["state: refused cleanly"] += 1
        return
    # accepted: it must mean exactly what it says, and everything after must work
    differences = _state_differences(metric.state_dict(), state)
    assert not differences, f"accepted, but read as something else: {differences}"
    report, error = _bounded(metric.compute)
    assert error is None, repr(error)
    json.dumps(report.to_dict(), allow_nan=True)
    twin = xs.Metric.from_state_dict(json.loads(text))
    _, error = _bounded(metric.merge, twin)
    if error is not None:
        _clean_refusal(error)
    OUTCOMES["state: accepted, read exactly"] += 1


# -- checkpoints ----------------------------------------------------------------------------

N_ROWS, BATCH_ROWS = 600, 100


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bool, Any]]:
    """A Parquet file, and per grouping (by= or not) a checkpoint after 2 batches and the
    uninterrupted result."""
    rng = np.random.default_rng(7)
    frame = pl.DataFrame(
        {
            "p": rng.dirichlet(np.ones(3), N_ROWS),
            "y": rng.integers(0, 3, N_ROWS),
            "g": rng.integers(0, 3, N_ROWS),
        }
    )
    path = tmp_path_factory.mktemp("fuzz") / "t.parquet"
    frame.write_parquet(path)
    saved = {}
    interval = evaluate_module.CHECKPOINT_INTERVAL_S
    evaluate_module.CHECKPOINT_INTERVAL_S = -1.0
    try:
        for grouped in (False, True):
            options = _options(grouped)
            checkpoint = path.with_name(f"c{grouped}.ckpt")
            running = xs.stream(path, xs.CrossEntropy(), checkpoint=checkpoint, **options)
            next(running)
            next(running)
            running.close()
            expected = xs.evaluate(path, xs.CrossEntropy(), **options)
            saved[grouped] = (json.loads(checkpoint.read_text()), _bits(expected))
    finally:
        evaluate_module.CHECKPOINT_INTERVAL_S = interval
    return path, saved


def _options(grouped: bool) -> dict[str, Any]:
    return {
        "preds": "p",
        "target": "y",
        "batch_rows": BATCH_ROWS,
        **({"by": "g"} if grouped else {}),
    }


def _bits(result: Any) -> Any:
    if isinstance(result, xs.GroupedReport):
        return report_bits(result.overall), {k: report_bits(r) for k, r in result.groups.items()}
    return report_bits(result)


#: Content (exact sums, group keys) is guarded by the checksum alone: an editor who
#: recomputes it can write any consistent state, as with any unsigned file, so
#: re-hashed mutations leave it and aim at the structure and the counts.
_CONTENT_KEYS = ("sums", "class_sums", "label_counts", "window_rows", "key", "sha256")


@settings(FUZZ, max_examples=60)
@given(data=st.data(), grouped=st.booleans(), rehash=st.booleans())
def test_fuzzed_checkpoints_are_refused_or_resume_exactly(
    table: tuple[Path, dict[bool, Any]],
    tmp_path_factory: Any,
    data: Any,
    grouped: bool,
    rehash: bool,
) -> None:
    path, saved = table
    original, expected = saved[grouped]
    checkpoint = data.draw(mutated(original, _CONTENT_KEYS if rehash else ()))
    if rehash:
        checkpoint["sha256"] = evaluate_module._digest(checkpoint)
    target = tmp_path_factory.mktemp("ckpt") / "c.ckpt"
    target.write_text(json.dumps(checkpoint, allow_nan=True))
    before = target.read_bytes()
    metric = xs.CrossEntropy()
    result, error = _bounded(
        xs.evaluate, path, metric, checkpoint=target, progress=False, **_options(grouped)
    )
    OUTCOMES["checkpoint: tried"] += 1
    if error is not None:
        _clean_refusal(error)
        assert target.read_bytes() == before and metric.rows_seen == 0
        OUTCOMES["checkpoint: refused cleanly"] += 1
        return
    assert _bits(result) == expected, "resumed from an edited checkpoint to another result"
    OUTCOMES["checkpoint: accepted, exact result"] += 1


# -- command-line arguments -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(11)
    probs, labels = rng.dirichlet(np.ones(3), 200), rng.integers(0, 3, 200)
    pl.DataFrame({"p": probs, "y": labels}).write_parquet(root / "t[1].parquet")
    (root / "dir").mkdir()
    (root / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    xs.CrossEntropy().update(probs, labels).save(root / "s.json")
    return {"root": root, "probs": probs, "labels": labels}


_HOSTILE = [
    "", "-", "--", "1e30", "-1", "0", "nan", "inf", "1" + "0" * 40, "9" * 5000, "a,b",
    "[", "*", "?", "{dir}", "{dir}/x", "{root}/missing.parquet", "{root}/deep.json",
    "{root}/s.json", "--no-such-flag", "\x00", "é", "1,2,nan", ",,,",
]  # fmt: skip
_OPTIONS = {
    "--ignore-index": st.one_of(st.integers(-3, 4).map(str), st.sampled_from(_HOSTILE)),
    "--label-smoothing": st.one_of(
        st.sampled_from(["0.1", "0", "1", "1.5", "-0.1", "nan"]), st.sampled_from(_HOSTILE)
    ),
    "--class-weight": st.one_of(
        st.sampled_from(["1,2,3", "1,1", "0,0,0", "1,-1,1", "1,inf,1", "1e308,1e308,1e308"]),
        st.sampled_from(_HOSTILE),
    ),
    "--batch-rows": st.one_of(st.integers(-2, 300).map(str), st.sampled_from(_HOSTILE)),
    "--checkpoint": st.sampled_from(["{dir}", "{root}/s.json", "{root}/deep.json"]),
    "--output": st.sampled_from(["{dir}", "{dir}/missing/x.json"]),
    "--classes": st.sampled_from(["a,b", "a,b,c", "a,a,a", ""]),
    "--sample-weight": st.sampled_from(["p", "y", "missing"]),
    "--by": st.sampled_from(["p", "y", "missing"]),
}


def _expand(text: str, files: dict[str, Any]) -> str:
    return text.replace("{dir}", str(files["root"] / "dir")).replace("{root}", str(files["root"]))


def _reference(options: dict[str, str], files: dict[str, Any]) -> float | None:
    """The API's loss for what the options ask (None if the API refuses them too)."""
    weights = None
    if options.get("--sample-weight", "y") != "y" or options.get("--by", "y") != "y":
        return None  # "p" holds arrays, "missing" is no column
    if options.get("--classes", "a,b,c") != "a,b,c":
        return None  # three classes need three distinct names
    if "--sample-weight" in options:
        weights = files["labels"].astype(np.float64)
    try:
        kwargs: dict[str, Any] = {}
        if "--ignore-index" in options:
            kwargs["ignore_index"] = int(options["--ignore-index"])
        if "--label-smoothing" in options:
            kwargs["label_smoothing"] = float(options["--label-smoothing"])
        if "--class-weight" in options:
            kwargs["class_weight"] = [float(v) for v in options["--class-weight"].split(",")]
        metric = xs.CrossEntropy(**kwargs).update(files["probs"], files["labels"], weights)
        return metric.compute().loss
    except ValueError:
        return None


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_fuzzed_command_lines_exit_0_correctly_or_2_with_one_line(
    cli_files: dict[str, Any], capsys: pytest.CaptureFixture[str], data: st.DataObject
) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(_OPTIONS)), max_size=3, unique=True))
    options = {name: _expand(data.draw(_OPTIONS[name]), cli_files) for name in names}
    argv = [
        "evaluate", str(cli_files["root"] / "t[1].parquet"), "--preds", "p", "--target", "y",
        "--format", "json", "--no-progress",
    ]  # fmt: skip
    for name, value in options.items():
        argv += [name, value]
    if data.draw(st.booleans()):  # one hostile token anywhere
        argv.insert(
            data.draw(st.integers(0, len(argv))),
            _expand(data.draw(st.sampled_from(_HOSTILE)), cli_files),
        )
    capsys.readouterr()
    status, error = _bounded(main, argv)
    out, err = capsys.readouterr()
    OUTCOMES["cli: tried"] += 1
    assert error is None, f"traceback: {type(error).__name__}: {error}"
    assert status in (0, 2)
    if status == 2:
        assert len(err.splitlines()) == 1 and err.startswith("xentstream: error: ")
        assert len(err) < 600
        OUTCOMES["cli: exit 2, one line"] += 1
        return
    # exit 0: only for a run the API agrees with, bit for bit
    assert not {"--checkpoint", "--output"} & set(options), (argv, err)
    expected = _reference(options, cli_files)
    assert expected is not None, argv
    result = json.loads(out)
    loss = result["overall"]["loss"] if "--by" in options else result["loss"]
    assert (loss is None and math.isnan(expected)) or loss == expected, (argv, loss, expected)
    OUTCOMES["cli: exit 0, correct"] += 1


def test_the_fuzzers_explore_both_outcomes() -> None:
    # after the fuzz tests of this module: each kind saw refusals and acceptances,
    # so none of them passes by rejecting (or accepting) everything
    if not OUTCOMES:
        pytest.fail("run with the fuzz tests of this module")
    for kind in ("state", "checkpoint", "cli"):
        assert OUTCOMES[f"{kind}: tried"] > 0
        accepted = [
            k for k in OUTCOMES if k.startswith(kind) and ("accepted" in k or "exit 0" in k)
        ]
        refused = [k for k in OUTCOMES if k.startswith(kind) and ("refused" in k or "exit 2" in k)]
        assert accepted and refused, dict(OUTCOMES)
