"""Ratios to peers, measured in the same benchmark run: our time / the peer's time.

Lower is better (asv flags an increase as a regression): 0.5 means xentstream takes
half the peer's time. Each ``track_`` times both sides interleaved, several rounds,
and divides the medians. The peers and their data come from ``common.CASES``, the
registry that ``asv_bench/compare.py`` prints as a table. A peer that is not installed
or has no counterpart of a case is skipped (NotImplementedError in ``setup``).

``track_read_bandwidth_fraction`` is the speed of the xentstream side as a fraction of
this machine's read bandwidth, as ``numpy.sum`` over the same bytes (the arrays, or
the file, page cache warm) shows it: numpy's time / ours (single-threaded numpy, so
a kernel running on several threads may exceed 1).
"""

from __future__ import annotations

from . import common


class _Ratios:
    unit = "ratio"
    timeout = 300.0

    def teardown(self, *params: object) -> None:
        prepared = getattr(self, "prepared", None)
        if prepared is not None:
            prepared.close()

    def _ratio(self, peer: str) -> float:
        times = common.medians(
            {"ours": self.prepared.ours, peer: self.prepared.peers[peer]}, common.repeats()
        )
        return times["ours"] / times[peer]


class InMemory(_Ratios):
    """The functional API (and streaming updates) on arrays vs numpy, torch, scikit-learn."""

    params = (common.IN_MEMORY_CASES, common.IN_MEMORY_PEERS)
    param_names = ("case", "peer")

    def setup(self, case: str, peer: str) -> None:
        self.prepared = common.prepare(case, peers=[peer])

    def track_time_ratio(self, case: str, peer: str) -> float:
        return self._ratio(peer)


class Files(_Ratios):
    """``xs.evaluate`` on a dump vs polars-native expressions, DuckDB SQL, numpy mmap."""

    params = (common.FILE_CASES, common.FILE_PEERS)
    param_names = ("case", "peer")

    def setup(self, case: str, peer: str) -> None:
        self.prepared = common.prepare(case, peers=[peer])

    def track_time_ratio(self, case: str, peer: str) -> float:
        return self._ratio(peer)


class ReadBandwidth(_Ratios):
    """Fraction of this machine's read bandwidth each case reaches."""

    params = (tuple(common.CASES),)
    param_names = ("case",)

    def setup(self, case: str) -> None:
        self.prepared = common.prepare(case, peers=[])

    def track_read_bandwidth_fraction(self, case: str) -> float:
        times = common.medians(
            {"ours": self.prepared.ours, "read": self.prepared.read}, common.repeats()
        )
        return times["read"] / times["ours"]
