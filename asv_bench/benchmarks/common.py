"""Shared by the benchmarks and ``asv_bench/compare.py``: sizes, seeded data and peers.

One registry, :data:`CASES`, says for each comparison case how to build its data, how
xentstream computes the loss and how each peer does (numbagg's ``COMPARISONS`` idea):
the asv ``track_`` benchmarks of ``peers.py`` and the markdown table of ``compare.py``
time the very same callables, so the two always report the same ratios.

Sizes shrink to a few thousand values when the environment variable
``XENTSTREAM_ASV_TINY`` is set: ``tests/test_asv.py`` runs every benchmark once that way.
This module defines no ``time_`` / ``peakmem_`` / ``track_`` names, so asv finds no
benchmarks in it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import xentstream as xs

TINY_ENV = "XENTSTREAM_ASV_TINY"

#: Prediction values per case: 16 MB of float32 or 32 MB of float64. Soft and multi-label
#: targets are as large again, so no case reads more than 64 MB.
FULL_ELEMENTS = 1 << 22
TINY_ELEMENTS = 1 << 12
#: Rows per ``CrossEntropy.update`` call in the streaming benchmarks.
FULL_BATCH_ROWS = 1 << 16
TINY_BATCH_ROWS = 1 << 7
SEED = 20_240_601

LOSSES = ("hard", "soft", "smoothing", "binary", "multilabel")
INPUTS = ("probs", "logits")
CLASS_COUNTS = (10, 1000, 32000)
DTYPES = ("float32", "float64")
LABEL_SMOOTHING = 0.1


# -- sizes ------------------------------------------------------------------------------------


def tiny() -> bool:
    """Whether ``XENTSTREAM_ASV_TINY`` asks for tiny sizes (read at call time)."""
    return os.environ.get(TINY_ENV, "") not in ("", "0")


def elements() -> int:
    """Prediction values per benchmark case."""
    return TINY_ELEMENTS if tiny() else FULL_ELEMENTS


def batch_rows() -> int:
    """Rows per ``update`` call in the streaming benchmarks."""
    return TINY_BATCH_ROWS if tiny() else FULL_BATCH_ROWS


def repeats(full: int = 7) -> int:
    """Timed repeats of each side inside a ``track_`` benchmark."""
    return 1 if tiny() else full


def rows_for(n_classes: int, n_elements: int) -> int:
    """Rows of ``n_classes`` values that make about ``n_elements`` values (at least 2)."""
    return max(2, n_elements // n_classes)


def generator(*key: object) -> np.random.Generator:
    """A generator seeded by ``key``: each case's data is the same whatever ran before."""
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode())])


