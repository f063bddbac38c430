"""The ``xentstream`` command line (SPEC section 6).

``evaluate`` runs a metric over prediction dumps; ``compare`` compares two models'
predictions for the same rows (paired); ``merge`` combines saved states.
Bad arguments and bad data exit with status 2 and one line on stderr, no traceback.

argparse (standard library) rather than typer: no extra dependency, and its
``nargs`` handling gives exactly the ``SOURCE... --preds COL...`` grammar of the spec.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import glob
import importlib.util
import io
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import polars as pl

from xentstream import __version__
from xentstream._kernels.layout import INPUT_KINDS
from xentstream.comparing import GroupedComparison
from xentstream.comparison import Comparison, ComparisonReport
from xentstream.comparison import load as load_state
from xentstream.evaluation import (
    GROUPED_FORMAT,
    GroupedReport,
    Interrupted,
    compare,
    compile_notice,
    evaluate,
    grouped_state_dict,
    merge_grouped_states,
    stream,
)
from xentstream.kinds import KINDS, Kind
from xentstream.metrics import Metric
from xentstream.report import SCALAR_FIELDS, Report, format_value
from xentstream.state import read_json, write_json_atomic

__all__ = ["main"]

_TABLE_FIELDS = SCALAR_FIELDS  # the table shows what Report's str shows, in that order
#: ``--task`` names -> kinds.
_TASKS: dict[str, Kind] = {kind.task: kind for kind in KINDS.values()}
#: ``--input`` values that belong to one kind alone (the tokens task's) -> that kind.
_KIND_INPUTS: dict[str, Kind] = {
    value: kind for kind in KINDS.values() for value in kind.cli_inputs
}
#: Loss flags written by hand (their help names the tasks), each setting the config
#: field of its dest's name; ``--per-class`` sets the kind's ``breakdown_field``.
_LOSS_FLAGS = (
    "class_weight",
    "pos_weight",
    "ignore_index",
    "label_smoothing",
    "sum_tol",
    "calibration_bins",
)
#: Config fields the command line leaves at their defaults (eps: the dtype's machine
#: epsilon; validate: always on) or fills from another flag (unit: the --units
#: column's name). Class counts are inferred from the data.
_FIELDS_WITHOUT_FLAGS = ("input", "eps", "validate", "unit")


#: Seconds to wait for ``--dask ADDRESS``'s scheduler before giving up.
_CONNECT_TIMEOUT_S = 30
#: Seconds a ``--dask`` run waits with no worker alive before it fails.
_NO_WORKERS_TIMEOUT_S = 60


class _UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; option help starts in a wider column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


#: Python argument names as the command line spells them, for error messages that come
#: from the API (``batch_rows: must be ...`` -> ``--batch-rows: must be ...``).
_FLAGS = {
    "batch_rows": "--batch-rows",
    "class_weight": "--class-weight",
    "pos_weight": "--pos-weight",
    "ignore_index": "--ignore-index",
    "label_smoothing": "--label-smoothing",
    "sum_tol": "--sum-tol",
    "calibration_bins": "--calibration-bins",
    "classes": "--classes",
    "input": "--input",
    "engine": "--engine",
    "by": "--by",
    "sample_weight": "--sample-weight",
}


def _with_flags(message: str) -> str:
    """An API error message in command-line terms: flags instead of Python arguments."""
    # The token kind's inputs have their own flag values.
    message = re.sub(r"\binput='nll' for token", "--input target-nll for token", message)
    message = re.sub(r"\binput='logprobs' for token", "--input target-logprob for token", message)
    message = re.sub(r"\b(input|engine)='(\w+)'", r"--\1 \2", message)
    message = re.sub(r"\bsum_tol=", "--sum-tol ", message)
    message = re.sub(
        r"\b(a larger|is not) (sum_tol|ignore_index)\b", lambda m: f"{m[1]} {_FLAGS[m[2]]}", message
    )
    head, colon, rest = message.partition(": ")
    # A column's message reads "COL: row N: ..."; only argument messages are renamed.
    if colon and head in _FLAGS and not rest.startswith("row "):
        message = f"{_FLAGS[head]}: {rest}"
    return message


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


_DESCRIPTION = """\
Exact, streaming cross-entropy over prediction dumps of any size.

