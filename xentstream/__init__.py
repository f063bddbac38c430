"""xentstream: exact, streaming cross-entropy over data too big to hold at once.

Examples
--------
>>> import xentstream as xs
>>> round(xs.cross_entropy([[0.7, 0.2, 0.1]], [0]), 6)
0.356675
"""

from xentstream._errors import ColumnNames, DataError
from xentstream.comparing import GroupedComparison
from xentstream.comparison import Comparison, ComparisonReport, load
from xentstream.config import BinaryConfig, MulticlassConfig, MultilabelConfig
from xentstream.evaluation import GroupedReport, Interrupted, compare, evaluate, stream
from xentstream.functional import (
    binary_cross_entropy,
    cross_entropy,
    entropy,
    multilabel_cross_entropy,
)
from xentstream.metrics import (
    BinaryCrossEntropy,
    CrossEntropy,
    Metric,
    MultiLabelCrossEntropy,
)
from xentstream.report import Report
from xentstream.tokens import TokenConfig, TokenCrossEntropy, token_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "BinaryConfig",
    "BinaryCrossEntropy",
    "ColumnNames",
    "Comparison",
    "ComparisonReport",
    "CrossEntropy",
    "DataError",
    "GroupedComparison",
    "GroupedReport",
    "Interrupted",
    "Metric",
    "MultiLabelCrossEntropy",
    "MulticlassConfig",
    "MultilabelConfig",
    "Report",
    "TokenConfig",
    "TokenCrossEntropy",
    "binary_cross_entropy",
    "compare",
    "cross_entropy",
    "entropy",
    "evaluate",
    "load",
    "multilabel_cross_entropy",
    "stream",
    "token_cross_entropy",
]