# -- data -------------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (rows then sum to 1 within float32 rounding too)."""
    shifted = np.asarray(z, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


@dataclass
class Problem:
    """One functional-API call on fixed data (``call()``) and the arrays it reads."""

    call: Callable[[], Any]
    arrays: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def kernel_problem(
    loss: str, input: str, n_classes: int, dtype: str, n_elements: int | None = None
) -> Problem:
    """Data and call for ``kernels.Functional``; NotImplementedError where inapplicable.

    ``loss`` is one of :data:`LOSSES`: multiclass with hard labels, soft targets or
    label smoothing (``xs.cross_entropy``), binary (``xs.binary_cross_entropy``,
    1-D predictions: it has no class axis and is measured once, at the first class
    count) or multi-label (``xs.multilabel_cross_entropy``).
    """
    if loss not in LOSSES or input not in INPUTS:
        raise ValueError(f"unknown loss {loss!r} or input {input!r}")
    if loss == "binary" and n_classes != CLASS_COUNTS[0]:
        raise NotImplementedError("binary predictions have no class axis")
    n = elements() if n_elements is None else n_elements
    gen = generator("kernel", loss, input, n_classes, dtype)
    dt = np.dtype(dtype)
    if loss == "binary":
        z = gen.standard_normal(n) * 2.0
        preds = (z if input == "logits" else sigmoid(z)).astype(dt)
        target = (gen.random(n) < sigmoid(z)).astype(dt)
        return Problem(lambda: xs.binary_cross_entropy(preds, target, input=input), (preds, target))
    rows = rows_for(n_classes, n)
    z = gen.standard_normal((rows, n_classes)) * 2.0
    if loss == "multilabel":
        preds = (z if input == "logits" else sigmoid(z)).astype(dt)
        target = (gen.random(z.shape) < sigmoid(z)).astype(dt)
        return Problem(
            lambda: xs.multilabel_cross_entropy(preds, target, input=input), (preds, target)
        )
    preds = (z if input == "logits" else softmax(z)).astype(dt)
    if loss == "soft":
        target = softmax(gen.standard_normal(z.shape)).astype(dt)
    else:
        target = gen.integers(0, n_classes, rows, dtype=np.int64)
    smoothing = LABEL_SMOOTHING if loss == "smoothing" else 0.0
    return Problem(
        lambda: xs.cross_entropy(preds, target, input=input, label_smoothing=smoothing),
        (preds, target),
    )


def logits_and_labels(
    rows: int, n_classes: int, dtype: str = "float32", *key: object
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float logits (rows x classes) and int64 labels."""
    gen = generator("logits", rows, n_classes, dtype, *key)
    logits = (gen.standard_normal((rows, n_classes)) * 2.0).astype(dtype)
    return logits, gen.integers(0, n_classes, rows, dtype=np.int64)


def write_dump(fmt: str, directory: Path, preds: np.ndarray, labels: np.ndarray) -> Path:
    """Write a prediction dump; returns the path to give ``xs.evaluate``.

    Parquet / Arrow IPC: columns ``preds`` (Array[float, C]) and ``label``; ``.npy``:
    ``preds.npy`` beside ``labels.npy``.
    """
    import polars as pl

    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(directory / "labels.npy", labels)
        path = directory / "preds.npy"
        np.save(path, preds)
        return path
    frame = pl.DataFrame({"preds": preds, "label": labels})
    if fmt == "parquet":
        path = directory / "dump.parquet"
        frame.write_parquet(path)
    elif fmt == "ipc":
        path = directory / "dump.arrow"
        frame.write_ipc(path)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return path


def evaluate_dump(path: Path, input: str = "logits", **kwargs: Any) -> float:
    """xentstream end to end on a dump written by :func:`write_dump`."""
    metric = xs.CrossEntropy(input=input)
    if path.suffix == ".npy":
        report = xs.evaluate(path, metric, target=path.with_name("labels.npy"), progress=False)
    else:
        report = xs.evaluate(path, metric, preds="preds", target="label", progress=False, **kwargs)
    return report.overall.loss if isinstance(report, xs.GroupedReport) else report.loss


# -- the read-bandwidth reference -------------------------------------------------------------


def as_words(buffer: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous array (or memory-mapped file) as int64 words.

    Integer sums never warn (float views of arbitrary bytes would meet NaN and inf),
    so ``numpy.sum`` over these words reads the same bytes as fast as numpy can.
    """
    flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    return flat[: flat.size - flat.size % 8].view(np.int64)


def read_reference(words: Iterable[np.ndarray]) -> int:
    """One ``numpy.sum`` over every buffer: this machine's read bandwidth, as a workload."""
    total = 0
    for w in words:
        total += int(np.sum(w))
    return total


# -- peers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    module: str | None
    description: str

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


PEERS = {
    p.name: p
    for p in (
        Peer("numpy", None, "plain float64 vectorized numpy formula"),
        Peer("torch", "torch", "torch.nn.functional (cross_entropy, nll_loss, BCE)"),
        Peer("scikit-learn", "sklearn", "sklearn.metrics.log_loss"),
        Peer("one-shot", None, "xs.cross_entropy on all the rows at once"),
        Peer("polars", "polars", "polars-native lazy expressions on the same file"),
        Peer("duckdb", "duckdb", "DuckDB SQL on the same file"),
        Peer("jax", "jax", "jax.nn.log_softmax / log_sigmoid under jax.jit (CPU)"),
        Peer(
            "torch-mean",
            "torch",
            "torcheval-style Mean: torch cross_entropy of each batch added to torch tensors",
        ),
    )
}


def threads() -> int:
    """Threads xentstream's kernels use; peers are given the same number."""
    import numba

    return int(numba.get_num_threads())


def _eps(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).eps)


def numpy_cross_entropy(
    preds: np.ndarray, target: np.ndarray, *, input: str, label_smoothing: float = 0.0
) -> float:
    """Mean multiclass cross-entropy, the plain float64 numpy way."""
    n, n_classes = preds.shape
    rows = np.arange(n)
    if input == "probs" and target.ndim == 1 and not label_smoothing:
        eps = _eps(preds.dtype)
        picked = np.asarray(preds[rows, target], dtype=np.float64)
        return float(-np.mean(np.log(np.clip(picked, eps, 1 - eps))))
    x = np.asarray(preds, dtype=np.float64)
    if input == "logits":
        top = x.max(axis=1, keepdims=True)
        logp = x - (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))
    else:
        eps = _eps(preds.dtype)
        logp = np.log(np.clip(x, eps, 1 - eps))
    if target.ndim == 2:
        return float(-np.mean((np.asarray(target, dtype=np.float64) * logp).sum(axis=1)))
    picked = logp[rows, target]
    if label_smoothing:
        smooth = logp.sum(axis=1) / n_classes
        return float(-np.mean((1 - label_smoothing) * picked + label_smoothing * smooth))
    return float(-np.mean(picked))


