"""Inputs people have (issue 18): other libraries' tables as sources, scikit-learn's
shapes and argument conventions. References: scikit-learn's ``log_loss`` and torch."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch
from metric_cases import float_bits
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

import xentstream as xs


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1818)
    probs = rng.dirichlet(np.ones(3), size=40)
    return probs, rng.integers(0, 3, size=40)


def test_sources_of_other_libraries(table: tuple[np.ndarray, np.ndarray]) -> None:
    probs, labels = table
    expected = log_loss(labels, probs, labels=[0, 1, 2])
    frame = pl.DataFrame({"p": probs, "y": labels})
    arrow = frame.to_arrow()
    pandas_frame = pd.DataFrame({"p": list(probs), "y": labels})
    connection = duckdb.connect()
    connection.register("dump", arrow)
    sources = {
        "pandas": pandas_frame,
        "pandas batches": [pandas_frame.iloc[:15], pandas_frame.iloc[15:]],
        "arrow table": arrow,
        "arrow reader": pa.RecordBatchReader.from_batches(
            arrow.schema, arrow.to_batches(max_chunksize=9)
        ),
        "arrow dataset": pads.dataset(arrow),
        "duckdb": connection.sql("select * from dump"),
        "records": [{"p": row.tolist(), "y": int(y)} for row, y in zip(probs, labels, strict=True)],
    }
    losses = {}
    for name, source in sources.items():
        report = xs.evaluate(source, xs.CrossEntropy(), preds="p", target="y", batch_rows=7)
        assert report.count == len(labels), name
        losses[name] = report.loss
        assert math.isclose(report.loss, expected, rel_tol=1e-12), name
    # Exact sums: every source and batching gives the same bits as one call.
    assert {float_bits(v) for v in losses.values()} == {float_bits(xs.cross_entropy(probs, labels))}


def test_column_vectors_and_predict_proba() -> None:
    data = load_breast_cancer()
    X, y = data.data[:120, :5], data.target[:120]
    classifier = LogisticRegression(max_iter=2000).fit(X, y)
    proba = classifier.predict_proba(X)
    assert math.isclose(xs.binary_cross_entropy(proba, y), log_loss(y, proba), rel_tol=1e-12)
    assert math.isclose(
        xs.BinaryCrossEntropy().update(proba, y.reshape(-1, 1)).value,
        log_loss(y, proba),
        rel_tol=1e-12,
    )
    assert math.isclose(
        xs.binary_cross_entropy(proba[:, 1:], y), log_loss(y, proba), rel_tol=1e-12
    )  # (N, 1) predictions
    scores = np.stack([-classifier.decision_function(X) / 2, classifier.decision_function(X) / 2])
    two_logits = torch.from_numpy(scores.T.copy())
    expected = torch.nn.functional.cross_entropy(two_logits, torch.from_numpy(y)).item()
    assert math.isclose(
        xs.binary_cross_entropy(scores.T, y, input="logits"), expected, rel_tol=1e-12
    )
    skewed = proba.copy()
    skewed[7] = [0.5, 0.6]
    with pytest.raises(
        ValueError, match=r"preds: row 7: the two columns sum to 1\.1.*predict_proba"
    ):
        xs.binary_cross_entropy(skewed, y)

    probs = np.random.default_rng(5).dirichlet(np.ones(4), size=30)
    labels = np.arange(30) % 4
    expected = log_loss(labels, probs)
    assert math.isclose(xs.cross_entropy(probs, labels.reshape(-1, 1)), expected, rel_tol=1e-12)
    column = pd.DataFrame({"y": labels})[["y"]]  # what df[["y"]] hands over
    assert math.isclose(xs.cross_entropy(probs, column), expected, rel_tol=1e-12)
    metric = xs.CrossEntropy().update(probs, labels.reshape(-1, 1))
    assert math.isclose(metric.value, expected, rel_tol=1e-12)


def test_labels_and_argument_order_hints() -> None:
    probs = np.random.default_rng(6).dirichlet(np.ones(3), size=12)
    names = np.array(["cat", "dog", "emu"])[np.arange(12) % 3]
    classes = ["cat", "dog", "emu"]
    expected = log_loss(names, probs, labels=classes)
    for target in (names, names.tolist(), pd.Series(names), pl.Series(names), pa.array(names)):
        loss = xs.cross_entropy(probs, target, labels=classes)
        assert math.isclose(loss, expected, rel_tol=1e-12), type(target)
    # labels= gives the column order; scikit-learn requires it sorted, so reorder its columns
    reordered = ["emu", "cat", "dog"]
    assert math.isclose(
        xs.cross_entropy(probs, names, labels=reordered),
        log_loss(names, probs[:, [1, 2, 0]], labels=classes),
        rel_tol=1e-12,
    )
    assert math.isclose(
        xs.cross_entropy(probs, np.arange(12) % 3 + 10, labels=[10, 11, 12]),
        log_loss(np.arange(12) % 3 + 10, probs, labels=[10, 11, 12]),
        rel_tol=1e-12,
    )
    binary = np.array(["ham", "spam", "spam", "ham"])
    p_spam = np.array([0.2, 0.7, 0.9, 0.4])
    assert math.isclose(
        xs.binary_cross_entropy(p_spam, binary, labels=["ham", "spam"]),
        log_loss(binary, p_spam, labels=["ham", "spam"]),
        rel_tol=1e-12,
    )
    with pytest.raises(ValueError, match=r"target: row 5: label 'yak' is not one of labels"):
        xs.cross_entropy(probs, np.where(np.arange(12) == 5, "yak", names), labels=classes)
    with pytest.raises(TypeError, match=r"string labels need labels="):
        xs.cross_entropy(probs, names)
    with pytest.raises(TypeError, match=r"look swapped.*\(y_true, y_pred\)"):
        xs.cross_entropy(np.arange(12) % 3, probs)  # log_loss(y_true, y_pred) order
    with pytest.raises(ValueError, match=r"look swapped"):
        xs.cross_entropy((np.arange(12) % 3).tolist(), probs.tolist())
    with pytest.raises(TypeError, match=r"look swapped"):
        xs.binary_cross_entropy(np.array([0, 1, 1, 0]), p_spam)
