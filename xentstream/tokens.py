"""Language-model evaluation from token log-probabilities: documents, units, honest errors.

Evaluation harnesses keep, per token, the log-probability the model gave the token that
came (or its negative log-likelihood), not the vocabulary-wide logits. This module
takes such a column as its own loss kind, ``"tokens"`` (:class:`TokenConfig`): a row is
one token, its loss is ``L_i = -x_i`` (``input="logprobs"``, finite and ``<= 0``) or
``L_i = x_i`` (``input="nll"``, finite and ``>= 0``); there is no class axis, no target,
no class weights or smoothing (the multiclass options would all have to be refused),
which is why it is a kind and not an ``input=`` of the multiclass kind. A mask drops
padding rows (``mask == 0``; their values are not looked at, they count as
``ignored``), sample weights ``s_i`` weigh tokens.

Statistics (``R`` is the corpus loss, ``sum s L / sum s``)
----------------------------------------------------------
- ``perplexity = exp(R)``: the corpus perplexity, every token weighing the same
  (what lm-evaluation-harness calls ``word_perplexity``/``token_perplexity``).
- ``document_perplexity``: the unweighted mean over documents of ``exp(R_d)``,
  ``R_d = A_d / B_d`` with ``A_d = sum_{i in d} s_i L_i`` and ``B_d = sum_{i in d} s_i``:
  what Hugging Face ``evaluate``'s perplexity reports as ``mean_perplexity``. Short
  documents weigh as much as long ones; it is never below... nothing: it is just another
  average, and the two differ (Jensen: the mean of the ``exp`` is at least ``exp`` of
  the document-mean loss).
- ``stderr``: the per-token standard error (:mod:`xentstream.report`), which treats
  tokens as independent; tokens of one document are correlated, so it is too small.
- ``clustered_stderr``: the cluster-robust (sandwich) standard error of the ratio
  estimator ``R = sum_d A_d / sum_d B_d`` with documents as clusters,
  ``sqrt(G / (G - 1) * sum_d (A_d - R B_d)**2) / sum_d B_d`` over the ``G`` documents of
  positive weight (Cameron and Miller 2015, the CR1 correction). With one token a
  document and unit weights it equals ``stderr``.
- ``bits_per_unit = sum s L / (ln 2 * sum s u)`` for units ``u_i`` per row (bytes,
  characters or words a token covers; a unit count per document can sit on one of its
  rows, the others 0): bits per byte with byte counts. Its delta-method standard error
  is the same ratio formula with ``u`` for ``B``: clustered by document when documents
  are given, else with every row its own cluster (``n / (n - 1)`` over the ``n``
  counted rows), divided by ``ln 2``.

Exactness: every sum is exact (SPEC section 3), per document too; a document's rows
need not be contiguous, nor in one batch, shard or state file (a per-document exact
state keyed by the document id). The clustered sums are taken at ``compute()`` from the
per-document sums, each correctly rounded (``A_d``, ``B_d``, ``U_d``), through the
deterministic residuals ``A_d - R B_d`` whose squares are summed with ``math.fsum``:
the same bits for any split, merge order or thread count.

Examples
--------
>>> import numpy as np, xentstream as xs
>>> m = xs.TokenCrossEntropy()
>>> lp = np.log([0.5, 0.25, 0.5, 0.125])
>>> report = m.update(lp, document=[0, 0, 1, 1], units=[1, 2, 1, 1]).compute()
>>> round(report.perplexity, 6), report.documents
(3.363586, 2)
>>> round(report.bits_per_unit, 6)
1.4
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from xentstream import accumulator
from xentstream._batch import BatchSums
from xentstream._errors import DEFAULT_NAMES, ColumnNames, show
from xentstream._inputs import as_array
from xentstream._kernels import layout
from xentstream._kernels import tokens as kernels
from xentstream._kernels.exact import N_CHUNKS, N_SLOTS, normalize
from xentstream.config import LossConfig, _check_flag
from xentstream.metrics import Metric
from xentstream.report import Report, build_report

__all__ = ["INPUTS", "TokenConfig", "TokenCrossEntropy", "token_cross_entropy"]

#: Values of ``input=`` of the token kind.
INPUTS = ("logprobs", "nll")
_LN2 = math.log(2.0)
#: Per-document exact sums: ``documents[d, k]``.
DOC_LOSS = 0  # A_d = sum s L
DOC_WEIGHT = 1  # B_d = sum s
DOC_UNITS = 2  # U_d = sum s u
N_DOC_SUMS = 3
_DOC_TERMS = np.array([kernels.TERM_LOSS, kernels.TERM_WEIGHT, kernels.TERM_UNITS], np.int64)
_GROUP_TERMS = np.arange(kernels.N_TERMS, dtype=np.int64)
_WINDOW_TERMS = np.array([kernels.TERM_LOSS, kernels.TERM_WEIGHT], np.int64)
_NO_TERMS = np.empty(0, dtype=np.int64)
_EMPTY = np.empty(0, dtype=np.float64)
_EMPTY_MASK = np.empty(0, dtype=np.uint8)
_UNIT_SUM_NAMES = ("units", "unit_loss_squared", "unit_cross", "unit_squared")
_MIN_BLOCK_ROWS = 1 << 16
#: Bits below the top chunk of an accumulator row.
_TOP_SHIFT = 32 * (N_CHUNKS - 1)


# -- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenConfig(LossConfig):
    """Configuration of the token kind (module docstring): one value a row.

    ``input``: ``"logprobs"`` (target log-probabilities) or ``"nll"``; ``unit``: what
    the units count (``"byte"``, ``"character"``, ``"word"``; a label for reports);
    ``per_document``: keep the per-document table in the report.
    """

    kind: ClassVar[str] = "tokens"
    input: str = "logprobs"
    unit: str | None = None
    per_document: bool = False

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input: must be one of {list(INPUTS)}, got {self.input!r}")
        if self.eps != "auto" or self.sum_tol is not None:
            raise ValueError("eps, sum_tol: token values are not probabilities; leave them unset")
        object.__setattr__(self, "validate", _check_flag("validate", self.validate))
        if self.unit is not None and (not isinstance(self.unit, str) or not self.unit.strip()):
            raise ValueError(f"unit: must be a non-empty string or None, got {show(self.unit)}")
        object.__setattr__(self, "per_document", _check_flag("per_document", self.per_document))

    def resolve_eps(self, dtype: np.dtype) -> float:
        return 0.0


# -- one batch --------------------------------------------------------------------------------


@dataclass
class TokenBatch(BatchSums):
    """:class:`~xentstream._batch.BatchSums` of a token batch, with what tokens add.

    ``unit_sums`` (N_UNIT_SUMS, N_SLOTS); per document (when documents were given):
    ``doc_keys`` (the batch's distinct ids), ``doc_sums`` (D, N_DOC_SUMS, N_SLOTS),
    ``doc_counts`` (D, N_COUNTS); ``window`` (s L, s) of the counted rows in order;
    ``group_sums`` holds the unit sums after the common ones (N_SUMS + N_UNIT_SUMS).
    """

    unit_sums: np.ndarray | None = None
    doc_keys: list[Any] | None = None
    doc_sums: np.ndarray | None = None
    doc_counts: np.ndarray | None = None
    window: tuple[np.ndarray, np.ndarray] | None = None


def _values(preds: Any, name: str, row_offset: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The token values, flat (float32 or float64), and their shape (any: rows)."""
    array = as_array(preds, name, floating=True, row_offset=row_offset)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    return np.ascontiguousarray(array.reshape(-1)), tuple(array.shape)


def _row_column(
    value: Any, name: str, shape: tuple[int, ...], row_offset: int, *, kind: str
) -> np.ndarray:
    """A per-row side column (mask, units, weights) with the values' shape, flat."""
    array = as_array(value, name, row_offset=row_offset)
    if array.shape != shape:
        raise ValueError(f"{name}: shape {array.shape} does not match the token values {shape}")
    if kind == "mask":
        if array.dtype == np.bool_:
            return array.reshape(-1).view(np.uint8)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name}: a mask must be bool or 0/1 integers, got {array.dtype}")
        flat = array.reshape(-1)
        bad = (flat != 0) & (flat != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{name}: row {row_offset + row}: mask value {flat[row].item()!r} is not 0 or 1 "
                "(1 counts the token, 0 drops it as padding)"
            )
        return flat.astype(np.uint8)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name}: must be numeric, got {array.dtype}")
    return np.ascontiguousarray(array.reshape(-1), dtype=np.float64)


