"""Hostile input (issue 17): no wrong answer with exit 0, no hang, no traceback.

One test (or a few) per item of the issue. Expected values come from the one-shot
path on the rows that should have been read, or from ``tests/reference.py``; every
refusal checks that the error names the file / argument and the rule, that the CLI
prints exactly one line, and that nothing was changed.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import reference
from stream_support import child_env, report_bits

import xentstream as xs
import xentstream.state
from xentstream.cli import main
from xentstream.grouping import keys_to_json

evaluate_module = importlib.import_module("xentstream.evaluation")  # xs.evaluate is the function
RNG = np.random.default_rng(17)


@pytest.fixture(autouse=True)
def every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint after every batch, so that an interrupted run leaves one."""
    monkeypatch.setattr(evaluate_module, "CHECKPOINT_INTERVAL_S", -1.0)


def _frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "p": rng.dirichlet(np.ones(3), n),
            "y": rng.integers(0, 3, n),
            "g": rng.integers(0, 3, n),
        }
    )


def _expected(frame: pl.DataFrame, **kwargs: Any) -> xs.Report:
    return xs.CrossEntropy(**kwargs).update(frame["p"].to_numpy(), frame["y"].to_numpy()).compute()


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """The command line in this process: (status, stdout, stderr); never a traceback."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if status == 2:
        assert len(err.splitlines()) == 1, err
        assert err.startswith("xentstream: error: ") and len(err) < 600, err
    return status, out, err


def _json_loss(out: str) -> float:
    return json.loads(out)["loss"]


# -- 1. glob characters in literal paths ------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".ndjson"])
def test_an_existing_path_with_glob_characters_means_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    literal, other = _frame(40, 1), _frame(60, 2)
    write = {".parquet": pl.DataFrame.write_parquet, ".ndjson": pl.DataFrame.write_ndjson}[suffix]
    write(literal, tmp_path / f"data[1]{suffix}")
    write(other, tmp_path / f"data1{suffix}")  # what the glob data[1] would match
    expected = _expected(literal)
    for source in (tmp_path / f"data[1]{suffix}", str(tmp_path / f"data[1]{suffix}")):
        report = xs.evaluate(source, xs.CrossEntropy(), preds="p", target="y")
        assert report_bits(report) == report_bits(expected)
    status, out, _ = cli(
        capsys, "evaluate", tmp_path / f"data[1]{suffix}", "--preds", "p", "--target", "y",
        "--format", "json", "--no-progress",
    )  # fmt: skip
    assert status == 0 and _json_loss(out) == expected.loss
    # an escaped pattern matches the literal name; an unescaped one still globs
    escaped = xs.evaluate(
        str(tmp_path / f"data[[]1]{suffix}"), xs.CrossEntropy(), preds="p", target="y"
    )
    assert report_bits(escaped) == report_bits(expected)
    (tmp_path / f"data[1]{suffix}").unlink()
    globbed = xs.evaluate(
        str(tmp_path / f"data[1]{suffix}"), xs.CrossEntropy(), preds="p", target="y"
    )
    assert report_bits(globbed) == report_bits(_expected(other))


# -- 2. checkpoints must be self-consistent ---------------------------------------------


def _interrupted(tmp_path: Path, frame: Any, **options: Any) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "run.ckpt"
    running = xs.stream(
        frame, xs.CrossEntropy(), preds="p", target="y", batch_rows=100, checkpoint=path, **options
    )
    for _ in range(3):
        next(running)
    running.close()
    return path


def _edited(path: Path, edit: Any, *, rehash: bool = True) -> None:
    """Edit a checkpoint; ``rehash``: as someone who also recomputes its checksum."""
    data = json.loads(path.read_text())
    edit(data)
    if rehash and isinstance(data, dict):
        data["sha256"] = evaluate_module._digest(data)
    path.write_text(json.dumps(data))


def _refused(path: Path, frame: pl.DataFrame, pattern: str, **options: Any) -> None:
    before = path.read_bytes()
    metric = xs.CrossEntropy()
    with pytest.raises(ValueError, match=pattern):
        xs.evaluate(
            frame, metric, preds="p", target="y", batch_rows=100, checkpoint=path, **options
        )
    assert path.read_bytes() == before and metric.rows_seen == 0


def _set_rows(data: dict[str, Any], delta: int) -> None:
    data["rows_consumed"] += delta


def _double_counts(data: dict[str, Any]) -> None:
    counts = data["metric"]["counts"]
    counts["rows"] *= 2


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: _set_rows(d, 200), r"rows_consumed is 500 but the saved metric holds 300"),
        (lambda d: _set_rows(d, -100), r"rows_consumed is 200 but the saved metric holds 300"),
        (_double_counts, r"inconsistent|cannot hold|add up to"),
        (lambda d: d.pop("base_rows"), r"malformed \(no base_rows\)"),
        (lambda d: d.update(fingerprint=[1, 2]), r"fingerprint is not a JSON object"),
        (lambda d: d.update(rows_consumed="300"), r"rows_consumed must be an integer"),
        (lambda d: d.update(rows_consumed=2**70), r"rows_consumed must be an integer"),
        (lambda d: d.update(metric=[]), r"not an xentstream metric state"),
    ],
)
def test_an_edited_checkpoint_is_refused(tmp_path: Path, edit: Any, pattern: str) -> None:
    frame = _frame(1000, 3)
    path = _interrupted(tmp_path, frame)
    _edited(path, edit)
    _refused(path, frame, pattern)


def test_an_edited_checkpoint_fails_its_checksum(tmp_path: Path) -> None:
    frame = _frame(1000, 3)
    path = _interrupted(tmp_path, frame)
    state_sum = ("metric", "sums", "loss")

    def nudge(data: dict[str, Any]) -> None:  # one unit of 2**-1075 more loss: consistent
        entry = data[state_sum[0]][state_sum[1]][state_sum[2]]
        entry[0] = str(int(entry[0]) + 1)

    _edited(path, nudge, rehash=False)
    _refused(path, frame, r"does not match its sha256")


def test_checkpoint_groups_must_match_the_run(tmp_path: Path) -> None:
    frame = _frame(1000, 4)
    path = _interrupted(tmp_path, frame, by="g")
    pristine = path.read_bytes()
    _edited(path, lambda d: d.update(groups=None))
    _refused(path, frame, r"holds no groups", by="g")

    def duplicate(data: dict[str, Any]) -> None:
        values = data["groups"]["keys"][0]["values"]
        values[1] = values[0]

    path.write_bytes(pristine)
    _edited(path, duplicate)
    _refused(path, frame, r"group key \[\d\] appears twice", by="g")

    def drop_one(data: dict[str, Any]) -> None:
        groups = evaluate_module.GroupState(("g",), xs.CrossEntropy())
        groups.load_json(data["groups"])
        kept = groups.n_groups - 1
        data["groups"].update(
            n_groups=kept,
            keys=keys_to_json(groups._keys.frame.head(kept)),
            **groups.table.columns(np.arange(kept)).to_json(),
        )

    path.write_bytes(pristine)
    _edited(path, drop_one)
    _refused(path, frame, r"the groups hold \d+ rows, the metric 300", by="g")
    # untouched, it resumes and ends as an uninterrupted run
    path.write_bytes(pristine)
    resumed = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g", checkpoint=path)
    whole = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g")
    assert report_bits(resumed.overall) == report_bits(whole.overall)
    # groups in the checkpoint of a run without by=
    ungrouped = _interrupted(tmp_path / "plain", frame)
    _edited(ungrouped, lambda d: d.update(groups=[]))
    _refused(ungrouped, frame, r"holds groups, but this run has no by=")


def test_a_stale_temporary_checkpoint_file_is_removed(tmp_path: Path) -> None:
    frame = _frame(300, 5)
    stale = tmp_path / ".run.ckpt.abc123.tmp"  # what a writer killed before its rename leaves
    stale.write_text("{half")
    keep = tmp_path / ".other.ckpt.abc123.tmp"
    keep.write_text("{")
    xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", checkpoint=tmp_path / "run.ckpt")
    assert not stale.exists() and keep.exists()


# -- 3. fingerprints of frames and iterables ----------------------------------------------


def test_a_checkpoint_is_not_resumed_on_another_dataframe(tmp_path: Path) -> None:
    frame = _frame(1000, 6)
    path = _interrupted(tmp_path, frame)
    other = frame.with_columns(pl.col("y").shift(1, fill_value=0))  # same height and schema
    _refused(path, other, r"written for another run \(the source changed: source\)")
    resumed = xs.evaluate(frame.clone(), xs.CrossEntropy(), preds="p", target="y", checkpoint=path)
    assert report_bits(resumed) == report_bits(_expected(frame))


def test_a_checkpoint_is_not_resumed_on_another_lazyframe(tmp_path: Path) -> None:
    frame = _frame(1000, 7)
    path = _interrupted(tmp_path, frame.lazy().filter(pl.col("g") >= 0))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"the source changed"):
        xs.evaluate(
            frame.lazy().filter(pl.col("g") >= 1), xs.CrossEntropy(), preds="p", target="y",
            checkpoint=path,
        )  # fmt: skip
    assert path.read_bytes() == before
    same = frame.lazy().filter(pl.col("g") >= 0)  # rebuilt: the same plan
    resumed = xs.evaluate(same, xs.CrossEntropy(), preds="p", target="y", checkpoint=path)
    assert report_bits(resumed) == report_bits(_expected(frame))


def test_an_iterable_needs_a_checkpoint_key(tmp_path: Path) -> None:
    frame = _frame(500, 8)
    batches = [(frame["p"].to_numpy(), frame["y"].to_numpy())]
    with pytest.raises(ValueError, match=r"iterable of batches cannot be fingerprinted.*key"):
        xs.evaluate(batches, xs.CrossEntropy(), checkpoint=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    xs.evaluate(batches, xs.CrossEntropy(), checkpoint=tmp_path / "c", checkpoint_key="v1")
    with pytest.raises(ValueError, match=r"written for another run"):
        xs.evaluate(batches, xs.CrossEntropy(), checkpoint=tmp_path / "c", checkpoint_key="v2")


# -- 4. well-formed but inconsistent state files -----------------------------------------


def _state(rows: int = 100, **kwargs: Any) -> dict[str, Any]:
    rng = np.random.default_rng(rows)
    metric = xs.CrossEntropy(**kwargs)
    metric.update(rng.dirichlet(np.ones(3), rows), rng.integers(0, 3, rows))
    return metric.state_dict()


def _with(state: dict[str, Any], edit: Any) -> dict[str, Any]:
    state = copy.deepcopy(state)
    edit(state)
    return state


def _set_sum(name: str, value: Any) -> Any:
    def edit(state: dict[str, Any]) -> None:
        state["sums"][name][0] = value

    return edit


def _negate(name: str) -> Any:
    def edit(state: dict[str, Any]) -> None:
        state["sums"][name][0] = str(-int(state["sums"][name][0]))

    return edit


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_negate("loss"), r"sums.loss: negative"),
        (_negate("weight"), r"sums.weight: negative"),
        (lambda s: s.update(version=True), r"version True is not supported"),
        (lambda s: s.update(version=1.0), r"version 1.0 is not supported"),
        (lambda s: s.update(version="1"), r"version '1' is not supported"),
        (_set_sum("loss", " 1_000 "), r"not a decimal integer string"),
        (_set_sum("loss", "+5"), r"not a decimal integer string"),
        (_set_sum("loss", str(2 ** (63 + 1024 + 1075))), r"value out of range"),
        (lambda s: s["counts"].update(rows=2**63), r"more than 2\*\*63 - 1 rows"),
        (lambda s: s["counts"].update(rows=2**62, ignored=2**62), r"more than 2\*\*63"),
        (lambda s: s["counts"].update(rows=True), r"non-negative integers"),
        (lambda s: s["counts"].update(rows=0), r"not zero although no row was counted"),
        (lambda s: s["counts"].update(rows=1), r"1 rows cannot hold these sums"),
        (_set_sum("loss_squared", "1"), r"loss\*\*2 > loss_squared \* denominator"),
        (_set_sum("correct", str(2**1200)), r"sums.correct: larger than sums.weight"),
        (lambda s: s.update(n_classes=2.0), r"n_classes must be null or an integer"),
        (lambda s: s["config"].update(validate="no"), r"validate: must be True or False"),
        (lambda s: s.update(window=10**40), r"window: must be a positive integer"),
    ],
)
def test_an_inconsistent_state_file_is_refused(edit: Any, pattern: str) -> None:
    state = _with(_state(), edit)
    with pytest.raises(ValueError, match=pattern):
        xs.Metric.from_state_dict(state)


def test_class_counts_must_add_up_to_the_rows() -> None:
    state = _state(per_class=True)
    xs.Metric.from_state_dict(state)  # as written: fine
    state["class_counts"][0] += 1
    with pytest.raises(
        ValueError, match=r"class_counts: add up to 101 rows, but counts.rows is 100"
    ):
        xs.Metric.from_state_dict(state)


def test_sums_near_the_maximum_never_wrap() -> None:
    # the largest sum a file may hold, merged with itself again and again: an error,
    # never the opposite sign (int64 wrap) or an OverflowError
    state = _state()
    state["sums"]["loss"][0] = str(2 ** (63 + 1024 + 1075) - 1)
    state["sums"]["loss_squared"] = ["0", 1, 0, 0]  # its squares overflowed to +inf
    metric = xs.Metric.from_state_dict(state)
    assert metric.value == math.inf and metric.compute().loss_sum == math.inf
    for _ in range(3):
        with pytest.raises(ValueError, match=r"sum out of range"):
            metric.merge(xs.Metric.from_state_dict(state))
    assert metric.value == math.inf and metric.rows_seen == 100  # unchanged
    # squares beyond float64: the report says inf, it does not raise OverflowError
    state = _state()
    for name in ("loss_squared", "denominator_squared"):
        state["sums"][name][0] = str(2 ** (63 + 1024 + 1075) - 1)
    report = xs.Metric.from_state_dict(state).compute()
    assert report.loss == _expected_loss(state) and report.stderr in (None, math.inf)


def _expected_loss(state: dict[str, Any]) -> float:
    """The loss a state holds: its exact sums' quotient (units 2**-1075 cancel)."""
    return int(state["sums"]["loss"][0]) / int(state["sums"]["denominator"][0])


