"""State files: versioned JSON (never pickle), clear errors for bad files, atomic writes."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from metric_cases import report_bits

import xentstream as xs
import xentstream.state


def _metric(**kwargs: Any) -> xs.CrossEntropy:
    rng = np.random.default_rng(5)
    metric = xs.CrossEntropy(input="logits", per_class=True, window=4, **kwargs)
    metric.update(rng.normal(size=(30, 3)), rng.integers(0, 3, size=30))
    return metric


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- the file format -------------------------------------------------------------------


def test_a_state_file_is_versioned_json(tmp_path: Path) -> None:
    metric = _metric()
    path = tmp_path / "state.json"
    metric.save(path)
    raw = path.read_bytes()
    assert raw.lstrip().startswith(b"{")
    data = json.loads(raw)
    assert data["format"] == "xentstream.metric"
    assert data["version"] == xentstream.state.VERSION
    assert data["metric"] == "CrossEntropy"
    assert data["config"]["input"] == "logits"


def test_save_accepts_str_and_pathlike(tmp_path: Path) -> None:
    metric = _metric()
    metric.save(str(tmp_path / "a.json"))
    metric.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert report_bits(xs.load(str(tmp_path / "a.json")).compute()) == report_bits(metric.compute())


# -- bad files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["{not json", "", '{"format": "xentstream.metric", ', "[1, 2, 3]", '"a string"', "null"],
    ids=["broken", "empty", "truncated", "list", "string", "null"],
)
def test_malformed_json_is_a_clear_value_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(ValueError, match="not a valid xentstream state file") as caught:
        xs.load(path)
    assert str(path) in str(caught.value)


def test_a_pickle_file_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(_metric()))
    with pytest.raises(ValueError) as caught:
        xs.load(path)
    assert str(path) in str(caught.value)


def _saved_state(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "state.json"
    _metric().save(path)
    return path, json.loads(path.read_text(encoding="utf-8"))


def _tampered(tmp_path: Path, edit: Any) -> Path:
    path, state = _saved_state(tmp_path)
    edit(state)
    path.write_text(json.dumps(state), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda s: s.update(format="something.else"), "format"),
        (lambda s: s.pop("format"), "format"),
        (lambda s: s.update(version=xentstream.state.VERSION + 1), "version"),
        (lambda s: s.update(version="1"), "version"),
        (lambda s: s.pop("version"), "version"),
        (lambda s: s.update(metric="Accuracy"), "unknown metric"),
        (lambda s: s.update(metric=None), "unknown metric"),
    ],
    ids=[
        "other-format",
        "no-format",
        "future-version",
        "string-version",
        "no-version",
        "unknown-metric",
        "no-metric",
    ],
)
def test_format_version_and_metric_name_are_checked(tmp_path: Path, edit: Any, words: str) -> None:
    path = _tampered(tmp_path, edit)
    with pytest.raises(ValueError, match=words) as caught:
        xs.load(path)
    assert str(path) in str(caught.value)


def test_from_state_dict_checks_the_metric_class() -> None:
    state = _metric().state_dict()
    with pytest.raises(ValueError, match="CrossEntropy"):
        xs.BinaryCrossEntropy.from_state_dict(state)
    with pytest.raises(ValueError, match="CrossEntropy"):
        xs.MultiLabelCrossEntropy.from_state_dict(state)
    assert type(xs.CrossEntropy.from_state_dict(state)) is xs.CrossEntropy
    assert type(xs.Metric.from_state_dict(state)) is xs.CrossEntropy


@pytest.mark.parametrize("state", [None, [], "state", 3], ids=["none", "list", "str", "int"])
def test_from_state_dict_refuses_non_dicts(state: Any) -> None:
    with pytest.raises(ValueError, match="state"):
        xs.Metric.from_state_dict(state)


def _set_path(keys: tuple[Any, ...], value: Any) -> Any:
    def edit(state: dict[str, Any]) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _drop(*keys: Any) -> Any:
    def edit(state: dict[str, Any]) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


TAMPERED = {
    "loss value not an integer": _set_path(("sums", "loss", 0), "12.5"),
    "loss value garbage": _set_path(("sums", "loss", 0), "abc"),
    "loss value null": _set_path(("sums", "loss", 0), None),
    "loss value out of range": _set_path(("sums", "loss", 0), str(1 << 3000)),
    "accumulator too short": _set_path(("sums", "loss"), ["0", 0, 0]),
    "accumulator not a list": _set_path(("sums", "loss"), 1.5),
    "negative nan count": _set_path(("sums", "loss", 3), -1),
    "float inf count": _set_path(("sums", "loss", 1), 0.5),
    "missing sum": _drop("sums", "entropy"),
    "extra sum": _set_path(("sums", "bogus"), ["0", 0, 0, 0]),
    "sums not a dict": _set_path(("sums",), [1, 2]),
    "missing counts": _drop("counts"),
    "missing rows count": _drop("counts", "rows"),
    "non-integer rows count": _set_path(("counts", "rows"), "many"),
    "negative rows count": _set_path(("counts", "rows"), -3),
    "class sums wrong width": _set_path(("class_sums",), [[["0", 0, 0, 0]] * 3] * 2),
    "class sums bad entry": _set_path(("class_sums", 0, 0), ["x", 0, 0, 0]),
    "class sums of another class count": lambda s: s["class_sums"].pop(),
    "class counts do not match": lambda s: s["class_counts"].pop(),
    "class sums and counts of another class count": lambda s: (
        s["class_sums"].pop(),
        s["class_counts"].pop(),
    ),
    "fractional class count": _set_path(("class_counts", 0), 2.5),
    "fractional rows count": _set_path(("counts", "rows"), 29.5),
    "class counts missing": _set_path(("class_counts",), None),
    "window rows garbage": _set_path(("window_rows",), [["a", "b"]]),
    "window rows wrong arity": _set_path(("window_rows",), [[1.0]]),
    "config unknown field": _set_path(("config", "bogus"), 1),
    "config missing field": _drop("config", "input"),
    "config bad input": _set_path(("config", "input"), "odds"),
    "config bad eps": _set_path(("config", "eps"), "tiny"),
    "config bad smoothing": _set_path(("config", "label_smoothing"), 2.0),
    "config not a dict": _set_path(("config",), "multiclass"),
    "n_classes disagrees with config": _set_path(("n_classes",), 5),
    "window not an integer": _set_path(("window",), "four"),
}


@pytest.mark.parametrize("edit", list(TAMPERED.values()), ids=list(TAMPERED))
def test_tampered_state_is_a_clear_value_error(tmp_path: Path, edit: Any) -> None:
    path = _tampered(tmp_path, edit)
    with pytest.raises(ValueError, match="state") as caught:
        xs.load(path)
    assert str(path) in str(caught.value)
    state = json.loads(path.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match=r"^state"):
        xs.Metric.from_state_dict(state)


def test_from_state_dict_does_not_modify_its_argument() -> None:
    state = _metric().state_dict()
    original = copy.deepcopy(state)
    loaded = xs.Metric.from_state_dict(state)
    loaded.update([[0.0, 1.0, 2.0]], [1])
    assert state == original


# -- merging loaded states -------------------------------------------------------------


def test_merging_a_loaded_state_of_another_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard.json"
    _metric(label_smoothing=0.1).save(path)
    loaded = xs.load(path)
    local = _metric()
    before, loaded_before = local.state_dict(), loaded.state_dict()
    with pytest.raises(ValueError, match="label_smoothing"):
        local.merge(loaded)
    with pytest.raises(ValueError, match="label_smoothing"):
        loaded.merge(local)
    assert local.state_dict() == before
    assert loaded.state_dict() == loaded_before


def test_merging_a_loaded_state_of_another_class_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard.json"
    xs.CrossEntropy(input="logits").update(np.zeros((2, 5)), [0, 4]).save(path)
    local = xs.CrossEntropy(input="logits").update(np.zeros((2, 3)), [0, 2])
    before = local.state_dict()
    with pytest.raises(ValueError, match="num_classes"):
        local.merge(xs.load(path))
    assert local.state_dict() == before


def test_merging_loaded_shards_equals_one_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(90, 3))
    labels = rng.integers(0, 3, size=90)
    for i, rows in enumerate(np.array_split(np.arange(90), 3)):
        xs.CrossEntropy(input="logits").update(logits[rows], labels[rows]).save(
            tmp_path / f"shard{i}.json"
        )
    total = xs.load(tmp_path / "shard2.json")
    for i in (0, 1):
        total.merge(xs.load(tmp_path / f"shard{i}.json"))
    one_pass = xs.CrossEntropy(input="logits").update(logits, labels)
    assert total.state_dict() == one_pass.state_dict()
    assert total.value == xs.cross_entropy(logits, labels, input="logits")


# -- atomic writes ---------------------------------------------------------------------


def test_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    _metric().save(tmp_path / "state.json")
    _metric().save(tmp_path / "state.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_save_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    big = xs.CrossEntropy(per_class=True)
    big.update(np.full((4, 200), 1 / 200), np.arange(4))
    big.save(path)
    size_before = path.stat().st_size
    small = xs.BinaryCrossEntropy().update([0.25], [1.0])
    small.save(path)
    assert path.stat().st_size < size_before
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(
        json.dumps(small.state_dict())
    )
    assert type(xs.load(path)) is xs.BinaryCrossEntropy


def test_an_interrupted_save_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    old = _metric()
    old.save(path)
    old_bytes = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "replace", crash)
    new = _metric(label_smoothing=0.3)
    with pytest.raises(OSError, match="disk unplugged"):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert xs.load(path).state_dict() == old.state_dict()


def test_a_save_that_fails_while_writing_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    _metric().save(path)
    old_bytes = path.read_bytes()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(xentstream.state.json, "dump", crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        _metric(label_smoothing=0.3).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_save_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        _metric().save(tmp_path / "missing" / "state.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("weight", [1e-280, 1e-300, 5e-324])
def test_a_real_state_of_tiny_weights_loads(weight: float) -> None:
    """Squares of tiny weights underflow to 0 in the kernels' terms: the loader's
    consistency checks must allow for it, or it refuses a state real rows produced."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=50)
    for metric in (
        xs.CrossEntropy().update(probs, rng.integers(0, 3, 50), np.full(50, weight)),
        xs.BinaryCrossEntropy().update(probs[:, 0], rng.integers(0, 2, 50), np.full(50, weight)),
    ):
        loaded = xs.Metric.from_state_dict(metric.state_dict())
        assert loaded.state_dict() == metric.state_dict()
        assert report_bits(loaded.compute()) == report_bits(metric.compute())
