"""The ``xentstream`` command line (SPEC section 6).

``evaluate`` runs a metric over prediction dumps; ``merge`` combines saved states.
Bad arguments and bad data exit with status 2 and one line on stderr, no traceback.

argparse (standard library) rather than typer: no extra dependency, and its
``nargs`` handling gives exactly the ``SOURCE... --preds COL...`` grammar of the spec.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import polars as pl

from xentstream.evaluate import GroupedReport, evaluate, stream
from xentstream.metrics import (
    BinaryCrossEntropy,
    CrossEntropy,
    Metric,
    MultiLabelCrossEntropy,
    load,
)
from xentstream.report import Report

__all__ = ["main"]

_TABLE_FIELDS = (
    "loss",
    "stderr",
    "ci95",
    "count",
    "ignored",
    "loss_sum",
    "weight_sum",
    "perplexity",
    "bits",
    "accuracy",
    "entropy",
    "kl",
    "normalized_entropy",
    "window_loss",
)


#: Seconds to wait for ``--dask ADDRESS``'s scheduler before giving up.
_CONNECT_TIMEOUT_S = 30
#: Seconds a ``--dask`` run waits with no worker alive before it fails.
_NO_WORKERS_TIMEOUT_S = 60


class _UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xentstream", description="Exact, streaming cross-entropy.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("evaluate", help="evaluate prediction dumps")
    run.add_argument("source", nargs="+", help="Parquet / IPC / CSV / NDJSON / .npy files or globs")
    run.add_argument("--preds", nargs="+", required=True, metavar="COL")
    run.add_argument("--target", nargs="+", required=True, metavar="COL")
    run.add_argument(
        "--task", choices=("auto", "multiclass", "binary", "multilabel"), default="auto"
    )
    run.add_argument("--input", choices=("probs", "logprobs", "logits"), default="probs")
    run.add_argument("--sample-weight", metavar="COL")
    run.add_argument("--class-weight", type=_float_list, metavar="W,...")
    run.add_argument("--pos-weight", type=_float_list, metavar="W[,...]")
    run.add_argument("--ignore-index", type=int, metavar="K")
    run.add_argument("--label-smoothing", type=float, default=0.0, metavar="E")
    run.add_argument("--classes", type=_name_list, metavar="A,B,...")
    run.add_argument("--by", nargs="+", metavar="COL")
    run.add_argument("--per-class", action="store_true")
    run.add_argument("--batch-rows", type=int, metavar="N")
    run.add_argument("--checkpoint", metavar="FILE")
    run.add_argument("--save-state", metavar="FILE", help="write the final metric state (JSON)")
    run.add_argument("--format", choices=("table", "json", "csv"), default="table")
    run.add_argument("--output", metavar="FILE")
    run.add_argument("--plot", metavar="FILE.png")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--engine", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument(
        "--dask",
        metavar="ADDRESS|local[:N]",
        help="run on a Dask cluster: a scheduler's address, or N local worker processes",
    )

    merge = commands.add_parser("merge", help="combine saved metric states")
    merge.add_argument("states", nargs="+", metavar="STATE.json")
    merge.add_argument("--format", choices=("table", "json", "csv"), default="table")
    merge.add_argument("--output", metavar="FILE")
    merge.add_argument("--save-state", metavar="FILE")
    return parser


def _infer_task(args: argparse.Namespace, source: list[str]) -> str:
    if args.task != "auto":
        return args.task
    if len(args.target) > 1:
        return "multilabel"
    if len(args.preds) > 1:
        return "multiclass"
    if source[0].endswith(".npy"):
        return "multiclass"
    schema = _schema(source)
    dtype = schema.get(args.preds[0])
    target_dtype = schema.get(args.target[0])
    if isinstance(dtype, pl.Array | pl.List):
        if isinstance(target_dtype, pl.Array | pl.List):
            return "multilabel"
        return "multiclass"
    return "binary"


def _schema(source: list[str]) -> pl.Schema:
    from xentstream.feeders import _expand_paths, scan_files

    paths = _expand_paths(source)
    return scan_files(paths[:1]).collect_schema()


def _metric(args: argparse.Namespace, task: str) -> Metric:
    pos_weight = args.pos_weight
    if task == "multiclass":
        if pos_weight is not None:
            raise _UsageError("--pos-weight applies to binary and multi-label tasks")
        return CrossEntropy(
            input=args.input,
            class_weight=args.class_weight,
            ignore_index=args.ignore_index,
            label_smoothing=args.label_smoothing,
            per_class=args.per_class,
            engine=args.engine,
        )
    for flag in ("class_weight", "ignore_index"):
        if getattr(args, flag) is not None:
            raise _UsageError(f"--{flag.replace('_', '-')} applies to the multiclass task only")
    if args.label_smoothing:
        raise _UsageError("--label-smoothing applies to the multiclass task only")
    if task == "binary":
        if pos_weight is not None and len(pos_weight) != 1:
            raise _UsageError("--pos-weight: the binary task takes one weight")
        return BinaryCrossEntropy(
            input=args.input,
            pos_weight=None if pos_weight is None else pos_weight[0],
            engine=args.engine,
        )
    weight = pos_weight[0] if pos_weight is not None and len(pos_weight) == 1 else pos_weight
    return MultiLabelCrossEntropy(
        input=args.input, pos_weight=weight, per_label=args.per_class, engine=args.engine
    )


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _table(result: Report | GroupedReport) -> str:
    out = io.StringIO()
    overall = result.overall if isinstance(result, GroupedReport) else result
    width = max(len(name) for name in _TABLE_FIELDS)
    for name in _TABLE_FIELDS:
        value = getattr(overall, name)
        if value is not None:
            out.write(f"{name:<{width}}  {_format_value(value)}\n")
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_hide_dataframe_shape=True):
        if overall.per_class is not None:
            out.write(f"\n{overall.per_class}\n")
        if isinstance(result, GroupedReport):
            columns = [*result.by, "count", "loss", "stderr", "perplexity", "accuracy"]
            out.write(f"\n{result.to_polars().select(columns)}\n")
    return out.getvalue()


def _csv(result: Report | GroupedReport) -> str:
    rows = []
    if isinstance(result, GroupedReport):
        for key, report in [((None,) * len(result.by), result.overall), *result.groups.items()]:
            row = dict(zip(result.by, key, strict=True))
            row.update(_flat(report))
            rows.append(row)
    else:
        rows.append(_flat(result))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _flat(report: Report) -> dict[str, Any]:
    data = report.to_dict()
    data.pop("per_class")
    ci = data.pop("ci95")
    data["ci95_low"], data["ci95_high"] = (None, None) if ci is None else ci
    return data


def _render(result: Report | GroupedReport, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2) + "\n"
    if fmt == "csv":
        return _csv(result)
    return _table(result)


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)


def _plot(
    path: str, history: list[tuple[int, float, tuple[float, float] | None]], report: Report
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "xentstream[plot]"') from None
    with_bars = report.per_class is not None
    figure, axes = plt.subplots(1, 2 if with_bars else 1, figsize=(11 if with_bars else 6, 4))
    line_axes = axes[0] if with_bars else axes
    rows = [h[0] for h in history]
    line_axes.plot(rows, [h[1] for h in history], label="running loss")
    banded = [(r, h[2]) for r, h in zip(rows, history, strict=True) if h[2] is not None]
    if banded:
        line_axes.fill_between(
            [b[0] for b in banded],
            [b[1][0] for b in banded],
            [b[1][1] for b in banded],
            alpha=0.3,
            label="95% interval",
        )
    line_axes.set_xlabel("rows")
    line_axes.set_ylabel("loss (nats)")
    line_axes.legend()
    if with_bars:
        frame = report.per_class
        axes[1].bar(
            frame[frame.columns[0]].to_list(), frame["loss"].fill_nan(None).fill_null(0).to_list()
        )
        axes[1].set_xlabel(frame.columns[0])
        axes[1].set_ylabel("mean loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _evaluate(args: argparse.Namespace) -> int:
    if args.dask is not None:
        _check_dask_args(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the long run
        raise ImportError('--plot needs matplotlib: pip install "xentstream[plot]"')
    task = _infer_task(args, args.source)
    metric = _metric(args, task)
    source: Any = args.source if len(args.source) > 1 else args.source[0]
    preds: Any = args.preds[0] if len(args.preds) == 1 else args.preds
    target: Any = args.target[0] if len(args.target) == 1 else args.target
    if str(args.source[0]).endswith(".npy"):
        preds, target = None, args.target[0]
    options = {
        "preds": preds,
        "target": target,
        "sample_weight": args.sample_weight,
        "by": args.by,
        "classes": args.classes,
        "batch_rows": args.batch_rows,
        "progress": False if args.no_progress else None,
        "checkpoint": args.checkpoint,
    }
    if args.dask is not None:
        options.pop("checkpoint")
        options.pop("progress")
        result = _evaluate_on_dask(args.dask, source, metric, options)
    elif args.plot:
        history = []
        result = None
        for result in stream(source, metric, **options):
            overall = result.overall if isinstance(result, GroupedReport) else result
            history.append((overall.count + overall.ignored, overall.loss, overall.ci95))
        if result is None:
            result = evaluate([], metric)
        overall = result.overall if isinstance(result, GroupedReport) else result
        _plot(args.plot, history, overall)
    else:
        result = evaluate(source, metric, **options)
    if args.save_state:
        metric.save(args.save_state)
    overall = result.overall if isinstance(result, GroupedReport) else result
    if overall.count + overall.ignored == 0:
        warnings.warn("the source holds no rows: nothing was evaluated", stacklevel=1)
    _write(_render(result, args.format), args.output)
    return 0


def _check_dask_args(args: argparse.Namespace) -> None:
    """Reject what a Dask run cannot do, before any cluster starts."""
    if args.checkpoint:
        raise _UsageError(
            "--checkpoint cannot be combined with --dask: Dask reruns lost partitions itself"
        )
    if args.plot:
        raise _UsageError("--plot draws the running loss of one process; it cannot use --dask")
    suffixes = {Path(path).suffix.lower() for path in args.source}
    if not suffixes <= {".parquet", ".pq", ".arrow", ".ipc", ".feather"}:
        raise _UsageError("--dask reads Parquet or Arrow IPC files only")
    _dask_workers(args.dask)


def _dask_workers(address: str) -> int | None:
    """Worker processes for ``local[:N]`` (None: the default of ``local``), or 0 for an
    address."""
    if address == "local":
        return None
    if not address.startswith("local:"):
        return 0
    count = address.removeprefix("local:")
    if not count.isdigit() or int(count) < 1:
        raise _UsageError(f"--dask: expected local:N with N a positive integer, got {address!r}")
    return int(count)


def _evaluate_on_dask(
    address: str, source: Any, metric: Metric, options: dict[str, Any]
) -> Report | GroupedReport:
    from xentstream import dask as xentstream_dask

    xentstream_dask._require_dask(distributed=True)
    import dask
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker, NoValidWorkerError, NoWorkerError

    # Workers that die and never come back would leave the run waiting forever: after
    # this long without a worker the scheduler fails the tasks (unless the user's
    # Dask config sets its own limit).
    timeout_key = "distributed.scheduler.no-workers-timeout"
    limit = dask.config.get(timeout_key, None) or f"{_NO_WORKERS_TIMEOUT_S}s"
    try:
        with dask.config.set({timeout_key: limit}):
            return _run_on_dask(address, source, metric, options)
    except FileNotFoundError:
        raise  # a missing file: main reports it like any other run's
    except (
        CommClosedError,
        KilledWorker,
        NoValidWorkerError,
        NoWorkerError,
        OSError,
        TimeoutError,
    ) as error:
        # Mostly the cluster failing, not the data: a lost scheduler, workers that keep
        # dying (KilledWorker), a connection timing out. One line, no traceback.
        text = " ".join(str(error).split()) or "no details"
        raise _UsageError(f"--dask: the run failed ({type(error).__name__}: {text})") from None


def _run_on_dask(
    address: str, source: Any, metric: Metric, options: dict[str, Any]
) -> Report | GroupedReport:
    from distributed import Client, LocalCluster

    from xentstream import dask as xentstream_dask

    workers = _dask_workers(address)
    if workers == 0:
        try:
            client = Client(address, timeout=_CONNECT_TIMEOUT_S)
        except (OSError, ValueError) as error:  # TimeoutError is an OSError
            raise _UsageError(
                f"--dask: cannot reach a scheduler at {address!r} ({error})"
            ) from None
        with client:
            return xentstream_dask.evaluate(source, metric, scheduler=client, **options)
    cores = os.cpu_count() or 1
    if workers is None:
        # Every worker's kernels are numba-parallel, so one process per core (Dask's
        # default) would run cores x cores threads. Half as many processes as cores,
        # two numba threads each, still overlaps one task's file reading and polars
        # glue (serial per task) with another's kernels without oversubscribing.
        workers = max(1, cores // 2)
    # One task per process; its numba threads are set in the task's own thread
    # (numba.set_num_threads is per thread). NUMBA_NUM_THREADS in the workers'
    # environment is no alternative: numba reads it once per process and refuses a
    # new value after its threads started, which broke runs starting several clusters.
    # Processes sidestep the GIL in the polars-to-numpy glue. Silent logs: bad data
    # is reported once, as the one-line error, not also logged by the worker.
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
    except RuntimeError as error:  # "Nanny failed to start": workers dying at start
        raise _UsageError(f"--dask: the local cluster did not start ({error})") from None
    with cluster, Client(cluster) as client:
        return xentstream_dask.evaluate(
            source,
            metric,
            scheduler=client,
            task_threads=max(1, cores // workers),
            **options,
        )


def _merge(args: argparse.Namespace) -> int:
    metrics = [load(path) for path in args.states]
    merged = metrics[0]
    for other in metrics[1:]:
        merged.merge(other)
    if args.save_state:
        merged.save(args.save_state)
    _write(_render(merged.compute(), args.format), args.output)
    return 0


#: Every failure the command line reports as one line with exit status 2, each class
#: mapped here once: bad arguments and data (ValueError, TypeError; OverflowError for
#: numbers out of range), files that cannot be opened, read or written (OSError:
#: missing, a directory, no permission), polars' read errors, a missing optional
#: dependency (ImportError), and the cluster of --dask (raised as _UsageError).
_FAILURES = (
    _UsageError,
    ValueError,
    TypeError,
    OverflowError,
    OSError,
    ImportError,
    pl.exceptions.PolarsError,
)
#: An error line longer than this is cut: a message must stay one readable line
#: whatever the input echoed in it.
_MAX_MESSAGE = 500


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"  # without the "[Errno 13]" noise
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > _MAX_MESSAGE:
        text = f"{text[: _MAX_MESSAGE - 30]}... ({len(text)} characters)"
    return text


def _warning_line(message: Any, category: Any, *_: Any, **__: Any) -> None:
    """Warnings as one ``xentstream: warning:`` line, without the source line."""
    print(f"xentstream: warning: {_one_line(Exception(str(message)))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Examples
    --------
    >>> main(["evaluate", "missing.parquet", "--preds", "p", "--target", "y"])
    2
    """
    try:
        with warnings.catch_warnings():
            # Warnings are messages to the user here: shown (once), one line each.
            warnings.simplefilter("default")
            warnings.showwarning = _warning_line
            args = _parser().parse_args(argv)
            return _evaluate(args) if args.command == "evaluate" else _merge(args)
    except _FAILURES as error:
        print(f"xentstream: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xentstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
