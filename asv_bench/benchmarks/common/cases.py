"""The comparison cases, made ready to time: data built, peers set up, resources owned.

The cases themselves (data, xentstream's call, each peer's call) are
``tests/comparisons.py: COMPARISONS``; :func:`prepare` builds one of them at the
benchmark's sizes, in a temp dir of its own, with the peers a benchmark asks for.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .measure import as_words, read_reference
from .shared import comparisons
from .sizes import sizes

CASES = comparisons.COMPARISONS
PEERS = comparisons.PEERS


@dataclass
class Prepared:
    """A case ready to time: xentstream's callable, each peer's, and the bytes they read."""

    ours: Callable[[], Any]
    peers: dict[str, Callable[[], Any]]
    buffers: list[np.ndarray]
    resources: comparisons.Resources = field(default_factory=comparisons.Resources)
    #: Calls of the measured operation in one call of each side (``CaseData.calls``).
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
    wanted = tuple(spec.peers) if peers is None else tuple(peers)
    for name in wanted:
        if name not in spec.peers:
            raise NotImplementedError(f"{name} has no counterpart of {case}")
        if peers is not None and not PEERS[name].available():
            raise NotImplementedError(f"{name} is not installed")
    chosen = [name for name in wanted if PEERS[name].available()]
    resources = comparisons.Resources()
    directory = Path(tempfile.mkdtemp(prefix="xentstream-bench-"))
    resources.actions.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    try:
        data = spec.data(sizes(n_elements), directory)
        prepared = Prepared(
            spec.xentstream(data, resources),
            {name: spec.peers[name](data, resources) for name in chosen},
            _buffers(data),
            resources,
            calls=data.calls,
        )
        if warm:
            prepared.warm()
    except BaseException:
        resources.close()
        raise
    return prepared


def _buffers(data: comparisons.CaseData) -> list[np.ndarray]:
    """The bytes a case reads: its dump's files (memory-mapped) or its arrays."""
    if data.files:
        return [as_words(np.memmap(f, dtype=np.uint8, mode="r")) for f in data.files]
    assert data.preds is not None and data.target is not None
    return [data.preds, data.target]
