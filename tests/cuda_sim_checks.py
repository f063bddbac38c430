"""Checks of the CUDA engine, run by ``test_cuda.py`` in a child pytest process.

The child runs with ``NUMBA_ENABLE_CUDASIM=1`` (numba's CUDA simulator, which must
be switched on before numba is imported, hence the separate process) unless a real
GPU is present, in which case the same checks run on the device. The file name does
not match ``test_*.py``, so the main suite never collects it in its own process.

The launch sizes of :mod:`xentstream._kernels.cuda` are shrunk (a few threads per
block, a few blocks, short row windows) so that the small inputs here cross block
boundaries, grid-stride loops iterate, several accumulator copies are used, and host
inputs are copied in several windows: the paths a large input takes on a real GPU.

Against the CPU engine the reports are compared bit for bit in the simulator (it
runs the same per-row functions with the same libm, so the per-row terms are the
same and the exact sums must be too); on a real GPU the device's math library
differs, so per-row values are compared within SPEC section 3's tolerance, and
exactness is checked against the exact sum of the device's own per-row terms.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import reference
from metric_cases import bits, float_bits
from stream_support import child_env

import xentstream as xs
from xentstream._kernels import cuda as device

cuda = device.cuda

# The simulator runs kernels as Python on numpy scalars, which warn on the inf - inf
# and NaN arithmetic the kernels do on purpose (``s - s == 0`` is the finiteness test
# of a sample weight); compiled kernels, on a GPU or a CPU, raise no such warnings.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*encountered in scalar:RuntimeWarning:xentstream\._kernels\.(cuda|rows)"
)
N_ROWS = 150


@pytest.fixture(autouse=True)
def small_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 threads x 3 blocks and 64-row windows: 150 rows take 3 windows of ~5 strides."""
    monkeypatch.setattr(device, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(device, "MAX_BLOCKS", 3)
    monkeypatch.setattr(device, "ACCUMULATOR_COPIES", 2)
    monkeypatch.setattr(device, "ROWS_PER_LAUNCH", 64)


def _data(seed: int = 7, n: int = N_ROWS, n_classes: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, n_classes))
    probs = rng.dirichlet(np.ones(n_classes), n)
    return {
        "logits": logits,
        "probs": probs,
        "logprobs": np.log(probs),
        "labels": rng.integers(0, n_classes, n),
        "soft": rng.dirichlet(np.ones(n_classes), n),
        "weights": rng.uniform(0.1, 3.0, n),
        "binary_logits": rng.normal(0.0, 2.0, n),
        "binary_probs": rng.uniform(0.01, 0.99, n),
        "binary_target": (rng.random(n) < 0.4),
        "ml_probs": rng.uniform(0.01, 0.99, (n, 3)),
        "ml_target": (rng.random((n, 3)) < 0.3).astype(np.float64),
        "groups": rng.integers(0, 3, n),
    }


DATA = _data()

# (metric factory keyword arguments, preds key, target key, sample weight?)
CASES: dict[str, tuple[type[xs.Metric], dict[str, Any], str, str, bool]] = {
    "hard-logits": (
        xs.CrossEntropy,
        {"input": "logits", "per_class": True},
        "logits",
        "labels",
        False,
    ),
    "hard-probs-weighted": (
        xs.CrossEntropy,
        {"class_weight": [0.5, 1.0, 2.0, 1.5, 0.7], "label_smoothing": 0.1, "per_class": True},
        "probs",
        "labels",
        True,
    ),
    "hard-logprobs-ignore": (
        xs.CrossEntropy,
        {"input": "logprobs", "ignore_index": 2},
        "logprobs",
        "labels",
        False,
    ),
    "soft-logits": (
        xs.CrossEntropy,
        {"input": "logits", "label_smoothing": 0.05, "per_class": True},
        "logits",
        "soft",
        True,
    ),
    "binary-logits": (
        xs.BinaryCrossEntropy,
        {"input": "logits", "pos_weight": 2.5},
        "binary_logits",
        "binary_target",
        True,
    ),
    "binary-probs": (xs.BinaryCrossEntropy, {}, "binary_probs", "binary_target", False),
    "multilabel": (
        xs.MultiLabelCrossEntropy,
        {"pos_weight": [1.0, 2.0, 0.5], "per_label": True},
        "ml_probs",
        "ml_target",
        True,
    ),
}


def _metric(name: str, engine: str) -> xs.Metric:
    cls, options, _, _, _ = CASES[name]
    return cls(**options, engine=engine)


def _inputs(name: str, rows: slice = slice(None)) -> tuple[Any, Any, Any]:
    _, _, preds, target, weighted = CASES[name]
    weights = DATA["weights"][rows] if weighted else None
    return DATA[preds][rows], DATA[target][rows], weights


def _report(name: str, engine: str, *batches: slice, to_device: bool = False) -> dict[str, Any]:
    """The bits of the report of case ``name`` fed ``batches`` of rows (default: all)."""
    metric = _metric(name, engine)
    for rows in batches or (slice(None),):
        preds, target, weights = _inputs(name, rows)
        if to_device:
            preds, target = cuda.to_device(preds), cuda.to_device(target)
            weights = None if weights is None else cuda.to_device(weights)
        metric.update(preds, target, weights)
    return bits(metric.compute().to_dict())


def _close_reports(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Reports within SPEC section 3's tolerance.

    The engines' per-row values may differ in the last bits (the CPU kernels use their own
    vectorized exp / log, a GPU its libdevice); each engine's sums are exact on its own
    rows, which the device checks below test bit for bit against ``math.fsum``.
    """
    for key, value in expected.items():
        other = actual[key]
        if isinstance(value, float) and isinstance(other, float):
            assert math.isclose(other, value, rel_tol=1e-12, abs_tol=1e-12), key
        elif key == "per_class" and value is not None:
            assert len(other) == len(value)
            for device_row, host_row in zip(other, value, strict=True):
                _close_reports(device_row, host_row)
        else:
            assert other == value, key


# -- every kernel against the CPU engine and the float64 reference ---------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_metric_matches_cpu(name: str) -> None:
    _close_reports(
        _metric(name, "cuda").update(*_inputs(name)).compute().to_dict(),
        _metric(name, "cpu").update(*_inputs(name)).compute().to_dict(),
    )


@pytest.mark.parametrize(
    ("function", "arguments", "rows"),
    [
        (
            xs.cross_entropy,
            ("logits", "labels", {"input": "logits", "label_smoothing": 0.1}),
            lambda: (
                reference.multiclass_rows(
                    DATA["logits"], DATA["labels"], input="logits", label_smoothing=0.1
                ).losses
            ),
        ),
        (
            xs.cross_entropy,
            ("probs", "soft", {}),
            lambda: reference.multiclass_rows(DATA["probs"], DATA["soft"]).losses,
        ),
        (
            xs.binary_cross_entropy,
            ("binary_logits", "binary_target", {"input": "logits", "pos_weight": 2.0}),
            lambda: (
                reference.binary_rows(
                    DATA["binary_logits"], DATA["binary_target"], input="logits", pos_weight=2.0
                ).losses
            ),
        ),
        (
            xs.multilabel_cross_entropy,
            ("ml_probs", "ml_target", {}),
            lambda: reference.multilabel_rows(DATA["ml_probs"], DATA["ml_target"]).losses,
        ),
        (
            xs.entropy,
            ("logits", None, {"input": "logits"}),
            lambda: reference.entropy_rows(DATA["logits"], input="logits"),
        ),
    ],
    ids=["hard", "soft", "binary", "multilabel", "entropy"],
)
def test_functions_match_reference_and_cpu(function: Any, arguments: tuple, rows: Any) -> None:
    preds_key, target_key, options = arguments
    inputs = [DATA[preds_key]] + ([] if target_key is None else [DATA[target_key]])
    expected_rows = rows()
    device_rows = function(*inputs, reduction="none", engine="cuda", **options)
    host_rows = function(*inputs, reduction="none", engine="cpu", **options)
    np.testing.assert_allclose(device_rows, expected_rows, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(device_rows, host_rows, rtol=1e-12, atol=1e-12)
    # Exactness on the device, whatever its math library: the sum is the correctly
    # rounded sum of the device's own per-row terms.
    device_sum = function(*inputs, reduction="sum", engine="cuda", **options)
    assert float_bits(device_sum) == float_bits(math.fsum(device_rows))
    assert math.isclose(
        device_sum,
        function(*inputs, reduction="sum", engine="cpu", **options),
        rel_tol=1e-12,
    )
    assert math.isclose(
        function(*inputs, engine="cuda", **options),
        function(*inputs, engine="cpu", **options),
        rel_tol=1e-12,
    )


def test_float32_within_tolerance() -> None:
    preds = DATA["logits"].astype(np.float32)
    device_rows = xs.cross_entropy(
        preds, DATA["labels"], input="logits", reduction="none", engine="cuda"
    )
    expected = reference.multiclass_rows(preds, DATA["labels"], input="logits").losses
    np.testing.assert_allclose(device_rows, expected, rtol=1e-6, atol=1e-6)


# -- exactness: batch splits, launch shapes, device inputs -----------------------------------


@pytest.mark.parametrize("name", ["hard-logits", "soft-logits", "binary-logits", "multilabel"])
def test_batch_splits_and_launch_shapes_are_bitwise_stable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_pass = _report(name, "cuda")
    split = _report(name, "cuda", slice(0, 17), slice(17, 90), slice(90, None))
    assert split == one_pass
    monkeypatch.setattr(device, "THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(device, "MAX_BLOCKS", 2)
    monkeypatch.setattr(device, "ACCUMULATOR_COPIES", 3)
    monkeypatch.setattr(device, "ROWS_PER_LAUNCH", 1000)
    assert _report(name, "cuda", slice(0, 101), slice(101, None)) == one_pass
    assert _report(name, "cuda") == one_pass  # a second launch: same bits
    # The device accumulators read back inside a call (every window, every second
    # window), as a call of more than exact.MAX_TERMS_PER_BLOCK rows does.
    for flush_rows in (70, 130):
        monkeypatch.setattr(device, "ROWS_PER_LAUNCH", 64)
        monkeypatch.setattr(device, "FLUSH_ROWS", flush_rows)
        assert _report(name, "cuda") == one_pass
    # A small staging cap shortens the windows of host inputs, not the result.
    monkeypatch.setattr(device, "FLUSH_ROWS", 1 << 30)
    monkeypatch.setattr(device, "STAGING_BYTES", 1500)
    device.release_buffers()  # else the larger buffers of the calls above are reused
    assert _report(name, "cuda") == one_pass
    assert all(stager.rows < 64 for stager in device._STAGERS.values())


def test_release_buffers_frees_the_pinned_staging_buffers() -> None:
    expected = _report("hard-logits", "cuda")
    assert device._STAGERS  # this thread kept its buffers for the next call
    device.release_buffers()
    assert not device._STAGERS
    assert _report("hard-logits", "cuda") == expected  # new buffers pinned on demand
    device.release_buffers()


@pytest.mark.parametrize(
    "name", ["hard-probs-weighted", "soft-logits", "binary-logits", "multilabel"]
)
def test_device_arrays_run_in_place_with_engine_auto(name: str) -> None:
    host = _report(name, "cuda")
    assert _report(name, "auto", slice(0, 70), slice(70, None), to_device=True) == host


def test_device_arrays_in_the_functions_and_mixed_inputs() -> None:
    logits, labels = DATA["logits"], DATA["labels"]
    expected = xs.cross_entropy(logits, labels, input="logits", engine="cuda")
    on_device = xs.cross_entropy(cuda.to_device(logits), cuda.to_device(labels), input="logits")
    mixed = xs.cross_entropy(cuda.to_device(logits), labels, input="logits")  # host labels
    assert float_bits(on_device) == float_bits(expected) == float_bits(mixed)
    # engine="cpu" on device arrays copies them to the host.
    forced = xs.cross_entropy(cuda.to_device(logits), labels, input="logits", engine="cpu")
    assert math.isclose(forced, expected, rel_tol=1e-12)
    entropy = xs.entropy(cuda.to_device(DATA["probs"]), reduction="none")
    np.testing.assert_allclose(entropy, reference.entropy_rows(DATA["probs"]), rtol=1e-12)


def test_groups_window_and_evaluate_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pl.DataFrame(
        {"p": DATA["probs"], "y": DATA["labels"], "g": DATA["groups"], "w": DATA["weights"]}
    )
    results = [
        xs.evaluate(
            frame,
            xs.CrossEntropy(engine=engine, per_class=True),
            preds="p",
            target="y",
            sample_weight="w",
            by="g",
            batch_rows=40,
        )
        for engine in ("cuda", "cpu")
    ]
    device_polars, host_polars = (result.to_polars() for result in results)
    for device_row, host_row in zip(device_polars.to_dicts(), host_polars.to_dicts(), strict=True):
        _close_reports(device_row, host_row)
    # Many groups: one accumulator copy per launch, same bits.
    monkeypatch.setattr(device, "MANY_GROUPS", 2)
    assert device._copies(3, 3, 0) == 1
    one_copy = xs.evaluate(
        frame,
        xs.CrossEntropy(engine="cuda", per_class=True),
        preds="p",
        target="y",
        sample_weight="w",
        by="g",
        batch_rows=40,
    )
    assert bits(one_copy.to_polars().to_dicts()) == bits(device_polars.to_dicts())
    windowed = xs.CrossEntropy(window=20, engine="auto")
    windowed.update(cuda.to_device(DATA["probs"]), cuda.to_device(DATA["labels"]))
    host_window = xs.CrossEntropy(window=20, engine="cpu").update(DATA["probs"], DATA["labels"])
    assert math.isclose(
        windowed.compute().window_loss, host_window.compute().window_loss, rel_tol=1e-12
    )


# -- validation: same row, column and rule as the CPU; state untouched -----------------------


def _poison(name: str, row: int, column: int, value: float) -> tuple[Any, Any, Any]:
    preds, target, weights = (None if a is None else a.copy() for a in _inputs(name))
    if preds.ndim == 2:
        preds[row, column] = value
    else:
        preds[row] = value
    return preds, target, weights


BAD_INPUTS = {
    "nan-logit": ("hard-logits", lambda: _poison("hard-logits", 97, 3, np.nan)),
    "pos-inf-logit": ("soft-logits", lambda: _poison("soft-logits", 5, 1, np.inf)),
    "prob-out-of-range": (
        "hard-probs-weighted",
        lambda: _poison("hard-probs-weighted", 64, 0, 1.5),
    ),
    "positive-logprob": (
        "hard-logprobs-ignore",
        lambda: _poison("hard-logprobs-ignore", 149, 4, 0.5),
    ),
    "binary-prob": ("binary-probs", lambda: _poison("binary-probs", 63, 0, -0.1)),
    "multilabel-prob": ("multilabel", lambda: _poison("multilabel", 88, 2, 2.0)),
}


def _two_bad_rows(name: str, make: Any) -> tuple[Any, Any, Any]:
    """The poisoned input plus a second, later bad row handled by another thread."""
    preds, target, weights = make()
    if preds.ndim == 2:
        preds[min(N_ROWS - 1, 120 + 3), 0] = np.nan
    else:
        preds[123] = np.nan
    return preds, target, weights


def _error(metric: xs.Metric, inputs: tuple[Any, Any, Any]) -> str:
    with pytest.raises(ValueError) as caught:
        metric.update(*inputs)
    return str(caught.value)


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_errors_name_the_same_row_column_and_rule(bad: str) -> None:
    name, make = BAD_INPUTS[bad]
    inputs = make() if bad in ("positive-logprob",) else _two_bad_rows(name, make)
    # Both metrics have seen rows before, so the message's row is a stream offset.
    device_metric = _metric(name, "cuda").update(*_inputs(name, slice(0, 10)))
    host_metric = _metric(name, "cpu").update(*_inputs(name, slice(0, 10)))
    before = json.dumps(device_metric.state_dict(), sort_keys=True)
    message = _error(device_metric, inputs)
    assert message == _error(host_metric, inputs)
    assert json.dumps(device_metric.state_dict(), sort_keys=True) == before  # atomic update


@pytest.mark.parametrize(
    "case",
    ["label", "soft-target", "soft-sum", "sample-weight", "binary-target", "row-sum"],
)
def test_target_and_weight_errors_match_cpu(case: str) -> None:
    probs, labels = DATA["probs"], DATA["labels"].copy()
    soft, weights = DATA["soft"].copy(), DATA["weights"].copy()
    if case == "label":
        labels[[130, 44]] = [7, -1]
        call = (xs.cross_entropy, (probs, labels), {})
    elif case == "soft-target":
        soft[77, 2] = -0.25
        call = (xs.cross_entropy, (probs, soft), {})
    elif case == "soft-sum":
        soft[12] *= 1.5
        call = (xs.cross_entropy, (probs, soft), {})
    elif case == "sample-weight":
        weights[[101, 59]] = [np.inf, -1.0]
        call = (xs.cross_entropy, (probs, labels), {"sample_weight": weights})
    elif case == "binary-target":
        target = DATA["binary_probs"].copy()
        target[31] = 1.25
        call = (xs.binary_cross_entropy, (DATA["binary_probs"], target), {})
    else:
        bad = probs.copy()
        bad[140] *= 0.5
        call = (xs.cross_entropy, (bad, labels), {})
    function, arguments, options = call
    messages = []
    for engine in ("cuda", "cpu"):
        with pytest.raises(ValueError) as caught:
            function(*arguments, engine=engine, **options)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


def test_half_precision_device_inputs_are_widened_like_host_inputs() -> None:
    """float16 predictions, soft targets and sample weights: as the CPU takes them."""
    preds = DATA["probs"].astype(np.float16)
    soft = DATA["soft"].astype(np.float16)
    weights = DATA["weights"].astype(np.float16)
    rows = xs.cross_entropy(
        cuda.to_device(preds),
        cuda.to_device(soft),
        sample_weight=cuda.to_device(weights),
        reduction="none",
        sum_tol=1e-2,
    )
    host_rows = xs.cross_entropy(
        preds, soft, sample_weight=weights, reduction="none", engine="cpu", sum_tol=1e-2
    )
    np.testing.assert_allclose(rows, host_rows, rtol=1e-6, atol=1e-6)
    metrics = []
    for engine, to_device in (("auto", cuda.to_device), ("cpu", np.asarray)):
        metric = xs.CrossEntropy(engine=engine, sum_tol=1e-2)
        metric.update(to_device(preds), to_device(soft), to_device(weights))
        metric.update(to_device(preds), to_device(DATA["labels"]))
        metrics.append(metric.compute().to_dict())
    _close_reports(metrics[0], metrics[1])
    widened = device.as_device_array(cuda.to_device(preds), "preds")
    assert widened.dtype == np.float32 and widened.shape == preds.shape
    np.testing.assert_array_equal(widened.copy_to_host(), preds.astype(np.float32))


class _CudaTensor:
    """Stands in for a torch CUDA tensor (torch cannot make one without a GPU): the
    module, ``device``, ``detach`` and ``float`` that ``_inputs`` and ``cuda`` use."""

    __module__ = "torch"

    def __init__(self, values: np.ndarray, dtype: str) -> None:
        self.values, self.dtype = values, dtype
        self.shape, self.ndim = values.shape, values.ndim
        self.device = type("device", (), {"type": "cuda"})()
        self.widened = False

    def detach(self) -> _CudaTensor:
        return self

    def float(self) -> Any:
        self.widened = True
        return cuda.to_device(self.values.astype(np.float32))


def test_half_precision_torch_tensors_are_widened_with_float() -> None:
    preds = _CudaTensor(DATA["probs"].astype(np.float16), "torch.bfloat16")
    soft = _CudaTensor(DATA["soft"].astype(np.float16), "torch.float16")
    weights = _CudaTensor(DATA["weights"].astype(np.float16), "torch.bfloat16")
    loss = xs.cross_entropy(preds, soft, sample_weight=weights, sum_tol=1e-2)
    assert preds.widened and soft.widened and weights.widened
    # eps="auto" follows the dtype given, bfloat16 (8 significand bits), not the values'
    expected = xs.cross_entropy(
        preds.values,
        soft.values,
        sample_weight=weights.values,
        sum_tol=1e-2,
        eps=2.0**-7,
        engine="cpu",
    )
    assert math.isclose(loss, expected, rel_tol=1e-12)


def test_unreadable_device_dtype_names_the_argument() -> None:
    class Bfloat16OnTheDevice:  # another library's bfloat16 array, as the interface shows it
        shape = (N_ROWS,)
        __cuda_array_interface__ = {  # noqa: RUF012
            "shape": (N_ROWS,),
            "typestr": "<V2",
            "data": (0, False),
            "version": 3,
        }

    with pytest.raises(TypeError, match=r"sample_weight: device array of dtype '<V2'.*float32"):
        xs.cross_entropy(
            cuda.to_device(DATA["probs"]), DATA["labels"], sample_weight=Bfloat16OnTheDevice()
        )


def test_engine_cuda_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="engine"):
        xs.CrossEntropy(engine="gpu")
    with pytest.raises(ValueError, match="contiguous"):
        xs.cross_entropy(cuda.to_device(np.asfortranarray(DATA["probs"])), DATA["labels"])
    with pytest.raises(TypeError, match="floating"):
        xs.cross_entropy(cuda.to_device(DATA["labels"].reshape(-1, 1)), [0] * N_ROWS)


# -- the command line ------------------------------------------------------------------------


def test_cli_engine_cuda(tmp_path: Path) -> None:
    frame = pl.DataFrame({"p": DATA["probs"][:60], "y": DATA["labels"][:60]})
    path = tmp_path / "preds.parquet"
    frame.write_parquet(path)
    outputs = []
    for engine in ("cuda", "cpu"):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "xentstream", "evaluate", str(path)),
                *("--preds", "p", "--target", "y", "--format", "json", "--no-progress"),
                *("--engine", engine),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),  # inherits NUMBA_ENABLE_CUDASIM when the simulator is on
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert math.isclose(outputs[0]["loss"], outputs[1]["loss"], rel_tol=1e-12)


def test_token_logits_with_padding_empty_batches_and_float32_on_the_device() -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 2.0, (4, 9, 5)).astype(np.float32)  # (batch, seq, C)
    labels = rng.integers(0, 5, (4, 9))
    labels[:, 7:] = -100  # padding
    options = {"input": "logits", "ignore_index": -100}
    on_device = xs.cross_entropy(cuda.to_device(logits), cuda.to_device(labels), **options)
    on_host = xs.cross_entropy(logits, labels, engine="cpu", **options)
    rows = xs.cross_entropy(
        cuda.to_device(logits), cuda.to_device(labels), reduction="none", **options
    )
    assert rows.shape == (4, 9) and not rows[:, 7:].any()
    assert math.isclose(on_device, on_host, rel_tol=1e-6)
    metric = xs.CrossEntropy(engine="cuda")
    metric.update(cuda.to_device(np.empty((0, 3))), cuda.to_device(np.empty(0, np.int64)))
    assert metric.rows_seen == 0 and math.isnan(metric.value)
