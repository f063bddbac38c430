"""xentstream: exact, streaming cross-entropy over data too big to hold at once.

Examples
--------
>>> import xentstream as xs
>>> round(xs.cross_entropy([[0.7, 0.2, 0.1]], [0]), 6)
0.356675
"""

from xentstream.config import BinaryConfig, MulticlassConfig, MultilabelConfig
from xentstream.functional import (
    binary_cross_entropy,
    cross_entropy,
    entropy,
    multilabel_cross_entropy,
)

__version__ = "0.1.0"

__all__ = [
    "BinaryConfig",
    "MulticlassConfig",
    "MultilabelConfig",
    "binary_cross_entropy",
    "cross_entropy",
    "entropy",
    "multilabel_cross_entropy",
]
