"""Checkpoints (SPEC section 5): a killed run resumes and ends bitwise equal.

``evaluate(..., checkpoint=path)`` saves the exact state and the rows consumed;
a rerun with the same arguments resumes there; a checkpoint of another run (other
metric config, other columns, changed files) is refused with a clear error.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from stream_support import (
    BATCH_ROWS,
    N_ROWS,
    WIDE,
    Data,
    child_env,
    full_frame,
    make_data,
    report_bits,
    write,
)

import xentstream as xs

evaluate_module = importlib.import_module("xentstream.evaluation")


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data(seed=31)


@pytest.fixture(scope="module")
def frame(data: Data) -> pl.DataFrame:
    return full_frame(data)


@pytest.fixture
def parquet(tmp_path: Path, frame: pl.DataFrame) -> Path:
    return write(frame, tmp_path / "table.parquet")


@pytest.fixture
def every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write the checkpoint after every batch."""
    monkeypatch.setattr(evaluate_module, "CHECKPOINT_INTERVAL_S", 0.0)


def result_bits(result: xs.Report | xs.GroupedReport) -> Any:
    """Every field as bits; for grouped results every group too (keys by repr: NaN-safe)."""
    if isinstance(result, xs.Report):
        return report_bits(result)
    groups = [(repr(key), report_bits(report)) for key, report in result.groups.items()]
    return {"overall": report_bits(result.overall), "by": result.by, "groups": groups}


def overall(result: xs.Report | xs.GroupedReport) -> xs.Report:
    return result.overall if isinstance(result, xs.GroupedReport) else result