Every sum is exact (the correctly rounded value of the exact sum), so a result is
bitwise identical for any batch size, thread count, shard split or merge order."""

_EXAMPLES = """\
examples:
  # a wide dump: one probability column per class (a glob or a ^regex$ names them)
  xentstream evaluate preds.parquet --preds 'p_*' --target label
  # logits in one Array column, per group, resumable, as JSON
  xentstream evaluate 'dumps/*.parquet' --preds logits --target label --input logits \\
      --by country --checkpoint run.ckpt --format json
  # language-model tokens: Array[(T, V)] logits, Array[T] token ids, padding -100
  xentstream evaluate lm.parquet --preds logits --target tokens --input logits \\
      --ignore-index -100
  # token log-probability dumps: perplexity, bits per byte, stderrs clustered by document
  xentstream evaluate tokens.parquet --input target-logprob --preds lp --document doc_id \
      --units bytes
  # numpy dumps: the predictions file is the source, the labels file the target
  xentstream evaluate probs.npy --target labels.npy
  # combine the states saved by shards
  xentstream merge shard-*.json --format json"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xentstream",
        description=_DESCRIPTION,
        epilog=_EXAMPLES + "\n\nRun 'xentstream evaluate --help' for every option.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"xentstream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "evaluate",
        help="evaluate prediction dumps (files, globs, .npy)",
        description="Evaluate a cross-entropy loss over prediction dumps, in bounded memory.",
        epilog=_EXAMPLES,
        formatter_class=_Formatter,
    )
    run.add_argument(
        "source",
        nargs="+",
        metavar="SOURCE",
        help="Parquet, Arrow IPC / Feather, CSV or NDJSON files or globs (one format), "
        "or one .npy file of predictions",
    )
    columns = run.add_argument_group("columns")
    columns.add_argument(
        "--preds",
        nargs="+",
        metavar="COL",
        help="prediction column(s): one Array / List column, or one column per class; "
        "each COL may be a glob ('p_*') or a regex ('^p_\\d+$'), matched in file order. "
        "Required except for a .npy source, which holds the predictions itself",
    )
    columns.add_argument(
        "--target",
        nargs="+",
        metavar="COL",
        help="target column(s) (patterns as for --preds): integer or string class labels, "
        "0/1 or probabilities; for a .npy source, the .npy file of targets. Required "
        "except for the tokens task, where it is an optional 0/1 mask (0: padding)",
    )
    columns.add_argument("--sample-weight", metavar="COL", help="column of row weights")
    _add_token_columns(columns)
    columns.add_argument(
        "--by",
        nargs="+",
        metavar="COL",
        help="group columns: one report per group as well, in the same pass",
    )
    columns.add_argument(
        "--classes",
        type=_name_list,
        metavar="A,B,...",
        help="class names of string labels, in the order of the prediction columns "
        "(default: the wide prediction column names)",
    )
    loss = run.add_argument_group("loss")
    _add_loss_options(loss)
    loss.add_argument(
        "--per-class",
        action="store_true",
        help="also report per-class (per-label) loss, counts and normalized entropy; "
        "tokens task: the per-document table; not for the binary task (one class)",
    )
    _add_calibration_flag(loss)
    running = run.add_argument_group("running")
    running.add_argument(
        "--batch-rows",
        type=int,
        metavar="N",
        help="rows per batch (default: about 64 MiB of predictions)",
    )
    running.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="save the exact state here every few seconds and on Ctrl-C / SIGTERM; "
        "rerunning the same command resumes (bitwise equal to one uninterrupted run)",
    )
    running.add_argument(
        "--engine",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the kernels run (default: auto, the CPU for files)",
    )
    _add_dask_flag(running)
    running.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: a bar when stderr is a terminal)",
    )
    output = run.add_argument_group("output")
    output.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default: table)",
    )
    output.add_argument("--output", metavar="FILE", help="write the report here (default: stdout)")
    _add_group_flags(output)
    output.add_argument(
        "--save-state",
        metavar="FILE",
        help="write the final exact metric state (JSON, with the groups' states under --by) "
        "for 'xentstream merge'",
    )
    output.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the running loss with its 95%% band (per group with --by, per-class bars "
        "with --per-class), the reliability diagram with --calibration-bins (and a curve per "
        "class with --per-class too); needs matplotlib",
    )

    _add_compare_parser(commands)

    merge = commands.add_parser(
        "merge",
        help="combine metric states saved by shards (--save-state)",
        description="Combine metric states saved with --save-state (exact: any order, the "
        "same bits).",
        formatter_class=_Formatter,
    )
    merge.add_argument("states", nargs="+", metavar="STATE.json", help="saved metric states")
    merge.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default: table)",
    )
    merge.add_argument("--output", metavar="FILE", help="write the report here (default: stdout)")
    merge.add_argument("--save-state", metavar="FILE", help="write the merged state here")
    _add_group_flags(merge)
    return parser


def _add_dask_flag(running: Any) -> None:
    """--dask (evaluate and compare): the same rules for both (:func:`_check_dask_args`)."""
    running.add_argument(
        "--dask",
        metavar="ADDRESS|local[:N]",
        help="run on a Dask cluster: a scheduler's address, or N local worker processes "
        "(Parquet / Arrow IPC sources)",
    )


def _add_token_columns(columns: Any) -> None:
    """--document and --units: the tokens task's side columns (evaluate and compare)."""
    columns.add_argument(
        "--document",
        metavar="COL",
        help="tokens task: column of document ids (rows in any order): per-document "
        "perplexity and standard errors clustered by document",
    )
    columns.add_argument(
        "--units",
        metavar="COL",
        help="tokens task: column of the bytes (characters, words) each row covers: "
        "bits per unit with its delta-method standard error",
    )


def _check_target(args: argparse.Namespace) -> None:
    owner = _KIND_INPUTS.get(args.input)
    if not args.target and not (owner is not None and owner.target_optional):
        raise _UsageError("--target is required (except for --input target-logprob / target-nll)")


def _is_npy(source: list[str]) -> bool:
    return str(source[0]).lower().endswith(".npy")


def _schema(source: list[str]) -> pl.Schema | None:
    from xentstream.feeders import expand_paths, file_schema

    return file_schema(expand_paths(source))


def _expand_columns(patterns: list[str], names: list[str], flag: str) -> list[str]:
    """Column names for ``patterns``: exact names, globs (``p_*``) or regexes (``^p_\\d+$``,
    polars' convention), matched in the file's column order."""
    out: list[str] = []
    for pattern in patterns:
        if pattern in names:
            matches = [pattern]
        elif pattern.startswith("^") and pattern.endswith("$"):
            try:
                regex = re.compile(pattern)
            except re.error as error:
                raise _UsageError(f"{flag}: {pattern!r} is not a valid regex ({error})") from None
            matches = [name for name in names if regex.fullmatch(name)]
        elif glob.has_magic(pattern):
            matches = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        else:
            matches = [pattern]  # a plain name: the feeder says that no such column exists
        if not matches:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise _UsageError(f"{flag}: {pattern!r} matches no column; the source has {shown}")
        out.extend(name for name in matches if name not in out)
    return out