# -- 6. sizes bounded by what the file holds; 7. messages bounded -------------------------


@pytest.mark.parametrize("claimed", [2_000_000, 10**9])
def test_a_claimed_class_count_does_not_allocate(claimed: int) -> None:
    state = _state(0, per_class=True, num_classes=3)
    state["n_classes"] = state["config"]["num_classes"] = claimed
    state["class_sums"] = state["class_counts"] = None
    started = time.perf_counter()
    with pytest.raises(ValueError, match=rf"class_sums: missing.*for {claimed} classes"):
        xs.Metric.from_state_dict(state)
    assert time.perf_counter() - started < 1.0


def test_a_per_class_metric_before_its_first_row_round_trips() -> None:
    metric = xs.CrossEntropy(num_classes=70_000, per_class=True)
    loaded = xs.Metric.from_state_dict(json.loads(json.dumps(metric.state_dict())))
    assert loaded.compute().per_class.height == 70_000


def test_huge_values_are_not_echoed_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state()
    state["counts"]["rows"] = "9" * 1_000_000
    state["config"].update({f"extra{i}": i for i in range(300_000)})
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(state))
    status, _, err = cli(capsys, "merge", path)
    assert status == 2 and "config: 300000 fields ('extra0', 'extra1'" in err
    with pytest.raises(ValueError, match=r"counts must be a list") as caught:
        xs.Metric.from_state_dict(_with(state, lambda s: s.update(config=_state()["config"])))
    assert len(str(caught.value)) < 300
    digits = tmp_path / "digits.json"
    digits.write_text('{"format": "xentstream.metric", "version": ' + "9" * 1_000_000 + "}")
    status, _, err = cli(capsys, "merge", digits)
    assert status == 2 and "digits.json: not a valid xentstream state file" in err


