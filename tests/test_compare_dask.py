"""``xentstream compare --dask`` (issue 19): the paired comparison on a real Dask cluster.

One source (two prediction columns) and two sources read in lockstep (the baseline's
files cut elsewhere, in another format), with groups, calibration bins and saved
states: the command line's output on the cluster is the very text (``--format json``
and the table) of ``compare`` in one process, and the state it saves the same bytes.
The sums are exact, so nothing less than equal text is right.

One module-wide ``LocalCluster`` (two worker processes) serves ``--dask ADDRESS``;
one child process runs ``--dask local:2``, which starts a cluster of its own.
Arguments a Dask run cannot take are refused before any cluster starts.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import polars as pl
import pytest
from stream_support import child_env

from xentstream.cli import main

N_ROWS = 3_000
N_CLASSES = 4
#: The model's files cut here (three Parquet files, three partitions), the baseline's
#: elsewhere (two Arrow IPC files): each partition reads the baseline's rows of the same
#: stream rows from one or two of them.
CUTS = (0, 1_100, 1_900, N_ROWS)
BASELINE_CUTS = (0, 1_500, N_ROWS)
#: Several batches a partition.
BATCH_ROWS = "256"


def _table() -> pl.DataFrame:
    """Two models' probabilities for the same rows (``p``: the model, ``q``: a flatter
    baseline), labels drawn from ``p``, weights, a group key first seen in descending
    order, row ids."""
    rng = np.random.default_rng(19)
    probs = rng.dirichlet(np.ones(N_CLASSES), N_ROWS)
    labels = (rng.random((N_ROWS, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    labels = np.minimum(labels, N_CLASSES - 1)
    flatter = 0.7 * probs + 0.3 / N_CLASSES
    return pl.DataFrame(
        {
            "p": probs,
            "q": flatter,
            "y": labels,
            "w": rng.uniform(0.5, 2.0, N_ROWS),
            "band": (N_ROWS - 1 - np.arange(N_ROWS)) // 700,
            "id": np.arange(N_ROWS),
        }
    )


def _tokens() -> pl.DataFrame:
    """Two language models' target log-probabilities, a padding mask, documents whose
    tokens lie in every file (so their states merge across partitions), bytes a token."""
    rng = np.random.default_rng(1919)
    new = -rng.exponential(2.0, N_ROWS)
    return pl.DataFrame(
        {
            "lp_new": new,
            "lp_old": new - rng.normal(0.1, 0.5, N_ROWS).clip(-1.0, None) - 1.0,
            "mask": (rng.random(N_ROWS) > 0.1).astype(np.int8),
            "doc": rng.integers(0, 40, N_ROWS),
            "bytes": rng.integers(1, 6, N_ROWS),
        }
    )


def _reference_difference(table: pl.DataFrame) -> float:
    """The weighted mean per-row log-loss difference (model - baseline), by math.fsum:
    an independent check that the reports compared below hold the right numbers."""
    rows = np.arange(N_ROWS)
    labels = table["y"].to_numpy()
    model = -np.log(table["p"].to_numpy()[rows, labels])
    baseline = -np.log(table["q"].to_numpy()[rows, labels])
    weights = table["w"].to_numpy()
    return math.fsum(weights * (model - baseline)) / math.fsum(weights)


def _write_parts(frame: pl.DataFrame, cuts: tuple[int, ...], pattern: str) -> None:
    for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
        part = frame.slice(start, stop - start)
        path = pattern.format(number)
        if path.endswith(".arrow"):
            part.write_ipc(path)
        else:
            part.write_parquet(path)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Globs of: both models in one dump; the model's own dump; the baseline's own
    dump (another format, other cuts); and the table itself."""
    root = tmp_path_factory.mktemp("compare-dask")
    table = _table()
    _write_parts(table, CUTS, str(root / "pairs-{}.parquet"))
    _write_parts(table.select("p", "y", "w", "band", "id"), CUTS, str(root / "model-{}.parquet"))
    baseline = table.select("q", "y", "w", "id")
    _write_parts(baseline, BASELINE_CUTS, str(root / "baseline-{}.arrow"))
    _write_parts(_tokens(), CUTS, str(root / "tokens-{}.parquet"))
    return {
        "tokens": str(root / "tokens-*.parquet"),
        "root": root,
        "table": table,
        "pairs": str(root / "pairs-*.parquet"),
        "model": str(root / "model-*.parquet"),
        "baseline": str(root / "baseline-*.arrow"),
    }


