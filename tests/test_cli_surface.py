"""The command line as a newcomer meets it (issue 18), in child processes.

Task inference from column types and shapes (language-model token dumps, multi-label
``.npy``), column patterns, ``--help`` / ``--version`` / bare ``xentstream``, error
messages in flag names, and Ctrl-C / SIGTERM flushing the checkpoint. Expected values
come from torch and scikit-learn.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import log_loss
from stream_support import child_env

import xentstream as xs
from xentstream import cli as xs_cli


def cli(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xentstream", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )


def cli_many(commands: list[tuple[Any, ...]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args), commands))


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xentstream: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(18)
    root = tmp_path_factory.mktemp("surface")
    n, steps, vocab = 40, 6, 7
    logits = rng.normal(size=(n, steps, vocab)) * 2
    tokens = rng.integers(0, vocab, size=(n, steps))
    tokens[rng.random((n, steps)) < 0.25] = -100  # padding
    pl.DataFrame({"logits": logits, "tokens": tokens}).write_parquet(root / "lm.parquet")
    # 12 classes: file order p_0 .. p_11 differs from the lexicographic p_0, p_1, p_10, ...
    n_classes = 12
    probs = rng.dirichlet(np.ones(n_classes), size=90)
    labels = rng.integers(0, n_classes, size=90)
    wide = pl.DataFrame({f"p_{i}": probs[:, i] for i in range(n_classes)} | {"y": labels})
    wide.write_parquet(root / "wide.parquet")
    ml_probs = rng.uniform(0.02, 0.98, size=(50, 3))
    ml_target = rng.integers(0, 2, size=(50, 3))
    np.save(root / "ml_p.npy", ml_probs)
    np.save(root / "ml_t.npy", ml_target)
    np.save(root / "two.npy", ml_target[:, :2])  # neither labels nor multi-label targets
    binary_probs, binary_target = rng.uniform(0.02, 0.98, size=60), rng.integers(0, 2, 60)
    np.save(root / "b_p.npy", binary_probs)
    np.save(root / "b_t.npy", binary_target)
    return {
        "root": root,
        "logits": logits,
        "tokens": tokens,
        "probs": probs,
        "labels": labels,
        "ml": (ml_probs, ml_target),
        "binary": (binary_probs, binary_target),
    }


def test_task_inference(dumps: dict[str, Any]) -> None:
    root = dumps["root"]
    lm, npy_ml, npy_binary, ambiguous = cli_many(
        [
            (
                "evaluate",
                root / "lm.parquet",
                "--preds",
                "logits",
                "--target",
                "tokens",
                "--input",
                "logits",
                "--ignore-index",
                -100,
                "--format",
                "json",
            ),
            ("evaluate", root / "ml_p.npy", "--target", root / "ml_t.npy", "--format", "json"),
            ("evaluate", root / "b_p.npy", "--target", root / "b_t.npy", "--format", "json"),
            ("evaluate", root / "ml_p.npy", "--target", root / "two.npy"),
        ]
    )
    report = json.loads(ok(lm))
    logits, tokens = dumps["logits"], dumps["tokens"]
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits.reshape(-1, logits.shape[-1])),
        torch.from_numpy(tokens.reshape(-1)),
        ignore_index=-100,
    ).item()
    assert math.isclose(report["loss"], expected, rel_tol=1e-12)
    assert report["count"] == int((tokens != -100).sum())
    assert report["ignored"] == int((tokens == -100).sum())

    ml_probs, ml_target = dumps["ml"]
    per_label_mean = torch.nn.functional.binary_cross_entropy(
        torch.from_numpy(ml_probs), torch.from_numpy(ml_target.astype(np.float64))
    ).item()
    assert math.isclose(
        json.loads(ok(npy_ml))["loss"], per_label_mean * ml_probs.shape[1], rel_tol=1e-12
    )
    binary_probs, binary_target = dumps["binary"]
    assert math.isclose(
        json.loads(ok(npy_binary))["loss"], log_loss(binary_target, binary_probs), rel_tol=1e-12
    )
    one_line_error(ambiguous, "--task", "(3,)", "(2,)", "pass --task")


def test_column_patterns(dumps: dict[str, Any]) -> None:
    root = dumps["root"]
    wide = root / "wide.parquet"
    glob_run, regex_run, none_matches, npy_preds, no_preds = cli_many(
        [
            ("evaluate", wide, "--preds", "p_*", "--target", "y", "--format", "json"),
            ("evaluate", wide, "--preds", r"^p_\d+$", "--target", "y", "--format", "json"),
            ("evaluate", wide, "--preds", "q_*", "--target", "y"),
            ("evaluate", root / "b_p.npy", "--preds", "p", "--target", root / "b_t.npy"),
            ("evaluate", wide, "--target", "y"),
        ]
    )
    expected = log_loss(dumps["labels"], dumps["probs"], labels=range(12))
    for done in (glob_run, regex_run):
        assert math.isclose(json.loads(ok(done))["loss"], expected, rel_tol=1e-12)
    one_line_error(none_matches, "--preds", "'q_*' matches no column", "p_0")
    one_line_error(npy_preds, "--preds", ".npy")
    one_line_error(no_preds, "--preds is required")


def test_help_version_and_flag_names(dumps: dict[str, Any], tmp_path: Path) -> None:
    # Every option of every command says what it does.
    parser = xs_cli._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, (name, action.option_strings or action.dest)

    probs = np.array([[0.5, 0.7], [0.5, 0.5]])
    pl.DataFrame({"p": probs, "y": [0, 1]}).write_parquet(tmp_path / "bad.parquet")
    bare, version, help_text, batch_rows, bad_probs = cli_many(
        [
            (),
            ("--version",),
            ("evaluate", "--help"),
            ("evaluate", dumps["root"] / "wide.parquet", "--preds", "p_*", "--target", "y",
             "--batch-rows", 0),
            ("evaluate", tmp_path / "bad.parquet", "--preds", "p", "--target", "y"),
        ]
    )  # fmt: skip
    assert "evaluate" in ok(bare) and "examples:" in bare.stdout and "merge" in bare.stdout
    assert ok(version).strip() == f"xentstream {xs.__version__}"
    text = ok(help_text)
    for fragment in ("(default: probs)", "(default: table)", "examples:", "--ignore-index -100"):
        assert fragment in text
    message = one_line_error(batch_rows, "--batch-rows: must be a positive integer")
    assert "batch_rows" not in message
    message = one_line_error(bad_probs, "p: row 0", "sum to 1.2", "--sum-tol", "--input logits")
    assert not re.search(r"input=|sum_tol", message), message


# A child that runs the real command line and sends itself ``signal`` while batch 3 is read
# (the reader thread), so the stop lands in the middle of the run.
_SELF_SIGNAL = """
import os, signal, sys
from xentstream import cli