# -- every CLI failure: exit 2, one line ----------------------------------------------------


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    path = tmp_path / "t.parquet"
    _frame(300, 9).write_parquet(path)
    return path


def test_cli_failures_exit_2_with_one_line(
    tmp_path: Path, parquet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    run = ["evaluate", parquet, "--preds", "p", "--target", "y", "--no-progress"]
    state = tmp_path / "s.json"
    xs.CrossEntropy().update([[0.5, 0.5]], [0]).save(state)
    (tmp_path / "dir").mkdir()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    big_counts = tmp_path / "big.json"
    big_counts.write_text(json.dumps(_with(_state(), lambda s: s["counts"].update(rows=2**64))))
    np.save(tmp_path / "zero.npy", np.float64(0.5))
    np.save(tmp_path / "labels.npy", np.array([0]))
    cases = [
        (["merge", tmp_path / "dir"], "dir: cannot be read"),
        ([*run, "--checkpoint", tmp_path / "dir"], "dir: cannot be read"),
        ([*run, "--output", tmp_path / "dir"], "dir: Is a directory"),
        ([*run, "--save-state", tmp_path / "dir"], "Is a directory"),
        (["merge", deep], "nested too deeply"),
        (["merge", big_counts], "more than 2**63 - 1 rows"),
        ([*run, "--ignore-index", "1" + "0" * 30], "--ignore-index: must fit in int64"),
        ([*run, "--batch-rows", "1" + "0" * 30], "--batch-rows: must be a positive integer"),
        ([*run, "--batch-rows", "0"], "--batch-rows: must be a positive integer"),
        (["evaluate", tmp_path / "zero.npy", "--target", tmp_path / "labels.npy"],
         "preds: a 0-d array"),
        ([*run, "--classes", "a,b"], "classes: 2 names"),
        (["evaluate", parquet, "--preds", "y", "--target", "y"], "named as both"),
    ]  # fmt: skip
    for args, needle in cases:
        status, _, err = cli(capsys, *args)
        assert status == 2 and needle in err, (args, err)

    # permission denied (the tests may run as root, who is never denied: simulated)
    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(xentstream.state, "open", denied, raising=False)
    status, _, err = cli(capsys, "merge", state)
    assert status == 2 and f"{state}: cannot be read (Permission denied)" in err


def test_a_malformed_checkpoint_exits_2(tmp_path: Path, parquet: Path, capsys: Any) -> None:
    run = ["evaluate", parquet, "--preds", "p", "--target", "y", "--no-progress"]
    checkpoint = tmp_path / "c.ckpt"
    assert cli(capsys, *run, "--checkpoint", checkpoint)[0] == 0
    for edit in (lambda d: d.pop("metric"), lambda d: d.update(fingerprint=[])):
        _edited(checkpoint, edit)
        status, _, err = cli(capsys, *run, "--checkpoint", checkpoint)
        assert status == 2 and "c.ckpt" in err


def test_an_empty_source_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.parquet"
    _frame(3, 10).head(0).write_parquet(path)
    status, out, err = cli(capsys, "evaluate", path, "--preds", "p", "--target", "y")
    assert status == 0 and "count" in out
    assert err == "xentstream: warning: the source holds no rows: nothing was evaluated\n"


def test_dying_workers_do_not_hang_the_cli(tmp_path: Path, parquet: Path) -> None:
    pytest.importorskip("distributed")
    plugin = tmp_path / "killer.py"
    plugin.write_text(
        textwrap.dedent(f"""
        import os
        from distributed import WorkerPlugin
        FLAG = {str(tmp_path / "started")!r}
        class Kill(WorkerPlugin):
            def transition(self, key, start, finish, **kwargs):
                if finish == "executing":
                    os._exit(1)  # the first worker dies running a task ...
        def dask_setup(worker):
            if os.path.exists(FLAG):
                os._exit(1)  # ... and every restart dies at once: no worker left
            open(FLAG, "w").close()
            worker.plugins["kill"] = Kill()
        """)
    )
    env = child_env()
    env["DASK_DISTRIBUTED__WORKER__PRELOAD"] = json.dumps([str(plugin)])
    env["DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT"] = "2s"
    done = subprocess.run(
        [sys.executable, "-m", "xentstream", "evaluate", str(parquet), "--preds", "p",
         "--target", "y", "--dask", "local:1"],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("xentstream: error: --dask: the run failed (NoWorkerError")
    assert len(done.stderr.splitlines()) == 1


# -- polars read errors name the file --------------------------------------------------------


def test_a_bad_file_in_a_glob_is_named(tmp_path: Path) -> None:
    frame = _frame(200, 11)
    for i in range(5):
        frame.write_parquet(tmp_path / f"part-{i}.parquet")
    bad = tmp_path / "part-3.parquet"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated: no footer
    with pytest.raises(ValueError, match=rf"source: {bad}: cannot be read"):
        xs.evaluate(str(tmp_path / "part-*.parquet"), xs.CrossEntropy(), preds="p", target="y")
    bad.write_text("not parquet at all")
    with pytest.raises(ValueError, match=rf"source: {bad}: cannot be read"):
        xs.evaluate(str(tmp_path / "part-*.parquet"), xs.CrossEntropy(), preds="p", target="y")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ragged.csv", "b,y\n0.5,1\n0.2,0,7,8\n"),
        ("bad.ndjson", '{"b": 0.5, "y": 1}\n{"b": 0.2, "y": \n'),
    ],
)
def test_a_malformed_text_file_is_named(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"source: {path}: cannot be read"):
        xs.evaluate(path, xs.BinaryCrossEntropy(), preds="b", target="y")