@pytest.fixture(scope="module")
def address() -> Any:
    """The scheduler of a two-worker cluster shared by the module (``--dask ADDRESS``)."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as cluster:
        yield cluster.scheduler_address


def _run(capsys: pytest.CaptureFixture, *args: Any) -> tuple[int, str, str]:
    """``xentstream compare ARGS`` in this process: exit status, stdout, stderr."""
    status = main(["compare", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return status, out, err


def _same_as_one_process(
    capsys: pytest.CaptureFixture, address: str, tmp_path: Path, *args: Any
) -> str:
    """Run ``args`` in one process and on the cluster, each saving its state when no
    ``--by`` is given: equal stdout, equal state files. Returns the stdout."""
    saves = "--by" not in args
    runs = []
    for name, extra in (("one", ()), ("dask", ("--dask", address))):
        state = tmp_path / f"{name}.json"
        status, out, err = _run(capsys, *args, *extra, *(("--save-state", state) if saves else ()))
        assert status == 0 and err == "", err
        runs.append((out, state.read_text(encoding="utf-8") if saves else None))
    (alone, alone_state), (on_dask, dask_state) = runs
    assert on_dask == alone
    assert dask_state == alone_state
    return alone


ONE_SOURCE = ("--preds", "p", "--baseline-preds", "q", "--target", "y", "--sample-weight", "w")
TWO_SOURCE = (*ONE_SOURCE, "--row-id", "id")


@pytest.mark.parametrize(
    "extra",
    [
        ("--format", "json", "--per-class", "--batch-rows", BATCH_ROWS),
        ("--format", "json", "--by", "band"),
        ("--calibration-bins", "10"),  # the table
    ],
    ids=["json-per-class", "json-by", "table-calibration"],
)
def test_one_source_on_a_cluster_prints_what_one_process_prints(
    capsys: pytest.CaptureFixture,
    address: str,
    dumps: dict[str, Any],
    tmp_path: Path,
    extra: tuple[str, ...],
) -> None:
    out = _same_as_one_process(capsys, address, tmp_path, dumps["pairs"], *ONE_SOURCE, *extra)
    if "json" in extra:
        report = json.loads(out)
        overall = report["overall"] if "--by" in extra else report
        assert overall["count"] == N_ROWS
        assert overall["difference"] == pytest.approx(
            _reference_difference(dumps["table"]), rel=1e-12
        )
        if "--by" in extra:  # keys sorted, as in one process, though first seen descending
            keys = [group["key"] for group in report["groups"]]
            assert keys == sorted(keys) and len(keys) == 5


@pytest.mark.parametrize(
    "extra",
    [("--format", "json", "--batch-rows", BATCH_ROWS), ("--format", "json", "--by", "band")],
    ids=["json", "json-by"],
)
def test_two_sources_on_a_cluster_print_what_one_process_prints(
    capsys: pytest.CaptureFixture,
    address: str,
    dumps: dict[str, Any],
    tmp_path: Path,
    extra: tuple[str, ...],
) -> None:
    """The baseline's own Arrow files, cut elsewhere than the model's Parquet files,
    ids and targets checked row by row on the workers."""
    args = (dumps["model"], "--baseline-source", dumps["baseline"], *TWO_SOURCE, *extra)
    report = json.loads(_same_as_one_process(capsys, address, tmp_path, *args))
    overall = report["overall"] if "--by" in extra else report
    assert overall["count"] == N_ROWS
    assert overall["difference"] == pytest.approx(_reference_difference(dumps["table"]), rel=1e-12)


def test_token_comparison_on_a_cluster_prints_what_one_process_prints(
    capsys: pytest.CaptureFixture, address: str, dumps: dict[str, Any], tmp_path: Path
) -> None:
    """Target log-probabilities, standard errors clustered by document, bits per byte
    and the documents side by side: per-document states merged across partitions."""
    args = (dumps["tokens"], "--input", "target-logprob", "--preds", "lp_new")
    args += ("--baseline-preds", "lp_old", "--target", "mask", "--document", "doc")
    args += ("--units", "bytes", "--per-class", "--format", "json")
    report = json.loads(_same_as_one_process(capsys, address, tmp_path, *args))
    tokens = _tokens().filter(pl.col("mask") == 1)
    assert report["count"] == tokens.height
    expected = math.fsum(tokens["lp_old"] - tokens["lp_new"]) / tokens.height
    assert report["difference"] == pytest.approx(expected, rel=1e-12)
    assert report["clustered_stderr"] is not None


def test_local_cluster_of_the_command_line(
    capsys: pytest.CaptureFixture, dumps: dict[str, Any]
) -> None:
    """``--dask local:2`` in a child process (``python -m xentstream``, its own
    two-worker cluster): two sources, grouped, the one-process JSON."""
    args = (dumps["model"], "--baseline-source", dumps["baseline"], *TWO_SOURCE)
    args += ("--by", "band", "--format", "json")
    done = subprocess.run(
        [sys.executable, "-m", "xentstream", "compare", *args, "--dask", "local:2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    status, alone, _ = _run(capsys, *args)
    assert status == 0
    assert done.stdout == alone


def _one_line_error(status: int, out: str, err: str, *fragments: str) -> str:
    assert status == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xentstream: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_bad_rows_name_the_partition_and_the_stream_row(
    capsys: pytest.CaptureFixture, address: str, dumps: dict[str, Any], tmp_path: Path
) -> None:
    """A baseline whose target differs at row 2_100 (the model's third file): one line
    naming the partition, ending with the one-process message (the same row)."""
    table = dumps["table"]
    labels = table["y"].to_numpy().copy()
    labels[2_100] = (labels[2_100] + 1) % N_CLASSES
    changed = table.select("q", "w", "id", y=pl.Series(labels))
    _write_parts(changed, BASELINE_CUTS, str(tmp_path / "changed-{}.arrow"))
    args = (dumps["model"], "--baseline-source", str(tmp_path / "changed-*.arrow"), *TWO_SOURCE)
    alone = _one_line_error(*_run(capsys, *args), "2100")
    on_dask = _one_line_error(*_run(capsys, *args, "--dask", address), "partition 2 of 3 (")
    assert on_dask.endswith(alone.removeprefix("xentstream: error: "))


def test_what_a_dask_run_cannot_take_is_refused_before_any_cluster(
    capsys: pytest.CaptureFixture, dumps: dict[str, Any], tmp_path: Path
) -> None:
    """CSV sources (the model's or the baseline's), a bad worker count, and the
    options of one process: exit 2, one line (no cluster is started: each returns at
    once)."""
    table = dumps["table"]
    csv_pairs = tmp_path / "pairs.csv"
    table.select(*(pl.col(c).arr.get(0).alias(c) for c in ("p", "q")), "y").write_csv(csv_pairs)
    binary = ("--preds", "p", "--baseline-preds", "q", "--target", "y")
    only_files = "--dask reads Parquet or Arrow IPC files only"
    _one_line_error(*_run(capsys, csv_pairs, *binary, "--dask", "local:2"), only_files)
    two = (dumps["model"], "--baseline-source", csv_pairs, *binary, "--dask", "local:2")
    _one_line_error(*_run(capsys, *two), only_files)
    bad_count = (dumps["pairs"], *ONE_SOURCE, "--dask", "local:0")
    _one_line_error(*_run(capsys, *bad_count), "--dask: expected local:N")
    # compare resumes no checkpoint on the command line at all, with --dask or not
    resumed = (dumps["pairs"], *ONE_SOURCE, "--dask", "local:2", "--checkpoint", tmp_path / "c")
    _one_line_error(*_run(capsys, *resumed), "--checkpoint")
