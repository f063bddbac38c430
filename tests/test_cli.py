"""The command line (SPEC section 6), end to end in child processes.

``python -m xentstream`` and the ``xentstream`` console script run on files written
here; JSON and CSV outputs are parsed and compared BITWISE with the one-shot
functional API; bad arguments and bad data exit 2 with one line on stderr.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from stream_support import (
    CLASSES,
    ML_TARGET_WIDE,
    ML_WIDE,
    N_ROWS,
    WIDE,
    Data,
    bits,
    child_env,
    float_bits,
    full_frame,
    make_data,
    one_shot,
    report_bits,
    write,
)

import xentstream as xs


def _console_script() -> str:
    found = shutil.which("xentstream", path=str(Path(sys.executable).parent)) or shutil.which(
        "xentstream"
    )
    assert found, "the xentstream console script is not installed"
    return found


def cli(*args: Any, script: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command line in a child process (``python -m`` or the console script)."""
    command = [_console_script()] if script else [sys.executable, "-m", "xentstream"]
    return subprocess.run(
        [*command, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=cwd,
        check=False,
    )


def cli_many(
    commands: Sequence[tuple[Any, ...]], scripts: Sequence[bool] = ()
) -> list[subprocess.CompletedProcess]:
    """Run independent commands, a few at a time (each child mostly waits on imports)."""
    flags = list(scripts) or [False] * len(commands)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args, script: cli(*args, script=script), commands, flags))


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # no progress bar off a terminal, no warnings
    return done.stdout


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xentstream: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert done.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data(seed=77)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, data: Data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    frame = full_frame(data)
    half = N_ROWS // 2
    renamed = pl.DataFrame(
        {f"score_{i}": data.probs[:, i] for i in range(len(CLASSES))} | {"label": data.names}
    )
    scalar = frame.select(n for n, t in frame.schema.items() if not isinstance(t, pl.Array))
    np.save(root / "p.npy", data.probs)
    np.save(root / "y.npy", data.labels)
    return {
        "parquet": write(frame, root / "table.parquet"),
        "csv": write(scalar, root / "table.csv"),
        "renamed": write(renamed, root / "renamed.parquet"),
        "shard0": write(frame.slice(0, half), root / "shard-0.parquet"),
        "shard1": write(frame.slice(half), root / "shard-1.parquet"),
        "npy": root / "p.npy",
        "npy_target": root / "y.npy",
        "root": root,
    }


@pytest.fixture(scope="module", autouse=True)
def warm_kernels(files: dict[str, Path]) -> None:
    """Compile the kernels for the arrays the children will read, once, in this process.

    numba caches them on disk; without this, on a cold cache several children started
    together would each compile the same signature.
    """
    scores = [f"score_{i}" for i in range(len(CLASSES))]
    runs = [
        (files["parquet"], xs.CrossEntropy(per_class=True), "p", "y", {}),
        (files["csv"], xs.CrossEntropy(), WIDE, "y", {"sample_weight": "w"}),
        (files["csv"], xs.CrossEntropy(), WIDE, "label", {}),
        (files["renamed"], xs.CrossEntropy(), scores, "label", {"classes": CLASSES}),
        (files["parquet"], xs.BinaryCrossEntropy(), "b_p", "b_t", {}),
        (files["csv"], xs.BinaryCrossEntropy(pos_weight=2.5), "b_p", "b_t", {}),
        (files["parquet"], xs.MultiLabelCrossEntropy(), "ml_p", "ml_t", {}),
        (files["parquet"], xs.MultiLabelCrossEntropy(), ML_WIDE, ML_TARGET_WIDE, {}),
        (files["npy"], xs.CrossEntropy(), None, files["npy_target"], {}),
    ]
    for source, metric, preds, target, options in runs:
        xs.evaluate(source, metric, preds=preds, target=target, **options)


