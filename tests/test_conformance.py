"""One conformance harness over every metric class (found by introspection).

For each configuration of :mod:`metric_cases`: split == one pass, any merge order,
idempotent compute, lossless state round trips (dict, JSON, file, pickle), merge
identities and refusals, atomic rejection of every SPEC section 7 rule that applies,
stream offsets in error messages, the running value on every prefix against the
one-shot function (river's check), and empty batches as no-ops.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl
import pytest
from metric_cases import (
    CASE_IDS,
    CASES,
    Batch,
    Case,
    all_metric_classes,
    bits,
    case_for,
    concat,
    float_bits,
    report_bits,
)

import xentstream as xs

SIZES = [5, 0, 13, 1, 21]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _seed(case: Case, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([CASES.index(case), salt])


def _fed(case: Case, batches: list[Batch], **overrides: Any) -> xs.Metric:
    metric = case.metric(**overrides)
    for batch in batches:
        assert metric.update(*batch) is metric
    return metric


def _snapshot(metric: xs.Metric) -> tuple[dict[str, Any], dict[str, Any], int]:
    return metric.state_dict(), report_bits(metric.compute()), metric.rows_seen


def _without_window(snapshot: tuple[dict[str, Any], dict[str, Any], int]) -> tuple:
    state, report, rows = snapshot
    state = {k: v for k, v in state.items() if k != "window_rows"}
    report = {k: v for k, v in report.items() if k != "window_loss"}
    return state, report, rows


# -- introspection -------------------------------------------------------------------------


def test_every_metric_class_has_cases() -> None:
    classes = all_metric_classes()
    assert classes, "no metric classes found"
    assert set(classes) == {case.cls for case in CASES}
    registered = {cls for name, cls in xs.Metric._registry.items() if not name.startswith("_")}
    assert registered == set(classes)
    for cls in classes:
        assert getattr(xs, cls.__name__) is cls, f"{cls.__name__} is not exported"


# -- exactness: split, merge order ---------------------------------------------------------


def test_split_equals_one_pass(case: Case) -> None:
    batches = case.batches(_seed(case), SIZES)
    one_pass = _fed(case, [concat(batches)])
    streamed = _fed(case, batches)
    merged = case.metric()
    for batch in batches:
        assert merged.merge(_fed(case, [batch])) is merged
    expected = _snapshot(one_pass)
    assert _snapshot(streamed) == expected
    assert _snapshot(merged) == expected


def test_any_merge_order_gives_the_same_bits(case: Case) -> None:
    parts = [_fed(case, [batch]) for batch in case.batches(_seed(case), [7, 3, 11, 6])]
    in_order = _snapshot(_merged(case, parts, range(len(parts))))
    # windows keep the last rows of the stream, so only stream order preserves them
    expected = _without_window(in_order)
    for order in itertools.permutations(range(len(parts))):
        assert _without_window(_snapshot(_merged(case, parts, order))) == expected, order
    left = copy.deepcopy(parts[0]).merge(parts[1])
    right = copy.deepcopy(parts[2]).merge(parts[3])
    tree = left.merge(right)
    assert _snapshot(tree) == in_order


def _merged(case: Case, parts: list[xs.Metric], order: Any) -> xs.Metric:
    total = case.metric()
    for index in order:
        total.merge(parts[index])
    return total


# -- compute, round trips ------------------------------------------------------------------


def test_compute_is_idempotent(case: Case) -> None:
    metric = _fed(case, case.batches(_seed(case), SIZES))
    state = metric.state_dict()
    first, second = metric.compute(), metric.compute()
    assert report_bits(first) == report_bits(second)
    assert metric.state_dict() == state
    assert float_bits(metric.value) == float_bits(first.loss)


def test_state_dict_round_trip_is_lossless(case: Case) -> None:
    rng = _seed(case)
    batches = case.batches(rng, SIZES)
    metric = _fed(case, batches)
    state = metric.state_dict()
    through_json = json.loads(json.dumps(state, allow_nan=False))
    for loaded in (
        case.cls.from_state_dict(state),
        case.cls.from_state_dict(through_json),
        xs.Metric.from_state_dict(through_json),
    ):
        assert type(loaded) is case.cls
        assert _snapshot(loaded) == _snapshot(metric)
    # a loaded metric continues bit for bit
    extra = case.batch(rng, 9)
    loaded = xs.Metric.from_state_dict(through_json).update(*extra)
    assert _snapshot(loaded) == _snapshot(_fed(case, [*batches, extra]))


def test_save_and_load_round_trip_is_lossless(case: Case, tmp_path: Any) -> None:
    rng = _seed(case)
    batches = case.batches(rng, SIZES)
    metric = _fed(case, batches)
    path = tmp_path / "state.json"
    assert metric.save(path) is None
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle) == json.loads(json.dumps(metric.state_dict()))
    loaded = xs.load(path)
    assert type(loaded) is case.cls
    assert _snapshot(loaded) == _snapshot(metric)
    extra = case.batch(rng, 4)
    assert _snapshot(loaded.update(*extra)) == _snapshot(metric.update(*extra))


def test_pickle_round_trip(case: Case) -> None:
    rng = _seed(case)
    metric = _fed(case, case.batches(rng, SIZES))
    clone = pickle.loads(pickle.dumps(metric))
    assert type(clone) is case.cls
    assert _snapshot(clone) == _snapshot(metric)
    extra = case.batch(rng, 6)
    assert _snapshot(clone.update(*extra)) == _snapshot(metric.update(*extra))


# -- merge identities and refusals ---------------------------------------------------------


def test_merge_with_an_empty_metric_changes_nothing(case: Case) -> None:
    metric = _fed(case, case.batches(_seed(case), SIZES))
    expected = _snapshot(metric)
    assert _snapshot(metric.merge(case.metric())) == expected
    assert _snapshot(case.metric().merge(metric)) == expected
    assert _snapshot(metric) == expected


def test_merge_leaves_its_argument_unchanged(case: Case) -> None:
    rng = _seed(case)
    left = _fed(case, case.batches(rng, [4, 9]))
    right = _fed(case, case.batches(rng, [8, 2]))
    before = _snapshot(right)
    left.merge(right)
    assert _snapshot(right) == before
    left.update(*case.batch(rng, 3))  # no aliasing: the receiver's updates stay its own
    assert _snapshot(right) == before


def test_merge_refuses_another_config(case: Case) -> None:
    rng = _seed(case)
    metric = _fed(case, case.batches(rng, [6]))
    other = _fed(case, case.batches(rng, [5]), **case.other_config())
    _assert_refused(metric, other, ValueError, "configurations differ")


def test_merge_refuses_another_window(case: Case) -> None:
    rng = _seed(case)
    metric = _fed(case, case.batches(rng, [6]))
    windows = [None, 3] if case.window is None else [None, case.window + 1]
    for window in windows:
        if window == case.window:
            continue
        other = _fed(case, case.batches(rng, [5]), window=window)
        _assert_refused(metric, other, ValueError, "window")


_COUNTED = [c for c in CASES if c.kind in ("multiclass", "multilabel")]
_COUNTED = [c for c in _COUNTED if "class_weight" not in c.kwargs]
_COUNTED = [c for c in _COUNTED if not isinstance(c.kwargs.get("pos_weight"), list)]


@pytest.mark.parametrize("case", _COUNTED, ids=[c.id for c in _COUNTED])
def test_merge_refuses_another_class_count(case: Case) -> None:
    rng = _seed(case)
    metric = _fed(case, case.batches(rng, [6]))
    wider = replace(case, n_classes=case.n_classes + 1, kwargs=_without_counts(case.kwargs))
    other = _fed(wider, wider.batches(rng, [5]))
    _assert_refused(metric, other, ValueError, str(case.n_classes + 1))


def _without_counts(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in ("num_classes", "num_labels")}


def test_merge_refuses_another_metric_class(case: Case) -> None:
    rng = _seed(case)
    metric = _fed(case, case.batches(rng, [6]))
    for cls in all_metric_classes():
        if cls is case.cls:
            continue
        stranger = case_for(cls)
        other = _fed(stranger, stranger.batches(rng, [5]))
        _assert_refused(metric, other, TypeError, cls.__name__)
    before = _snapshot(metric)
    with pytest.raises(ValueError, match="itself"):
        metric.merge(metric)
    assert _snapshot(metric) == before


def _assert_refused(metric: xs.Metric, other: xs.Metric, error: type, words: str) -> None:
    before, other_before = _snapshot(metric), _snapshot(other)
    with pytest.raises(error, match=re.escape(words)):
        metric.merge(other)
    with pytest.raises(error):
        other.merge(metric)
    assert _snapshot(metric) == before
    assert _snapshot(other) == other_before


# -- running value on every prefix (river's check), empty batches ------------------------


def test_running_value_equals_the_functional_on_every_prefix(case: Case) -> None:
    batches = case.batches(_seed(case), [*SIZES, 0, 2, 30])
    metric = case.metric()
    for seen in range(1, len(batches) + 1):
        metric.update(*batches[seen - 1])
        expected = case.functional(concat(batches[:seen]))
        assert float_bits(metric.value) == float_bits(expected), seen
        assert float_bits(metric.compute().loss) == float_bits(expected), seen


def test_unweighted_running_value_equals_the_functional(case: Case) -> None:
    batches = case.batches(_seed(case), [3, 17, 0, 8], weighted=False)
    metric = case.metric()
    for seen in range(1, len(batches) + 1):
        metric.update(*batches[seen - 1])
        expected = case.functional(concat(batches[:seen]))
        assert float_bits(metric.value) == float_bits(expected), seen


def test_empty_batches_are_no_ops(case: Case) -> None:
    rng = _seed(case)
    empty = case.batch(rng, 0)
    assert empty.preds.size == 0
    fresh = case.metric()
    before = _snapshot(fresh)
    fresh.update(*empty).update(empty.preds, empty.target)
    assert _snapshot(fresh) == before
    metric = _fed(case, case.batches(rng, [7]))
    before = _snapshot(metric)
    metric.update(*empty).update(empty.preds, empty.target)
    assert _snapshot(metric) == before


def test_reset_forgets_every_row(case: Case) -> None:
    batches = case.batches(_seed(case), SIZES)
    metric = _fed(case, batches)
    first = _snapshot(metric)
    assert metric.reset() is metric
    report = metric.compute()
    assert metric.rows_seen == 0
    assert report.count == 0
    assert report.ignored == 0
    assert np.isnan(metric.value)
    for batch in batches:
        metric.update(*batch)
    assert _snapshot(metric) == first


# -- rejected batches (SPEC section 7) -----------------------------------------------------

#: The bad batch's corrupted rows (flattened); the first one must be reported.
_BAD_ROW = 3


@dataclass(frozen=True)
class Rule:
    """One way to break a batch, and what the error must say."""

    name: str
    applies: Callable[[Case], bool]
    corrupt: Callable[[Case, Batch, int], Batch]
    argument: str
    words: str
    error: type = ValueError
    names_row: bool = True


def _rows(case: Case, batch: Batch, array: np.ndarray) -> np.ndarray:
    """A (rows, -1) view of ``array`` (a fresh copy owned by the bad batch)."""
    return array.reshape(case.rows(batch), -1)


def _edit(
    preds: Callable | None = None,
    target: Callable | None = None,
    weight: Callable | None = None,
) -> Callable[[Case, Batch, int], Batch]:
    """Corrupt rows ``r`` and ``r + 2`` of a copy of the batch with per-row editors."""

    def corrupt(case: Case, batch: Batch, r: int) -> Batch:
        p, t = batch.preds.copy(), batch.target.copy()
        w = None if batch.sample_weight is None else batch.sample_weight.copy()
        for row in (r, r + 2):
            if preds is not None:
                preds(_rows(case, batch, p)[row])
            if target is not None:
                target(_rows(case, batch, t)[row])
            if weight is not None:
                _rows(case, batch, w)[row] = weight
                if case.ignore_index is not None and case.target == "hard":
                    _rows(case, batch, t)[row] = 0  # ignored rows carry no weight
        return Batch(p, t, w)

    return corrupt


def _set(column: int, value: float) -> Callable[[np.ndarray], None]:
    def editor(row: np.ndarray) -> None:
        row[min(column, row.size - 1)] = value

    return editor


def _scale(factor: float) -> Callable[[np.ndarray], None]:
    def editor(row: np.ndarray) -> None:
        row *= factor

    return editor


def _shift(amount: float) -> Callable[[np.ndarray], None]:
    def editor(row: np.ndarray) -> None:
        row += amount

    return editor


def _fill(value: float) -> Callable[[np.ndarray], None]:
    def editor(row: np.ndarray) -> None:
        row[:] = value

    return editor


def _negative_soft(row: np.ndarray) -> None:
    row[1] += row[0] + 0.1
    row[0] = -0.1


def _polars_null(which: str) -> Callable[[Case, Batch, int], Batch]:
    """Replace one argument by a polars Series with a null at row ``r``."""

    def corrupt(case: Case, batch: Batch, r: int) -> Batch:
        values = {"preds": batch.preds, "target": batch.target, "weight": batch.sample_weight}
        array = values[which]
        items: list[Any] = array.tolist()
        items[r] = None
        if array.ndim == 2:
            dtype = pl.Array(pl.Int64 if array.dtype.kind == "i" else pl.Float64, array.shape[1])
        else:
            dtype = pl.Int64 if array.dtype.kind == "i" else pl.Float64
        values[which] = pl.Series(which, items, dtype=dtype)
        return Batch(values["preds"], values["target"], values["weight"])

    return corrupt


def _truncate(which: str) -> Callable[[Case, Batch, int], Batch]:
    def corrupt(case: Case, batch: Batch, r: int) -> Batch:
        values = {"preds": batch.preds, "target": batch.target, "weight": batch.sample_weight}
        values[which] = values[which][:-1]
        return Batch(values["preds"], values["target"], values["weight"])

    return corrupt


def _extra_class(case: Case, batch: Batch, r: int) -> Batch:
    column = np.full((*batch.preds.shape[:-1], 1), 0.0)
    return Batch(np.concatenate([batch.preds, column], axis=-1), batch.target, batch.sample_weight)


def _flat_preds(case: Case, batch: Batch, r: int) -> Batch:
    return Batch(batch.preds[..., 0], batch.target, batch.sample_weight)


def _float_labels(case: Case, batch: Batch, r: int) -> Batch:
    return Batch(batch.preds, batch.target.astype(np.float64), batch.sample_weight)


def _string_preds(case: Case, batch: Batch, r: int) -> Batch:
    return Batch(batch.preds.astype(str), batch.target, batch.sample_weight)


def _is(kind: str | None = None, *, input: str | None = None, target: str | None = None):
    def applies(case: Case) -> bool:
        return (
            (kind is None or case.kind in kind.split("|"))
            and (input is None or case.input in input.split("|"))
            and (target is None or case.target == target)
        )

    return applies


def _flat_rows(case: Case) -> bool:
    return not case.leading


_PROBS_OUTSIDE = r"probability -?[0-9.]+ is outside \[0, 1\]"
_C = 4

RULES = [
    # shapes and lengths (no row to name)
    Rule("target length", _is(), _truncate("target"), "target", "shape", names_row=False),
    Rule(
        "sample_weight length",
        _is(),
        _truncate("weight"),
        "sample_weight",
        "shape",
        names_row=False,
    ),
    Rule(
        "class count",
        _is("multiclass|multilabel"),
        _extra_class,
        "preds",
        "expects 4",
        names_row=False,
    ),
    Rule(
        "no class dimension",
        _is("multiclass|multilabel"),
        _flat_preds,
        "preds",
        "dimension",
        names_row=False,
    ),
    Rule(
        "float hard labels",
        _is("multiclass", target="hard"),
        _float_labels,
        "target",
        "integers",
        error=TypeError,
        names_row=False,
    ),
    Rule(
        "string predictions",
        _is(),
        _string_preds,
        "preds",
        "floating point",
        error=TypeError,
        names_row=False,
    ),
    # non-finite and out-of-range predictions
    Rule("NaN prediction", _is(), _edit(preds=_set(1, np.nan)), "preds", "is NaN"),
    Rule(
        "+inf logit",
        _is(input="logits"),
        _edit(preds=_set(1, np.inf)),
        "preds",
        r"logit is \+inf",
    ),
    Rule(
        "every logit -inf",
        _is("multiclass", input="logits"),
        _edit(preds=_fill(-np.inf)),
        "preds",
        "every logit is -inf",
    ),
    Rule(
        "negative probability",
        _is(input="probs"),
        _edit(preds=_set(1, -0.25)),
        "preds",
        _PROBS_OUTSIDE,
    ),
    Rule(
        "probability above 1",
        _is(input="probs"),
        _edit(preds=_set(1, 1.5)),
        "preds",
        _PROBS_OUTSIDE,
    ),
    Rule(
        "probability row sum",
        _is("multiclass", input="probs"),
        _edit(preds=_scale(0.9)),
        "preds",
        "sum to 0.9",
    ),
    Rule(
        "log-probability row sum",
        _is("multiclass", input="logprobs"),
        _edit(preds=_shift(np.log(0.9))),
        "preds",
        "sum to 0.9",
    ),
    Rule(
        "positive log-probability",
        _is(input="logprobs"),
        _edit(preds=_set(1, 0.5)),
        "preds",
        "log-probability 0.5 is positive",
    ),
    # token values (one a row) and their mask
    Rule(
        "-inf target log-probability",
        _is("tokens", input="logprobs"),
        _edit(preds=_set(0, -np.inf)),
        "preds",
        "log-probability is -inf",
    ),
    Rule(
        "negative NLL",
        _is("tokens", input="nll"),
        _edit(preds=_set(0, -0.5)),
        "preds",
        "negative log-likelihood -0.5 is negative",
    ),
    Rule("+inf NLL", _is("tokens", input="nll"), _edit(preds=_set(0, np.inf)), "preds", r"\+inf"),
    Rule(
        "mask value not 0 or 1",
        _is("tokens"),
        _edit(target=_fill(2)),
        "target",
        "mask value 2 is not 0 or 1",
    ),
    # targets
    Rule(
        "label too large",
        _is("multiclass", target="hard"),
        _edit(target=_fill(_C)),
        "target",
        rf"label {_C} is outside \[0, {_C}\)",
    ),
    Rule(
        "negative label",
        _is("multiclass", target="hard"),
        _edit(target=_fill(-1)),
        "target",
        rf"label -1 is outside \[0, {_C}\)",
    ),
    Rule(
        "negative soft target",
        _is("multiclass", target="soft"),
        _edit(target=_negative_soft),
        "target",
        "-0.1 is negative",
    ),
    Rule(
        "NaN soft target",
        _is("multiclass", target="soft"),
        _edit(target=_set(0, np.nan)),
        "target",
        "negative or NaN",
    ),
    Rule(
        "soft target row sum",
        _is("multiclass", target="soft"),
        _edit(target=_scale(0.8)),
        "target",
        r"sum to 0\.(8|79)",
    ),
    Rule(
        "binary target above 1",
        _is("binary|multilabel"),
        _edit(target=_set(1, 1.5)),
        "target",
        r"target 1.5 is outside \[0, 1\]",
    ),
    Rule(
        "binary target negative",
        _is("binary|multilabel"),
        _edit(target=_set(1, -0.5)),
        "target",
        r"target -0.5 is outside \[0, 1\]",
    ),
    Rule(
        "binary target NaN",
        _is("binary|multilabel"),
        _edit(target=_set(1, np.nan)),
        "target",
        r"target nan is outside \[0, 1\]",
    ),
    # sample weights
    Rule(
        "negative sample weight",
        _is(),
        _edit(weight=-1.0),
        "sample_weight",
        "weight -1.0 is invalid",
    ),
    Rule("NaN sample weight", _is(), _edit(weight=np.nan), "sample_weight", "weight nan"),
    Rule("inf sample weight", _is(), _edit(weight=np.inf), "sample_weight", "weight inf"),
    # nulls in polars columns
    Rule(
        "null target (polars)",
        lambda c: _flat_rows(c) and (c.kind == "binary" or c.target == "hard"),
        _polars_null("target"),
        "target",
        "null",
    ),
    Rule(
        "null sample weight (polars)",
        _flat_rows,
        _polars_null("weight"),
        "sample_weight",
        "null",
    ),
    Rule("null prediction row (polars)", _flat_rows, _polars_null("preds"), "preds", "null"),
]

_PAIRS = [(case, rule) for case in CASES for rule in RULES if rule.applies(case)]


def test_every_case_is_checked_against_rules() -> None:
    for case in CASES:
        applicable = [rule.name for rule in RULES if rule.applies(case)]
        assert len(applicable) >= 8, (case.id, applicable)


@pytest.mark.parametrize(
    ("case", "rule"), _PAIRS, ids=[f"{case.id}-{rule.name}" for case, rule in _PAIRS]
)
def test_rejected_batch_leaves_the_state_unchanged(case: Case, rule: Rule) -> None:
    rng = _seed(case, 1)
    good = case.batches(rng, [6, 9])
    metric = _fed(case, good)
    offset = sum(case.rows(batch) for batch in good)
    assert metric.rows_seen == offset
    bad = rule.corrupt(case, case.batch(rng, 8), _BAD_ROW)
    before = _snapshot(metric)
    config_before = metric.config

    with pytest.raises(rule.error) as caught:
        metric.update(*bad)
    message = str(caught.value)
    assert message.startswith(f"{rule.argument}:"), message
    assert re.search(rule.words, message), message
    if rule.names_row:
        assert re.search(rf"\brow {offset + _BAD_ROW}\b", message), (
            f"expected the stream offset row {offset + _BAD_ROW} "
            f"({offset} rows seen + row {_BAD_ROW} of the batch): {message}"
        )
    assert _snapshot(metric) == before
    assert metric.config == config_before

    # the metric goes on as if the bad batch never came
    after = case.batch(rng, 5)
    metric.update(*after)
    assert _snapshot(metric) == _snapshot(_fed(case, [*good, after]))


def test_rejected_first_batch_leaves_a_fresh_metric_fresh(case: Case) -> None:
    rng = _seed(case, 2)
    fresh = case.metric()
    before = _snapshot(fresh)
    batch = case.batch(rng, 8)
    bad = Batch(batch.preds.copy(), batch.target, batch.sample_weight)
    bad.preds.reshape(-1)[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fresh.update(*bad)
    assert _snapshot(fresh) == before
    assert bits(fresh.config.to_dict()) == bits(case.metric().config.to_dict())