# -- semantics -------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", [np.float32, np.float64])
def test_reduction_none_applies_sample_weights(weight_dtype: Any) -> None:
    rng = np.random.default_rng(12)
    probs, labels = rng.dirichlet(np.ones(4), 50), rng.integers(0, 4, 50)
    weights = (rng.random(50) * 3).astype(weight_dtype)
    class_weight = [0.5, 1.0, 2.0, 3.0]
    rows = xs.cross_entropy(
        probs, labels, sample_weight=weights, class_weight=class_weight, reduction="none"
    )
    expected = reference.multiclass_rows(probs, labels, class_weight=class_weight).losses
    np.testing.assert_allclose(rows, weights.astype(np.float64) * expected, rtol=1e-12)
    total = xs.cross_entropy(
        probs, labels, sample_weight=weights, class_weight=class_weight, reduction="sum"
    )
    assert math.fsum(rows) == total
    binary = xs.binary_cross_entropy(
        probs[:, 0], labels == 0, sample_weight=weights, reduction="none"
    )
    assert math.fsum(binary) == xs.binary_cross_entropy(
        probs[:, 0], labels == 0, sample_weight=weights, reduction="sum"
    )


def test_float16_probabilities_clip_at_float16_eps() -> None:
    from sklearn.metrics import log_loss

    probs = np.array([[1.0, 0.0], [0.25, 0.75], [0.0, 1.0]], dtype=np.float16)
    labels = np.array([1, 1, 0])
    # scikit-learn clips at np.finfo(float16).eps (and computes in float16: 1e-3);
    # float32's eps would give about 10.7
    expected = log_loss(labels, probs, labels=[0, 1])
    assert xs.cross_entropy(probs, labels) == pytest.approx(expected, rel=1e-3)
    assert xs.cross_entropy(probs, labels) == pytest.approx(
        reference.mean(reference.multiclass_rows(probs, labels)), rel=1e-12
    )
    torch = pytest.importorskip("torch")
    assert xs.cross_entropy(torch.from_numpy(probs), labels) == xs.cross_entropy(probs, labels)


