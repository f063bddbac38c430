"""Small batches replayed (``_batch.Replay``): the same bits as the full path, the same
errors, and the full path whenever the layout of the inputs changes."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from metric_cases import CASE_IDS, CASES, Case, report_bits

import xentstream as xs
from xentstream import _batch
from xentstream._errors import DataError


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the batches a replay ran (one entry each)."""
    ran: list[int] = []
    call = _batch.Replay.__call__

    def counted(self: _batch.Replay, preds: object, target: object) -> object:
        batch = call(self, preds, target)
        if batch is not None:
            ran.append(1)
        return batch

    monkeypatch.setattr(_batch.Replay, "__call__", counted)
    return ran


def _replayable(case: Case) -> bool:
    """The cases whose small unweighted batches replay: kinds that run one kernel call
    per batch, without a window or per-class sums (both need the kernel's side outputs)."""
    per_class = case.kwargs.get("per_class") or case.kwargs.get("per_label")
    return case.kind != "tokens" and not case.window and not per_class


def _merged_fresh(case: Case, batches: list) -> xs.Metric:
    """Every batch through the full path: a fresh metric each (no replay on its first
    batch), merged in stream order."""
    total = case.metric()
    for batch in batches:
        total.merge(case.metric().update(batch.preds, batch.target))
    return total


def _state(metric: xs.Metric) -> tuple[dict, dict]:
    state = {k: v for k, v in metric.state_dict().items() if k != "window_rows"}
    report = {k: v for k, v in report_bits(metric.compute()).items() if k != "window_loss"}
    return state, report


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_replayed_batches_give_the_bits_of_the_full_path(case: Case, replays: list[int]) -> None:
    rng = np.random.default_rng([CASES.index(case), 51])
    sizes = [1, 2, 32, 7, 300, 32, 64, 5, 1, 129, 32, 3]
    batches = case.batches(rng, sizes, weighted=False)
    metric = case.metric()
    for batch in batches:
        metric.update(batch.preds, batch.target)
    ran = len(replays)
    reference = _merged_fresh(case, batches)
    assert _state(metric) == _state(reference)
    # The first batch binds the replay; every other one runs it.
    assert ran == (len(batches) - 1 if _replayable(case) else 0)


def _logit_batches(rng: np.random.Generator, n_batches: int, rows: int = 32) -> list:
    return [(rng.normal(size=(rows, 5)), rng.integers(0, 5, size=rows)) for _ in range(n_batches)]


def test_a_rejected_replay_raises_the_full_paths_error_and_changes_nothing(
    replays: list[int],
) -> None:
    rng = np.random.default_rng(5)
    metric = xs.CrossEntropy(input="logits")
    for preds, target in _logit_batches(rng, 3):
        metric.update(preds, target)
    before, ran = metric.state_dict(), len(replays)
    assert ran == 2
    preds, target = _logit_batches(rng, 1)[0]
    preds[5, 3] = np.nan
    with pytest.raises(DataError, match=r"preds: row 101 \(batch row 5\), class 3: .* NaN"):
        metric.update(preds, target)
    assert metric.state_dict() == before
    bad_label = target.copy()
    bad_label[9] = 5
    with pytest.raises(DataError, match=r"target: row 105 \(batch row 9\): .*5"):
        metric.update(np.zeros_like(preds), bad_label)
    assert metric.state_dict() == before
    # The replay survives a rejected batch: the next good batch runs it again.
    metric.update(np.zeros_like(preds), target)
    assert len(replays) == ran + 1
    assert metric.rows_seen == 128


def test_another_layout_takes_the_full_path(replays: list[int]) -> None:
    rng = np.random.default_rng(8)
    batches = _logit_batches(rng, 2)
    metric = xs.CrossEntropy(input="logits")
    for preds, target in batches:
        metric.update(preds, target)
    assert len(replays) == 1
    other = [
        (batches[0][0].astype(np.float32), batches[0][1]),  # float32 predictions
        (batches[0][0], batches[0][1].astype(np.int32)),  # int32 labels (widened)
        (np.asfortranarray(batches[1][0]), batches[1][1]),  # not C-contiguous (copied)
        (batches[1][0][::2], batches[1][1][::2]),  # strided rows (copied)
        (batches[0][0][:, None, :], batches[0][1][:, None]),  # a leading axis more
    ]
    for preds, target in other:
        metric.update(preds, target)
    reference = xs.CrossEntropy(input="logits")
    for preds, target in batches + other:
        reference.merge(xs.CrossEntropy(input="logits").update(preds, target))
    assert _state(metric) == _state(reference)
    with pytest.raises(ValueError, match=r"has 4 classes .* expects 5"):
        metric.update(batches[0][0][:, :4], batches[0][1] % 4)
    with pytest.raises(ValueError, match="target: shape"):
        metric.update(batches[0][0], batches[0][1][:31])


def test_a_batch_of_several_blocks_takes_the_full_path(replays: list[int]) -> None:
    rng = np.random.default_rng(9)
    small, big = _logit_batches(rng, 2)[0], _logit_batches(rng, 1, rows=40_000)[0]
    metric = xs.CrossEntropy(input="logits")
    for preds, target in (small, small, big, small):
        metric.update(preds, target)
    assert len(replays) == 2
    reference = xs.CrossEntropy(input="logits")
    reference.update(
        np.concatenate([small[0], small[0], big[0], small[0]]),
        np.concatenate([small[1], small[1], big[1], small[1]]),
    )
    assert _state(metric) == _state(reference)


def test_torch_tensors_replay_with_the_bits_of_numpy(replays: list[int]) -> None:
    rng = np.random.default_rng(10)
    batches = _logit_batches(rng, 6)
    from_numpy = xs.CrossEntropy(input="logits")
    from_torch = xs.CrossEntropy(input="logits")
    for preds, target in batches:
        from_numpy.update(preds, target)
        logits = torch.tensor(preds, requires_grad=True)
        from_torch.update(logits * 1.0, torch.from_numpy(target))
    assert len(replays) == 10
    assert _state(from_numpy) == _state(from_torch)


def test_forward_of_a_replayed_batch_is_that_batchs_loss(replays: list[int]) -> None:
    rng = np.random.default_rng(11)
    metric = xs.BinaryCrossEntropy(input="logits")
    for _ in range(4):
        preds = rng.normal(size=32).astype(np.float32)
        target = rng.integers(0, 2, size=32).astype(np.float32)
        expected = xs.binary_cross_entropy(preds, target, input="logits")
        assert metric(preds, target) == expected
    assert len(replays) == 3


@pytest.mark.parametrize("clone", [pickle.loads, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_a_metric_with_a_replay_pickles_and_goes_on(clone, replays: list[int]) -> None:
    rng = np.random.default_rng(12)
    batches = _logit_batches(rng, 4)
    metric = xs.CrossEntropy(input="logits")
    for preds, target in batches[:2]:
        metric.update(preds, target)
    twin = clone(pickle.dumps(metric)) if clone is pickle.loads else clone(metric)
    for preds, target in batches[2:]:
        metric.update(preds, target)
        twin.update(preds, target)
    assert _state(metric) == _state(twin)