def _row_shape(dtype: pl.DataType | None) -> tuple[tuple[int | None, ...], pl.DataType | None]:
    """(shape of one row's value, leaf dtype) of a column: () for scalars, None for a
    List's unknown width."""
    shape: list[int | None] = []
    while isinstance(dtype, pl.Array | pl.List):
        if isinstance(dtype, pl.Array):
            shape.append(dtype.shape[0])
        else:
            shape.append(None)
        dtype = dtype.inner
    return tuple(shape), dtype


def _same_shape(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


def _task_from_shapes(
    preds: tuple[int | None, ...], target: tuple[int | None, ...], where: str
) -> str:
    """The task of predictions and targets whose rows have these shapes (SPEC section 2:
    classes are the last axis of the predictions): the kind whose ``target_shape``
    they fit."""
    fits = {
        "scalar": not preds and not target,
        "labels": bool(preds) and _same_shape(target, preds[:-1]),
        "preds": bool(preds) and _same_shape(target, preds),
    }
    for kind in KINDS.values():
        if kind.target_shape is not None and fits[kind.target_shape]:
            return kind.task
    if not preds:
        raise _UsageError(
            f"--task: cannot tell the task from {where}: one prediction per row and targets "
            f"of shape {_show(target)}; pass --task"
        )
    raise _UsageError(
        f"--task: cannot tell the task from {where}: predictions of shape {_show(preds)} "
        f"per row and targets of shape {_show(target)}; expected targets of shape "
        f"{_show(preds[:-1])} (multiclass labels) or {_show(preds)} (multi-label); "
        "pass --task"
    )


def _show(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("?" if n is None else str(n) for n in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def _infer_task(args: argparse.Namespace, schema: pl.Schema | None) -> str:
    """``--task auto``: from the columns' types and shapes (or the .npy arrays')."""
    owner = _KIND_INPUTS.get(args.input)  # a kind of its own inputs (tokens)
    chosen = _TASKS.get(args.task)
    if chosen is not None and chosen.cli_inputs and owner is not chosen:
        needed = " or ".join(chosen.cli_inputs)
        raise _UsageError(f"--task {args.task}: needs --input {needed}")
    if owner is not None and args.task not in ("auto", owner.task):
        raise _UsageError(f"--input {args.input}: is the {owner.task} task, not {args.task}")
    if owner is not None:
        return owner.task
    for kind in KINDS.values():
        for flag in kind.side_columns:  # --document, --units
            if getattr(args, flag, None) is not None:
                needed = " / ".join(kind.cli_inputs) or f"--task {kind.task}"
                raise _UsageError(f"--{flag}: applies to --input {needed}")
    if args.task != "auto":
        return args.task
    if schema is None:  # .npy: the arrays' shapes, read from their headers
        from xentstream.feeders import npy_shape

        preds = npy_shape(args.source[0], "source")
        target = npy_shape(args.target[0], "--target")
        return _task_from_shapes(preds[1:], target[1:], "the .npy files")

    def columns(names: list[str]) -> tuple[int | None, ...]:
        if len(names) > 1:  # wide: one scalar column per class (label)
            return (len(names),)
        return _row_shape(schema.get(names[0]))[0]

    return _task_from_shapes(columns(args.preds), columns(args.target), "the columns")


def _unit_name(column: str | None) -> str | None:
    """What a units column counts, from its name ("bytes" -> "byte"), for the labels."""
    if column is None:
        return None
    singular = column.lower().removesuffix("s").removeprefix("n_").removeprefix("num_")
    return singular if singular in ("byte", "char", "character", "word") else None


def _pairable_task(args: argparse.Namespace, schema: pl.Schema | None) -> str:
    task = _infer_task(args, schema)
    if not KINDS[task].pairable:
        raise _UsageError(f"compare: the {task} task cannot be compared yet (not built)")
    return task


def _config_flags() -> dict[str, list[Kind]]:
    """Every config field a loss flag sets, by name (its flag's dest), with the kinds
    whose config has it: the hand-written flags, ``per_class`` and one generated flag
    per further option (:func:`_add_config_flags`)."""
    found: dict[str, list[Kind]] = {name: [] for name in (*_LOSS_FLAGS, "per_class")}
    for kind in KINDS.values():
        derived = {kind.count_field, kind.breakdown_field, *_FIELDS_WITHOUT_FLAGS}
        for field in dataclasses.fields(kind.config):
            if field.name not in derived:
                found.setdefault(field.name, []).append(kind)
    return found


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flag_type(field: dataclasses.Field) -> Any:
    """What argparse turns a generated flag's text into, from the field's annotation."""
    annotation = str(field.type)
    if annotation.startswith("tuple"):
        return _float_list
    for name, convert in (("bool", bool), ("int", int), ("float", float)):
        if annotation.split(" ")[0] == name:
            return convert
    return str


def _add_config_flags(loss: Any) -> None:
    """A flag for each config option without a hand-written one: a new option of a
    kind's config is on the command line as ``--its-name`` with no change here."""
    for name, kinds in _config_flags().items():
        if name in (*_LOSS_FLAGS, "per_class"):
            continue
        field = next(f for f in dataclasses.fields(kinds[0].config) if f.name == name)
        tasks = " and ".join(kind.task for kind in kinds)
        kind_of_value = _flag_type(field)
        if kind_of_value is bool:
            loss.add_argument(_flag(name), action="store_true", help=f"{tasks}: {name}=True")
            continue
        loss.add_argument(
            _flag(name),
            type=kind_of_value,
            metavar=name.upper(),
            help=f"{tasks}: the {name}= option (default: {field.default})",
        )


def _field_value(flag: str, field: dataclasses.Field, value: Any, task: str) -> Any:
    """A flag's value as its config field takes it: one number or a tuple of them."""
    if not isinstance(value, list):
        return value
    annotation = str(field.type)
    many = "tuple" in annotation
    one = "float" in annotation.replace("tuple[float, ...]", "")
    if len(value) == 1 and one:
        return value[0]
    if not many:
        raise _UsageError(f"{flag}: the {task} task takes one value")
    return value


def _metric(args: argparse.Namespace, task: str) -> Metric:
    """The metric of ``task`` with the options the loss flags set: each flag sets the
    config field of its name, where the kind's config has one."""
    kind = _TASKS[task]
    fields = {field.name: field for field in dataclasses.fields(kind.config)}
    options: dict[str, Any] = {"input": kind.cli_inputs.get(args.input, args.input)}
    for name in _config_flags():
        value = getattr(args, name, None)
        if value is None or value is False:  # not given
            continue
        field = kind.breakdown_field if name == "per_class" else name
        if field is None or field not in fields:  # (--per-class: the kind keeps no breakdown)
            raise _UsageError(f"{_flag(name)}: does not apply to the {task} task")
        options[field] = _field_value(_flag(name), fields[field], value, task)
    if "unit" in fields:
        options["unit"] = _unit_name(getattr(args, "units", None))
    return Metric.for_config(kind.config(**options), engine=args.engine)


_format_value = format_value


def _add_group_flags(output: Any) -> None:
    """--sort, --top and --min-count: which groups a grouped report shows, in what order."""
    output.add_argument(
        "--sort",
        choices=("key", "loss"),
        default="key",
        help="order of the groups: by key (default) or by mean loss, highest first",
    )
    output.add_argument(
        "--top",
        type=_non_negative,
        metavar="K",
        help="show only the K groups of highest mean loss (the worst), highest first",
    )
    output.add_argument(
        "--min-count",
        type=_non_negative,
        default=0,
        metavar="N",
        help="show only groups with at least N counted rows (before --top)",
    )


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _shown_groups(result: Report | GroupedReport, args: argparse.Namespace) -> Any:
    """The groups --min-count, --sort and --top select (states are saved whole, before)."""
    if not isinstance(result, GroupedReport):
        if args.top is not None or args.min_count or args.sort != "key":
            raise _UsageError("--sort, --top and --min-count apply to grouped runs (--by)")
        return result
    if args.min_count:
        result = result.filter(min_count=args.min_count)
    if args.top is not None:
        return result.top(args.top)
    return result.sorted(args.sort)


def _table(result: Report | GroupedReport) -> str:
    out = io.StringIO()
    overall = result.overall if isinstance(result, GroupedReport) else result
    width = overall.label_width()
    for name in _TABLE_FIELDS:
        value = getattr(overall, name)
        if value is not None:
            out.write(f"{overall.label(name):<{width}}  {_format_value(value)}\n")
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_hide_dataframe_shape=True):
        if overall.per_class is not None:
            out.write(f"\n{overall.per_class}\n")
        if overall.per_document is not None:
            out.write(f"\n{overall.per_document}\n")
        if isinstance(result, GroupedReport):
            columns = [*result.by, "count", "loss", "stderr", "perplexity", "accuracy"]
            if overall.calibration is not None:  # --calibration-bins: each group's too
                columns += ["ece", "mce", "brier"]
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
    overall = result.overall if isinstance(result, GroupedReport) else result
    if overall.per_class is not None:
        # Long format, one table: the per-class rows follow the overall row, named in
        # the class (label) column, which is empty on the overall and group rows.
        column = overall.per_class.columns[0]
        for row in rows:
            row[column] = None
        for entry in overall.per_class.to_dicts():
            rows.append(
                {
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in entry.items()
                }
            )
    fields = list(dict.fromkeys(name for row in rows for name in row))
    if overall.per_class is not None:  # the class (label) column first: it names the row
        column = overall.per_class.columns[0]
        fields = [column, *(name for name in fields if name != column)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _flat(report: Report) -> dict[str, Any]:
    data = report.to_dict()
    data.pop("per_class")
    data.pop("per_document", None)  # a table of its own (--format json has it)
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


#: The plot draws a point per batch; it picks batches small enough for about this many.
_PLOT_POINTS = 200
#: Groups drawn as their own running-loss line (more would be unreadable).
_PLOT_GROUP_LINES = 8
#: Bars drawn in the per-group and per-class panels.
_PLOT_BARS = 40


def _plot_batch_rows(source: Any, args: argparse.Namespace) -> int | None:
    """Rows per batch for ``--plot``: about ``_PLOT_POINTS`` points whatever the size
    (None, the default, once batches of that size would be large anyway)."""
    from xentstream.feeders import count_rows, expand_paths

    total = count_rows(expand_paths(source))
    rows = max(1, math.ceil(total / _PLOT_POINTS))
    return rows if rows < 1 << 16 else None


def _history_point(result: Report | GroupedReport) -> dict[str, Any]:
    """What the plot needs of one running report."""
    overall = result.overall if isinstance(result, GroupedReport) else result
    point = {
        "rows": overall.count + overall.ignored,
        "loss": overall.loss,
        "ci95": overall.ci95,
        "loss_sum": overall.loss_sum,
        "weight_sum": overall.weight_sum,
        "groups": {},
    }
    if isinstance(result, GroupedReport) and len(result.groups) <= _PLOT_GROUP_LINES:
        point["groups"] = {key: report.loss for key, report in result.groups.items()}
    return point


def _key_label(by: tuple[str, ...], key: tuple[Any, ...]) -> str:
    return ", ".join(f"{name}={value}" for name, value in zip(by, key, strict=True))


def _figure(history: list[dict[str, Any]], result: Report | GroupedReport) -> Any:
    """The ``--plot`` figure: running loss (+ per-batch points, per-group lines), the
    groups' losses and the per-class losses, each with its 95% interval, and the
    reliability diagram with ``--calibration-bins`` (and, with ``--per-class`` too, a
    reliability curve per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = result.overall if isinstance(result, GroupedReport) else result
    grouped = isinstance(result, GroupedReport) and bool(result.groups)
    calibration = overall.calibration
    class_curves = calibration is not None and bool(calibration.classes)
    panels = 1 + grouped + (overall.per_class is not None) + (calibration is not None)
    panels += class_curves
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    line_axes = axes.pop(0)
    rows = [h["rows"] for h in history]
    marker = "o" if len(history) < 30 else None  # a few batches: show each one
    # Batch means: the loss of the rows read since the previous point. On a file sorted
    # by anything, they show the order that the running mean would smear into a trend.
    batch_rows, batch_means = [], []
    previous = {"loss_sum": 0.0, "weight_sum": 0.0}
    for point in history:
        weight = point["weight_sum"] - previous["weight_sum"]
        if weight > 0:
            batch_rows.append(point["rows"])
            batch_means.append((point["loss_sum"] - previous["loss_sum"]) / weight)
        previous = point
    if len(batch_means) > 1:
        line_axes.scatter(batch_rows, batch_means, s=6, color="0.6", label="batch mean", zorder=1)
    line_axes.plot(
        rows, [h["loss"] for h in history], marker=marker, color="C0", label="running loss"
    )
    banded = [(r, h["ci95"]) for r, h in zip(rows, history, strict=True) if h["ci95"]]
    if banded:
        line_axes.fill_between(
            [b[0] for b in banded],
            [max(b[1][0], 0.0) for b in banded],  # a loss is >= 0; the normal band is not
            [b[1][1] for b in banded],
            alpha=0.25,
            color="C0",
            label="95% interval",
            zorder=2,
        )
    curve = grouped and _is_curve(result)
    if grouped and not curve and history and history[-1]["groups"]:
        for index, key in enumerate(history[-1]["groups"]):
            points = [(h["rows"], h["groups"][key]) for h in history if key in h["groups"]]
            line_axes.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=f"C{index + 1}",
                linewidth=1,
                label=f"{_key_label(result.by, key)}: {result.groups[key].loss:.4g}",
            )
    _settled_ylim(line_axes, history, batch_means)
    line_axes.set_xlabel("rows read, in file order")
    line_axes.set_ylabel("loss (nats)")
    line_axes.legend(fontsize="small")
    title = f"loss {overall.loss:.4g}"
    if overall.ci95 is not None:
        title += f" ± {(overall.ci95[1] - overall.ci95[0]) / 2:.2g} (95%)"
    line_axes.set_title(f"{title} over {overall.count:,} rows")
    if curve:
        _curve(axes.pop(0), result)
    elif grouped:
        _bars(
            axes.pop(0),
            [
                f"{_key_label(result.by, key)} (n={report.count:,})"
                for key, report in result.groups.items()
            ],
            [report.loss for report in result.groups.values()],
            [report.ci95 for report in result.groups.values()],
            [report.count for report in result.groups.values()],
            overall.loss,
            f"loss by {', '.join(result.by)}",
        )
    if overall.per_class is not None:
        frame = overall.per_class
        column = frame.columns[0]
        counts = frame["count" if "count" in frame.columns else "positives"].to_list()
        _bars(
            axes.pop(0),
            [f"{name} (n={n:,})" for name, n in zip(frame[column].to_list(), counts, strict=True)],
            frame["loss"].to_list(),
            None,
            counts,
            None,
            f"mean loss per {column}",
        )
    if calibration is not None:  # --calibration-bins: the reliability diagram
        calibration.plot(ax=axes.pop(0))
    if class_curves:  # and --per-class: a reliability curve per class (label)
        names = None if overall.per_class is None else overall.per_class[:, 0].to_list()
        calibration.plot(ax=axes.pop(0), per_class=True, names=names, most=_PLOT_GROUP_LINES)
    figure.tight_layout()
    return figure


#: Groups of one numeric key from which ``--plot`` draws a curve instead of bars.
_CURVE_GROUPS = 12


def _is_curve(result: GroupedReport) -> bool:
    """Many groups of one numeric key (a token's position in its context, a step, a
    length): a curve of the loss against the key says more than a bar per group."""
    keys = [key[0] for key in result.groups]
    numeric = all(isinstance(k, int | float) and not isinstance(k, bool) for k in keys)
    return len(result.by) == 1 and numeric and len(keys) > _CURVE_GROUPS


def _curve(axes: Any, result: GroupedReport) -> None:
    """Loss against the (numeric) group key with its 95% band: a per-position curve."""
    points = sorted((key[0], report) for key, report in result.groups.items())
    xs = [x for x, _ in points]
    axes.plot(xs, [r.loss for _, r in points], color="C1", label="loss")
    banded = [(x, r.ci95) for x, r in points if r.ci95 is not None]
    if banded:
        axes.fill_between(
            [b[0] for b in banded],
            [max(b[1][0], 0.0) for b in banded],
            [b[1][1] for b in banded],
            alpha=0.25,
            color="C1",
            label="95% interval",
        )
    axes.axhline(result.overall.loss, color="0.5", linewidth=1, linestyle="--", label="overall")
    axes.set_xlabel(result.by[0])
    axes.set_ylabel("loss (nats)")
    axes.set_title(f"loss by {result.by[0]} ({len(points):,} groups)")
    axes.legend(fontsize="small")


def _settled_ylim(axes: Any, history: list[dict[str, Any]], batch_means: list[float]) -> None:
    """Y range for the settled part of the run: the first few rows' swings (a handful of
    rows, a wide band) would otherwise flatten everything after them."""
    if len(history) < 10:
        return
    settled = history[len(history) // 10 :]
    values = [h["loss"] for h in settled] + [h["ci95"][1] for h in settled if h["ci95"]]
    values += [v for point in settled for v in point["groups"].values()]
    if batch_means:
        values.append(float(np.quantile(batch_means, 0.98)))
    values = [v for v in values if math.isfinite(v)]
    if values:
        axes.set_ylim(0.0, max(values) * 1.15 or 1.0)


def _bars(
    axes: Any,
    labels: list[str],
    values: list[float],
    intervals: list[tuple[float, float] | None] | None,
    counts: list[int],
    reference: float | None,
    title: str,
) -> None:
    """Horizontal bars, one per label (the ``_PLOT_BARS`` largest by count)."""
    order = sorted(range(len(labels)), key=lambda i: -counts[i])[:_PLOT_BARS]
    order.sort()  # back in table order
    shown = [v if v is not None and math.isfinite(v) else 0.0 for v in (values[i] for i in order)]
    errors = None
    if intervals is not None:
        below, above = [], []
        for i in order:
            low, high = intervals[i] if intervals[i] is not None else (values[i], values[i])
            below.append(values[i] - low)
            above.append(high - values[i])
        errors = [below, above]
    positions = list(range(len(order)))
    axes.barh(positions, shown, xerr=errors, color="C0", alpha=0.8)
    axes.set_yticks(positions, [labels[i] for i in order], fontsize="small")
    axes.invert_yaxis()  # first label on top, as in the table
    if reference is not None and math.isfinite(reference):
        axes.axvline(reference, color="0.3", linestyle="--", linewidth=1, label="overall")
        axes.legend(fontsize="small")
    if len(order) < len(labels):
        title += f" ({len(order)} of {len(labels)}, by count)"
    axes.set_title(title)
    axes.set_xlabel("loss (nats)")


def _plot(path: str, history: list[dict[str, Any]], result: Report | GroupedReport) -> None:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "xentstream[plot]"') from None
    figure = _figure(history, result)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _evaluate(args: argparse.Namespace) -> int:
    _check_target(args)
    if args.dask is not None:
        _check_dask_args(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the long run
        raise ImportError('--plot needs matplotlib: pip install "xentstream[plot]"')
    schema = _resolve_columns(args)
    task = _infer_task(args, schema)
    metric = _metric(args, task)
    source: Any = args.source if len(args.source) > 1 else args.source[0]
    if schema is None:  # .npy: the source holds the predictions, --target names a file
        preds, target = None, args.target[0]
    else:
        preds = args.preds[0] if len(args.preds) == 1 else args.preds
        target = args.target and (args.target[0] if len(args.target) == 1 else args.target)
    options = {
        "preds": preds,
        "target": target,
        **({"document": args.document} if args.document else {}),
        **({"units": args.units} if args.units else {}),
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
        result = _on_dask(args.dask, source, metric, options)
    elif args.plot:
        if options["batch_rows"] is None:
            options["batch_rows"] = _plot_batch_rows(source, args)
        history = []
        result = None
        for result in stream(source, metric, **options):
            history.append(_history_point(result))
        if result is None:
            result = evaluate([], metric)
        _plot(args.plot, history, result)
    else:
        result = evaluate(source, metric, **options)
    if args.save_state:
        if isinstance(result, GroupedReport):  # the groups' states too, for merge
            write_json_atomic(args.save_state, grouped_state_dict(result))
        else:
            metric.save(args.save_state)
    overall = result.overall if isinstance(result, GroupedReport) else result
    if overall.count + overall.ignored == 0:
        warnings.warn("the source holds no rows: nothing was evaluated", stacklevel=1)
    with compile_notice():  # --top and the groups' table compile kernels of their own
        _write(_render(_shown_groups(result, args), args.format), args.output)
    return 0


def _resolve_columns(args: argparse.Namespace) -> pl.Schema | None:
    """Check the column flags against the source; expand patterns in place.

    Returns the source's schema (None for a .npy source, which has no columns)."""
    if _is_npy(args.source):
        if args.preds is not None:
            raise _UsageError(
                "--preds: a .npy source is the predictions array itself; leave --preds out"
            )
        if not args.target or len(args.target) != 1:
            raise _UsageError("--target: a .npy source takes one .npy file of targets")
        return None
    if args.preds is None:
        raise _UsageError(
            "--preds is required for Parquet / IPC / CSV / NDJSON sources: name the "
            "prediction column(s)"
        )
    schema = _schema(args.source)
    names = list(schema.names())
    args.preds = _expand_columns(args.preds, names, "--preds")
    if args.target:
        args.target = _expand_columns(args.target, names, "--target")
    if args.by:
        args.by = _expand_columns(args.by, names, "--by")
    return schema


def _check_dask_args(args: argparse.Namespace) -> None:
    """Reject what a Dask run cannot do, before any cluster starts: ``evaluate``'s and
    ``compare``'s arguments (``compare`` has no --checkpoint or --plot; its
    --baseline-source files are read on the workers too)."""
    if getattr(args, "checkpoint", None):
        raise _UsageError(
            "--checkpoint cannot be combined with --dask: Dask reruns lost partitions itself"
        )
    if getattr(args, "plot", None):
        raise _UsageError("--plot draws the running loss of one process; it cannot use --dask")
    from xentstream.feeders import SPLITTABLE_SUFFIXES

    paths = [*args.source, *(getattr(args, "baseline_source", None) or ())]
    suffixes = {Path(path).suffix.lower() for path in paths}
    if not suffixes <= set(SPLITTABLE_SUFFIXES):
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


def _on_dask(
    address: str, source: Any, metric: Metric | Comparison, options: dict[str, Any]
) -> Report | GroupedReport | ComparisonReport | GroupedComparison:
    """``xentstream.dask.evaluate(source, metric, **options)`` on the cluster of
    ``--dask`` (``evaluate``'s metric or ``compare``'s comparison, updated in place), its
    failures as one-line usage errors. Returns the report (a comparison's for a
    comparison)."""
    from xentstream import dask as xentstream_dask

    xentstream_dask.require_dask(distributed=True)
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
    address: str, source: Any, metric: Metric | Comparison, options: dict[str, Any]
) -> Report | GroupedReport | ComparisonReport | GroupedComparison:
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
    with compile_notice():  # loading and merging states compile kernels of their own
        return _merge_states(args)


def _merge_states(args: argparse.Namespace) -> int:
    states = [read_json(path) for path in args.states]
    grouped = [isinstance(s, dict) and s.get("format") == GROUPED_FORMAT for s in states]
    if any(grouped):
        if not all(grouped):
            plain = args.states[grouped.index(False)]
            raise _UsageError(
                f"merge: {plain} holds no groups but other states do (saved with --by); "
                "merge states of one kind"
            )
        try:
            result = merge_grouped_states(states, [str(path) for path in args.states])
        except ValueError as error:
            raise ValueError(f"merge: {error}") from None
        if args.save_state:
            write_json_atomic(args.save_state, grouped_state_dict(result))
        _write(_render(_shown_groups(result, args), args.format), args.output)
        return 0
    metrics = [load_state(path) for path in args.states]
    merged = metrics[0]
    for other in metrics[1:]:
        merged.merge(other)
    if args.save_state:
        merged.save(args.save_state)
    if isinstance(merged, Comparison):
        _write(_render_comparison(merged.compute(), args.format), args.output)
        return 0
    _write(_render(_shown_groups(merged.compute(), args), args.format), args.output)
    return 0


_COMPARE_EXAMPLES = """\
examples:
  # two models' probability columns in one dump
  xentstream compare preds.parquet --preds new --baseline-preds old --target label
  # each model in its own dump, rows in the same order (ids checked), with calibration
  xentstream compare new.parquet --baseline-source old.parquet --row-id id \\
      --preds p --baseline-preds p --target label --calibration-bins 15
  # two language models' target log-probabilities: clustered by document, bits per
  # byte, and the documents side by side
  xentstream compare tokens.parquet --input target-logprob --preds lp_new \\
      --baseline-preds lp_old --target mask --document doc_id --units bytes --per-class
  # (T, V) logits and T token ids per row, padding -100
  xentstream compare lm.parquet --preds logits_new --baseline-preds logits_old \\
      --target tokens --input logits --ignore-index -100
  # on 4 local worker processes (or a scheduler's address): the same report, bitwise
  xentstream compare 'dumps/*.parquet' --preds new --baseline-preds old --target label \\
      --by country --dask local:4"""


def _add_compare_parser(commands: Any) -> None:
    """``xentstream compare``: the loss options of ``evaluate``, two prediction columns."""
    run = commands.add_parser(
        "compare",
        help="compare two models' predictions for the same rows (paired)",
        description="Paired comparison of two models on the same rows: the mean per-row loss "
        "difference (model - baseline), its standard error, 95%% interval and p-value, the "
        "share of rows where each model is better, and each model's own report.",
        epilog=_COMPARE_EXAMPLES,
        formatter_class=_Formatter,
    )
    run.add_argument(
        "source",
        nargs="+",
        metavar="SOURCE",
        help="Parquet, Arrow IPC / Feather, CSV or NDJSON files or globs (one format)",
    )
    columns = run.add_argument_group("columns")
    columns.add_argument(
        "--preds",
        nargs="+",
        required=True,
        metavar="COL",
        help="the model's prediction column(s), as evaluate's --preds (patterns too)",
    )
    columns.add_argument(
        "--baseline-preds",
        nargs="+",
        required=True,
        metavar="COL",
        help="the baseline model's prediction column(s), for the same rows",
    )
    columns.add_argument(
        "--target",
        nargs="+",
        metavar="COL",
        help="target column(s), shared; required except for the tokens task, where it is "
        "an optional 0/1 mask (0: padding)",
    )
    columns.add_argument("--sample-weight", metavar="COL", help="column of row weights")
    _add_token_columns(columns)
    columns.add_argument(
        "--classes", type=_name_list, metavar="A,B,...", help="class names of string labels"
    )
    columns.add_argument(
        "--baseline-source",
        nargs="+",
        metavar="FILE",
        help="files holding --baseline-preds and --target for the same rows, in the same "
        "order (default: SOURCE); their targets must match SOURCE's row by row",
    )
    columns.add_argument(
        "--row-id", metavar="COL", help="with --baseline-source: a column checked to match"
    )
    columns.add_argument(
        "--by", nargs="+", metavar="COL", help="group columns: a comparison per group as well"
    )
    loss = run.add_argument_group("loss")
    _add_loss_options(loss)
    loss.add_argument(
        "--per-class",
        action="store_true",
        help="tokens task: the documents side by side (each model's loss and their "
        "difference); other tasks: each model's per-class table (in --format json)",
    )
    _add_calibration_flag(loss)
    running = run.add_argument_group("running")
    running.add_argument("--batch-rows", type=int, metavar="N", help="rows per batch")
    running.add_argument(
        "--engine",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the kernels run (default: auto, the CPU for files)",
    )
    _add_dask_flag(running)
    output = run.add_argument_group("output")
    output.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format"
    )
    output.add_argument("--output", metavar="FILE", help="write the report here (default: stdout)")
    output.add_argument(
        "--save-state", metavar="FILE", help="write the exact comparison state (for merge)"
    )