def test_integer_one_hot_targets_report_like_float_ones() -> None:
    # They are soft targets: their 0/1 entries must not be counted as class labels
    # (which gave a normalized entropy from a label histogram of zeros and ones).
    logits = RNG.standard_normal((40, 4))
    one_hot = np.eye(4, dtype=np.int64)[RNG.integers(0, 4, 40)]
    as_ints = xs.CrossEntropy(input="logits").update(logits, one_hot).compute()
    as_floats = xs.CrossEntropy(input="logits").update(logits, one_hot.astype(float)).compute()
    assert json.dumps(as_ints.to_dict()) == json.dumps(as_floats.to_dict())


def test_integer_one_hot_soft_targets_are_accepted() -> None:
    probs = RNG.dirichlet(np.ones(3), 20)
    one_hot = np.eye(3, dtype=np.int64)[RNG.integers(0, 3, 20)]
    assert xs.cross_entropy(probs, one_hot) == xs.cross_entropy(probs, one_hot.astype(float))
    with pytest.raises(ValueError, match=r"target: row 0.*sum"):
        xs.cross_entropy(probs, one_hot * 2)  # soft targets must still sum to 1


# -- smaller items ---------------------------------------------------------------------------


def test_smaller_items() -> None:
    assert xs.CrossEntropy(num_classes=np.int64(3)).n_classes == 3
    with pytest.raises(TypeError, match=r"validate: must be True or False, got 'no'"):
        xs.cross_entropy([[0.5, 0.5]], [0], validate="no")
    with pytest.raises(ValueError, match=r"has 3 labels \(last dimension\)"):
        xs.MultiLabelCrossEntropy(num_labels=2).update([[0.5, 0.5, 0.5]], [[0, 1, 0]])
    frame = pl.DataFrame({"p": [[0.5, 0.5]] * 3, "y": [0, 1, 0], "k": [[1], [2], [1]]})
    with pytest.raises(ValueError, match=r"by: column 'k' holds List\(Int64\) values"):
        xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="k")