evaluate = sys.modules["xentstream.evaluation"]  # the package's ``evaluate`` is the function

real_open = evaluate.open_source
signum = getattr(signal, sys.argv[1])

def open_source(*args, **kwargs):
    feeder = real_open(*args, **kwargs)
    batches = feeder._batches

    def stopping():
        for index, batch in enumerate(batches):
            if index == 3:
                os.kill(os.getpid(), signum)
            yield batch

    feeder._batches = stopping()
    return feeder

evaluate.open_source = open_source
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_flushes_checkpoint(dumps: dict[str, Any], tmp_path: Path, name: str) -> None:
    checkpoint = tmp_path / "run.ckpt"
    wide = dumps["root"] / "wide.parquet"
    args = ["evaluate", wide, "--preds", "p_*", "--target", "y", "--batch-rows", 10,
            "--checkpoint", checkpoint, "--format", "json"]  # fmt: skip
    stopped = subprocess.run(
        [sys.executable, "-c", _SELF_SIGNAL, name, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    signum = int(getattr(__import__("signal"), name))
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert stopped.stdout == ""
    line = stopped.stderr.strip()
    assert "\n" not in line and f"stopped by {name}" in line, line
    assert str(checkpoint) in line and "to resume, rerun the same command: xentstream" in line
    saved = json.loads(checkpoint.read_text())["rows_consumed"]
    assert 0 <= saved < 90 and saved % 10 == 0
    assert f"{saved:,} of 90 rows" in line
    resumed, whole = cli_many([tuple(args), tuple(args[:-4] + args[-2:])])
    # Exact sums: the resumed run is bitwise the uninterrupted one.
    assert json.loads(ok(resumed)) == json.loads(ok(whole))
    assert json.loads(checkpoint.read_text())["rows_consumed"] == 90


# -- outputs that keep every number ----------------------------------------------------------


def _grouped_dump(root: Path) -> tuple[Path, Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(77)
    probs = rng.dirichlet(np.ones(3), size=60)
    labels = rng.integers(0, 3, size=60)
    region = np.array(["west", "east", "north"])[rng.integers(0, 3, size=60)]
    frame = pl.DataFrame(
        {"ant": probs[:, 0], "bee": probs[:, 1], "cat": probs[:, 2], "y": labels, "r": region}
    )
    paths = (root / "all.parquet", root / "a.parquet", root / "b.parquet")
    frame.write_parquet(paths[0])
    frame.slice(0, 25).write_parquet(paths[1])
    frame.slice(25).write_parquet(paths[2])
    return *paths, probs, labels, region


def test_outputs_keep_data(tmp_path: Path) -> None:
    whole, part_a, part_b, probs, labels, region = _grouped_dump(tmp_path)
    wide = ("--preds", "ant", "bee", "cat", "--target", "y")
    states = [tmp_path / "a.json", tmp_path / "b.json"]
    per_class_csv, grouped_json, *shards = cli_many(
        [
            ("evaluate", whole, *wide, "--per-class", "--format", "csv"),
            ("evaluate", whole, *wide, "--by", "r", "--format", "json"),
            *(("evaluate", part, *wide, "--by", "r", "--save-state", state)
              for part, state in zip((part_a, part_b), states, strict=True)),
        ]
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(ok(per_class_csv))))
    assert [row["class"] for row in rows] == ["", "ant", "bee", "cat"]  # names, not 0..C-1
    picked = -np.log(probs[np.arange(60), labels])
    assert math.isclose(float(rows[0]["loss"]), picked.mean(), rel_tol=1e-12)
    for row, c in zip(rows[1:], range(3), strict=True):
        assert int(row["count"]) == int((labels == c).sum())
        assert math.isclose(float(row["loss"]), picked[labels == c].mean(), rel_tol=1e-12)

    grouped = json.loads(ok(grouped_json))
    assert [g["key"] for g in grouped["groups"]] == [["east"], ["north"], ["west"]]  # sorted
    for group in grouped["groups"]:
        assert math.isclose(group["loss"], picked[region == group["key"][0]].mean(), rel_tol=1e-12)
    for done in shards:
        ok(done)
    xs.CrossEntropy().update([[0.5, 0.5]], [0]).save(tmp_path / "plain.json")
    merged, mixed = cli_many(
        [
            ("merge", *states, "--format", "json"),
            ("merge", states[0], tmp_path / "plain.json"),
        ]
    )
    assert json.loads(ok(merged)) == grouped  # exact states: bitwise the one-pass run
    one_line_error(mixed, "plain.json", "holds no groups")

    result = xs.evaluate(whole, xs.CrossEntropy(), preds=["ant", "bee", "cat"], target="y", by="r")
    table = result.to_polars()
    assert table["r"].to_list() == ["east", "north", "west"]
    for row, report in zip(table.iter_rows(named=True), result.groups.values(), strict=True):
        assert (row["ci95_low"], row["ci95_high"]) == report.ci95


def test_plot_shows_every_batch_group_and_class(tmp_path: Path, monkeypatch) -> None:
    whole, *_ = _grouped_dump(tmp_path)
    drawn: dict[str, Any] = {}

    def capture(path: str, history: list, result: Any) -> None:
        drawn["figure"] = xs_cli._figure(history, result)
        drawn["history"] = history

    monkeypatch.setattr(xs_cli, "_plot", capture)
    args = ["evaluate", str(whole), "--preds", "ant", "bee", "cat", "--target", "y"]
    assert xs_cli.main([*args, "--by", "r", "--per-class", "--plot", "x.png", "--no-progress",
                        "--output", str(tmp_path / "out.txt")]) == 0  # fmt: skip
    # 60 rows fit one default batch; the plot reads smaller ones: a point per few rows.
    assert len(drawn["history"]) >= 50
    running, groups, classes = drawn["figure"].axes
    lines = {line.get_label().split(":")[0] for line in running.get_lines()}
    assert lines == {"running loss", "r=east", "r=north", "r=west"}
    assert len(running.collections[0].get_offsets()) == len(drawn["history"])  # batch means
    assert "over 60 rows" in running.get_title() and "±" in running.get_title()
    assert [t.get_text().split(" ")[0] for t in classes.get_yticklabels()] == ["ant", "bee", "cat"]
    assert len(classes.patches) == 3 and len(groups.patches) == 3

    png = tmp_path / "loss.png"
    ok(cli(*args, "--plot", png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_says_compiling_and_ends_on_the_final_loss(monkeypatch) -> None:
    evaluate_module = sys.modules["xentstream.evaluation"]
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(evaluate_module, "_kernels_compiled", lambda: False)
    metric = xs.CrossEntropy()
    bar = evaluate_module._Progress(True, total=4, initial=0)
    assert "compiling kernels (first run only)" in screen.getvalue()
    for probs, labels in (([[0.9, 0.1], [0.4, 0.6]], [0, 1]), ([[0.5, 0.5], [0.2, 0.8]], [0, 0])):
        bar.update(2, metric.update(probs, labels))  # the second within 0.5 s: no refresh
    bar.close()
    last = screen.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("xentstream: 100%") and "compiling" not in last
    assert f"loss {metric.value:.4g}±" in last  # the final loss, not the first batch's


def test_compile_notice_says_once_when_a_kernel_of_ours_compiles() -> None:
    from numba import njit

    from xentstream._kernels import groups
    from xentstream.evaluation import compile_notice

    said = io.StringIO()
    codes = np.array([1, 0, 1], dtype=np.int64)
    with compile_notice(said, enabled=True):
        njit(lambda x: x + 1)(1)  # not ours: nothing said
        assert said.getvalue() == ""
        fresh = njit(groups.row_positions.py_func)  # a new dispatcher compiles for real
        assert fresh(codes, 2).tolist() == groups.row_positions(codes, 2).tolist()
        njit(groups.row_positions.py_func)(codes, 2)
    assert said.getvalue() == "xentstream: compiling kernels (first run only)...\n"
    quiet = io.StringIO()  # not a terminal: nothing said by default
    with compile_notice(quiet):
        njit(groups.row_positions.py_func)(codes, 2)
    assert quiet.getvalue() == ""


def test_merge_on_a_cold_cache_says_it_compiles_and_a_warm_one_does_not(tmp_path: Path) -> None:
    """On a terminal (a pty), a merge with an empty numba cache says it is compiling
    (seconds of silence otherwise); the same merge again, from the cache, says nothing."""
    import os
    import pty

    source = tmp_path / "preds.parquet"
    pl.DataFrame(
        {"p": [0.9, 0.2, 0.6, 0.7], "y": [1, 0, 0, 1], "g": ["a", "b", "a", "b"]}
    ).write_parquet(source)
    state = tmp_path / "state.json"
    ok(cli("evaluate", source, "--preds", "p", "--target", "y", "--by", "g", "--save-state", state))
    env = child_env()
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    merge = ["merge", str(state), str(state), "--top", "1", "--format", "json"]
    screens = []
    for _ in range(2):
        terminal, child_side = pty.openpty()
        done = subprocess.run(
            [sys.executable, "-m", "xentstream", *merge],
            stdout=subprocess.PIPE,
            stderr=child_side,
            env=env,
            timeout=600,
            check=False,
        )
        os.close(child_side)
        screen = b""
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the pty's other side is closed: all read
                break
            if not chunk:
                break
            screen += chunk
        os.close(terminal)
        assert done.returncode == 0, screen.decode()[-2000:]
        merged = json.loads(done.stdout)
        worst = merged["groups"]
        assert [group["key"] for group in worst] == [["a"]] and worst[0]["count"] == 4
        assert worst[0]["loss"] == pytest.approx(log_loss([1, 0], [0.9, 0.6]), rel=1e-12)
        screens.append(screen.decode())
    assert screens[0].count("compiling kernels (first run only)") == 1
    assert "compiling" not in screens[1]
