"""The loss kinds declared as data (issue 16): what the command line and the error
messages read from ``kinds.KINDS`` instead of branching on a kind's name."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import xentstream as xs
from xentstream import cli, kinds
from xentstream.config import MulticlassConfig


def _bad_row_error(kind: kinds.Kind) -> str:
    """The message of a NaN prediction in column 1 of row 2 (a batch of the kind)."""
    preds = np.full((4, 3), 0.25)
    preds[:, 0] = 0.5
    preds[2, 1] = math.nan
    target = np.zeros(4, np.int64) if kind.class_axis == "class" else np.zeros((4, 3))
    with pytest.raises(xs.DataError) as raised:
        kind.batch(kind.config(), preds, target)
    return str(raised.value)


@pytest.mark.parametrize("name", [k.name for k in kinds.KINDS.values() if k.class_axis])
def test_kernel_errors_name_the_column_by_the_kinds_class_axis(name: str) -> None:
    kind = kinds.KINDS[name]
    assert _bad_row_error(kind).startswith(f"preds: row 2, {kind.class_axis} 1: ")


def test_one_value_rows_name_no_column() -> None:
    with pytest.raises(xs.DataError) as raised:
        xs.binary_cross_entropy([0.5, 0.5, math.nan], [1, 0, 1])
    assert str(raised.value) == "preds: row 2: prediction is NaN; predictions must not be NaN"


def test_multilabel_target_columns_are_labels() -> None:
    with pytest.raises(xs.DataError) as raised:
        xs.multilabel_cross_entropy([[0.5, 0.5], [0.5, 0.5]], [[0.0, 1.0], [0.0, 2.0]])
    assert str(raised.value).startswith("target: row 1, label 1: target 2.0 is outside [0, 1]")


def _args(*argv: str) -> object:
    return cli._parser().parse_args(["evaluate", "x.parquet", "--preds", "p", *argv])


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["evaluate", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_every_kind_is_a_task_and_builds_its_metric(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = ",".join(("auto", *(kind.task for kind in kinds.KINDS.values())))
    assert f"--task {{{tasks}}}" in _help(capsys)
    for kind in kinds.KINDS.values():
        argv = ["--task", kind.task, "--target", "y"]
        if kind.cli_inputs:
            argv += ["--input", next(iter(kind.cli_inputs))]
        metric = cli._metric(_args(*argv), kind.task)
        assert metric.kind is kind and type(metric.config) is kind.config


def test_flags_set_the_config_field_of_their_name() -> None:
    metric = cli._metric(
        _args(
            "--target",
            "y",
            "--class-weight",
            "1,2,3",
            "--ignore-index",
            "-100",
            "--label-smoothing",
            "0.1",
            "--per-class",
            "--calibration-bins",
            "4",
        ),
        "multiclass",
    )
    expected = xs.CrossEntropy(
        class_weight=[1, 2, 3],
        ignore_index=-100,
        label_smoothing=0.1,
        per_class=True,
        calibration_bins=4,
    )
    assert metric.config == expected.config  # the class count fixed by the weights too
    labels = cli._metric(_args("--target", "y", "--pos-weight", "2", "--per-class"), "multilabel")
    assert labels.config == xs.MultiLabelCrossEntropy(pos_weight=2.0, per_label=True).config
    many = cli._metric(_args("--target", "y", "--pos-weight", "1,2"), "multilabel")
    assert many.config.pos_weight == (1.0, 2.0) and many.n_classes == 2
    tokens = cli._metric(
        _args("--input", "target-nll", "--units", "bytes", "--per-class"), "tokens"
    )
    assert tokens.config == xs.TokenCrossEntropy(input="nll", unit="byte", per_document=True).config


@pytest.mark.parametrize(
    ("task", "argv", "needle"),
    [
        ("binary", ["--class-weight", "1,2"], "--class-weight: does not apply to the binary task"),
        ("binary", ["--pos-weight", "1,2"], "--pos-weight: the binary task takes one value"),
        ("multiclass", ["--pos-weight", "2"], "--pos-weight: does not apply to the multiclass"),
        ("multilabel", ["--label-smoothing", "0.1"], "--label-smoothing: does not apply"),
        # one class: no breakdown to report, and a flag that does nothing is an error
        ("binary", ["--per-class"], "--per-class: does not apply to the binary task"),
    ],
)
def test_flags_a_kind_lacks_are_refused(task: str, argv: list[str], needle: str) -> None:
    with pytest.raises(cli._UsageError, match=needle):
        cli._metric(_args("--target", "y", *argv), task)


def test_a_new_config_option_gets_a_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option added to a kind's config is on the command line with no change there."""

    @dataclasses.dataclass(frozen=True)
    class FocalConfig(MulticlassConfig):
        gamma: float = 0.0

    focal = dataclasses.replace(kinds.KINDS["multiclass"], config=FocalConfig)
    monkeypatch.setattr(cli, "KINDS", {**kinds.KINDS, "multiclass": focal})
    args = _args("--target", "y", "--gamma", "2")
    assert args.gamma == 2.0
    options = cli._config_flags()
    assert [kind.name for kind in options["gamma"]] == ["multiclass"]
    assert "--gamma GAMMA multiclass: the gamma= option (default: 0.0)" in _help(capsys)
    with pytest.raises(cli._UsageError, match="--gamma: does not apply to the binary task"):
        cli._metric(args, "binary")


def test_a_kind_words_the_codes_it_gives_another_meaning() -> None:
    """A new kind reuses the kernels' codes with its own rules (no _errors.py change)."""
    from xentstream._errors import DEFAULT_NAMES, kernel_error
    from xentstream._kernels import layout

    common = {"names": DEFAULT_NAMES, "leading_shape": (9,), "n_classes": 1, "sum_tol": 0.0}
    rules = {layout.TARGET_INVALID: "count {value!r} is negative; counts must be >= 0"}
    error = kernel_error(
        layout.TARGET_INVALID, 4, -1, -2.0, row_offset=10, axis=None, rules=rules, **common
    )
    assert str(error) == "target: row 14 (batch row 4): count -2.0 is negative; counts must be >= 0"
    plain = kernel_error(layout.TARGET_INVALID, 4, -1, -2.0, row_offset=0, axis=None, **common)
    assert str(plain) == "target: row 4: target probability -2.0 is negative or NaN"