def multiclass_reference(data: Data, **kwargs: Any) -> xs.Report:
    report = one_shot(xs.CrossEntropy(**kwargs), data.probs, data.labels)
    assert float_bits(report.loss) == float_bits(xs.cross_entropy(data.probs, data.labels))
    return report


def json_bits(text: str) -> Any:
    return bits(json.loads(text))


# -- outputs ------------------------------------------------------------------------------------


def test_outputs_json_table_csv(files: dict[str, Path], data: Data, tmp_path: Path) -> None:
    args = ("evaluate", files["parquet"], "--preds", "p", "--target", "y")
    report_csv = tmp_path / "report.csv"
    by_script, by_module, table, to_file = cli_many(
        [
            (*args, "--format", "json", "--batch-rows", 700),
            (*args, "--format", "json", "--no-progress"),
            args,
            (
                "evaluate",
                files["csv"],
                "--preds",
                *WIDE,
                "--target",
                "y",
                "--sample-weight",
                "w",
                "--format",
                "csv",
                "--output",
                report_csv,
            ),
        ],
        scripts=[True, False, False, True],
    )
    # json: bitwise the one-shot result; python -m and the console script agree, and the
    # batch size does not change the bits
    expected = multiclass_reference(data)
    assert json_bits(ok(by_script)) == report_bits(expected)
    assert ok(by_module) == by_script.stdout

    values = dict(line.split(None, 1) for line in ok(table).splitlines() if line.strip())
    assert int(values["count"]) == N_ROWS
    assert int(values["ignored"]) == 0
    for name in ("loss", "stderr", "perplexity", "bits", "accuracy", "entropy"):
        assert math.isclose(float(values[name]), getattr(expected, name), rel_tol=1e-5), name
    low, high = (float(v) for v in values["ci95"].strip("[]").split(","))
    assert math.isclose(low, expected.ci95[0], rel_tol=1e-5)
    assert math.isclose(high, expected.ci95[1], rel_tol=1e-5)

    assert ok(to_file) == ""  # written to the file, not to stdout
    rows = list(csv.DictReader(io.StringIO(report_csv.read_text())))
    assert len(rows) == 1
    weighted = one_shot(xs.CrossEntropy(), data.probs, data.labels, data.weights)
    for name in ("loss", "loss_sum", "weight_sum", "stderr", "accuracy", "entropy"):
        assert float_bits(float(rows[0][name])) == float_bits(getattr(weighted, name)), name
    assert weighted.kl is None and rows[0]["kl"] == ""  # hard labels: KL is the loss
    assert int(rows[0]["count"]) == weighted.count
    assert float_bits(float(rows[0]["ci95_low"])) == float_bits(weighted.ci95[0])
    assert float_bits(float(rows[0]["ci95_high"])) == float_bits(weighted.ci95[1])


def test_by_json_csv_table(files: dict[str, Path], data: Data) -> None:
    args = ("evaluate", files["parquet"], "--preds", "p", "--target", "y", "--by", "g", "h")
    as_json, as_csv, as_table = cli_many(
        [(*args, "--format", "json", "--batch-rows", 600), (*args, "--format", "csv"), args]
    )
    result = json.loads(ok(as_json))
    frame = full_frame(data)
    assert result["by"] == ["g", "h"]
    assert bits(result["overall"]) == report_bits(multiclass_reference(data))
    keys = frame.select("g", "h").unique().sort("g", "h", nulls_last=True).rows()  # sorted
    assert [tuple(group["key"]) for group in result["groups"]] == keys
    assert any(key[1] is None for key in keys)  # a null key, as JSON null
    for group in result["groups"]:
        g, h = group.pop("key")
        h_matches = pl.col("h").is_null() if h is None else pl.col("h") == h
        part = frame.filter(pl.col("g") == g, h_matches)
        preds, labels = part["p"].to_numpy(), part["y"].to_numpy()
        assert bits(group) == report_bits(one_shot(xs.CrossEntropy(), preds, labels))
        assert float_bits(group["loss"]) == float_bits(xs.cross_entropy(preds, labels))

    rows = list(csv.DictReader(io.StringIO(ok(as_csv))))
    assert len(rows) == 1 + len(keys)
    assert rows[0]["g"] == rows[0]["h"] == ""  # the overall row
    assert float_bits(float(rows[0]["loss"])) == float_bits(result["overall"]["loss"])
    for row, group in zip(rows[1:], result["groups"], strict=True):
        assert float_bits(float(row["loss"])) == float_bits(group["loss"])
    table = ok(as_table)
    assert table.startswith("loss ") and "│ g" in table