def read_checkpoint(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def interrupt_after(batches: int, source: Any, metric: xs.Metric, **options: Any) -> int:
    """Run ``stream`` for ``batches`` batches, then stop as a killed run would."""
    running = xs.stream(source, metric, **options)
    for _ in range(batches):
        report = next(running)
    running.close()
    return overall(report).count + overall(report).ignored


def test_checkpoint_file_is_versioned_json(parquet: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    options = {"preds": "p", "target": "y", "batch_rows": BATCH_ROWS}
    result = xs.evaluate(parquet, xs.CrossEntropy(), checkpoint=path, **options)
    saved = read_checkpoint(path)
    assert saved["format"] == "xentstream.checkpoint"
    assert saved["version"] == evaluate_module.CHECKPOINT_VERSION == 3
    assert saved["rows_consumed"] == N_ROWS
    assert saved["fingerprint"]["metric"] == "CrossEntropy"
    assert saved["fingerprint"]["source"]["files"][0]["path"] == str(parquet.resolve())
    assert saved["metric"]["format"] == "xentstream.metric"
    restored = xs.Metric.from_state_dict(saved["metric"]).compute()
    assert report_bits(restored) == report_bits(result)
    # a rerun of a finished run reads everything from the checkpoint: nothing counted twice
    again = xs.evaluate(parquet, xs.CrossEntropy(), checkpoint=path, **options)
    assert report_bits(again) == report_bits(result)
    plain = xs.evaluate(parquet, xs.CrossEntropy(), **options)
    assert report_bits(plain) == report_bits(result)


@pytest.mark.usefixtures("every_batch")
@pytest.mark.parametrize(
    ("metric", "options"),
    [
        (lambda: xs.CrossEntropy(per_class=True), {"preds": "p", "target": "y"}),
        (lambda: xs.CrossEntropy(), {"preds": WIDE, "target": "label", "sample_weight": "w"}),
        (lambda: xs.CrossEntropy(), {"preds": "p", "target": "y", "by": ["g", "h"]}),
        (lambda: xs.BinaryCrossEntropy(), {"preds": "b_p", "target": "b_t", "by": "h"}),
        (lambda: xs.MultiLabelCrossEntropy(per_label=True), {"preds": "ml_p", "target": "ml_t"}),
    ],
    ids=["array", "wide-weighted", "by-two", "binary-by", "multilabel"],
)
def test_rerun_resumes_and_ends_bitwise_equal(
    metric, options: dict[str, Any], parquet: Path, tmp_path: Path
) -> None:
    uninterrupted = xs.evaluate(parquet, metric(), batch_rows=BATCH_ROWS, **options)
    path = tmp_path / "run.ckpt"
    consumed = interrupt_after(
        2, parquet, metric(), checkpoint=path, batch_rows=BATCH_ROWS, **options
    )
    assert consumed == 2 * BATCH_ROWS
    assert read_checkpoint(path)["rows_consumed"] == consumed
    # the rerun (another batch size: the split does not matter) starts where it stopped
    resumed = list(xs.stream(parquet, metric(), checkpoint=path, batch_rows=500, **options))
    assert overall(resumed[0]).count == consumed + 500
    assert len(resumed) == -(-(N_ROWS - consumed) // 500)
    assert result_bits(resumed[-1]) == result_bits(uninterrupted)
    assert read_checkpoint(path)["rows_consumed"] == N_ROWS
    if isinstance(uninterrupted, xs.GroupedReport):
        assert list(resumed[-1].groups) == list(uninterrupted.groups)


@pytest.mark.usefixtures("every_batch")
def test_resume_iterable_and_npy_sources(tmp_path: Path, data: Data, frame: pl.DataFrame) -> None:
    def batches(size: int = 300):
        for start in range(0, N_ROWS, size):
            yield data.probs[start : start + size], data.labels[start : start + size]

    expected = xs.evaluate(batches(), xs.CrossEntropy())
    path = tmp_path / "iter.ckpt"
    assert (
        interrupt_after(3, batches(), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream")
        == 900
    )
    resumed = list(
        xs.stream(batches(), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream")
    )
    assert resumed[0].count == 1_200
    assert report_bits(resumed[-1]) == report_bits(expected)

    # resumed inside a batch: the rerun's batches of 400 are cut at row 900
    path = tmp_path / "iter-cut.ckpt"
    interrupt_after(3, batches(), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream")
    resumed = list(
        xs.stream(batches(400), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream")
    )
    assert resumed[0].count == 1_200
    assert report_bits(resumed[-1]) == report_bits(expected)

    # DataFrame batches with groups and list-valued batches, cut the same way
    def frames(size: int):
        return (frame.slice(start, size) for start in range(0, N_ROWS, size))

    options = {"preds": "p", "target": "y", "by": "h", "checkpoint": tmp_path / "frames.ckpt"}
    options["checkpoint_key"] = "frames"
    grouped = xs.evaluate(frames(N_ROWS), xs.CrossEntropy(), preds="p", target="y", by="h")
    interrupt_after(2, frames(700), xs.CrossEntropy(), **options)
    resumed = xs.evaluate(frames(1_000), xs.CrossEntropy(), **options)
    assert result_bits(resumed) == result_bits(grouped)

    def lists(size: int):
        return [
            (data.probs[a : a + size].tolist(), data.labels[a : a + size].tolist())
            for a in range(0, N_ROWS, size)
        ]

    path = tmp_path / "lists.ckpt"
    assert (
        interrupt_after(3, lists(300), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream")
        == 900
    )
    resumed = xs.evaluate(
        lists(600), xs.CrossEntropy(), checkpoint=path, checkpoint_key="stream"
    )  # cut at 900
    assert report_bits(resumed) == report_bits(expected)


@pytest.mark.usefixtures("every_batch")
def test_resume_with_temporal_and_nan_group_keys(tmp_path: Path, frame: pl.DataFrame) -> None:
    """Group keys of every common type survive the checkpoint's JSON."""
    groups = frame["g"].to_list()
    day, at = datetime.date(2024, 3, 1), datetime.datetime(2024, 3, 1, 12, 30)
    keyed = frame.with_columns(
        pl.Series("day", [day + datetime.timedelta(days=g) for g in groups]),
        pl.Series("at", [at + datetime.timedelta(hours=g) for g in groups]),
        pl.Series("score", [float("nan") if g == 0 else g * 0.25 for g in groups]),
    )
    by = ["day", "at", "score", "h"]
    expected = xs.evaluate(keyed, xs.CrossEntropy(), preds="p", target="y", by=by, batch_rows=600)
    path = tmp_path / "keys.ckpt"
    interrupt_after(
        2, keyed, xs.CrossEntropy(), preds="p", target="y", by=by, batch_rows=600, checkpoint=path
    )
    resumed = xs.evaluate(
        keyed, xs.CrossEntropy(), preds="p", target="y", by=by, batch_rows=600, checkpoint=path
    )
    assert len(resumed.groups) == len(expected.groups) == keyed.select(by).n_unique()
    assert result_bits(resumed) == result_bits(expected)
    key = next(iter(resumed.groups))
    assert type(key[0]) is datetime.date and type(key[1]) is datetime.datetime
    assert key in expected.groups or repr(key) == repr(next(iter(expected.groups)))
    as_json = json.loads(json.dumps(resumed.to_dict()))  # JSON-able, temporal keys as ISO text
    assert as_json["groups"][0]["key"][:2] == [key[0].isoformat(), key[1].isoformat()]


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("every_batch")
def test_checkpoint_of_another_run_is_refused(parquet: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    interrupt_after(
        2, parquet, xs.CrossEntropy(), preds="p", target="y", checkpoint=path, batch_rows=BATCH_ROWS
    )
    saved = path.read_bytes()

    def refused(metric: xs.Metric, pattern: str, source: Any = parquet, **options: Any) -> None:
        arguments = {"preds": "p", "target": "y", **options}
        with pytest.raises(ValueError, match=pattern):
            xs.evaluate(source, metric, checkpoint=path, **arguments)
        assert path.read_bytes() == saved  # left as it was

    other_run = r"written for another run \(the arguments differ: {}\); delete it"
    refused(xs.CrossEntropy(label_smoothing=0.1), other_run.format("config"))
    refused(xs.CrossEntropy(input="logprobs"), other_run.format("config"))
    refused(xs.CrossEntropy(), other_run.format("columns"), preds=WIDE)
    refused(xs.CrossEntropy(), other_run.format("columns"), sample_weight="w")
    refused(xs.CrossEntropy(), other_run.format("columns"), by="g")
    refused(
        xs.BinaryCrossEntropy(),
        other_run.format("columns, config, metric"),
        preds="b_p",
        target="b_t",
    )
    # the same arguments on changed data
    changed = make_data(seed=32)
    write(full_frame(changed), parquet)
    refused(xs.CrossEntropy(), r"written for another run \(the source files changed: source\)")


def test_malformed_checkpoints_are_refused(parquet: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    options = {"preds": "p", "target": "y", "checkpoint": path}
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"not a valid"):
        xs.evaluate(parquet, xs.CrossEntropy(), **options)
    xs.CrossEntropy().update([[0.5, 0.5]], [0]).save(path)  # a metric state, not a checkpoint
    with pytest.raises(ValueError, match=r"not an xentstream checkpoint of version 2 or 3"):
        xs.evaluate(parquet, xs.CrossEntropy(), **options)
    path.unlink()
    xs.evaluate(parquet, xs.CrossEntropy(), **options)
    saved = read_checkpoint(path)
    saved["version"] = 99
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"not an xentstream checkpoint of version 2 or 3"):
        xs.evaluate(parquet, xs.CrossEntropy(), **options)


# -- a real kill ------------------------------------------------------------------------------

_CHILD = """
import importlib, sys
import xentstream as xs
importlib.import_module("xentstream.evaluation").CHECKPOINT_INTERVAL_S = 0.05
xs.evaluate(sys.argv[1], xs.CrossEntropy(per_class=True), preds="p", target="y",
            sample_weight="w", by="g", batch_rows=100, checkpoint=sys.argv[2], progress=False)
print("finished")
"""


def _rows_in(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["rows_consumed"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_sigkill_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    n = 200_000  # 2000 batches of 100 rows: seconds of work, killed well before the end
    table = pl.DataFrame(
        {
            "p": rng.dirichlet(np.ones(5), n),
            "y": rng.integers(0, 5, n),
            "w": rng.uniform(0.1, 2.0, n),
            "g": rng.integers(0, 7, n),
        }
    )
    source = write(table, tmp_path / "big.parquet")
    options = {"preds": "p", "target": "y", "sample_weight": "w", "by": "g"}
    # The uninterrupted run first: it also compiles the kernels into numba's disk cache,
    # which the child then loads instead of compiling.
    expected = xs.evaluate(source, xs.CrossEntropy(per_class=True), batch_rows=20_000, **options)

    checkpoint = tmp_path / "big.ckpt"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(source), str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while _rows_in(checkpoint) < 2_000:  # several checkpoints written: kill mid-run
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 30 s"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()  # no-op once killed; never leave it running
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    consumed = _rows_in(checkpoint)
    assert 2_000 <= consumed < n
    assert consumed % 100 == 0

    first, *rest = xs.stream(
        source, xs.CrossEntropy(per_class=True), checkpoint=checkpoint, batch_rows=50_000, **options
    )
    assert first.overall.count == consumed + min(50_000, n - consumed)  # resumed, not restarted
    final = rest[-1] if rest else first
    assert final.overall.count == n
    assert result_bits(final) == result_bits(expected)
    assert report_bits(final.overall) == report_bits(expected.overall)  # per-class included