def _document_ids(document: Any, n_rows: int, name: str, row_offset: int) -> np.ndarray:
    """Document ids of a batch as a flat numpy array of integers or strings."""
    if type(document).__module__.split(".", 1)[0] == "polars":
        if document.null_count():
            row = int(document.is_null().arg_max())
            raise ValueError(
                f"{name}: row {row_offset + row}: value is null; nulls are not allowed"
            )
        ids = document.to_numpy()
    elif isinstance(document, list | tuple):
        ids = np.asarray(document, dtype=object)
        if ids.ndim == 1 and all(isinstance(v, int | np.integer) for v in document):
            ids = np.asarray(document, dtype=np.int64)
    else:
        ids = as_array(document, name, row_offset=row_offset)
    ids = ids.reshape(-1) if ids.ndim > 1 else ids
    if ids.shape != (n_rows,):
        raise ValueError(f"{name}: {ids.shape[0]} document ids for {n_rows} token values")
    if ids.dtype.kind in "iu":
        return ids
    if ids.dtype.kind == "U":
        return ids.astype(object)
    if ids.dtype.kind == "O":
        for row, value in enumerate(ids.tolist()):
            if value is None:
                raise ValueError(
                    f"{name}: row {row_offset + row}: value is null; nulls are not allowed"
                )
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise TypeError(
                    f"{name}: row {row_offset + row}: document id {show(value)} is neither an "
                    "integer nor a string"
                )
        return ids
    raise TypeError(f"{name}: document ids must be integers or strings, got {ids.dtype}")


