"""Many machines (SPEC section 8): ``xentstream.dask.evaluate`` on a real Dask cluster.

A ``distributed.LocalCluster`` with two worker processes (shared by the module) reads
real Parquet / Arrow IPC files; every result is compared BITWISE with
``xs.evaluate`` in this process on the same rows. Also: a dask DataFrame source, the
``--dask`` command line, errors naming the partition and the row, and a worker killed
in the middle of a run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from stream_support import (
    N_ROWS,
    WIDE,
    bits,
    child_env,
    full_frame,
    make_data,
    report_bits,
    run_python,
    write,
)

import xentstream as xs

dask = pytest.importorskip("dask")
pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from xentstream import dask as xentstream_dask  # noqa: E402  (after the skips)

# Three files cut at 900 and 1700 rows, 300-row partitions: 9 partitions, the ones at
# the end of each file short, so partitions and files do not line up.
CUTS = (0, 900, 1_700, N_ROWS)
PARTITION_ROWS = 300
BATCH_ROWS = 128


def _table() -> pl.DataFrame:
    """The shared streaming table, plus ``band``: group keys first seen in descending
    order, so sorting keys anywhere would show."""
    frame = full_frame(make_data())
    return frame.with_columns(band=(N_ROWS - 1 - pl.int_range(pl.len())) // 400)


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    return _table()


@pytest.fixture(scope="module")
def files(table: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The table as three files per format; glob of each."""
    root = tmp_path_factory.mktemp("dask")
    globs = {}
    for suffix in ("parquet", "arrow"):
        for number, (start, stop) in enumerate(itertools.pairwise(CUTS)):
            write(table.slice(start, stop - start), root / f"part-{number}.{suffix}")
        globs[suffix] = str(root / f"part-*.{suffix}")
    return globs


