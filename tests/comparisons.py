"""xentstream and its peers on the same data: the comparison cases of the benchmarks.

One registry, :data:`COMPARISONS` (numbagg's ``COMPARISONS`` is the model): for each
case, its seeded data, xentstream's call and each peer's call (numpy, torch, JAX,
scikit-learn, polars, DuckDB, ...). The asv suite (``asv_bench/benchmarks/peers.py``)
and ``asv_bench/compare.py`` time these callables, and ``tests/test_peers.py`` checks
that every peer agrees with xentstream on them: what is timed is what is tested.

Every entry is a *setup*: given the case's :class:`CaseData` and a :class:`Resources`
that collects undo actions, it does the preparation that should not be timed
(tensors, jitting, a database connection) and returns a function of no arguments
computing the mean loss. The "numpy" peer is idiomatic vectorized float64 numpy; the
reference of the whole test suite is ``tests/reference.py`` (literal, not fast), which
``tests/test_peers.py`` checks xentstream against on every kernel case too. Peers are
imported lazily, when set up, so this module imports with xentstream and numpy alone
(as asv's environments have it).

Examples
--------
>>> from pathlib import Path
>>> case = COMPARISONS["logits-hard-C10"]
>>> data = case.data(Sizes(elements=200, batch_rows=8, small_batch_calls=2), Path("."))
>>> resources = Resources()
>>> ours = case.xentstream(data, resources)()
>>> reference = case.peers["numpy"](data, resources)()
>>> abs(ours - reference) <= 1e-6 * max(abs(reference), 1.0)
True
>>> resources.close()
"""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import reference as ref

import xentstream as xs

SEED = 20_240_601
LABEL_SMOOTHING = 0.1


# -- sizes and seeded data --------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much data a case builds (the asv suite's full or tiny sizes, or a test's)."""

    #: Prediction values of the case.
    elements: int
    #: Rows per ``CrossEntropy.update`` call of the 64k-row streaming case.
    batch_rows: int
    #: ``update`` calls of the 32-row latency case (its data size is fixed by them).
    small_batch_calls: int