def _code_sums(terms: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Exact sums of the ``terms`` columns per code (rows of a code anywhere)."""
    order = np.argsort(codes, kind="stable").astype(np.int64)
    starts = np.zeros(n_codes + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=n_codes), out=starts[1:])
    out = np.zeros((n_codes, terms.shape[1], N_SLOTS), dtype=np.int64)
    kernels.code_sums(terms, order, starts, out)
    normalize(out.reshape(-1, N_SLOTS))
    return out


def _block_count(n_rows: int) -> int:
    import numba

    return max(1, min(n_rows // _MIN_BLOCK_ROWS, 4 * numba.get_num_threads()))


def token_batch(
    config: TokenConfig,
    preds: Any,
    mask: Any = None,
    sample_weight: Any = None,
    *,
    document: Any = None,
    units: Any = None,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
    keep_window: bool = False,
    row_offset: int = 0,
    names: ColumnNames = DEFAULT_NAMES,
    document_name: str = "document",
    units_name: str = "units",
) -> TokenBatch:
    """Exact sums of one batch of token values (the token kind's single update path).

    Raises the first bad row's ``ValueError`` (its stream offset, the column, the rule).
    """
    values, shape = _values(preds, names.preds, row_offset)
    if names.target == DEFAULT_NAMES.target:  # the mask takes the target's place
        names = replace(names, target="mask")
    n_rows = values.shape[0]
    mask_array = (
        _EMPTY_MASK
        if mask is None
        else _row_column(mask, names.target, shape, row_offset, kind="mask")
    )
    weights = (
        _EMPTY
        if sample_weight is None
        else _row_column(sample_weight, names.sample_weight, shape, row_offset, kind="weights")
    )
    unit_array = (
        _EMPTY if units is None else _row_column(units, units_name, shape, row_offset, kind="units")
    )
    ids = None if document is None else _document_ids(document, n_rows, document_name, row_offset)
    codes = None
    if groups is not None:
        codes = np.asarray(groups, dtype=np.int64).reshape(-1)
        if codes.shape[0] != n_rows or (n_rows and (codes.min() < 0 or codes.max() >= n_groups)):
            raise ValueError(f"by: group codes must be one per row in [0, {n_groups})")
    columns = _NO_TERMS
    if groups is not None:
        columns = _GROUP_TERMS
    elif ids is not None:
        columns = _DOC_TERMS
    elif keep_window:
        columns = _WINDOW_TERMS
    n_blocks = _block_count(n_rows)
    sums = accumulator.empty(n_blocks, layout.N_SUMS)
    unit_sums = accumulator.empty(n_blocks, kernels.N_UNIT_SUMS)
    counts = np.zeros((n_blocks, layout.N_COUNTS), dtype=np.int64)
    terms = np.empty((n_rows if columns.size else 0, columns.size), dtype=np.float64)
    errors = np.full((n_blocks, 3), -1, dtype=np.int64)
    error_values = np.zeros(n_blocks, dtype=np.float64)
    if n_rows:
        kernels.token_sums(
            values,
            mask_array,
            weights,
            unit_array,
            config.input == "nll",
            config.validate,
            columns,
            sums,
            unit_sums,
            counts,
            terms,
            errors,
            error_values,
        )
    failed = np.flatnonzero(errors[:, 0] >= 0)
    if failed.size:
        first = failed[np.argmin(errors[failed, 0])]
        raise token_error(
            int(errors[first, 1]),
            int(errors[first, 0]),
            float(error_values[first]),
            names=names,
            row_offset=row_offset,
            units_name=units_name,
        )
    total = accumulator.empty(layout.N_SUMS)
    total_units = accumulator.empty(kernels.N_UNIT_SUMS)
    normalize(sums.reshape(-1, N_SLOTS))
    normalize(unit_sums.reshape(-1, N_SLOTS))
    accumulator.merge_into(total, sums.sum(axis=0))
    accumulator.merge_into(total_units, unit_sums.sum(axis=0))
    batch = TokenBatch(
        sums=total,
        counts=counts.sum(axis=0),
        class_sums=None,
        class_counts=None,
        row_losses=None,
        n_classes=1,
        unit_sums=total_units,
    )
    counted = np.ones(n_rows, dtype=bool) if mask is None else mask_array.astype(bool)
    if codes is not None:
        group_terms = _code_sums(terms, codes, n_groups)  # all terms: common + unit sums
        batch.group_sums = _group_layout(group_terms)
        batch.group_counts = _per_code_counts(codes, counted, n_groups)
    if ids is not None and n_rows:
        keys, inverse = np.unique(ids, return_inverse=True)
        # Every layout of the terms has a document's three columns in order, from 0.
        doc_terms = terms if codes is None else np.ascontiguousarray(terms[:, _DOC_TERMS])
        batch.doc_keys = [k if isinstance(k, str) else int(k) for k in keys.tolist()]
        batch.doc_sums = _code_sums(doc_terms, inverse.reshape(-1), len(keys))
        batch.doc_counts = _per_code_counts(inverse.reshape(-1), counted, len(keys))
    if keep_window and n_rows:
        # s L and s are the first two columns of every layout of the terms.
        batch.window = (terms[counted, 0], terms[counted, 1])
    return batch


def _group_layout(group_terms: np.ndarray) -> np.ndarray:
    """Per-code term sums (G, N_TERMS, N_SLOTS) as (G, N_SUMS + N_UNIT_SUMS, N_SLOTS)."""
    out = accumulator.empty(group_terms.shape[0], layout.N_SUMS + kernels.N_UNIT_SUMS)
    out[:, layout.LOSS] = group_terms[:, kernels.TERM_LOSS]
    out[:, layout.DENOMINATOR] = group_terms[:, kernels.TERM_WEIGHT]
    out[:, layout.WEIGHT] = group_terms[:, kernels.TERM_WEIGHT]
    out[:, layout.LOSS_SQUARED] = group_terms[:, kernels.TERM_LOSS_SQUARED]
    out[:, layout.DENOMINATOR_SQUARED] = group_terms[:, kernels.TERM_WEIGHT_SQUARED]
    base = layout.N_SUMS
    out[:, base + kernels.UNITS] = group_terms[:, kernels.TERM_UNITS]
    out[:, base + kernels.UNIT_LOSS_SQUARED] = group_terms[:, kernels.TERM_UNIT_LOSS_SQUARED]
    out[:, base + kernels.UNIT_CROSS] = group_terms[:, kernels.TERM_UNIT_CROSS]
    out[:, base + kernels.UNIT_SQUARED] = group_terms[:, kernels.TERM_UNIT_SQUARED]
    return out


def _per_code_counts(codes: np.ndarray, counted: np.ndarray, n_codes: int) -> np.ndarray:
    out = np.zeros((n_codes, layout.N_COUNTS), dtype=np.int64)
    out[:, layout.ROWS] = np.bincount(codes[counted], minlength=n_codes)
    out[:, layout.IGNORED] = np.bincount(codes[~counted], minlength=n_codes)
    return out


def token_error(
    code: int,
    row: int,
    value: float,
    *,
    names: ColumnNames,
    row_offset: int,
    units_name: str = "units",
) -> ValueError:
    """The ``ValueError`` of one token kernel error record (the row as a stream offset)."""
    where = f"row {row_offset + row}"
    if code == layout.PRED_NAN:
        rule = "token value is NaN; token values must be finite"
    elif code == layout.PRED_POS_INF:
        rule = "token value is +inf; token values must be finite"
    elif code == layout.PRED_POSITIVE_LOGPROB:
        rule = (
            f"log-probability {value!r} is positive; log-probabilities must be <= 0 "
            "(pass input='nll' for token negative log-likelihoods)"
        )
    elif code == layout.PRED_NEG_INF:
        rule = "log-probability is -inf (the token had probability 0); it must be finite"
    elif code == layout.PRED_NEGATIVE_NLL:
        rule = (
            f"negative log-likelihood {value!r} is negative; it must be >= 0 "
            "(pass input='logprobs' for token log-probabilities)"
        )
    elif code == layout.SAMPLE_WEIGHT_INVALID:
        return ValueError(
            f"{names.sample_weight}: {where}: weight {value!r} is invalid; "
            "sample weights must be finite and >= 0"
        )
    elif code == layout.UNITS_INVALID:
        return ValueError(
            f"{units_name}: {where}: units {value!r} are invalid; units (bytes, characters, "
            "words) must be finite and >= 0"
        )
    elif code == layout.MASK_INVALID:
        return ValueError(f"{names.target}: {where}: mask value {value!r} is not 0 or 1")
    else:
        rule = f"invalid input (kernel error code {code})"
    return ValueError(f"{names.preds}: {where}: {rule}")


# -- exact values, fast ----------------------------------------------------------------------


_UNIT = 1 << 1075


def _row_integer(row: np.ndarray) -> int:
    """:func:`accumulator.exact_integer` of a normalized row, with one ``from_bytes``."""
    low = row[: N_CHUNKS - 1].astype("<u4").tobytes()
    return int.from_bytes(low, "little") + (int(row[N_CHUNKS - 1]) << _TOP_SHIFT)


def _values_of(acc: np.ndarray) -> np.ndarray:
    """Correctly rounded float64 values of normalized accumulator rows ``(..., N_SLOTS)``."""
    flat = acc.reshape(-1, N_SLOTS)
    out = np.zeros(flat.shape[0], dtype=np.float64)
    special = flat[:, N_CHUNKS:].any(axis=1)
    for index in np.flatnonzero(flat[:, :N_CHUNKS].any(axis=1) | special):
        if special[index]:
            out[index] = accumulator.to_float(flat[index])
            continue
        total = _row_integer(flat[index])
        try:
            out[index] = total / _UNIT
        except OverflowError:
            out[index] = math.inf if total > 0 else -math.inf
    return out.reshape(acc.shape[:-1])


# -- statistics --------------------------------------------------------------------------------


def _ratio_stderr(
    numerators: np.ndarray, denominators: np.ndarray, ratio: float, total: float
) -> float | None:
    """Cluster-robust standard error of ``ratio = sum numerators / sum denominators``:
    ``sqrt(G / (G - 1) * fsum((a - ratio b)**2)) / total`` over the ``G`` clusters."""
    clusters = numerators.shape[0]
    if clusters < 2 or not total > 0.0 or not math.isfinite(ratio):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        residuals = numerators - ratio * denominators
        squares = residuals * residuals
    spread = math.fsum(squares.tolist())
    if not math.isfinite(spread):
        return math.inf if spread == math.inf else None
    return math.sqrt(clusters / (clusters - 1) * spread) / total


def _row_ratio_stderr(sums: np.ndarray, unit_sums: np.ndarray, rows: int) -> float | None:
    """Delta-method standard error of ``sum s L / sum s u``, every row its own cluster,
    from the exact sums of (s L)^2, (s L)(s u), (s u)^2, in exact integers."""
    slots = (
        sums[layout.LOSS],
        unit_sums[kernels.UNITS],
        unit_sums[kernels.UNIT_LOSS_SQUARED],
        unit_sums[kernels.UNIT_CROSS],
        unit_sums[kernels.UNIT_SQUARED],
    )
    if rows < 2 or any(row[N_CHUNKS:].any() for row in slots):
        return None
    loss, units, square, cross, unit_square = (accumulator.exact_integer(row) for row in slots)
    if units <= 0:
        return None
    # sum (sL - R su)^2 with R = loss / units, times units^2, over units^4, in units of
    # 2**-1075 for each sum: exact until the one division.
    spread = square * units * units - 2 * loss * units * cross + loss * loss * unit_square
    try:
        variance = rows / (rows - 1) * ((max(spread, 0) << 1075) / units**4)
    except OverflowError:
        return math.inf
    return math.sqrt(variance)


def token_statistics(
    sums: np.ndarray,
    unit_sums: np.ndarray,
    counts: np.ndarray,
    documents: tuple[list[Any], np.ndarray, np.ndarray] | None,
    *,
    per_document: bool,
) -> dict[str, Any]:
    """The language-model :class:`~xentstream.Report` fields (module docstring).

    ``documents``: (keys, correctly rounded per-document sums (D, N_DOC_SUMS), counts
    (D, N_COUNTS)), or None without documents.
    """
    loss = accumulator.ratio(sums[layout.LOSS], sums[layout.DENOMINATOR])
    total_units = accumulator.to_float(unit_sums[kernels.UNITS])
    out: dict[str, Any] = {
        "perplexity": _exp(loss),
        "units": total_units if total_units else None,
    }
    unit_ratio = None
    if total_units > 0.0:
        unit_ratio = accumulator.ratio(sums[layout.LOSS], unit_sums[kernels.UNITS])
        out["bits_per_unit"] = unit_ratio / _LN2
    if documents is None:
        if unit_ratio is not None:
            error = _row_ratio_stderr(sums, unit_sums, int(counts[layout.ROWS]))
            out["bits_per_unit_stderr"] = None if error is None else error / _LN2
        return out
    keys, values, doc_counts = documents
    weight = values[:, DOC_WEIGHT]
    present = weight > 0.0  # documents of positive weight: the clusters
    out["documents"] = int(np.count_nonzero(doc_counts[:, layout.ROWS]))
    a, b, u = values[present, DOC_LOSS], weight[present], values[present, DOC_UNITS]
    total = accumulator.to_float(sums[layout.DENOMINATOR])
    out["clustered_stderr"] = _ratio_stderr(a, b, loss, total)
    if a.size:
        with np.errstate(over="ignore"):
            out["document_perplexity"] = math.fsum(np.exp(a / b).tolist()) / a.size
    if unit_ratio is not None:
        error = _ratio_stderr(a, u, unit_ratio, total_units)
        out["bits_per_unit_stderr"] = None if error is None else error / _LN2
    if per_document:
        out["per_document"] = _document_frame(keys, values, doc_counts)
    return out


def _exp(loss: float) -> float:
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < 709.0 else math.inf


def _document_frame(keys: list[Any], values: np.ndarray, counts: np.ndarray) -> Any:
    import polars as pl

    order = list(range(len(keys)))
    try:
        order.sort(key=keys.__getitem__)
    except TypeError:  # integer and string ids together: first appearance
        pass
    index = np.array(order, dtype=np.int64)
    a, b, u = (values[index, k] for k in (DOC_LOSS, DOC_WEIGHT, DOC_UNITS))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        loss = np.where(b > 0.0, a / np.where(b > 0.0, b, 1.0), np.nan)
        bits = np.where(u > 0.0, a / np.where(u > 0.0, u, 1.0) / _LN2, np.nan)
        perplexity = np.exp(loss)
    return pl.DataFrame(
        {
            "document": pl.Series([keys[i] for i in order], strict=False),
            "tokens": counts[index, layout.ROWS],
            "ignored": counts[index, layout.IGNORED],
            "loss": loss,
            "perplexity": perplexity,
            "units": u,
            "bits_per_unit": bits,
        }
    )


# -- the metric ------------------------------------------------------------------------------


class _Documents:
    """Exact per-document state keyed by document id (first appearance order)."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.index: dict[Any, int] = {}
        self.sums = accumulator.empty(0, N_DOC_SUMS)
        self.counts = np.zeros((0, layout.N_COUNTS), dtype=np.int64)
        self._values = np.zeros((0, N_DOC_SUMS))
        self._fresh = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.keys)

    def _codes(self, keys: list[Any]) -> np.ndarray:
        codes = np.empty(len(keys), dtype=np.int64)
        for position, key in enumerate(keys):
            code = self.index.get(key)
            if code is None:
                code = self.index[key] = len(self.keys)
                self.keys.append(key)
            codes[position] = code
        if len(self.keys) > self.sums.shape[0]:
            capacity = max(len(self.keys), 2 * self.sums.shape[0], 16)
            self.sums = _grown(self.sums, capacity)
            self.counts = _grown(self.counts, capacity)
            self._values = _grown(self._values, capacity)
            self._fresh = _grown(self._fresh, capacity)
        return codes

    def add(self, keys: list[Any], sums: np.ndarray, counts: np.ndarray) -> None:
        """Add per-document sums (exact) for ``keys``; new keys are appended."""
        codes = self._codes(keys)
        held = self.sums[codes]
        accumulator.merge_into(held, sums)
        self.sums[codes] = held
        self.counts[codes] += counts
        self._fresh[codes] = False

    def values(self) -> np.ndarray:
        """Correctly rounded per-document sums (D, N_DOC_SUMS); only changed ones recomputed."""
        n = len(self.keys)
        stale = np.flatnonzero(~self._fresh[:n])
        if stale.size:
            self._values[stale] = _values_of(self.sums[stale])
            self._fresh[stale] = True
        return self._values[:n]

    def copy(self) -> _Documents:
        twin = _Documents()
        twin.keys = list(self.keys)
        twin.index = dict(self.index)
        n = len(self.keys)
        twin.sums = self.sums[:n].copy()
        twin.counts = self.counts[:n].copy()
        twin._values = self._values[:n].copy()
        twin._fresh = self._fresh[:n].copy()
        return twin

    def to_json(self) -> list[Any]:
        n = len(self.keys)
        return [
            {
                "key": key,
                "sums": dict(
                    zip(("loss", "weight", "units"), accumulator.to_json(sums), strict=True)
                ),
                "counts": [int(c) for c in counts],
            }
            for key, sums, counts in zip(self.keys, self.sums[:n], self.counts[:n], strict=True)
        ]

    @classmethod
    def from_json(cls, data: Any) -> _Documents:
        if not isinstance(data, list):
            raise ValueError("documents: must be a list of {key, sums, counts}")
        documents = cls()
        keys, sums, counts = [], [], []
        for entry in data:
            if not (isinstance(entry, dict) and set(entry) == {"key", "sums", "counts"}):
                raise ValueError("documents: every entry must be {key, sums, counts}")
            key = entry["key"]
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ValueError(f"documents: key {show(key)} is neither an integer nor a string")
            if key in documents.index or key in keys:
                raise ValueError(f"documents: key {show(key)} appears twice")
            parts = entry["sums"]
            if not isinstance(parts, dict) or set(parts) != {"loss", "weight", "units"}:
                raise ValueError("documents: sums must be {loss, weight, units}")
            sums.append(
                accumulator.from_json([parts[k] for k in ("loss", "weight", "units")], (3,))
            )
            row = entry["counts"]
            if not (
                isinstance(row, list)
                and len(row) == layout.N_COUNTS
                and all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 63 for c in row
                )
            ):
                raise ValueError("documents: counts must be [rows, ignored], integers >= 0")
            counts.append(row)
            keys.append(key)
        if keys:
            documents.add(keys, np.stack(sums), np.array(counts, dtype=np.int64))
        return documents


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