def test_per_class(files: dict[str, Path], data: Data) -> None:
    args = ("evaluate", files["parquet"], "--preds", "p", "--target", "y", "--per-class")
    as_json, as_table = cli_many([(*args, "--format", "json"), args])
    result = json.loads(ok(as_json))
    assert bits(result) == report_bits(multiclass_reference(data, per_class=True))
    assert [row["class"] for row in result["per_class"]] == list(range(len(CLASSES)))
    assert result["normalized_entropy"] is not None
    table = ok(as_table)
    assert "class" in table and "normalized_entropy" in table


def test_empty_file(tmp_path: Path, data: Data) -> None:
    """A file without rows is not an error: an empty report in every format, and a word."""
    empty = write(full_frame(data).head(0), tmp_path / "empty.parquet")
    args = ("evaluate", empty, "--preds", "p", "--target", "y", "--by", "g")
    table, as_json = cli_many([args, (*args, "--format", "json")])
    word = "xentstream: warning: the source holds no rows: nothing was evaluated\n"
    for done in (table, as_json):  # exit 0, and one line that says so
        assert done.returncode == 0 and done.stderr == word, done.stderr
    assert "count" in table.stdout
    result = json.loads(as_json.stdout)
    assert result["overall"]["count"] == 0
    assert result["groups"] == []


# -- tasks and inputs -------------------------------------------------------------------------


def test_tasks(files: dict[str, Path], data: Data) -> None:
    """``--task`` explicit and inferred (Array / scalar / several columns)."""
    multiclass = multiclass_reference(data)
    binary = one_shot(xs.BinaryCrossEntropy(), data.binary_probs, data.binary_target)
    assert float_bits(binary.loss) == float_bits(
        xs.binary_cross_entropy(data.binary_probs, data.binary_target)
    )
    multilabel = one_shot(xs.MultiLabelCrossEntropy(), data.ml_probs, data.ml_target)
    assert float_bits(multilabel.loss) == float_bits(
        xs.multilabel_cross_entropy(data.ml_probs, data.ml_target)
    )
    cases = [
        ("auto", ["p"], ["y"], multiclass),
        ("multiclass", WIDE, ["y"], multiclass),
        ("auto", ["b_p"], ["b_t"], binary),
        ("binary", ["b_p"], ["b_t"], binary),
        ("auto", ["ml_p"], ["ml_t"], multilabel),
        ("auto", ML_WIDE, ML_TARGET_WIDE, multilabel),
        ("multilabel", ["ml_p"], ["ml_t"], multilabel),
    ]
    commands = [
        (
            "evaluate",
            files["parquet"],
            "--task",
            task,
            "--preds",
            *preds,
            "--target",
            *target,
            "--format",
            "json",
            "--batch-rows",
            900,
        )
        for task, preds, target, _ in cases
    ]
    commands.append(
        (
            "evaluate",
            files["csv"],
            "--preds",
            "b_p",
            "--target",
            "b_t",
            "--input",
            "probs",
            "--pos-weight",
            "2.5",
            "--format",
            "json",
        )
    )
    *outputs, weighted = cli_many(commands)
    for (task, preds, _, expected), out in zip(cases, outputs, strict=True):
        assert json_bits(ok(out)) == report_bits(expected), (task, preds)

    import torch  # an independent implementation, within rounding

    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.logit(torch.from_numpy(data.binary_probs)),
        torch.from_numpy(data.binary_target.astype(np.float64)),
        pos_weight=torch.tensor(2.5, dtype=torch.float64),
    ).item()
    assert math.isclose(json.loads(ok(weighted))["loss"], expected, rel_tol=1e-9)