def _add_loss_options(loss: Any) -> None:
    """The options that make a metric (``_metric``), shared by evaluate and compare."""
    loss.add_argument(
        "--task",
        choices=("auto", *_TASKS),
        default="auto",
        help="default: auto, from the columns' types and shapes: one score per row is "
        "binary; labels with the predictions' shape minus the class axis are multiclass "
        "(also (T, V) token logits with T labels); targets of the predictions' shape are "
        "multi-label (soft multiclass targets need --task multiclass); --input "
        "target-logprob / target-nll is the tokens task",
    )
    loss.add_argument(
        "--input",
        choices=(*INPUT_KINDS, *_KIND_INPUTS),
        default="probs",
        help="what the predictions hold (default: probs); target-logprob / target-nll: "
        "one value a row, the log-probability (NLL) of the token that came",
    )
    loss.add_argument(
        "--class-weight",
        type=_float_list,
        metavar="W,...",
        help="multiclass: one weight per class (default: all 1)",
    )
    loss.add_argument(
        "--pos-weight",
        type=_float_list,
        metavar="W[,...]",
        help="binary and multi-label: weight of the positive term, one or one per label",
    )
    loss.add_argument(
        "--ignore-index",
        type=int,
        metavar="K",
        help="multiclass: drop rows (tokens) whose label is K, e.g. -100 for padding",
    )
    loss.add_argument(
        "--label-smoothing",
        type=float,
        metavar="E",
        help="multiclass: mix the target with the uniform distribution (default: 0)",
    )
    loss.add_argument(
        "--sum-tol",
        type=float,
        metavar="TOL",
        help="tolerance of the sum-to-one checks of probability rows (default: sqrt of "
        "the dtype's machine epsilon)",
    )
    _add_config_flags(loss)