class TokenCrossEntropy(Metric):
    """Streaming language-model evaluation from token log-probabilities (or NLLs).

    Parameters
    ----------
    input : {"logprobs", "nll"}
        What a row holds: the target token's log-probability (``<= 0``) or its negative
        log-likelihood (``>= 0``).
    unit : str, optional
        What ``units`` count (``"byte"``, ``"character"``, ``"word"``), for reports.
    per_document : bool
        Also report the per-document table (``Report.per_document``).
    validate : bool
        Value checks (the mask check always runs).
    window : int, optional
        Also report the loss over the last ``window`` counted tokens.

    Notes
    -----
    ``update(values, mask=None, sample_weight=None, *, document=None, units=None)``:
    ``mask`` (bool or 0/1, the target slot of the other metrics) drops padding rows;
    ``document`` ids (integers or strings; contiguous or not, across batches too) give
    the per-document statistics and the clustered standard error, and once a metric
    has rows, either every batch has them or none; ``units`` per row give bits per unit.
    Formulas: :mod:`xentstream.tokens`.

    Examples
    --------
    >>> import xentstream as xs
    >>> m = xs.TokenCrossEntropy(input="nll", unit="byte")
    >>> r = m.update([0.5, 1.0, 2.0], document=["a", "a", "b"], units=[1, 1, 2]).compute()
    >>> round(r.loss, 6), r.documents, round(r.bits_per_unit, 6)
    (1.166667, 2, 1.262358)
    """

    config_class = TokenConfig
    #: ``evaluate``'s side columns this metric takes, and its target (the mask) is optional.
    side_arguments: ClassVar[tuple[str, ...]] = ("document", "units")
    target_optional: ClassVar[bool] = True
    _extra_state_keys: ClassVar[tuple[str, ...]] = ("unit_sums", "documents")

    def __init__(
        self,
        *,
        input: str = "logprobs",
        unit: str | None = None,
        per_document: bool = False,
        validate: bool = True,
        engine: str = "auto",
        window: int | None = None,
    ) -> None:
        config = TokenConfig(input=input, unit=unit, per_document=per_document, validate=validate)
        if engine == "cuda":
            raise ValueError("engine: the token kind runs on the CPU (one value a row)")
        super().__init__(config, engine=engine, window=window)

    def reset(self) -> TokenCrossEntropy:
        with self._lock:
            super().reset()
            self._unit_sums = accumulator.empty(kernels.N_UNIT_SUMS)
            self._documents: _Documents | None = None
        return self

    def update(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        document: Any = None,
        units: Any = None,
        names: ColumnNames = DEFAULT_NAMES,
    ) -> TokenCrossEntropy:
        """Add one batch of token values (``target`` is the optional mask). Atomic."""
        self._update_batch(
            preds, target, sample_weight, names=names, document=document, units=units
        )
        return self

    def forward(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        document: Any = None,
        units: Any = None,
    ) -> float:
        """Add one batch and return its mean loss (as :meth:`Metric.forward`)."""
        batch = self._update_batch(preds, target, sample_weight, document=document, units=units)
        return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])

    __call__ = forward

    def _update_batch(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        groups: np.ndarray | None = None,
        n_groups: int = 1,
        row_offset: int | None = None,
        document: Any = None,
        units: Any = None,
        document_name: str = "document",
        units_name: str = "units",
    ) -> TokenBatch:
        with self._lock:
            offset = self.rows_seen if row_offset is None else row_offset
            batch = token_batch(
                self.config,
                preds,
                target,
                sample_weight,
                document=document,
                units=units,
                groups=groups,
                n_groups=n_groups,
                keep_window=self._window is not None,
                row_offset=offset,
                names=names,
                document_name=document_name,
                units_name=units_name,
            )
            if not batch.n_rows:
                return batch
            with_documents = batch.doc_keys is not None
            if self.rows_seen and with_documents != (self._documents is not None):
                raise ValueError(
                    f"{document_name}: "
                    + (
                        "this batch has document ids but the rows before it had none"
                        if with_documents
                        else "the rows before had document ids; every batch needs them"
                    )
                )
            accumulator.merge_into(self._sums, batch.sums)
            accumulator.merge_into(self._unit_sums, batch.unit_sums)
            self._counts += batch.counts
            if with_documents:
                if self._documents is None:
                    self._documents = _Documents()
                self._documents.add(batch.doc_keys, batch.doc_sums, batch.doc_counts)
            if self._window is not None and batch.window is not None:
                self._window.extend(*batch.window)
        return batch

    def _absorb_group_sums(
        self, sums: np.ndarray, counts: np.ndarray, label_counts: np.ndarray | None = None
    ) -> None:
        with self._lock:
            accumulator.merge_into(self._sums, sums[: layout.N_SUMS])
            accumulator.merge_into(self._unit_sums, sums[layout.N_SUMS :])
            self._counts += counts

    def compute(self) -> Report:
        """The :class:`~xentstream.Report` with the language-model fields (idempotent)."""
        with self._lock:
            report = build_report(
                kind="tokens",
                sums=self._sums,
                counts=self._counts,
                class_sums=None,
                class_counts=None,
                unweighted=False,
                window_loss=self._window.loss() if self._window is not None else None,
            )
            documents = None
            if self._documents is not None:
                docs = self._documents
                documents = (docs.keys, docs.values(), docs.counts[: len(docs)])
            extra = token_statistics(
                self._sums,
                self._unit_sums,
                self._counts,
                documents,
                per_document=self.config.per_document,
            )
        return replace(report, accuracy=None, entropy=None, unit=self.config.unit, **extra)

    # -- extra state: unit sums and documents ---------------------------------------------

    def _extra_snapshot(self) -> Any:
        return (
            self._unit_sums.copy(),
            None if self._documents is None else self._documents.copy(),
            self.rows_seen,
        )

    def _check_extra_mergeable(self, extra: Any) -> None:
        _, documents, rows = extra
        if rows and self.rows_seen and (documents is None) != (self._documents is None):
            raise ValueError("merge: one state has document ids and the other has none")

    def _merge_extra(self, extra: Any) -> None:
        unit_sums, documents, _ = extra
        accumulator.merge_into(self._unit_sums, unit_sums)
        if documents is not None and len(documents):
            if self._documents is None:
                self._documents = _Documents()
            n = len(documents)
            self._documents.add(documents.keys, documents.sums[:n], documents.counts[:n])

    def _extra_state(self) -> dict[str, Any]:
        return {
            "unit_sums": dict(
                zip(_UNIT_SUM_NAMES, accumulator.to_json(self._unit_sums), strict=True)
            ),
            "documents": None if self._documents is None else self._documents.to_json(),
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        unit_sums = state["unit_sums"]
        if not isinstance(unit_sums, dict) or set(unit_sums) != set(_UNIT_SUM_NAMES):
            raise ValueError(f"unit_sums must be an object with the keys {list(_UNIT_SUM_NAMES)}")
        self._unit_sums = accumulator.from_json(
            [unit_sums[k] for k in _UNIT_SUM_NAMES], (kernels.N_UNIT_SUMS,)
        )
        documents = state["documents"]
        self._documents = None if documents is None else _Documents.from_json(documents)
        if self._documents is not None:
            held = self._documents.counts[: len(self._documents)].sum(axis=0)
            if not np.array_equal(held, self._counts):
                raise ValueError(
                    f"documents: hold {held.tolist()} rows (counted, ignored), but counts "
                    f"are {self._counts.tolist()}"
                )


def token_cross_entropy(
    preds: Any,
    mask: Any = None,
    *,
    input: str = "logprobs",
    sample_weight: Any = None,
    validate: bool = True,
    reduction: str = "mean",
) -> float:
    """Mean (or sum) loss of token values: ``-x`` for log-probabilities, ``x`` for NLLs.

    ``mask`` (bool or 0/1) drops padding rows. ``reduction="mean"``: ``sum s L / sum s``
    (exact, correctly rounded); ``"sum"``: ``sum s L``.

    Examples
    --------
    >>> import math, xentstream as xs
    >>> xs.token_cross_entropy([math.log(0.5), math.log(0.25)]) == math.log(8) / 2
    True
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: must be 'mean' or 'sum', got {reduction!r}")
    config = TokenConfig(input=input, validate=validate)
    batch = token_batch(config, preds, mask, sample_weight)
    if reduction == "sum":
        return accumulator.to_float(batch.sums[layout.LOSS])
    return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])