def test_string_labels_and_npy(files: dict[str, Path], data: Data) -> None:
    with_classes, inferred, npy = cli_many(
        [
            (
                "evaluate",
                files["renamed"],
                "--preds",
                *(f"score_{i}" for i in range(len(CLASSES))),
                "--target",
                "label",
                "--classes",
                ",".join(CLASSES),
                "--format",
                "json",
            ),
            ("evaluate", files["csv"], "--preds", *WIDE, "--target", "label", "--format", "json"),
            (
                "evaluate",
                files["npy"],
                "--target",
                files["npy_target"],
                "--batch-rows",
                333,
                "--format",
                "json",
            ),
        ]
    )
    expected = report_bits(multiclass_reference(data))
    assert json_bits(ok(with_classes)) == expected
    assert json_bits(ok(inferred)) == expected
    assert json_bits(ok(npy)) == expected


# -- state -----------------------------------------------------------------------------------


def test_checkpoint(files: dict[str, Path], data: Data, tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.ckpt"
    args = ("evaluate", files["parquet"], "--preds", "p", "--target", "y", "--format", "json")
    first = ok(cli(*args, "--checkpoint", checkpoint, "--batch-rows", 700))
    saved = json.loads(checkpoint.read_text())
    assert saved["format"] == "xentstream.checkpoint"
    assert saved["rows_consumed"] == N_ROWS
    assert json_bits(first) == report_bits(multiclass_reference(data))
    again, refused = cli_many(
        [
            (*args, "--checkpoint", checkpoint),
            (*args, "--checkpoint", checkpoint, "--label-smoothing", "0.1"),
        ]
    )
    assert ok(again) == first  # a finished run: read back, nothing counted twice
    assert_one_line_error(refused, "written for another run", "delete it")


def test_save_state_and_merge_shards(files: dict[str, Path], data: Data, tmp_path: Path) -> None:
    states = [tmp_path / "a.json", tmp_path / "b.json"]
    shards = cli_many(
        [
            (
                "evaluate",
                files[shard],
                "--preds",
                "p",
                "--target",
                "y",
                "--per-class",
                "--save-state",
                state,
                "--format",
                "json",
            )
            for shard, state in zip(("shard0", "shard1"), states, strict=True)
        ]
    )
    for done, state in zip(shards, states, strict=True):
        ok(done)
        assert json.loads(state.read_text())["format"] == "xentstream.metric"
    whole = report_bits(multiclass_reference(data, per_class=True))
    output, merged_state = tmp_path / "merged.json", tmp_path / "ab.json"
    to_file, reversed_order = cli_many(
        [
            (
                "merge",
                *states,
                "--format",
                "json",
                "--output",
                output,
                "--save-state",
                merged_state,
            ),
            ("merge", *reversed(states), "--format", "json"),
        ],
        scripts=[True, False],
    )
    assert ok(to_file) == ""
    assert json_bits(output.read_text()) == whole
    assert json_bits(ok(reversed_order)) == whole
    assert report_bits(xs.load(merged_state).compute()) == whole


def test_plot(files: dict[str, Path], tmp_path: Path) -> None:
    png, checkpoint = tmp_path / "loss.png", tmp_path / "run.ckpt"
    args = ("evaluate", files["parquet"], "--preds", "p", "--target", "y", "--per-class")
    done = cli(*args, "--batch-rows", 500, "--plot", png, "--checkpoint", checkpoint)
    if importlib.util.find_spec("matplotlib") is None:  # not a test dependency
        assert_one_line_error(done, "matplotlib", "xentstream[plot]")
        assert not png.exists()
        assert not checkpoint.exists()  # refused up front, before reading any row
    else:
        ok(done)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- exit codes -----------------------------------------------------------------------------


def test_exit_codes(files: dict[str, Path], data: Data, tmp_path: Path) -> None:
    """Exit 2 with exactly one line on stderr, no traceback, for every kind of mistake."""
    probs, labels = data.probs.copy(), data.labels.copy()
    probs[2_100] = [1.5, -0.5, 0.0, 0.0]
    labels[1_500] = 9
    nulls = pl.DataFrame({"p": data.probs, "y": data.labels}).with_columns(
        pl.when(pl.int_range(pl.len()) == 2_345).then(None).otherwise(pl.col("y")).alias("y")
    )
    bad_probs = write(pl.DataFrame({"p": probs, "y": data.labels}), tmp_path / "probs.parquet")
    bad_labels = write(pl.DataFrame({"p": data.probs, "y": labels}), tmp_path / "labels.parquet")
    bad_nulls = write(nulls, tmp_path / "nulls.parquet")
    (tmp_path / "notes.txt").write_text("p,y\n")
    (tmp_path / "state.json").write_text('{"format": "something else"}')
    xs.BinaryCrossEntropy().update([0.5], [1]).save(tmp_path / "binary.json")
    xs.CrossEntropy().update([[0.5, 0.5]], [1]).save(tmp_path / "multiclass.json")

    table = files["parquet"]
    run = ("evaluate", table, "--preds", "p", "--target", "y")
    cases: list[tuple[tuple[Any, ...], tuple[str, ...]]] = [
        # bad arguments
        (("evaluate", table), ("--target", "required")),
        (("evaluate", table, "--preds", "p"), ("--target",)),
        ((*run, "--format", "xml"), ("--format", "xml")),
        ((*run, "--batch-rows", "many"), ("--batch-rows", "many")),
        ((*run, "--bogus"), ("--bogus",)),
        ((*run, "--pos-weight", "2"), ("--pos-weight",)),
        ((*run, "--class-weight", "1,x"), ("--class-weight",)),
        ((*run, "--batch-rows", "0"), ("--batch-rows",)),
        ((*run, "--dask", "local:0"), ("--dask", "local:N")),
        ((*run, "--dask", "local", "--checkpoint", tmp_path / "c.json"), ("--checkpoint",)),
        # missing and unknown files, unknown columns
        (("evaluate", tmp_path / "absent.parquet", *run[2:]), ("absent.parquet", "does not exist")),
        (("evaluate", tmp_path / "notes.txt", *run[2:]), ("unknown file type '.txt'",)),
        (("evaluate", table, "--preds", "p", "--target", "nope"), ("nope: no such column",)),
        (("evaluate", table, "--preds", "p", "zz", "--target", "y"), ("zz: no such column",)),
        ((*run, "--by", "region"), ("region: no such column",)),
        ((*run, "--output", tmp_path / "no" / "such" / "dir.json"), ("dir.json",)),
        # bad data: the message names the column, the row in the whole file and the rule
        (("evaluate", bad_probs, *run[2:], "--batch-rows", 700), ("p: row 2100", "outside [0, 1]")),
        (
            ("evaluate", bad_labels, *run[2:], "--batch-rows", 700),
            ("y: row 1500", "outside [0, 4)"),
        ),
        (("evaluate", bad_nulls, *run[2:], "--batch-rows", 700), ("y: row 2345", "null")),
        # merge
        (("merge", tmp_path / "absent.json"), ("absent.json",)),
        (("merge", tmp_path / "state.json"), ("state.json",)),
        (("merge", tmp_path / "multiclass.json", tmp_path / "binary.json"), ("cannot merge",)),
    ]
    results = cli_many([args for args, _ in cases], scripts=[i % 2 == 1 for i in range(len(cases))])
    for (args, fragments), done in zip(cases, results, strict=True):
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert_one_line_error(done, *fragments)
