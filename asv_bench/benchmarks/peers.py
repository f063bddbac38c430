"""Speedups over peers, measured in the same benchmark run, and the absolute times.

Every ``track_speedup_vs_<peer>`` is the peer's time divided by xentstream's on the
same data (medians of interleaved rounds, both sides in the benchmark's process):
**higher is better**, 2.0 means xentstream takes half the peer's time and below 1.0
the peer is faster. The dashboard draws a line at 1.0 on these graphs. The absolute
times sit beside them: ``Ours.time_xentstream`` for every case and ``time_<peer>`` in
each peer's class, timed by asv itself.

asv flags every rise of a benchmark as a regression and knows no "higher is better":
on its Regressions page a drop of a speedup is listed as an improvement. Read the
``time_`` benchmarks there, and the speedups on the graphs.

The cases, their data and the peers' code come from ``tests/comparisons.py:
COMPARISONS`` (``common.CASES``), the registry that ``asv_bench/compare.py`` times too
and ``tests/test_peers.py`` checks: every peer agrees with xentstream on every case it
is timed on. A peer that is not installed is skipped
(NotImplementedError in ``setup``); JAX is timed by ``compare.py`` only, so that the
asv environments and the test suite do not need its 600 MB.

``track_read_bandwidth_fraction`` is the speed of the xentstream side as a fraction of
this machine's read bandwidth, as ``numpy.sum`` over the same bytes (the arrays, or
the file, page cache warm) shows it: numpy's time / ours (single-threaded numpy, so
a kernel running on several threads may exceed 1).
"""

from __future__ import annotations

from . import common

SPEEDUP_UNIT = "speedup (higher is better)"


class _Speedup:
    """One peer over the cases it has a counterpart of; ``peer`` is set by each subclass."""

    peer = ""
    param_names = ("case",)
    timeout = 300.0

    def setup(self, case: str) -> None:
        self.prepared = common.prepare(case, peers=[self.peer])

    def teardown(self, case: str) -> None:
        prepared = getattr(self, "prepared", None)
        if prepared is not None:
            prepared.close()

    def _speedup(self) -> float:
        times = common.medians(
            {"ours": self.prepared.ours, self.peer: self.prepared.peers[self.peer]},
            common.repeats(),
        )
        return times[self.peer] / times["ours"]

    def _time_peer(self) -> None:
        self.prepared.peers[self.peer]()


class Ours:
    """xentstream's absolute time on every comparison case (beside the speedups)."""

    params = (tuple(common.CASES),)
    param_names = ("case",)
    timeout = 300.0

    def setup(self, case: str) -> None:
        self.prepared = common.prepare(case, peers=[])

    def teardown(self, case: str) -> None:
        self.prepared.close()

    def time_xentstream(self, case: str) -> None:
        """Seconds xentstream takes on the case (lower is better)."""
        self.prepared.ours()


class VsNumpy(_Speedup):
    peer = "numpy"
    params = (common.cases_with("numpy"),)

    def track_speedup_vs_numpy(self, case: str) -> float:
        """numpy's time / xentstream's: higher is better, > 1 means xentstream is faster.

        numpy is tests/reference.py, the test suite's float64 reference (one-hot targets,
        math.fsum; written to be read, not to be fast), or np.load + it for .npy.
        """
        return self._speedup()

    track_speedup_vs_numpy.unit = SPEEDUP_UNIT

    def time_numpy(self, case: str) -> None:
        """Seconds the float64 reference (tests/reference.py) takes on the case."""
        self._time_peer()


class VsTorch(_Speedup):
    peer = "torch"
    params = (common.cases_with("torch"),)

    def track_speedup_vs_torch(self, case: str) -> float:
        """torch's time / xentstream's: higher is better, > 1 means xentstream is faster.

        torch is torch.nn.functional (cross_entropy, nll_loss, BCE) on the same arrays,
        with as many threads as numba's kernels use.
        """
        return self._speedup()

    track_speedup_vs_torch.unit = SPEEDUP_UNIT

    def time_torch(self, case: str) -> None:
        """Seconds torch.nn.functional takes on the case."""
        self._time_peer()


class VsScikitLearn(_Speedup):
    peer = "scikit-learn"
    params = (common.cases_with("scikit-learn"),)

    def track_speedup_vs_scikit_learn(self, case: str) -> float:
        """sklearn.metrics.log_loss's time / xentstream's: higher is better (> 1: we are faster)."""
        return self._speedup()

    track_speedup_vs_scikit_learn.unit = SPEEDUP_UNIT

    def time_scikit_learn(self, case: str) -> None:
        """Seconds sklearn.metrics.log_loss takes on the case."""
        self._time_peer()


class VsOneShot(_Speedup):
    peer = "one-shot"
    params = (common.cases_with("one-shot"),)

    def track_speedup_vs_one_shot(self, case: str) -> float:
        """One-shot xs.cross_entropy's time / the streaming updates': higher is better.

        1.0 means streaming in batches costs nothing over one call on all the rows.
        """
        return self._speedup()

    track_speedup_vs_one_shot.unit = SPEEDUP_UNIT


class VsTorchMean(_Speedup):
    peer = "torch-mean"
    params = (common.cases_with("torch-mean"),)

    def track_speedup_vs_torch_mean(self, case: str) -> float:
        """A torcheval-style Mean's time / CrossEntropy.update's: higher is better.

        The peer adds torch's per-row cross-entropy of each small batch to running torch
        tensors, as torcheval's Mean does with a loss.
        """
        return self._speedup()

    track_speedup_vs_torch_mean.unit = SPEEDUP_UNIT

    def time_torch_mean(self, case: str) -> None:
        """Seconds the torcheval-style Mean takes over the case's batches."""
        self._time_peer()


class VsPolars(_Speedup):
    peer = "polars"
    params = (common.cases_with("polars"),)

    def track_speedup_vs_polars(self, case: str) -> float:
        """polars' time / xs.evaluate's on the same file: higher is better (> 1: we are faster).

        polars is a lazy scan with native expressions computing the same mean loss.
        """
        return self._speedup()

    track_speedup_vs_polars.unit = SPEEDUP_UNIT

    def time_polars(self, case: str) -> None:
        """Seconds the polars query takes on the case's file."""
        self._time_peer()


class VsDuckDB(_Speedup):
    peer = "duckdb"
    params = (common.cases_with("duckdb"),)

    def track_speedup_vs_duckdb(self, case: str) -> float:
        """DuckDB's time / xs.evaluate's on the same Parquet file: higher is better."""
        return self._speedup()

    track_speedup_vs_duckdb.unit = SPEEDUP_UNIT

    def time_duckdb(self, case: str) -> None:
        """Seconds the DuckDB SQL query takes on the case's file."""
        self._time_peer()


class ReadBandwidth:
    """Fraction of this machine's read bandwidth each case reaches."""

    params = (tuple(common.CASES),)
    param_names = ("case",)
    unit = "fraction of numpy.sum's read speed (higher is better)"
    timeout = 300.0

    def setup(self, case: str) -> None:
        self.prepared = common.prepare(case, peers=[])

    def teardown(self, case: str) -> None:
        self.prepared.close()

    def track_read_bandwidth_fraction(self, case: str) -> float:
        """numpy.sum's time over the same bytes / xentstream's: higher is better."""
        times = common.medians(
            {"ours": self.prepared.ours, "read": self.prepared.read}, common.repeats()
        )
        return times["read"] / times["ours"]