@pytest.fixture(scope="module")
def client() -> Any:
    """Two worker processes, one thread each, shared by the module."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


# window=1000 spans four 300-row partitions (and, in the DataFrame test, three).
CASES = {
    "multiclass": (
        lambda: xs.CrossEntropy(per_class=True, window=1_000),
        {"preds": "p", "target": "y", "sample_weight": "w"},
    ),
    "multiclass-by": (
        lambda: xs.CrossEntropy(label_smoothing=0.1),
        {"preds": WIDE, "target": "label", "by": ["h", "band"]},
    ),
    "binary-by": (
        lambda: xs.BinaryCrossEntropy(pos_weight=2.0, engine="cpu"),
        {"preds": "b_p", "target": "b_t", "sample_weight": "w", "by": "g"},
    ),
    "multilabel": (
        lambda: xs.MultiLabelCrossEntropy(per_label=True),
        {"preds": "ml_p", "target": "ml_t"},
    ),
    "multiclass-calibration": (
        lambda: xs.CrossEntropy(calibration_bins=10),
        {"preds": "p", "target": "y", "sample_weight": "w"},
    ),
    "multiclass-calibration-per-class": (
        lambda: xs.CrossEntropy(calibration_bins=10, per_class=True),
        {"preds": "p", "target": "y", "sample_weight": "w"},
    ),
    "multiclass-calibration-by": (  # every group's reliability bins, packed and merged
        lambda: xs.CrossEntropy(calibration_bins=10),
        {"preds": "p", "target": "y", "sample_weight": "w", "by": ["h", "band"]},
    ),
}


@pytest.mark.parametrize("suffix", ["parquet", "arrow"])
@pytest.mark.parametrize("case", list(CASES))
def test_files_bitwise_equal_to_one_process(
    client: Any, files: dict[str, str], table: pl.DataFrame, case: str, suffix: str
) -> None:
    make_metric, columns = CASES[case]
    with distributed.get_task_stream(client) as tasks:  # the current client is used
        result = xentstream_dask.evaluate(
            files[suffix],
            make_metric(),
            partition_rows=PARTITION_ROWS,
            batch_rows=BATCH_ROWS,
            split_every=3,
            **columns,
        )
    expected = xs.evaluate(table, make_metric(), **columns)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    if isinstance(expected, xs.GroupedReport):
        assert list(result.groups) == list(expected.groups)  # sorted by key
    states = [t for t in tasks.data if t["key"].startswith("_partition_state")]
    assert len(states) == 9  # ran on the cluster's worker processes
    assert {t["worker"] for t in states} <= set(client.scheduler_info()["workers"])


def test_dask_dataframe_source(client: Any, table: pl.DataFrame) -> None:
    import dask.dataframe as dd

    columns = {"preds": WIDE, "target": "label", "sample_weight": "w", "by": ["h", "band"]}
    pandas = table.select(*WIDE, "label", "w", "h", "band").to_pandas()
    frame = dd.from_pandas(pandas, npartitions=5)
    result = xentstream_dask.evaluate(
        frame, xs.CrossEntropy(window=1_000), scheduler=client, task_threads=1, **columns
    )
    expected = xs.evaluate(table, xs.CrossEntropy(window=1_000), **columns)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    assert list(result.groups) == list(expected.groups)


def test_task_threads_are_restored(files: dict[str, str], table: pl.DataFrame) -> None:
    """``task_threads`` sets numba's threads for the task's own thread only: run in
    this thread (the sync scheduler), it leaves them as they were, same bits."""
    import numba

    before = numba.get_num_threads()
    result = xentstream_dask.evaluate(
        files["arrow"],
        xs.CrossEntropy(),
        preds="p",
        target="y",
        partition_rows=1_000,
        scheduler="sync",
        task_threads=1,
    )
    assert numba.get_num_threads() == before
    expected = xs.evaluate(table, xs.CrossEntropy(), preds="p", target="y")
    assert report_bits(result) == report_bits(expected)


def test_metric_updated_in_place_like_evaluate(client: Any, files: dict[str, str]) -> None:
    """Rows already in the metric stay; the merged partitions are added to them."""
    start = xs.CrossEntropy().update([[0.5, 0.25, 0.125, 0.125]], [2])
    twin = xs.CrossEntropy().update([[0.5, 0.25, 0.125, 0.125]], [2])
    frame = pl.read_parquet(files["parquet"])
    result = xentstream_dask.evaluate(files["parquet"], start, preds="p", target="y")
    expected = xs.evaluate(frame, twin, preds="p", target="y")
    assert report_bits(result) == report_bits(expected)
    assert report_bits(start.compute()) == report_bits(twin.compute())


def _corrupt(table: pl.DataFrame, root: Path) -> str:
    probs = table["p"].to_numpy().copy()
    probs[2_100] = [1.5, -0.5, 0.0, 0.0]
    bad = table.with_columns(pl.Series("p", probs))
    for number, (start, stop) in enumerate(itertools.pairwise(CUTS)):
        write(bad.slice(start, stop - start), root / f"bad-{number}.parquet")
    return str(root / "bad-*.parquet")


def test_bad_partition_names_partition_and_stream_row(
    client: Any, table: pl.DataFrame, tmp_path: Path
) -> None:
    source = _corrupt(table, tmp_path)
    with pytest.raises(ValueError) as raised:
        xentstream_dask.evaluate(
            source, xs.CrossEntropy(), preds="p", target="y", partition_rows=PARTITION_ROWS
        )
    message = str(raised.value)
    # row 2100 is row 400 of bad-2 (from row 1700): its partition 7 holds rows 300..599
    assert message.startswith("partition 7 of 9 (")
    assert "bad-2.parquet, file rows 300..599)" in message
    assert "p: row 2100" in message and "outside [0, 1]" in message
    with pytest.raises(ValueError) as single:
        xs.evaluate(source, xs.CrossEntropy(), preds="p", target="y")
    assert message.endswith(str(single.value))  # the same message, with the partition


def test_bad_dataframe_partition_names_partition_and_row(client: Any, table: pl.DataFrame) -> None:
    import dask.dataframe as dd

    pandas = table.select(*WIDE, "y").to_pandas()
    pandas.loc[1_234, "y"] = 9
    frame = dd.from_pandas(pandas, npartitions=5, sort=False)  # 500 rows each
    with pytest.raises(
        ValueError, match=r"^partition 2 of 5 of the dask DataFrame: y: row 1234: label 9"
    ):
        xentstream_dask.evaluate(frame, xs.CrossEntropy(), preds=WIDE, target="y")


def test_first_bad_partition_is_reported_whatever_finishes_first(
    client: Any, table: pl.DataFrame, tmp_path: Path
) -> None:
    """Two bad partitions: a slow first one (300k rows, bad at its end) and a quick
    one behind it (bad at its start), run at once by the two workers. The quick one
    fails first, yet the error is always the first bad partition's, as one process
    reports it."""
    frame = table.select("p", "y")
    big = pl.concat([frame] * 120)  # 300_000 rows
    probs = big["p"].to_numpy().copy()
    probs[-1] = [1.5, -0.5, 0.0, 0.0]
    big = big.with_columns(pl.Series("p", probs))
    small = frame.head(100)
    probs = small["p"].to_numpy().copy()
    probs[3] = [0.5, 0.5, 0.5, -0.5]
    small = small.with_columns(pl.Series("p", probs))
    paths = [write(big, tmp_path / "a.parquet"), write(small, tmp_path / "b.parquet")]
    with pytest.raises(ValueError) as single:
        xs.evaluate(paths, xs.CrossEntropy(), preds="p", target="y")
    for _ in range(2):
        with pytest.raises(ValueError) as raised:
            xentstream_dask.evaluate(
                paths, xs.CrossEntropy(), preds="p", target="y", partition_rows=300_000
            )
        message = str(raised.value)
        assert message.startswith("partition 0 of 2 ("), message
        assert "p: row 299999" in message
        assert message.endswith(str(single.value))


def test_engine_reaches_the_workers(tmp_path: Path) -> None:
    """``engine="cuda"``, built in a client running numba's CUDA simulator, on a
    worker without the simulator or a GPU: the worker's no-GPU error, not a silent
    run on the CPU. (A worker rebuilding the metric from its state alone would get
    engine "auto".)"""
    source = write(_table().select("p", "y").head(200), tmp_path / "t.parquet")
    code = (
        "import logging, sys\n"
        "import xentstream as xs\n"
        "from distributed import Client, LocalCluster\n"
        "from xentstream import dask as xd\n"
        "metric = xs.CrossEntropy(engine='cuda')  # the simulator, here\n"
        "with (\n"
        "    LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=':0',\n"
        "                 env={'NUMBA_ENABLE_CUDASIM': '0'}, silence_logs=logging.CRITICAL)"
        " as cluster,\n"
        "    Client(cluster),\n"
        "):\n"
        "    try:\n"
        "        xd.evaluate(sys.argv[1], metric, preds='p', target='y', partition_rows=50)\n"
        "    except RuntimeError as error:\n"
        "        print(type(error).__name__, isinstance(error, ValueError), error)\n"
        "    else:\n"
        "        print('ran')\n"
    )
    pytest.importorskip("numba.cuda")
    done = subprocess.run(
        [sys.executable, "-c", code, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**child_env(), "NUMBA_ENABLE_CUDASIM": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("CudaUnavailableError True dask worker on host "), done.stdout
    assert "engine='cuda': no usable CUDA GPU" in done.stdout


def test_bad_dataframe_partition_dtype_names_partition(client: Any, table: pl.DataFrame) -> None:
    """A partition whose dtypes differ from the frame's ``_meta``: float labels (a
    TypeError) and labels polars cannot convert go through the same path as bad
    values and name the partition."""
    import dask.dataframe as dd

    pandas = table.select(*WIDE, "y").to_pandas()
    pieces = [pandas.iloc[:1_000], pandas.iloc[1_000:2_000].astype({"y": "float64"})]
    frame = dd.from_map(lambda piece: piece, pieces, meta=pandas.iloc[:0])
    with pytest.raises(
        TypeError, match=r"^partition 1 of 2 of the dask DataFrame: y: hard labels must be"
    ):
        xentstream_dask.evaluate(frame, xs.CrossEntropy(), preds=WIDE, target="y")
    unconvertible = pandas.iloc[1_000:2_000].astype({"y": "complex128"})
    frame = dd.from_map(lambda piece: piece, [pieces[0], unconvertible], meta=pandas.iloc[:0])
    with pytest.raises(
        TypeError, match=r"^partition 1 of 2 of the dask DataFrame: ArrowNotImplementedError: "
    ):
        xentstream_dask.evaluate(frame, xs.CrossEntropy(), preds=WIDE, target="y")


def _cli(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xentstream", "evaluate", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )


def _assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_dask_equals_one_process(
    client: Any, files: dict[str, str], table: pl.DataFrame, tmp_path: Path
) -> None:
    """``--dask local:2``, ``--dask local`` (clusters of their own) and ``--dask
    ADDRESS`` (the module's) print the one-process JSON; bad data and bad arguments
    exit 2 with one line."""
    run = ("--preds", "p", "--target", "y", "--by", "g", "--format", "json")
    bad = _corrupt(table, tmp_path)
    address = client.scheduler.address
    with ThreadPoolExecutor(5) as pool:
        alone, local, default, remote, failed = pool.map(
            lambda args: _cli(*args),
            [
                (files["parquet"], *run, "--no-progress"),
                (files["parquet"], *run, "--dask", "local:2"),
                (files["parquet"], *run, "--engine", "cpu", "--dask", "local"),
                (files["parquet"], *run, "--dask", address),
                (bad, *run, "--dask", "local:1"),
            ],
        )
    assert alone.returncode == 0, alone.stderr[-2000:]
    for done in (local, default, remote):
        assert done.returncode == 0, done.stderr[-2000:]
        assert bits(json.loads(done.stdout)) == bits(json.loads(alone.stdout))
    # the workers' own logs stay quiet: the error is reported once
    _assert_one_line_error(failed, "bad-2.parquet", "p: row 2100", "outside [0, 1]")

    refused = _cli(files["parquet"], *run, "--dask", "local:2", "--checkpoint", tmp_path / "c")
    _assert_one_line_error(refused, "--checkpoint cannot be combined with --dask")


def test_dask_is_imported_lazily_and_named_when_missing() -> None:
    done = run_python(
        "import sys, xentstream\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "assert not loaded, loaded\n"
        "sys.modules['dask'] = None  # as if not installed\n"
        "from xentstream import dask as xd\n"
        "try:\n"
        "    xd.evaluate('x.parquet', xentstream.CrossEntropy(), preds='p', target='y')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'pip install "xentstream[dask]"' in done.stdout


def test_killed_worker_is_recomputed_without_double_counting(
    client: Any, files: dict[str, str], table: pl.DataFrame
) -> None:
    """SIGKILL a worker process as soon as it holds a finished partition state.

    The state dies with it; the scheduler reruns the lost partitions on the other
    worker (and on the one its nanny restarts). 100 partitions keep the run going
    well past the first finished one, so the kill lands mid-run.
    """
    pids = client.run(os.getpid)
    columns = {"preds": "p", "target": "y", "sample_weight": "w", "by": "band"}
    killed: dict[str, Any] = {}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            xentstream_dask.evaluate,
            files["parquet"],
            xs.CrossEntropy(),
            partition_rows=25,
            batch_rows=BATCH_ROWS,
            **columns,
        )
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline and not running.done():
            for worker, keys in client.has_what().items():
                if any(str(key).startswith("_partition_state") for key in keys):
                    killed.update(worker=worker, mid_run=not running.done())
                    os.kill(pids[worker], signal.SIGKILL)
                    break
            time.sleep(0.005)
        result = running.result(timeout=120)
    assert killed.get("mid_run"), "the run ended before a worker could be killed"
    expected = xs.evaluate(table, xs.CrossEntropy(), **columns)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    client.wait_for_workers(2, timeout=60)
    assert killed["worker"] not in client.scheduler_info()["workers"]


def test_rejects_sources_it_cannot_split(tmp_path: Path, table: pl.DataFrame) -> None:
    csv = write(table.select(*WIDE, "y"), tmp_path / "t.csv")
    with pytest.raises(ValueError, match="cannot be split into partitions"):
        xentstream_dask.evaluate(csv, xs.CrossEntropy(), preds=WIDE, target="y")
    with pytest.raises(TypeError, match=r"dask\.dataframe\.DataFrame"):
        xentstream_dask.evaluate(table, xs.CrossEntropy(), preds=WIDE, target="y")
    parquet = write(table, tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="nope: no such column"):  # before any task runs
        xentstream_dask.evaluate(parquet, xs.CrossEntropy(), preds="p", target="nope")
    with pytest.raises(ValueError, match="partition_rows"):
        xentstream_dask.evaluate(
            parquet, xs.CrossEntropy(), preds="p", target="y", partition_rows=0
        )
    with pytest.raises(ValueError, match=r"t\.csv cannot be split into partitions"):
        xentstream_dask.evaluate([csv], xs.CrossEntropy(), preds=WIDE, target="y")
    with pytest.raises(ValueError, match=r"different formats \['\.csv', '\.parquet'\]"):
        xentstream_dask.evaluate([parquet, csv], xs.CrossEntropy(), preds=WIDE, target="y")
    with pytest.raises(ValueError, match="task_threads"):
        xentstream_dask.evaluate(parquet, xs.CrossEntropy(), preds="p", target="y", task_threads=0)


def test_cli_names_the_extra_without_distributed(tmp_path: Path, table: pl.DataFrame) -> None:
    source = write(table.select("p", "y"), tmp_path / "t.parquet")
    done = run_python(
        "import sys\n"
        "sys.modules['distributed'] = None  # as if not installed\n"
        "from xentstream.cli import main\n"
        "sys.exit(main(['evaluate', sys.argv[1], '--preds', 'p', '--target', 'y',"
        " '--dask', 'local:1']))\n",
        str(source),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "distributed is missing" in done.stderr
    assert 'pip install "xentstream[dask]"' in done.stderr


# -- a paired comparison on the cluster -------------------------------------------------------


def _pair_table(table: pl.DataFrame) -> pl.DataFrame:
    """The table with ``q``: a second model's probabilities for the same rows."""
    probs = table["p"].to_numpy()
    return table.with_columns(pl.Series("q", 0.8 * probs + 0.05))


@pytest.fixture(scope="module")
def pair_files(table: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("dask-pairs")
    pairs = _pair_table(table)
    for number, (start, stop) in enumerate(itertools.pairwise(CUTS)):
        write(pairs.slice(start, stop - start), root / f"part-{number}.parquet")
    return str(root / "part-*.parquet")


PAIR_COLUMNS = {"preds": "p", "baseline_preds": "q", "target": "y", "sample_weight": "w"}


@pytest.mark.parametrize("by", [None, "band"])
def test_comparison_bitwise_equal_to_one_process(
    client: Any, pair_files: str, table: pl.DataFrame, by: str | None
) -> None:
    comparison = xs.Comparison(xs.CrossEntropy(per_class=True))
    result = xentstream_dask.evaluate(
        pair_files,
        comparison,
        partition_rows=PARTITION_ROWS,
        batch_rows=BATCH_ROWS,
        split_every=3,
        by=by,
        **PAIR_COLUMNS,
    )
    one = xs.Comparison(xs.CrossEntropy(per_class=True))
    expected = xs.compare(_pair_table(table), one, by=by, **PAIR_COLUMNS)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    assert comparison.state_dict() == one.state_dict()  # updated in place, exactly
    if by is not None:
        assert isinstance(result, xs.GroupedComparison)
        assert list(result.groups) == list(expected.groups)  # sorted by key


def test_bad_comparison_partition_names_partition_and_stream_row(
    client: Any, table: pl.DataFrame, tmp_path: Path
) -> None:
    pairs = _pair_table(table)
    second = pairs["q"].to_numpy().copy()
    second[2_100] = [0.5, 0.5, 0.5, -0.5]
    pairs = pairs.with_columns(pl.Series("q", second))
    for number, (start, stop) in enumerate(itertools.pairwise(CUTS)):
        write(pairs.slice(start, stop - start), tmp_path / f"bad-{number}.parquet")
    source = str(tmp_path / "bad-*.parquet")
    with pytest.raises(xs.DataError) as raised:
        xentstream_dask.evaluate(
            source, xs.Comparison(xs.CrossEntropy()), partition_rows=PARTITION_ROWS, **PAIR_COLUMNS
        )
    message = str(raised.value)
    assert message.startswith("partition 7 of 9 (")
    assert raised.value.row == 2_100 and "q: row 2100" in message
    with pytest.raises(ValueError) as single:
        xs.compare(source, xs.CrossEntropy(), **PAIR_COLUMNS)
    assert message.endswith(str(single.value))


# -- two sources: the baseline model's predictions in files of their own ----------------------

#: The baseline's files cut elsewhere than the source's (CUTS): partitions of the source
#: take their rows from one or two of them.
BASELINE_CUTS = (0, 1_200, N_ROWS)
TWO_SOURCE_COLUMNS = {**PAIR_COLUMNS, "row_id": "id"}


def _baseline_table(table: pl.DataFrame) -> pl.DataFrame:
    """Model B's own dump of the same rows: its predictions as ``q``, target, weights, id."""
    return _pair_table(table).select("q", "y", "w", id=pl.int_range(pl.len()))


@pytest.fixture(scope="module")
def two_sources(table: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Model A's files (p, y, w, band, id; cut at CUTS) and model B's (cut at BASELINE_CUTS)."""
    root = tmp_path_factory.mktemp("dask-two-sources")
    model = table.select("p", "y", "w", "band", id=pl.int_range(pl.len()))
    for number, (start, stop) in enumerate(itertools.pairwise(CUTS)):
        write(model.slice(start, stop - start), root / f"model-{number}.parquet")
    baseline = _baseline_table(table)
    for number, (start, stop) in enumerate(itertools.pairwise(BASELINE_CUTS)):
        write(baseline.slice(start, stop - start), root / f"baseline-{number}.arrow")
    return str(root / "model-*.parquet"), str(root / "baseline-*.arrow")


@pytest.mark.parametrize("by", [None, "band"])
def test_two_source_comparison_bitwise_equal_to_one_process(
    client: Any, two_sources: tuple[str, str], by: str | None
) -> None:
    """Each partition of the source reads the baseline's rows of the same stream rows
    (the baseline's files cut elsewhere, in another format), ids and targets checked:
    the bits of one process reading the two sources in lockstep."""
    source, baseline = two_sources
    comparison = xs.Comparison(xs.CrossEntropy(per_class=True))
    result = xentstream_dask.evaluate(
        source,
        comparison,
        baseline_source=baseline,
        partition_rows=PARTITION_ROWS,
        batch_rows=BATCH_ROWS,
        split_every=3,
        by=by,
        **TWO_SOURCE_COLUMNS,
    )
    one = xs.Comparison(xs.CrossEntropy(per_class=True))
    expected = xs.compare(source, one, baseline_source=baseline, by=by, **TWO_SOURCE_COLUMNS)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    assert comparison.state_dict() == one.state_dict()
    overall = result.overall if by is not None else result
    assert overall.count == N_ROWS


def test_two_dataframe_sources_pair_partition_by_partition(
    client: Any, table: pl.DataFrame
) -> None:
    """Two dask DataFrames pair partition i with partition i; partitions of another
    count are refused on the client, of other lengths by the task, naming the
    partition."""
    import dask.dataframe as dd

    binary = {"t": (pl.col("y") == 0).cast(pl.Int8)}  # is it the first class?
    model = table.select("w", id=pl.int_range(pl.len()), a=pl.col("p").arr.get(0), **binary)
    baseline = _baseline_table(table).with_columns(b=pl.col("q").arr.get(0), **binary)
    columns = {"preds": "a", "baseline_preds": "b", "target": "t", "sample_weight": "w"}
    metric = xs.BinaryCrossEntropy
    left = dd.from_pandas(model.to_pandas(), npartitions=4)
    right = dd.from_pandas(baseline.to_pandas(), npartitions=4)
    result = xentstream_dask.evaluate(
        left, xs.Comparison(metric()), baseline_source=right, row_id="id", **columns
    )
    expected = xs.compare(model, metric(), baseline_source=baseline, row_id="id", **columns)
    assert bits(result.to_dict()) == bits(expected.to_dict())
    with pytest.raises(ValueError, match=r"^baseline_source: has 3 partitions but source has 4"):
        xentstream_dask.evaluate(
            left,
            xs.Comparison(metric()),
            baseline_source=dd.from_pandas(baseline.to_pandas(), npartitions=3),
            **columns,
        )
    shifted = dd.from_pandas(baseline.to_pandas(), npartitions=4).repartition(
        divisions=[0, 700, 1_200, 1_900, N_ROWS - 1]
    )
    with pytest.raises(ValueError, match=r"^partition 0 of 4 of the dask DataFrame: baseline"):
        xentstream_dask.evaluate(left, xs.Comparison(metric()), baseline_source=shifted, **columns)


def test_two_source_errors_name_the_stream_row(
    client: Any, table: pl.DataFrame, two_sources: tuple[str, str], tmp_path: Path
) -> None:
    """A baseline of other length: refused on the client before any task; a target that
    differs: the partition and the row of the whole stream, as in one process."""
    source, _ = two_sources
    comparison = xs.Comparison(xs.CrossEntropy())
    short = write(_baseline_table(table).head(N_ROWS - 1), tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"^baseline_source: holds 2499 rows but source holds"):
        xentstream_dask.evaluate(source, comparison, baseline_source=str(short), **PAIR_COLUMNS)
    labels = table["y"].to_numpy().copy()
    labels[2_100] = (labels[2_100] + 1) % 4
    changed = _baseline_table(table).with_columns(y=pl.Series(labels))
    bad = write(changed, tmp_path / "bad.parquet")
    with pytest.raises(xs.DataError) as raised:
        xentstream_dask.evaluate(
            source,
            comparison,
            baseline_source=str(bad),
            partition_rows=PARTITION_ROWS,
            **TWO_SOURCE_COLUMNS,
        )
    message = str(raised.value)
    assert message.startswith("partition 7 of 9 (") and raised.value.row == 2_100
    with pytest.raises(ValueError) as single:
        xs.compare(source, xs.CrossEntropy(), baseline_source=str(bad), **TWO_SOURCE_COLUMNS)
    assert message.endswith(str(single.value))
    assert comparison.rows_seen == 0  # nothing merged
    text = write(_baseline_table(table).drop("q"), tmp_path / "b.csv")
    with pytest.raises(ValueError, match=r"^baseline_source: .*b.csv cannot be split"):
        xentstream_dask.evaluate(source, comparison, baseline_source=str(text), **PAIR_COLUMNS)
    with pytest.raises(FileNotFoundError, match=r"^baseline_source: file .* does not exist"):
        xentstream_dask.evaluate(
            source, comparison, baseline_source=str(tmp_path / "no.arrow"), **PAIR_COLUMNS
        )
