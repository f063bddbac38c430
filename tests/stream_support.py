"""Seeded data and bitwise comparisons shared by the feeder, checkpoint and CLI tests.

One table holds every column the streaming tests need (multiclass as an Array
column and as wide columns named after the classes, binary, multi-label, weights,
group keys). Dtypes stay float64 / int64 / bool so the kernels compile once.

The reference for every streaming result is the one-shot path on all rows at once
(the functional API, and a metric updated with the whole table): sums are exact
and correctly rounded, so a streamed result must match it bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from metric_cases import bits, float_bits  # noqa: F401  (re-exported for the stream tests)

import xentstream as xs

N_ROWS = 2_500
CLASSES = ("ant", "bee", "cat", "dog")
N_LABELS = 3
BATCH_ROWS = 700  # 4 batches of N_ROWS, the last one short
SEED = 20_240_601

WIDE = list(CLASSES)
ML_WIDE = [f"m{i}" for i in range(N_LABELS)]
ML_TARGET_WIDE = [f"t{i}" for i in range(N_LABELS)]


@dataclass(frozen=True)
class Data:
    """Columns as numpy arrays: the reference inputs."""

    probs: np.ndarray  # (n, C) float64, rows sum to 1
    labels: np.ndarray  # (n,) int64 in [0, C)
    weights: np.ndarray  # (n,) float64 > 0
    binary_probs: np.ndarray  # (n,) float64 in (0, 1)
    binary_target: np.ndarray  # (n,) bool
    ml_probs: np.ndarray  # (n, L) float64 in (0, 1)
    ml_target: np.ndarray  # (n, L) float64 in {0, 1}
    g: np.ndarray  # (n,) int64 group in {0, 1, 2}
    h: list[str | None]  # (n,) string group with nulls

    @property
    def names(self) -> np.ndarray:
        return np.array(CLASSES)[self.labels]


def make_data(n: int = N_ROWS, seed: int = SEED) -> Data:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)), n)
    h_choice = rng.choice(np.array(["x", "y"]), n)
    h_null = rng.random(n) < 0.15
    return Data(
        probs=probs,
        labels=rng.integers(0, len(CLASSES), n),
        weights=rng.uniform(0.1, 3.0, n),
        binary_probs=rng.uniform(0.01, 0.99, n),
        binary_target=rng.random(n) < 0.4,
        ml_probs=rng.uniform(0.01, 0.99, (n, N_LABELS)),
        ml_target=(rng.random((n, N_LABELS)) < 0.3).astype(np.float64),
        g=rng.integers(0, 3, n),
        h=[None if null else str(v) for v, null in zip(h_choice, h_null, strict=True)],
    )


def scalar_frame(data: Data) -> pl.DataFrame:
    """Only scalar columns (what CSV can hold)."""
    columns: dict[str, Any] = {name: data.probs[:, i] for i, name in enumerate(CLASSES)}
    columns.update(
        {
            "y": data.labels,
            "label": data.names,
            "w": data.weights,
            "b_p": data.binary_probs,
            "b_t": data.binary_target,
            "g": data.g,
            "h": pl.Series("h", data.h, dtype=pl.String),
        }
    )
    columns.update({name: data.ml_probs[:, i] for i, name in enumerate(ML_WIDE)})
    columns.update({name: data.ml_target[:, i] for i, name in enumerate(ML_TARGET_WIDE)})
    return pl.DataFrame(columns)


def full_frame(data: Data) -> pl.DataFrame:
    """Scalar columns plus Array columns ``p`` (multiclass), ``ml_p`` / ``ml_t``."""
    return scalar_frame(data).with_columns(
        pl.Series("p", data.probs),
        pl.Series("ml_p", data.ml_probs),
        pl.Series("ml_t", data.ml_target),
    )


def write(frame: pl.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format its suffix names."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame.write_parquet(path)
    elif suffix in (".arrow", ".ipc", ".feather"):
        frame.write_ipc(path)
    elif suffix == ".csv":
        frame.write_csv(path)
    elif suffix in (".ndjson", ".jsonl"):
        frame.write_ndjson(path)
    else:  # pragma: no cover - a test bug
        raise AssertionError(suffix)
    return path


# -- references -------------------------------------------------------------------------------


def one_shot(metric: xs.Metric, preds: Any, target: Any, sample_weight: Any = None) -> xs.Report:
    """``metric`` (fresh) updated once with every row: the streaming reference."""
    return metric.update(preds, target, sample_weight).compute()


def report_bits(report: xs.Report) -> dict[str, Any]:
    """Every field of a report, ``per_class`` included, with floats as bits."""
    return bits(report.to_dict())


def assert_same_report(actual: xs.Report, expected: xs.Report) -> None:
    assert report_bits(actual) == report_bits(expected)


# -- subprocesses -----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Environment for child interpreters: this checkout importable, no colour, no tty."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("PYTHONWARNINGS", None)
    return env


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -c code args...`` in a child and capture its output."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )
