"""Every peer of every benchmark case agrees with xentstream (``tests/comparisons.py``).

The asv suite and ``asv_bench/compare.py`` time these very callables; a peer that
computed something else would make its speedup meaningless. Each case is built small
(a few thousand values) and each installed peer's mean loss is compared with
xentstream's on the same data; every in-memory kernel case is also checked against
``tests/reference.py``, the float64 reference of the suite (the timed "numpy" peer is
idiomatic numpy, not the literal reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from comparisons import COMPARISONS, PEERS, Resources, Sizes

#: Small enough for seconds, large enough that every case has several rows and that
#: the streaming cases cut their rows into several batches.
SIZES = Sizes(elements=1 << 12, batch_rows=1 << 7, small_batch_calls=5)

#: The agreement budget of each kind of peer, relative, absolute where the loss is
#: below 1 (SPEC section 3's form). The data are float32:
#: - "float64" peers (the reference, DuckDB's DOUBLE math) are exact to ~1e-15, so the
#:   difference is xentstream's own error, which SPEC section 3 bounds by 1e-6 per row
#:   for float32 input; a mean of such rows is within the same bound;
#: - "float32" peers (torch, JAX, scikit-learn, polars keep the input's dtype) add their
#:   own float32 rounding: a few ulps (6e-8 each) per exp / log / sum over the classes,
#:   and a float32 mean over the rows; 1e-5 is test_vs_torch's budget for torch's float32
#:   arithmetic, ten times SPEC's, and leaves room for the 1e-6 of ours;
#: - "exact": xentstream on the same rows another way (one call instead of batches)
#:   must give the same bits (SPEC section 3: any split of the rows).
TOLERANCE = {"float64": 1e-6, "float32": 1e-5}

PAIRS = [(key, peer) for key, case in COMPARISONS.items() for peer in case.peers]


def _param(key: str, peer: str) -> object:
    spec = PEERS[peer]
    marks = []
    if not spec.available():
        reason = f"{peer} is not installed (pip install {spec.module})"
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(key, peer, id=f"{key}-{peer}", marks=marks)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], tuple]]:
    """Each case's data and xentstream's value on it, built once per case."""
    built: dict[str, tuple] = {}
    resources = Resources()

    def get(key: str) -> tuple:
        if key not in built:
            case = COMPARISONS[key]
            data = case.data(SIZES, tmp_path_factory.mktemp(key))
            built[key] = (data, case.xentstream(data, resources)())
        return built[key]

    yield get
    resources.close()


def _agree(actual: float, expected: float, precision: str) -> bool:
    if precision == "exact":
        return actual == expected  # positive and finite (checked): the same bits
    return abs(actual - expected) <= TOLERANCE[precision] * max(abs(expected), 1.0)


@pytest.mark.parametrize(("key", "peer"), [_param(key, peer) for key, peer in PAIRS])
def test_peer_agrees_with_xentstream(ours: Callable[[str], tuple], key: str, peer: str) -> None:
    data, value = ours(key)
    resources = Resources()
    try:
        peer_value = COMPARISONS[key].peers[peer](data, resources)()
    finally:
        resources.close()
    assert math.isfinite(value) and value > 0.0, (key, value)
    precision = PEERS[peer].precision
    assert _agree(value, peer_value, precision), (
        f"{key}: xentstream {value!r}, {peer} {peer_value!r} ({precision} peer)"
    )


def test_every_case_of_the_suite_has_peers_with_known_precision() -> None:
    """What asv times is this registry, and every peer it names is described here."""
    import sys

    asv_bench = Path(__file__).resolve().parent.parent / "asv_bench"
    if str(asv_bench) not in sys.path:
        sys.path.insert(0, str(asv_bench))
    from benchmarks import common

    assert common.CASES is COMPARISONS
    for key, case in COMPARISONS.items():
        assert case.peers, key
        for peer in case.peers:
            assert PEERS[peer].precision in (*TOLERANCE, "exact"), (key, peer)


def test_every_kernel_case_has_a_numpy_peer_and_the_reference() -> None:
    for key, case in COMPARISONS.items():
        # Streaming cases (``update-``) and the training loop time calls, not a kernel.
        if not case.on_disk and not key.startswith(("update-", "train-")):
            assert "numpy" in case.peers, key
            assert case.reference is not None, key


@pytest.mark.parametrize("key", [k for k, c in COMPARISONS.items() if c.reference is not None])
def test_xentstream_agrees_with_the_reference_on_every_kernel_case(
    ours: Callable[[str], tuple], key: str
) -> None:
    data, value = ours(key)
    resources = Resources()
    try:
        expected = COMPARISONS[key].reference(data, resources)()
    finally:
        resources.close()
    assert _agree(value, expected, "float64"), (key, value, expected)
