"""Metrics under threads: one metric fed from many threads, many metrics at once,
and results that do not depend on the number of numba threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import pytest
from metric_cases import CASE_IDS, CASES, Batch, Case, concat, float_bits, report_bits

import xentstream as xs
from xentstream import _batch

#: Rows big enough that one batch is split into several parallel kernel blocks.
_BIG = 20_000


def _layer() -> str:
    xs.cross_entropy([[0.5, 0.5]], [0])  # a parallel kernel has run, so a layer is chosen
    return f"numba threading layer {numba.threading_layer()!r}, {numba.get_num_threads()} threads"


def _state(metric: xs.Metric) -> tuple[dict[str, Any], dict[str, Any]]:
    """State and report without the window, which follows the order of the updates."""
    state = {k: v for k, v in metric.state_dict().items() if k != "window_rows"}
    report = {k: v for k, v in report_bits(metric.compute()).items() if k != "window_loss"}
    return state, report


def _batches(case: Case, salt: int) -> list[Batch]:
    rng = np.random.default_rng([CASES.index(case), 300 + salt])
    sizes = [int(n) for n in rng.integers(1, 3000, size=10)] + [
        _BIG // int(np.prod(case.leading, dtype=np.int64))
    ]
    return case.batches(rng, sizes)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_one_metric_updated_from_many_threads(case: Case) -> None:
    batches = _batches(case, 0)
    sequential = case.metric()
    for batch in batches:
        sequential.update(*batch)
    shared = case.metric()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda batch: shared.update(*batch), batches))
    assert all(result is shared for result in results)
    assert shared.rows_seen == sequential.rows_seen, _layer()
    assert _state(shared) == _state(sequential), _layer()
    expected = case.functional(concat(batches))
    assert float_bits(shared.value) == float_bits(expected), _layer()


def test_rejected_batches_from_other_threads_do_not_leak_into_the_state() -> None:
    case = CASES[1]
    batches = _batches(case, 1)
    bad = [Batch(b.preds.copy(), b.target, b.sample_weight) for b in batches]
    for batch in bad:
        batch.preds.reshape(-1)[-1] = np.nan
    shared = case.metric()

    def feed(batch: Batch) -> bool:
        try:
            shared.update(*batch)
        except ValueError:
            return False
        return True

    interleaved = [b for pair in zip(batches, bad, strict=True) for b in pair]
    with ThreadPoolExecutor(max_workers=6) as pool:
        accepted = list(pool.map(feed, interleaved))
    assert accepted == [True, False] * len(batches), _layer()
    sequential = case.metric()
    for batch in batches:
        sequential.update(*batch)
    assert _state(shared) == _state(sequential), _layer()


def test_different_metrics_updated_concurrently() -> None:
    streams = {case.id: (case, _batches(case, 2)) for case in CASES}

    def feed(case_id: str) -> xs.Metric:
        case, batches = streams[case_id]
        metric = case.metric()
        for batch in batches:
            metric.update(*batch)
        return metric

    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        concurrent = dict(zip(streams, pool.map(feed, streams), strict=True))
    for case_id, (case, batches) in streams.items():
        metric = concurrent[case_id]
        one_pass = case.metric().update(*concat(batches))
        assert metric.state_dict() == one_pass.state_dict(), (case_id, _layer())
        assert report_bits(metric.compute()) == report_bits(one_pass.compute()), case_id
        expected = case.functional(concat(batches))
        assert float_bits(metric.value) == float_bits(expected), (case_id, _layer())


def test_functions_called_concurrently() -> None:
    rng = np.random.default_rng(21)
    jobs = [(rng.normal(size=(_BIG, 4)), rng.integers(0, 4, size=_BIG)) for _ in range(6)]
    expected = [xs.cross_entropy(x, y, input="logits") for x, y in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda job: xs.cross_entropy(*job, input="logits"), jobs))
    assert [float_bits(v) for v in got] == [float_bits(v) for v in expected], _layer()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bits_do_not_depend_on_the_number_of_threads(case: Case) -> None:
    width = 1 if case.kind in ("binary", "tokens") else case.n_classes
    n = 300_000 // (width * int(np.prod(case.leading, dtype=np.int64)))
    batch = case.batch(np.random.default_rng([CASES.index(case), 400]), n)
    rows = case.rows(batch)
    per_class = bool(case.kwargs.get("per_class") or case.kwargs.get("per_label"))
    most = numba.config.NUMBA_NUM_THREADS
    results, blocks = {}, {}
    default = numba.get_num_threads()
    try:
        for threads in (1, most):
            numba.set_num_threads(threads)
            blocks[threads] = _batch._block_count(rows, width, per_class, 1)
            metric = case.metric().update(*batch)
            results[threads] = (metric.state_dict(), report_bits(metric.compute()))
    finally:
        numba.set_num_threads(default)
    if most > 1:  # the split of the batch into kernel blocks really differs
        assert blocks[1] != blocks[most], blocks
    assert results[1] == results[most], _layer()