def _add_calibration_flag(group: Any) -> None:
    group.add_argument(
        "--calibration-bins",
        type=int,
        metavar="N",
        help="also report calibration from N equal-width reliability bins (ECE, MCE, Brier "
        "score; the top label for multiclass, the positive class otherwise), in the same pass",
    )


def _render_comparison(report: ComparisonReport | GroupedComparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2) + "\n"
    return f"{report}\n"


def _compare(args: argparse.Namespace) -> int:
    if _is_npy(args.source):
        raise _UsageError("compare: reads Parquet / IPC / CSV / NDJSON sources, not .npy")
    _check_target(args)
    if args.by and args.save_state:
        raise _UsageError("--save-state: not with --by (a comparison's groups are not saved)")
    if args.dask is not None:
        _check_dask_args(args)
    schema = _resolve_columns(args)
    baseline = args.baseline_source
    baseline_schema = schema if baseline is None else _schema(baseline)
    args.baseline_preds = _expand_columns(
        args.baseline_preds, list(baseline_schema.names()), "--baseline-preds"
    )
    if args.row_id is not None and baseline is None:
        raise _UsageError("--row-id: only with --baseline-source")
    comparison = Comparison(_metric(args, _pairable_task(args, schema)))

    def one(columns: list[str]) -> Any:
        return columns[0] if len(columns) == 1 else columns

    source = args.source if len(args.source) > 1 else args.source[0]
    # The column arguments of both runs: xs.compare in this process, or the same
    # comparison's partitions on a cluster (bitwise the same report).
    options = {
        "preds": one(args.preds),
        "baseline_preds": one(args.baseline_preds),
        "target": args.target and one(args.target),
        "sample_weight": args.sample_weight,
        "document": args.document,
        "units": args.units,
        "classes": args.classes,
        "baseline_source": None if baseline is None else one(baseline),
        "row_id": args.row_id,
        "by": args.by,
        "batch_rows": args.batch_rows,
    }
    if args.dask is not None:
        report = _on_dask(args.dask, source, comparison, options)
    else:
        report = compare(source, comparison, **options)
    if args.save_state:
        comparison.save(args.save_state)
    overall = report.overall if isinstance(report, GroupedComparison) else report
    if overall.count + overall.model.ignored == 0:
        warnings.warn("the source holds no rows: nothing was compared", stacklevel=1)
    _write(_render_comparison(report, args.format), args.output)
    return 0


def _interrupted(error: KeyboardInterrupt, argv: Sequence[str] | None) -> str:
    """One line: what a stopped run kept and how to resume it."""
    if not isinstance(error, Interrupted):
        return "interrupted (nothing saved; --checkpoint FILE makes a run resumable)"
    name = signal.Signals(error.signal).name
    command = shlex.join(["xentstream", *(sys.argv[1:] if argv is None else argv)])
    if error.rows is None:
        return f"stopped by {name} before any checkpoint was written; rerun: {command}"
    done = f"{error.rows:,}" + ("" if error.total_rows is None else f" of {error.total_rows:,}")
    return (
        f"stopped by {name}; {done} rows are saved in the checkpoint {error.checkpoint}; "
        f"to resume, rerun the same command: {command}"
    )


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
            parser = _parser()
            args = parser.parse_args(argv)
            if args.command is None:  # bare ``xentstream``: what it does and how to start
                parser.print_help()
                return 0
            commands = {"evaluate": _evaluate, "compare": _compare, "merge": _merge}
            return commands[args.command](args)
    except _FAILURES as error:
        print(f"xentstream: error: {_with_flags(_one_line(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"xentstream: {_interrupted(error, argv)}", file=sys.stderr)
        return 128 + getattr(error, "signal", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