def numpy_binary_terms(preds: np.ndarray, target: np.ndarray, *, input: str) -> np.ndarray:
    """Element-wise binary cross-entropy in float64 (stable softplus form for logits)."""
    x = np.asarray(preds, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if input == "logits":
        return np.logaddexp(0.0, x) - t * x
    eps = _eps(preds.dtype)
    p = np.clip(x, eps, 1 - eps)
    return -(t * np.log(p) + (1 - t) * np.log1p(-p))


def numpy_binary_cross_entropy(preds: np.ndarray, target: np.ndarray, *, input: str) -> float:
    return float(np.mean(numpy_binary_terms(preds, target, input=input)))


def numpy_multilabel_cross_entropy(preds: np.ndarray, target: np.ndarray, *, input: str) -> float:
    """Mean over rows of the per-row sum over labels (xentstream's definition)."""
    terms = numpy_binary_terms(preds, target, input=input)
    return float(terms.sum() / preds.shape[0])


class _Resources:
    """Undo actions (torch thread count, connections, temp dirs), run by ``close``."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], Any]] = []

    def close(self) -> None:
        while self.actions:
            self.actions.pop()()


def _torch(resources: _Resources) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads())
    resources.actions.append(lambda: torch.set_num_threads(before))
    return torch


def torch_cross_entropy(
    preds: np.ndarray,
    target: np.ndarray,
    *,
    input: str,
    label_smoothing: float = 0.0,
    resources: _Resources,
) -> Callable[[], float]:
    torch = _torch(resources)
    functional = torch.nn.functional
    x, t = torch.from_numpy(preds), torch.from_numpy(target)
    if input == "logits":
        return lambda: float(functional.cross_entropy(x, t, label_smoothing=label_smoothing))
    eps = _eps(preds.dtype)
    return lambda: float(functional.nll_loss(torch.log(torch.clamp(x, eps, 1 - eps)), t))


def torch_binary_cross_entropy(
    preds: np.ndarray, target: np.ndarray, *, input: str, resources: _Resources
) -> Callable[[], float]:
    """torch's BCE; for 2-D (multi-label) input the sum over labels, per row."""
    torch = _torch(resources)
    functional = torch.nn.functional
    x, t = torch.from_numpy(preds), torch.from_numpy(target)
    fn = (
        functional.binary_cross_entropy_with_logits
        if input == "logits"
        else functional.binary_cross_entropy
    )
    if preds.ndim == 2:
        return lambda: float(fn(x, t, reduction="sum")) / preds.shape[0]
    return lambda: float(fn(x, t))


def _jax() -> Any:
    import jax

    return jax


def jax_cross_entropy(
    preds: np.ndarray, target: np.ndarray, *, input: str, label_smoothing: float = 0.0
) -> Callable[[], float]:
    """``jax.nn.log_softmax`` (logits) or a clipped log (probs), jitted; hard or soft targets.

    The arrays are put on the device (the CPU) once, outside the timing, as torch's
    ``from_numpy`` shares them: only the loss itself is timed.
    """
    jax = _jax()
    jnp = jax.numpy
    eps = _eps(preds.dtype)
    soft = target.ndim == 2
    n_classes = preds.shape[1]

    @jax.jit
    def loss(x: Any, t: Any) -> Any:
        logp = (
            jax.nn.log_softmax(x, axis=-1)
            if input == "logits"
            else jnp.log(jnp.clip(x, eps, 1 - eps))
        )
        if soft:
            return -jnp.mean(jnp.sum(t * logp, axis=-1))
        picked = jnp.take_along_axis(logp, t[:, None], axis=-1)[:, 0]
        if label_smoothing:
            smooth = jnp.sum(logp, axis=-1) / n_classes
            return -jnp.mean((1 - label_smoothing) * picked + label_smoothing * smooth)
        return -jnp.mean(picked)

    # int32 labels: JAX runs without x64 by default and would narrow them anyway.
    x = jax.device_put(preds)
    t = jax.device_put(target if soft else target.astype(np.int32))
    return lambda: float(loss(x, t))


def jax_binary_cross_entropy(
    preds: np.ndarray, target: np.ndarray, *, input: str
) -> Callable[[], float]:
    """Binary (1-D) or multi-label (2-D, summed over labels per row) BCE, jitted."""
    jax = _jax()
    jnp = jax.numpy
    eps = _eps(preds.dtype)
    rows = preds.shape[0]

    @jax.jit
    def loss(x: Any, t: Any) -> Any:
        if input == "logits":
            terms = -(t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
        else:
            p = jnp.clip(x, eps, 1 - eps)
            terms = -(t * jnp.log(p) + (1 - t) * jnp.log1p(-p))
        return jnp.sum(terms) / rows

    x, t = jax.device_put(preds), jax.device_put(target)
    return lambda: float(loss(x, t))


def sklearn_log_loss(
    preds: np.ndarray, target: np.ndarray, n_classes: int | None = None
) -> Callable[[], float]:
    from sklearn.metrics import log_loss

    labels = None if n_classes is None else np.arange(n_classes)
    return lambda: float(log_loss(target, preds, labels=labels))


def polars_file_cross_entropy(path: Path, *, input: str, eps: float) -> Callable[[], float]:
    """Mean cross-entropy of a Parquet / IPC dump with polars expressions (lazy scan)."""
    import polars as pl

    scan = pl.scan_ipc if path.suffix == ".arrow" else pl.scan_parquet
    preds = pl.col("preds")
    picked = preds.arr.get(pl.col("label"))
    if input == "logits":
        top = preds.arr.max()
        loss = top + (preds - top).arr.eval(pl.element().exp()).arr.sum().log() - picked
    else:
        loss = -picked.clip(eps, 1 - eps).log()
    query = scan(path).select(loss.mean())
    return lambda: float(query.collect().item())


def duckdb_file_cross_entropy(
    path: Path, *, input: str, eps: float, resources: _Resources
) -> Callable[[], float]:
    """Mean cross-entropy of a Parquet dump with DuckDB SQL (list columns)."""
    import duckdb

    connection = duckdb.connect()
    resources.actions.append(connection.close)
    connection.execute(f"SET threads = {threads()}")
    source = "read_parquet('{}')".format(str(path).replace("'", "''"))
    if input == "logits":
        major, minor = (int(part) for part in duckdb.__version__.split(".")[:2])
        exp = "lambda v: exp(v - m)" if (major, minor) >= (1, 3) else "v -> exp(v - m)"
        sql = (
            f"SELECT avg(m + ln(list_sum(list_transform(preds, {exp}))) - preds[label + 1]) "
            f"FROM (SELECT preds, label, list_max(preds) AS m FROM {source})"
        )
    else:
        clipped = f"greatest(least(preds[label + 1], {1 - eps!r}), {eps!r})"
        sql = f"SELECT avg(-ln({clipped})) FROM {source}"
    return lambda: float(connection.execute(sql).fetchone()[0])


# -- the registry of comparison cases ---------------------------------------------------------


@dataclass
class Prepared:
    """A case ready to time: xentstream's callable, each peer's, and the bytes they read."""

    ours: Callable[[], Any]
    peers: dict[str, Callable[[], Any]]
    buffers: list[np.ndarray]
    resources: _Resources = field(default_factory=_Resources)
    #: Calls of the measured operation that one call of each side makes (the 32-row
    #: update case makes many, so that a timing is not all timer resolution).
    calls: int = 1

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def read(self) -> int:
        return read_reference(self.buffers)

    def warm(self) -> None:
        """One call of everything: JIT compiles, imports, page cache."""
        self.ours()
        for fn in self.peers.values():
            fn()
        self.read()

    def close(self) -> None:
        self.peers.clear()
        self.buffers.clear()
        self.resources.close()


Builder = Callable[[int, Path, "frozenset[str]", _Resources], Prepared]


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    peers: tuple[str, ...]
    build: Builder
    on_disk: bool = False


def _multiclass(
    input: str, n_classes: int, *, soft: bool = False, label_smoothing: float = 0.0
) -> Builder:
    def build(n: int, _: Path, peers: frozenset[str], resources: _Resources) -> Prepared:
        gen = generator("case", input, n_classes, soft, label_smoothing)
        rows = rows_for(n_classes, n)
        z = gen.standard_normal((rows, n_classes)) * 2.0
        preds = (z if input == "logits" else softmax(z)).astype(np.float32)
        if soft:
            target = softmax(gen.standard_normal(z.shape)).astype(np.float32)
        else:
            target = gen.integers(0, n_classes, rows, dtype=np.int64)
        options = {"input": input, "label_smoothing": label_smoothing}
        impl: dict[str, Callable[[], Any]] = {}
        if "numpy" in peers:
            impl["numpy"] = lambda: numpy_cross_entropy(preds, target, **options)
        if "torch" in peers:
            impl["torch"] = torch_cross_entropy(preds, target, **options, resources=resources)
        if "scikit-learn" in peers:
            impl["scikit-learn"] = sklearn_log_loss(preds, target, n_classes)
        if "jax" in peers:
            impl["jax"] = jax_cross_entropy(preds, target, **options)
        return Prepared(
            lambda: xs.cross_entropy(preds, target, **options), impl, [preds, target], resources
        )

    return build


def _binary(input: str, n_labels: int | None = None) -> Builder:
    def build(n: int, _: Path, peers: frozenset[str], resources: _Resources) -> Prepared:
        gen = generator("case-binary", input, n_labels)
        shape = n if n_labels is None else (rows_for(n_labels, n), n_labels)
        z = gen.standard_normal(shape) * 2.0
        preds = (z if input == "logits" else sigmoid(z)).astype(np.float32)
        target = (gen.random(z.shape) < sigmoid(z)).astype(np.float32)
        impl: dict[str, Callable[[], Any]] = {}
        if n_labels is None:
            ours = lambda: xs.binary_cross_entropy(preds, target, input=input)  # noqa: E731
            reference = numpy_binary_cross_entropy
        else:
            ours = lambda: xs.multilabel_cross_entropy(preds, target, input=input)  # noqa: E731
            reference = numpy_multilabel_cross_entropy
        if "numpy" in peers:
            impl["numpy"] = lambda: reference(preds, target, input=input)
        if "torch" in peers:
            impl["torch"] = torch_binary_cross_entropy(
                preds, target, input=input, resources=resources
            )
        if "scikit-learn" in peers:
            impl["scikit-learn"] = sklearn_log_loss(preds, target)
        if "jax" in peers:
            impl["jax"] = jax_binary_cross_entropy(preds, target, input=input)
        return Prepared(ours, impl, [preds, target], resources)

    return build


def _streaming_update(n_classes: int) -> Builder:
    def build(n: int, _: Path, peers: frozenset[str], resources: _Resources) -> Prepared:
        preds, labels = logits_and_labels(rows_for(n_classes, n), n_classes, "float32", "update")
        step = batch_rows()

        def ours() -> float:
            metric = xs.CrossEntropy(num_classes=n_classes, input="logits")
            for start in range(0, len(labels), step):
                metric.update(preds[start : start + step], labels[start : start + step])
            return metric.value

        impl: dict[str, Callable[[], Any]] = {}
        if "one-shot" in peers:
            impl["one-shot"] = lambda: xs.cross_entropy(preds, labels, input="logits")
        return Prepared(ours, impl, [preds, labels], resources)

    return build


#: ``update`` calls of the small-batch latency case (one timed call makes them all).
SMALL_BATCH_CALLS = 2000
TINY_SMALL_BATCH_CALLS = 20


def _small_updates(n_classes: int, batch: int) -> Builder:
    """Latency of ``update`` on a small batch, as a training loop logging its loss pays it.

    The peer is what torcheval's ``Mean`` does with a loss: torch's per-row cross-entropy
    of the batch, its sum and row count added to running torch tensors. Both sides
    update one fresh metric over the same pre-sliced batches; the data size is fixed.
    """

    def build(_: int, __: Path, peers: frozenset[str], resources: _Resources) -> Prepared:
        calls = TINY_SMALL_BATCH_CALLS if tiny() else SMALL_BATCH_CALLS
        preds, labels = logits_and_labels(calls * batch, n_classes, "float32", "small")
        batches = [
            (preds[start : start + batch], labels[start : start + batch])
            for start in range(0, len(labels), batch)
        ]

        def ours() -> float:
            metric = xs.CrossEntropy(num_classes=n_classes, input="logits")
            for x, t in batches:
                metric.update(x, t)
            return metric.value

        impl: dict[str, Callable[[], Any]] = {}
        if "torch-mean" in peers:
            torch = _torch(resources)
            functional = torch.nn.functional
            tensors = [(torch.from_numpy(x), torch.from_numpy(t)) for x, t in batches]

            def torch_mean() -> float:
                weighted_sum = torch.zeros((), dtype=torch.float64)
                weights = torch.zeros((), dtype=torch.float64)
                for x, t in tensors:
                    losses = functional.cross_entropy(x, t, reduction="none")
                    weighted_sum += losses.sum()
                    weights += losses.numel()
                return float(weighted_sum / weights)

            impl["torch-mean"] = torch_mean
        return Prepared(ours, impl, [preds, labels], resources, calls=len(batches))

    return build


def _file(fmt: str, input: str, n_classes: int) -> Builder:
    def build(n: int, directory: Path, peers: frozenset[str], resources: _Resources) -> Prepared:
        logits, labels = logits_and_labels(rows_for(n_classes, n), n_classes, "float32", fmt)
        preds = logits if input == "logits" else softmax(logits).astype(np.float32)
        path = write_dump(fmt, directory, preds, labels)
        del logits, preds
        eps = _eps(np.dtype(np.float32))
        impl: dict[str, Callable[[], Any]] = {}
        if "polars" in peers:
            impl["polars"] = polars_file_cross_entropy(path, input=input, eps=eps)
        if "duckdb" in peers:
            impl["duckdb"] = duckdb_file_cross_entropy(
                path, input=input, eps=eps, resources=resources
            )
        files = [path] if fmt != "npy" else [path, path.with_name("labels.npy")]
        if "numpy" in peers:
            impl["numpy"] = lambda: numpy_cross_entropy(
                np.load(files[0], mmap_mode="r"), np.load(files[1], mmap_mode="r"), input=input
            )
        buffers = [as_words(np.memmap(f, dtype=np.uint8, mode="r")) for f in files]
        return Prepared(lambda: evaluate_dump(path, input), impl, buffers, resources)

    return build


CASES: dict[str, Case] = {
    case.key: case
    for case in (
        Case(
            "logits-hard-C10",
            "logits, hard labels, C=10",
            ("numpy", "torch", "jax"),
            _multiclass("logits", 10),
        ),
        Case(
            "logits-hard-C1000",
            "logits, hard labels, C=1000",
            ("numpy", "torch", "jax"),
            _multiclass("logits", 1000),
        ),
        Case(
            "logits-hard-C32000",
            "logits, hard labels, C=32000",
            ("numpy", "torch", "jax"),
            _multiclass("logits", 32000),
        ),
        Case(
            "logits-smoothing-C1000",
            f"logits, label smoothing {LABEL_SMOOTHING}, C=1000",
            ("numpy", "torch", "jax"),
            _multiclass("logits", 1000, label_smoothing=LABEL_SMOOTHING),
        ),
        Case(
            "logits-soft-C1000",
            "logits, soft targets, C=1000",
            ("numpy", "torch", "jax"),
            _multiclass("logits", 1000, soft=True),
        ),
        Case(
            "probs-hard-C10",
            "probs, hard labels, C=10",
            ("numpy", "torch", "jax", "scikit-learn"),
            _multiclass("probs", 10),
        ),
        Case("binary-logits", "binary, logits", ("numpy", "torch", "jax"), _binary("logits")),
        Case("binary-probs", "binary, probs", ("numpy", "torch", "scikit-learn"), _binary("probs")),
        Case(
            "multilabel-logits-C100",
            "multi-label, logits, C=100",
            ("numpy", "torch", "jax"),
            _binary("logits", 100),
        ),
        Case(
            "update-64k-C10",
            "CrossEntropy.update, 64k-row batches, logits C=10",
            ("one-shot",),
            _streaming_update(10),
        ),
        Case(
            "update-32rows-C10",
            "CrossEntropy.update of one 32-row batch, logits C=10",
            ("torch-mean",),
            _small_updates(10, 32),
        ),
        Case(
            "parquet-logits-C10",
            "Parquet end to end, logits C=10",
            ("polars", "duckdb"),
            _file("parquet", "logits", 10),
            on_disk=True,
        ),
        Case(
            "parquet-probs-C10",
            "Parquet end to end, probs C=10",
            ("polars", "duckdb"),
            _file("parquet", "probs", 10),
            on_disk=True,
        ),
        Case(
            "ipc-logits-C10",
            "Arrow IPC end to end, logits C=10",
            ("polars",),
            _file("ipc", "logits", 10),
            on_disk=True,
        ),
        Case(
            "npy-logits-C10",
            ".npy end to end, logits C=10",
            ("numpy",),
            _file("npy", "logits", 10),
            on_disk=True,
        ),
    )
}
IN_MEMORY_CASES = tuple(key for key, case in CASES.items() if not case.on_disk)
FILE_CASES = tuple(key for key, case in CASES.items() if case.on_disk)
IN_MEMORY_PEERS = ("numpy", "torch", "scikit-learn", "jax", "one-shot", "torch-mean")
FILE_PEERS = ("polars", "duckdb", "numpy")


def applicable(case: str, peer: str) -> bool:
    return peer in CASES[case].peers


def cases_with(peer: str) -> tuple[str, ...]:
    """The keys of the cases that ``peer`` has a counterpart of, in registry order."""
    return tuple(key for key, case in CASES.items() if peer in case.peers)


def prepare(
    case: str,
    *,
    peers: Iterable[str] | None = None,
    n_elements: int | None = None,
    warm: bool = True,
) -> Prepared:
    """Build a case's data (in a temp dir for file cases) and its callables.

    ``peers`` defaults to every peer of the case that is installed; a requested peer
    that does not apply or is not installed raises ``NotImplementedError`` (asv's
    "skip this combination"). ``close()`` the result to free the data and temp files.
    """
    spec = CASES[case]
    wanted = spec.peers if peers is None else tuple(peers)
    for name in wanted:
        if name not in spec.peers:
            raise NotImplementedError(f"{name} has no counterpart of {case}")
        if peers is not None and not PEERS[name].available():
            raise NotImplementedError(f"{name} is not installed")
    chosen = frozenset(name for name in wanted if PEERS[name].available())
    resources = _Resources()
    directory = Path(tempfile.mkdtemp(prefix="xentstream-bench-"))
    resources.actions.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    try:
        n = elements() if n_elements is None else n_elements
        prepared = spec.build(n, directory, chosen, resources)
        if warm:
            prepared.warm()
    except BaseException:
        resources.close()
        raise
    return prepared


def medians(funcs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable over ``repeats`` rounds, interleaved.

    Every round calls each callable once, starting one further along the list each
    round, so that drifts of the machine (other jobs, clock boost) hit all sides alike.
    """
    names = list(funcs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(max(1, repeats)):
        for i in range(len(names)):
            name = names[(round_ + i) % len(names)]
            start = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    """One line naming this machine: CPU model, logical CPUs, threads each side uses."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        model,
        f"{os.cpu_count()} logical CPUs",
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}",
        f"xentstream {xs.__version__} (numba threads {threads()})",
    ]
    if PEERS["torch"].available():
        parts.append(f"torch threads {threads()}")
    if PEERS["polars"].available():
        import polars as pl

        parts.append(f"polars threads {pl.thread_pool_size()}")
    if PEERS["duckdb"].available():
        parts.append(f"duckdb threads {threads()}")
    return "; ".join(parts)