def rows_for(n_classes: int, n_elements: int) -> int:
    """Rows of ``n_classes`` values that make about ``n_elements`` values (at least 2)."""
    return max(2, n_elements // n_classes)


def generator(*key: object) -> np.random.Generator:
    """A generator seeded by ``key``: each case's data is the same whatever ran before."""
    return np.random.default_rng([SEED, zlib.crc32(repr(key).encode())])


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


@dataclass
class CaseData:
    """What the sides of one case read: arrays in memory, or a dump on disk."""

    #: The predictions and targets (None for a case on disk: its sides read ``files``).
    preds: np.ndarray | None
    target: np.ndarray | None
    #: Keyword arguments of the loss (``input=``, ``label_smoothing=``), xentstream's names.
    options: dict[str, Any]
    #: The dump (its first file is what ``xs.evaluate`` is given).
    files: tuple[Path, ...] = ()
    #: The ``(preds, target)`` batches of a streaming case, slices of the arrays above.
    batches: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: Calls of the measured operation that one call of each side makes (the 32-row
    #: update case makes many, so that a timing is not all timer resolution).
    calls: int = 1

    @property
    def n_classes(self) -> int:
        assert self.preds is not None
        return int(self.preds.shape[-1])


class Resources:
    """Undo actions of the setups (torch thread count, connections), run by ``close``."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], Any]] = []

    def close(self) -> None:
        while self.actions:
            self.actions.pop()()


def threads() -> int:
    """Threads xentstream's kernels use; peers are given the same number."""
    import numba

    return int(numba.get_num_threads())


def _eps(dtype: Any) -> float:
    return float(np.finfo(dtype).eps)


def _multiclass_data(
    input: str, n_classes: int, *, soft: bool = False, label_smoothing: float = 0.0
) -> Callable[[Sizes, Path], CaseData]:
    def make(sizes: Sizes, _: Path) -> CaseData:
        gen = generator("case", input, n_classes, soft, label_smoothing)
        rows = rows_for(n_classes, sizes.elements)
        z = gen.standard_normal((rows, n_classes)) * 2.0
        preds = (z if input == "logits" else ref.softmax(z)).astype(np.float32)
        if soft:
            target = ref.softmax(gen.standard_normal(z.shape)).astype(np.float32)
        else:
            target = gen.integers(0, n_classes, rows, dtype=np.int64)
        return CaseData(preds, target, {"input": input, "label_smoothing": label_smoothing})

    return make


def _binary_data(input: str, n_labels: int | None = None) -> Callable[[Sizes, Path], CaseData]:
    """1-D binary data, or (rows, ``n_labels``) multi-label data."""

    def make(sizes: Sizes, _: Path) -> CaseData:
        gen = generator("case-binary", input, n_labels)
        n = sizes.elements
        shape = n if n_labels is None else (rows_for(n_labels, n), n_labels)
        z = gen.standard_normal(shape) * 2.0
        preds = (z if input == "logits" else ref.sigmoid(z)).astype(np.float32)
        target = (gen.random(z.shape) < ref.sigmoid(z)).astype(np.float32)
        return CaseData(preds, target, {"input": input})

    return make


def _streaming_data(n_classes: int) -> Callable[[Sizes, Path], CaseData]:
    """Logits cut into batches of ``sizes.batch_rows`` rows."""

    def make(sizes: Sizes, _: Path) -> CaseData:
        rows = rows_for(n_classes, sizes.elements)
        preds, labels = logits_and_labels(rows, n_classes, "float32", "update")
        step = sizes.batch_rows
        batches = [(preds[i : i + step], labels[i : i + step]) for i in range(0, rows, step)]
        return CaseData(preds, labels, {"input": "logits"}, batches=batches)

    return make


def _small_batch_data(n_classes: int, batch: int) -> Callable[[Sizes, Path], CaseData]:
    """``sizes.small_batch_calls`` batches of ``batch`` rows (the data size is fixed)."""

    def make(sizes: Sizes, _: Path) -> CaseData:
        calls = sizes.small_batch_calls
        preds, labels = logits_and_labels(calls * batch, n_classes, "float32", "small")
        rows = len(labels)
        batches = [(preds[i : i + batch], labels[i : i + batch]) for i in range(0, rows, batch)]
        return CaseData(preds, labels, {"input": "logits"}, batches=batches, calls=len(batches))

    return make


#: The training-step case: an MNIST-sized MLP (784 -> 512 -> 10) on 256-row batches,
#: a step of a few milliseconds here, as small as real training steps get.
TRAIN_FEATURES, TRAIN_HIDDEN, TRAIN_CLASSES, TRAIN_BATCH = 784, 512, 10, 256


def _training_data(sizes: Sizes, _: Path) -> CaseData:
    """Seeded features and labels in ``TRAIN_BATCH``-row batches: one training step each
    (a twentieth of the 32-row case's calls, at least two)."""
    steps = max(2, sizes.small_batch_calls // 20)
    gen = generator("train", steps)
    features = gen.standard_normal((steps * TRAIN_BATCH, TRAIN_FEATURES)).astype(np.float32)
    labels = gen.integers(0, TRAIN_CLASSES, steps * TRAIN_BATCH, dtype=np.int64)
    batches = [
        (features[i : i + TRAIN_BATCH], labels[i : i + TRAIN_BATCH])
        for i in range(0, len(labels), TRAIN_BATCH)
    ]
    return CaseData(features, labels, {"input": "logits"}, batches=batches, calls=len(batches))


def _training_loop(
    data: CaseData, resources: Resources, log: Callable[[Any, Any], None] | None
) -> Callable[[], tuple[list[float], int]]:
    """A torch SGD training loop over the batches from the same initial weights each
    run; ``log(logits, labels)`` is called every step (xentstream's ``update``), else
    the loop keeps its loss as a running torch sum, as a loop without a metric does."""
    torch = _torch(resources)
    functional = torch.nn.functional
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(TRAIN_FEATURES, TRAIN_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(TRAIN_HIDDEN, TRAIN_CLASSES),
    )
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    tensors = [(torch.from_numpy(x), torch.from_numpy(t)) for x, t in data.batches]

    def run() -> Any:
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        total = torch.zeros((), dtype=torch.float64)
        for x, t in tensors:
            logits = model(x)
            loss = functional.cross_entropy(logits, t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if log is None:
                total += loss.detach().double() * t.numel()
            else:
                log(logits.detach(), t)
        return total

    return run


def _xs_training(data: CaseData, resources: Resources) -> Callable[[], float]:
    """The training loop with ``CrossEntropy.update`` on every step's logits."""
    metric = xs.CrossEntropy(num_classes=TRAIN_CLASSES, input="logits")
    loop = _training_loop(data, resources, metric.update)

    def run() -> float:
        metric.reset()
        loop()
        return metric.value

    return run


def _torch_training(data: CaseData, resources: Resources) -> Callable[[], float]:
    """The same loop with no metric: its loss kept as a running torch sum."""
    loop = _training_loop(data, resources, None)
    rows = sum(len(t) for _, t in data.batches)
    return lambda: float(loop()) / rows


def _file_data(fmt: str, input: str, n_classes: int) -> Callable[[Sizes, Path], CaseData]:
    def make(sizes: Sizes, directory: Path) -> CaseData:
        rows = rows_for(n_classes, sizes.elements)
        logits, labels = logits_and_labels(rows, n_classes, "float32", fmt)
        preds = logits if input == "logits" else ref.softmax(logits).astype(np.float32)
        path = write_dump(fmt, directory, preds, labels)
        files = (path,) if fmt != "npy" else (path, path.with_name("labels.npy"))
        return CaseData(None, None, {"input": input}, files=files)

    return make


# -- xentstream's side ------------------------------------------------------------------------


def _xs_cross_entropy(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: xs.cross_entropy(data.preds, data.target, **data.options)


def _xs_binary(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: xs.binary_cross_entropy(data.preds, data.target, **data.options)


def _xs_multilabel(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: xs.multilabel_cross_entropy(data.preds, data.target, **data.options)


def _xs_updates(data: CaseData, _: Resources) -> Callable[[], float]:
    """One fresh ``CrossEntropy`` updated with every batch, as a training loop does."""
    n_classes = data.n_classes

    def run() -> float:
        metric = xs.CrossEntropy(num_classes=n_classes, **data.options)
        for preds, target in data.batches:
            metric.update(preds, target)
        return metric.value

    return run


def _xs_evaluate(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: evaluate_dump(data.files[0], data.options["input"])


# -- the peers --------------------------------------------------------------------------------


# The numpy peer is what a numpy user writes: vectorized float64, the label's column
# gathered, not the reference's literal one-hot sums (which would flatter xentstream
# by 2-17x, measured). Its agreement with xentstream is held by test_peers like every
# other peer's; correctness itself is held against tests/reference.py.


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


def _reference_multiclass(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: ref.mean(ref.multiclass_rows(data.preds, data.target, **data.options))


def _reference_binary(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: ref.mean(ref.binary_rows(data.preds, data.target, **data.options))


def _reference_multilabel(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: ref.mean(ref.multilabel_rows(data.preds, data.target, **data.options))


def _numpy_multiclass(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: numpy_cross_entropy(data.preds, data.target, **data.options)


def _numpy_binary(data: CaseData, _: Resources) -> Callable[[], float]:
    return lambda: float(np.mean(numpy_binary_terms(data.preds, data.target, **data.options)))


def _numpy_multilabel(data: CaseData, _: Resources) -> Callable[[], float]:
    # The mean over rows of the per-row sum over labels (xentstream's definition).
    return lambda: float(
        numpy_binary_terms(data.preds, data.target, **data.options).sum() / data.preds.shape[0]
    )


def _numpy_npy(data: CaseData, _: Resources) -> Callable[[], float]:
    """``np.load`` (memory-mapped) of the dump, then the numpy way."""
    preds_file, labels_file = data.files

    def run() -> float:
        preds = np.load(preds_file, mmap_mode="r")
        labels = np.load(labels_file, mmap_mode="r")
        return numpy_cross_entropy(preds, labels, **data.options)

    return run


def _torch(resources: Resources) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads())
    resources.actions.append(lambda: torch.set_num_threads(before))
    return torch


def _torch_multiclass(data: CaseData, resources: Resources) -> Callable[[], float]:
    """``cross_entropy`` on logits; ``nll_loss`` of the clipped log on probabilities."""
    torch = _torch(resources)
    functional = torch.nn.functional
    x, t = torch.from_numpy(data.preds), torch.from_numpy(data.target)
    smoothing = data.options["label_smoothing"]
    if data.options["input"] == "logits":
        return lambda: float(functional.cross_entropy(x, t, label_smoothing=smoothing))
    eps = _eps(data.preds.dtype)
    return lambda: float(functional.nll_loss(torch.log(torch.clamp(x, eps, 1 - eps)), t))


def _torch_binary(data: CaseData, resources: Resources) -> Callable[[], float]:
    """torch's BCE; for 2-D (multi-label) input the sum over labels, per row."""
    torch = _torch(resources)
    functional = torch.nn.functional
    x, t = torch.from_numpy(data.preds), torch.from_numpy(data.target)
    fn = (
        functional.binary_cross_entropy_with_logits
        if data.options["input"] == "logits"
        else functional.binary_cross_entropy
    )
    if data.preds.ndim == 2:
        rows = data.preds.shape[0]
        return lambda: float(fn(x, t, reduction="sum")) / rows
    return lambda: float(fn(x, t))


def _torch_mean(data: CaseData, resources: Resources) -> Callable[[], float]:
    """What torcheval's ``Mean`` does with a loss: torch's per-row cross-entropy of each
    batch, its sum and row count added to running torch tensors."""
    torch = _torch(resources)
    functional = torch.nn.functional
    tensors = [(torch.from_numpy(x), torch.from_numpy(t)) for x, t in data.batches]

    def run() -> float:
        weighted_sum = torch.zeros((), dtype=torch.float64)
        weights = torch.zeros((), dtype=torch.float64)
        for x, t in tensors:
            losses = functional.cross_entropy(x, t, reduction="none")
            weighted_sum += losses.sum()
            weights += losses.numel()
        return float(weighted_sum / weights)

    return run


def _jax_multiclass(data: CaseData, _: Resources) -> Callable[[], float]:
    """``jax.nn.log_softmax`` (logits) or a clipped log (probs), jitted; hard or soft targets.

    The arrays are put on the device (the CPU) once, outside the timing, as torch's
    ``from_numpy`` shares them: only the loss itself is timed.
    """
    import jax

    jnp = jax.numpy
    eps = _eps(data.preds.dtype)
    soft = data.target.ndim == 2
    n_classes = data.n_classes
    logits = data.options["input"] == "logits"
    smoothing = data.options["label_smoothing"]

    @jax.jit
    def loss(x: Any, t: Any) -> Any:
        logp = jax.nn.log_softmax(x, axis=-1) if logits else jnp.log(jnp.clip(x, eps, 1 - eps))
        if soft:
            return -jnp.mean(jnp.sum(t * logp, axis=-1))
        picked = jnp.take_along_axis(logp, t[:, None], axis=-1)[:, 0]
        if smoothing:
            smooth = jnp.sum(logp, axis=-1) / n_classes
            return -jnp.mean((1 - smoothing) * picked + smoothing * smooth)
        return -jnp.mean(picked)

    # int32 labels: JAX runs without x64 by default and would narrow them anyway.
    x = jax.device_put(data.preds)
    t = jax.device_put(data.target if soft else data.target.astype(np.int32))
    return lambda: float(loss(x, t))


def _jax_binary(data: CaseData, _: Resources) -> Callable[[], float]:
    """Binary (1-D) or multi-label (2-D, summed over labels per row) BCE, jitted."""
    import jax

    jnp = jax.numpy
    eps = _eps(data.preds.dtype)
    rows = data.preds.shape[0]
    logits = data.options["input"] == "logits"

    @jax.jit
    def loss(x: Any, t: Any) -> Any:
        if logits:
            terms = -(t * jax.nn.log_sigmoid(x) + (1 - t) * jax.nn.log_sigmoid(-x))
        else:
            p = jnp.clip(x, eps, 1 - eps)
            terms = -(t * jnp.log(p) + (1 - t) * jnp.log1p(-p))
        return jnp.sum(terms) / rows

    x, t = jax.device_put(data.preds), jax.device_put(data.target)
    return lambda: float(loss(x, t))


def _sklearn_log_loss(data: CaseData, _: Resources) -> Callable[[], float]:
    from sklearn.metrics import log_loss

    labels = np.arange(data.n_classes) if data.target.ndim == 1 and data.preds.ndim == 2 else None
    return lambda: float(log_loss(data.target, data.preds, labels=labels))


def _polars_file(data: CaseData, _: Resources) -> Callable[[], float]:
    """Mean cross-entropy of a Parquet / IPC dump with polars expressions (lazy scan)."""
    import polars as pl

    path = data.files[0]
    eps = _eps(np.float32)
    scan = pl.scan_ipc if path.suffix == ".arrow" else pl.scan_parquet
    preds = pl.col("preds")
    picked = preds.arr.get(pl.col("label"))
    if data.options["input"] == "logits":
        top = preds.arr.max()
        loss = top + (preds - top).arr.eval(pl.element().exp()).arr.sum().log() - picked
    else:
        loss = -picked.clip(eps, 1 - eps).log()
    query = scan(path).select(loss.mean())
    return lambda: float(query.collect().item())


def _duckdb_file(data: CaseData, resources: Resources) -> Callable[[], float]:
    """Mean cross-entropy of a Parquet dump with DuckDB SQL (list columns)."""
    import duckdb

    eps = _eps(np.float32)
    connection = duckdb.connect()
    resources.actions.append(connection.close)
    connection.execute(f"SET threads = {threads()}")
    source = "read_parquet('{}')".format(str(data.files[0]).replace("'", "''"))
    if data.options["input"] == "logits":
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


@dataclass(frozen=True)
class Peer:
    """A library xentstream is compared with, and the arithmetic it runs in."""

    name: str
    #: The module it needs (None: numpy or xentstream itself, always there).
    module: str | None
    description: str
    #: "exact": xentstream itself, bitwise equal; "float64": float64 arithmetic on the
    #: float32 data; "float32": float32 arithmetic (torch, JAX, ... keep the input's dtype).
    precision: str

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


PEERS = {
    p.name: p
    for p in (
        Peer("numpy", None, "vectorized float64 numpy, as a numpy user writes it", "float64"),
        Peer("torch", "torch", "torch.nn.functional (cross_entropy, nll_loss, BCE)", "float32"),
        Peer("scikit-learn", "sklearn", "sklearn.metrics.log_loss", "float32"),
        Peer("one-shot", None, "xs.cross_entropy on all the rows at once", "exact"),
        Peer("polars", "polars", "polars-native lazy expressions on the same file", "float32"),
        # DuckDB's exp and ln take DOUBLE: only v - m is float32 arithmetic
        Peer("duckdb", "duckdb", "DuckDB SQL on the same file", "float64"),
        Peer("jax", "jax", "jax.nn.log_softmax / log_sigmoid under jax.jit (CPU)", "float32"),
        Peer(
            "no-metric",
            "torch",
            "the same torch training loop without xentstream, its loss summed in torch",
            "float32",
        ),
        Peer(
            "torch-mean",
            "torch",
            "torcheval-style Mean: torch cross_entropy of each batch added to torch tensors",
            "float32",
        ),
    )
}


# -- the registry -----------------------------------------------------------------------------

Setup = Callable[[CaseData, Resources], Callable[[], float]]


@dataclass(frozen=True)
class Comparison:
    """One case: its data, xentstream's setup and each peer's (iterating gives peer names)."""

    title: str
    data: Callable[[Sizes, Path], CaseData]
    xentstream: Setup
    peers: dict[str, Setup]
    #: Its sides read a dump on disk (written into the directory given to ``data``).
    on_disk: bool = False
    #: ``tests/reference.py`` on the case's data (in-memory kernel cases): not timed.
    reference: Setup | None = None


def _multiclass(title: str, input: str, n_classes: int, **kwargs: Any) -> Comparison:
    peers = {"numpy": _numpy_multiclass, "torch": _torch_multiclass, "jax": _jax_multiclass}
    if input == "probs":
        peers["scikit-learn"] = _sklearn_log_loss
    data = _multiclass_data(input, n_classes, **kwargs)
    return Comparison(title, data, _xs_cross_entropy, peers, reference=_reference_multiclass)


def _on_disk(title: str, fmt: str, input: str, **peers: Setup) -> Comparison:
    """``xs.evaluate`` and ``peers`` on a C=10 dump in format ``fmt``."""
    return Comparison(title, _file_data(fmt, input, 10), _xs_evaluate, peers, on_disk=True)


COMPARISONS: dict[str, Comparison] = {
    "logits-hard-C10": _multiclass("logits, hard labels, C=10", "logits", 10),
    "logits-hard-C1000": _multiclass("logits, hard labels, C=1000", "logits", 1000),
    "logits-hard-C32000": _multiclass("logits, hard labels, C=32000", "logits", 32000),
    "logits-smoothing-C1000": _multiclass(
        f"logits, label smoothing {LABEL_SMOOTHING}, C=1000",
        "logits",
        1000,
        label_smoothing=LABEL_SMOOTHING,
    ),
    "logits-soft-C1000": _multiclass("logits, soft targets, C=1000", "logits", 1000, soft=True),
    "probs-hard-C10": _multiclass("probs, hard labels, C=10", "probs", 10),
    "binary-logits": Comparison(
        "binary, logits",
        _binary_data("logits"),
        _xs_binary,
        {"numpy": _numpy_binary, "torch": _torch_binary, "jax": _jax_binary},
        reference=_reference_binary,
    ),
    "binary-probs": Comparison(
        "binary, probs",
        _binary_data("probs"),
        _xs_binary,
        {"numpy": _numpy_binary, "torch": _torch_binary, "scikit-learn": _sklearn_log_loss},
        reference=_reference_binary,
    ),
    "multilabel-logits-C100": Comparison(
        "multi-label, logits, C=100",
        _binary_data("logits", 100),
        _xs_multilabel,
        {"numpy": _numpy_multilabel, "torch": _torch_binary, "jax": _jax_binary},
        reference=_reference_multilabel,
    ),
    "update-64k-C10": Comparison(
        "CrossEntropy.update, 64k-row batches, logits C=10",
        _streaming_data(10),
        _xs_updates,
        {"one-shot": _xs_cross_entropy},
    ),
    "update-32rows-C10": Comparison(
        "CrossEntropy.update of one 32-row batch, logits C=10",
        _small_batch_data(10, 32),
        _xs_updates,
        {"torch-mean": _torch_mean},
    ),
    "train-step-C10": Comparison(
        "torch training step (MLP 784-512-10, 256 rows) with CrossEntropy.update",
        _training_data,
        _xs_training,
        {"no-metric": _torch_training},
    ),
    "parquet-logits-C10": _on_disk(
        "Parquet end to end, logits C=10",
        "parquet",
        "logits",
        polars=_polars_file,
        duckdb=_duckdb_file,
    ),
    "parquet-probs-C10": _on_disk(
        "Parquet end to end, probs C=10",
        "parquet",
        "probs",
        polars=_polars_file,
        duckdb=_duckdb_file,
    ),
    "ipc-logits-C10": _on_disk(
        "Arrow IPC end to end, logits C=10", "ipc", "logits", polars=_polars_file
    ),
    "npy-logits-C10": _on_disk(".npy end to end, logits C=10", "npy", "logits", numpy=_numpy_npy),
}