def test_evaluate_reports_source_rows_for_every_error() -> None:
    metric = xs.CrossEntropy().update([[0.5, 0.5]] * 10, [0] * 10)  # holds rows already
    bad_value = pl.DataFrame({"p": [[0.5, 0.5], [0.5, 0.5], [2.0, -1.0]], "y": [0, 1, 0]})
    with pytest.raises(ValueError, match=r"^p: row 2\b"):
        xs.evaluate(bad_value, metric, preds="p", target="y")
    null = pl.DataFrame({"p": [[0.5, 0.5], [0.5, 0.5], None], "y": [0, 1, 0]})
    with pytest.raises(ValueError, match=r"^p: row 2\b"):
        xs.evaluate(null, metric, preds="p", target="y")
    assert metric.rows_seen == 10


def test_probabilities_given_as_logits_warn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    frame = _frame(50, 13)
    with pytest.warns(UserWarning, match=r"look like probabilities"):
        xs.evaluate(frame, xs.CrossEntropy(input="logits"), preds="p", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = frame.with_columns(pl.Series("p", np.log(frame["p"].to_numpy()) + 3.0))
        xs.evaluate(logits, xs.CrossEntropy(input="logits"), preds="p", target="y")
    path = tmp_path / "f.parquet"
    frame.write_parquet(path)
    status, _, err = cli(
        capsys, "evaluate", path, "--preds", "p", "--target", "y", "--input", "logits"
    )
    assert status == 0 and err.startswith('xentstream: warning: input="logits", but')
    assert len(err.splitlines()) == 1


def test_checkpoint_version_is_strict(tmp_path: Path) -> None:
    frame = _frame(300, 14)
    path = _interrupted(tmp_path, frame)
    _edited(path, lambda d: d.update(version=float(evaluate_module.CHECKPOINT_VERSION)))
    _refused(path, frame, r"not an xentstream checkpoint of version 2 or 3")


def test_label_counts_are_checked_like_the_other_counts() -> None:
    """Found by the fuzz suite: label counts a state cannot hold were dropped silently."""
    multilabel = xs.MultiLabelCrossEntropy().update([[0.2, 0.9]], [[0, 1]]).state_dict()
    multilabel["label_counts"] = []
    with pytest.raises(ValueError, match="MultiLabelCrossEntropy state holds none"):
        xs.Metric.from_state_dict(multilabel)
    state = xs.CrossEntropy().update([[0.5, 0.5], [0.1, 0.9]], [0, 1]).state_dict()
    assert xs.Metric.from_state_dict(state).state_dict() == state
    state["label_counts"][0] += 1
    with pytest.raises(ValueError, match=r"label_counts: add up to 3 rows, but counts\.rows is 2"):
        xs.Metric.from_state_dict(state)


def test_integer_one_hot_targets_grouped_report_like_float_ones() -> None:
    # The grouped path counts labels per group: the same rule as the flat path above.
    logits = RNG.standard_normal((60, 3))
    one_hot = np.eye(3, dtype=np.int64)[RNG.integers(0, 3, 60)]
    keys = RNG.integers(0, 4, 60)
    reports = [
        xs.evaluate(
            pl.DataFrame({"preds": logits, "target": target, "key": keys}),
            xs.CrossEntropy(input="logits"),
            preds="preds",
            target="target",
            by="key",
            progress=False,
        )
        for target in (one_hot, one_hot.astype(float))
    ]
    assert json.dumps(reports[0].to_dict()) == json.dumps(reports[1].to_dict())
