"""The token kind's batch layer, exact state and statistics (:mod:`xentstream.tokens`).

One batch of token values through :func:`~xentstream._kernels.tokens.token_sums`
(:func:`token_batch`, the kind's batch function), the per-document exact state keyed by
document id (:class:`TokenState`, the kind's :class:`~xentstream.accumulator.ExactState`),
and the language-model report fields derived from it (:func:`token_report_fields`).
The formulas are in :mod:`xentstream.tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numba
import numpy as np

from xentstream import accumulator
from xentstream._batch import BatchSums
from xentstream._errors import DEFAULT_NAMES, ColumnNames, show
from xentstream._inputs import as_array
from xentstream._kernels import layout
from xentstream._kernels import tokens as kernels
from xentstream._kernels.exact import N_CHUNKS, N_SLOTS, normalize
from xentstream.accumulator import ExactState
from xentstream.config import TokenConfig

__all__ = [
    "TokenBatch",
    "TokenState",
    "token_batch",
    "token_error",
    "token_paired_fields",
    "token_report_fields",
]

_LN2 = math.log(2.0)
#: Per-document exact sums: ``sums[d, k]``.
DOC_LOSS = 0  # A_d = sum s L
DOC_WEIGHT = 1  # B_d = sum s
DOC_UNITS = 2  # U_d = sum s u
N_DOC_SUMS = 3
_DOC_SUM_NAMES = ("loss", "weight", "units")
_DOC_TERMS = np.array([kernels.TERM_LOSS, kernels.TERM_WEIGHT, kernels.TERM_UNITS], np.int64)
_GROUP_TERMS = np.arange(kernels.N_TERMS, dtype=np.int64)
_WINDOW_TERMS = np.array([kernels.TERM_LOSS, kernels.TERM_WEIGHT], np.int64)
_NO_TERMS = np.empty(0, dtype=np.int64)
_IN_ORDER = np.empty(0, dtype=np.int64)
_EMPTY = np.empty(0, dtype=np.float64)
_EMPTY_MASK = np.empty(0, dtype=np.uint8)
_UNIT_SUM_NAMES = ("units", "unit_loss_squared", "unit_cross", "unit_squared")
#: Rows a block of the kernel takes at least (fewer: zeroing blocks costs more).
_MIN_BLOCK_ROWS = 1 << 14
#: Bits below the top chunk of an accumulator row.
_TOP_SHIFT = 32 * (N_CHUNKS - 1)


# -- one batch --------------------------------------------------------------------------------


@dataclass
class TokenBatch(BatchSums):
    """:class:`~xentstream._batch.BatchSums` of a token batch, with what tokens add.

    ``unit_sums`` (N_UNIT_SUMS, N_SLOTS); per document (when documents were given):
    ``doc_keys`` (the batch's distinct ids), ``doc_sums`` (D, N_DOC_SUMS, N_SLOTS),
    ``doc_counts`` (D, N_COUNTS); ``window`` (s L, s) of the counted rows in order;
    ``group_sums`` holds the unit sums after the common ones (N_SUMS + N_UNIT_SUMS);
    ``group_documents`` each group's per-document sums (groups and documents given).
    """

    unit_sums: np.ndarray | None = None
    doc_keys: list[Any] | None = None
    doc_sums: np.ndarray | None = None
    doc_counts: np.ndarray | None = None
    window: tuple[np.ndarray, np.ndarray] | None = None
    #: With groups and documents: group code -> (keys, sums, counts) of its documents.
    group_documents: dict[int, tuple[list[Any], np.ndarray, np.ndarray]] | None = None


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


def _segments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, keys): ``values[order]`` sorted, key ``k`` on the rows
    ``order[starts[k]:starts[k + 1]]``. Sorted integer ids (contiguous documents, the
    usual dump) skip the sort: ``order`` is then empty (the rows in order)."""
    n = values.shape[0]
    if values.dtype.kind in "iu" and (n < 2 or bool(np.all(values[1:] >= values[:-1]))):
        order, ordered = _IN_ORDER, values
    else:
        order = np.argsort(values, kind="stable").astype(np.int64, copy=False)
        ordered = values[order]
    change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], change, [n])).astype(np.int64)
    return order, starts, ordered[starts[:-1]]


def _segment_sums(
    terms: np.ndarray, counted: np.ndarray, order: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sums of the ``terms`` columns and the (counted, ignored) rows per segment."""
    out = np.zeros((starts.shape[0] - 1, terms.shape[1], N_SLOTS), dtype=np.int64)
    kernels.code_sums(terms, order, starts, out)
    normalize(out.reshape(-1, N_SLOTS))
    counts = np.zeros((starts.shape[0] - 1, layout.N_COUNTS), dtype=np.int64)
    in_order = counted if order.size == 0 else counted[order]
    counts[:, layout.ROWS] = np.add.reduceat(in_order.astype(np.int64), starts[:-1])
    counts[:, layout.IGNORED] = np.diff(starts) - counts[:, layout.ROWS]
    return out, counts


def _block_count(n_rows: int) -> int:
    """Blocks of rows for one kernel call (any choice gives the same bits)."""
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
    keep_rows: bool = False,
    with_entropy: bool = False,
    row_offset: int = 0,
    names: ColumnNames = DEFAULT_NAMES,
    engine: str = "auto",
    document_name: str = "document",
    units_name: str = "units",
    keep_terms: bool = False,
) -> TokenBatch:
    """Exact sums of one batch of token values: the token kind's batch function.

    ``mask`` takes the target's place (bool or 0/1; 0 drops a row). ``document``: an id
    per row (integers or strings), for per-document sums; ``units``: per-row unit
    counts. ``keep_rows`` / ``keep_terms``: the (s L, s) pairs of the counted rows,
    for a window (``TokenBatch.window``); ``keep_rows`` also every row's loss ``L``
    (``row_losses``; masked rows 0.0, see :func:`token_row_denominators`), for a
    paired comparison.
    ``with_entropy`` is unused (token values carry no distribution); the kernel runs
    on the CPU (``engine="cuda"`` is refused: one value a row gains nothing there).

    Raises the first bad row's ``ValueError`` (its stream offset, the column, the rule).
    """
    if engine == "cuda":
        raise ValueError("engine: token values are evaluated on the CPU (engine='cpu')")
    keep_window = keep_rows or keep_terms
    values, shape = _values(preds, names.preds, row_offset)
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
        batch.group_sums = accumulator.empty(n_groups, layout.N_SUMS + kernels.N_UNIT_SUMS)
        batch.group_counts = np.zeros((n_groups, layout.N_COUNTS), dtype=np.int64)
        if n_rows:  # all the terms: the common sums and the unit sums, per group
            order, starts, present = _segments(codes)
            group_terms, group_counts = _segment_sums(terms, counted, order, starts)
            batch.group_sums[present] = _group_layout(group_terms)
            batch.group_counts[present] = group_counts
    if ids is not None and n_rows:
        try:
            order, starts, keys = _segments(ids)
        except TypeError:  # ids that do not compare: integers and strings together
            raise TypeError(
                f"{document_name}: document ids mix integers and strings; use one type"
            ) from None
        # Every layout of the terms has a document's three columns in order, from 0.
        doc_terms = terms if codes is None else np.ascontiguousarray(terms[:, _DOC_TERMS])
        batch.doc_keys = [k if isinstance(k, str) else int(k) for k in keys.tolist()]
        batch.doc_sums, batch.doc_counts = _segment_sums(doc_terms, counted, order, starts)
        if codes is not None:
            batch.group_documents = _group_documents(
                doc_terms, counted, codes, order, starts, batch.doc_keys
            )
    if keep_window and n_rows:
        # s L and s are the first two columns of every layout of the terms.
        batch.window = (terms[counted, 0], terms[counted, 1])
    if keep_rows:
        # The kernel's own L = x or -x (a negation is exact: the same bits), validated.
        losses = values.astype(np.float64) if config.input == "nll" else -values.astype(np.float64)
        batch.row_losses = np.where(counted, losses, 0.0)
    return batch


def token_row_denominators(
    config: TokenConfig, mask: Any, n_rows: int, n_classes: int
) -> np.ndarray:
    """Each row's denominator ``d_i`` for the paired sums: 1, or -1 for a row the mask
    drops (the ``row_denominators`` of the token kind; the mask was validated)."""
    if mask is None:
        return np.ones(n_rows)
    keep = np.asarray(as_array(mask, "mask")).reshape(-1)
    return np.where(keep.astype(bool), 1.0, -1.0)


def _group_documents(
    terms: np.ndarray,
    counted: np.ndarray,
    codes: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    keys: list[Any],
) -> dict[int, tuple[list[Any], np.ndarray, np.ndarray]]:
    """Each group's per-document sums: the segments of (group code, document) pairs."""
    n_docs = len(keys)
    document = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(starts))
    if order.size:  # the rows were sorted by document: back to row order
        in_rows = np.empty_like(document)
        in_rows[order] = document
        document = in_rows
    pair_order, pair_starts, pairs = _segments(codes * n_docs + document)
    sums, counts = _segment_sums(terms, counted, pair_order, pair_starts)
    group_of, document_of = np.divmod(pairs, n_docs)
    out = {}
    bounds = np.flatnonzero(np.diff(group_of)) + 1
    for part in np.split(np.arange(len(pairs)), bounds):
        out[int(group_of[part[0]])] = (
            [keys[d] for d in document_of[part].tolist()],
            sums[part],
            counts[part],
        )
    return out


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


# -- the exact state -------------------------------------------------------------------------


class _Documents:
    """Exact per-document sums keyed by document id (first appearance order)."""

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
            # Doubling: a stream of new documents costs amortized O(1) copies each.
            capacity = max(len(self.keys), 2 * self.sums.shape[0], 16)
            self.sums = _grown(self.sums, capacity)
            self.counts = _grown(self.counts, capacity)
            self._values = _grown(self._values, capacity)
            self._fresh = _grown(self._fresh, capacity)
        return codes

    def check_addable(self, keys: list[Any], sums: np.ndarray) -> None:
        """Raise (nothing changed) if adding ``sums`` for ``keys`` would leave the range."""
        known = [self.index[k] for k in keys if k in self.index]
        if known:
            positions = [i for i, k in enumerate(keys) if k in self.index]
            accumulator.check_addable(self.sums[known], sums[positions])

    def add(self, keys: list[Any], sums: np.ndarray, counts: np.ndarray) -> None:
        """Add per-document sums (exact) for distinct ``keys``; new keys are appended."""
        codes = self._codes(keys)
        held = self.sums[codes]
        held += sums
        normalize(held.reshape(-1, N_SLOTS))
        self.sums[codes] = held
        self.counts[codes] += counts
        self._fresh[codes] = False

    def values(self) -> np.ndarray:
        """Correctly rounded per-document sums (D, N_DOC_SUMS); only changed ones recomputed
        (a progress bar computes the report twice a second)."""
        n = len(self.keys)
        stale = np.flatnonzero(~self._fresh[:n])
        if stale.size:
            self._values[stale] = _values_of(self.sums[stale])
            self._fresh[stale] = True
        return self._values[:n]

    def copy(self) -> _Documents:
        twin = _Documents()
        n = len(self.keys)
        twin.keys, twin.index = list(self.keys), dict(self.index)
        twin.sums, twin.counts = self.sums[:n].copy(), self.counts[:n].copy()
        twin._values, twin._fresh = self._values[:n].copy(), self._fresh[:n].copy()
        return twin

    def to_json(self) -> list[Any]:
        n = len(self.keys)
        return [
            {
                "key": key,
                "sums": dict(zip(_DOC_SUM_NAMES, accumulator.to_json(sums), strict=True)),
                "counts": [int(c) for c in counts],
            }
            for key, sums, counts in zip(self.keys, self.sums[:n], self.counts[:n], strict=True)
        ]

    @classmethod
    def from_json(cls, data: Any) -> _Documents:
        if not isinstance(data, list):
            raise ValueError("documents: must be a list of {key, sums, counts}")
        keys: list[Any] = []
        seen: set[Any] = set()
        sums, counts = [], []
        for entry in data:
            if not (isinstance(entry, dict) and set(entry) == {"key", "sums", "counts"}):
                raise ValueError("documents: every entry must be {key, sums, counts}")
            key = entry["key"]
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ValueError(f"documents: key {show(key)} is neither an integer nor a string")
            if key in seen:
                raise ValueError(f"documents: key {show(key)} appears twice")
            seen.add(key)
            parts = entry["sums"]
            if not isinstance(parts, dict) or set(parts) != set(_DOC_SUM_NAMES):
                raise ValueError(f"documents: sums must be an object with {list(_DOC_SUM_NAMES)}")
            sums.append(accumulator.from_json([parts[k] for k in _DOC_SUM_NAMES], (N_DOC_SUMS,)))
            row = accumulator.counts_from_json(entry["counts"], "documents: counts")
            if row.shape != (layout.N_COUNTS,):
                raise ValueError("documents: counts must be [rows, ignored]")
            counts.append(row)
            keys.append(key)
        documents = cls()
        if keys:
            documents.add(keys, np.stack(sums), np.stack(counts))
        return documents


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


class TokenState(ExactState):
    """:class:`~xentstream.accumulator.ExactState` of the token kind: the common sums,
    the unit sums and (with document ids) the per-document exact sums.

    ``add`` also takes a grouped token batch's per-group rows, whose ``sums`` carry the
    unit sums after the common ones (``N_SUMS + N_UNIT_SUMS`` rows). Every add is
    all-or-nothing, and a state with documents takes rows with documents only (and
    the other way round), so that the clustered error counts every token.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = (*ExactState.SECTIONS, "unit_sums", "documents")

    def __init__(self, *, counts_labels: bool = False, calibration_bins: int | None = None) -> None:
        super().__init__(counts_labels=counts_labels, calibration_bins=calibration_bins)
        self.unit_sums = accumulator.empty(kernels.N_UNIT_SUMS)
        self.documents: _Documents | None = None

    def add(
        self,
        sums: np.ndarray,
        counts: np.ndarray,
        class_sums: np.ndarray | None = None,
        class_counts: np.ndarray | None = None,
        label_counts: np.ndarray | None = None,
        *,
        unit_sums: np.ndarray | None = None,
        documents: tuple[list[Any], np.ndarray, np.ndarray] | None = None,
    ) -> TokenState:
        """Add exact partial sums; ``documents``: (distinct keys, sums, counts)."""
        if sums.shape[0] == layout.N_SUMS + kernels.N_UNIT_SUMS:  # a group's share
            sums, unit_sums = sums[: layout.N_SUMS], sums[layout.N_SUMS :]
        if (
            self.rows_seen
            and int(np.sum(counts))
            and (documents is None) != (self.documents is None)
        ):
            raise ValueError(
                "documents: rows with document ids and rows without cannot be added together"
            )
        if unit_sums is not None:
            accumulator.check_addable(self.unit_sums, unit_sums)
        if documents is not None and self.documents is not None:
            self.documents.check_addable(documents[0], documents[1])
        super().add(sums, counts, class_sums, class_counts, label_counts)
        if unit_sums is not None:
            self.unit_sums += unit_sums
            normalize(self.unit_sums)
        if documents is not None:
            if self.documents is None:
                self.documents = _Documents()
            self.documents.add(*documents)
        return self

    def add_batch(self, batch: TokenBatch) -> TokenState:
        """Add a :class:`TokenBatch` (its common, unit and per-document sums)."""
        documents = None
        if batch.doc_keys is not None:
            documents = (batch.doc_keys, batch.doc_sums, batch.doc_counts)
        return self.add(batch.sums, batch.counts, unit_sums=batch.unit_sums, documents=documents)

    def merge(self, other: ExactState) -> TokenState:
        documents = getattr(other, "documents", None)
        held = None
        if documents is not None:
            n = len(documents)
            held = (documents.keys, documents.sums[:n], documents.counts[:n])
        return self.add(
            other.sums,
            other.counts,
            other.class_sums,
            other.class_counts,
            other.label_counts,
            unit_sums=getattr(other, "unit_sums", None),
            documents=held,
        )

    def copy(self) -> TokenState:
        twin = TokenState()
        twin.sums, twin.counts = self.sums.copy(), self.counts.copy()
        twin.label_counts = None if self.label_counts is None else self.label_counts.copy()
        twin.unit_sums = self.unit_sums.copy()
        twin.documents = None if self.documents is None else self.documents.copy()
        return twin

    def to_json(self, n_classes: int | None = None) -> dict[str, Any]:
        return {
            **super().to_json(n_classes),
            "unit_sums": dict(
                zip(_UNIT_SUM_NAMES, accumulator.to_json(self.unit_sums), strict=True)
            ),
            "documents": None if self.documents is None else self.documents.to_json(),
        }

    @classmethod
    def from_json(
        cls,
        data: dict[str, Any],
        *,
        per_class: bool,
        counts_labels: bool,
        calibration_bins: int | None = None,
    ) -> TokenState:
        state = super().from_json(
            data,
            per_class=per_class,
            counts_labels=counts_labels,
            calibration_bins=calibration_bins,
        )
        unit_sums = data["unit_sums"]
        if not isinstance(unit_sums, dict) or set(unit_sums) != set(_UNIT_SUM_NAMES):
            raise ValueError(f"unit_sums must be an object with the keys {list(_UNIT_SUM_NAMES)}")
        state.unit_sums = accumulator.from_json(
            [unit_sums[k] for k in _UNIT_SUM_NAMES], (kernels.N_UNIT_SUMS,)
        )
        documents = data["documents"]
        state.documents = None if documents is None else _Documents.from_json(documents)
        if state.documents is not None:
            held = state.documents.counts[: len(state.documents)].sum(axis=0)
            if not np.array_equal(held, state.counts):
                raise ValueError(
                    f"documents: hold {held.tolist()} rows (counted, ignored), but counts "
                    f"are {state.counts.tolist()}"
                )
        return state


def token_report_fields(config: TokenConfig, state: ExactState) -> dict[str, Any]:
    """The token kind's :class:`~xentstream.Report` fields of ``state`` (the kind's
    ``extra_report``): perplexity, documents, clustered errors, bits per unit."""
    documents = None
    held = getattr(state, "documents", None)
    if held is not None:
        documents = (held.keys, held.values(), held.counts[: len(held)])
    unit_sums = getattr(state, "unit_sums", accumulator.empty(kernels.N_UNIT_SUMS))
    fields = token_statistics(
        state.sums, unit_sums, state.counts, documents, per_document=config.per_document
    )
    # A token value carries no distribution: no entropy (its sums stay zero).
    return {"unit": config.unit, "entropy": None, **fields}


def token_paired_fields(model: ExactState, baseline: ExactState, difference: float) -> dict:
    """The token kind's :class:`~xentstream.ComparisonReport` fields (the kind's
    ``paired_report``): ``clustered_stderr``, the cluster-robust standard error of the
    paired mean difference with documents as clusters (the CR1 ratio formula of the
    module docstring on ``D_d = A_d(model) - A_d(baseline)``, each ``A_d`` correctly
    rounded, and the documents' shared ``B_d``); None without documents."""
    mine, theirs = getattr(model, "documents", None), getattr(baseline, "documents", None)
    # Both models saw the same rows: the same documents in the same order.
    if mine is None or theirs is None or mine.keys != theirs.keys:
        return {"clustered_stderr": None}
    values, other = mine.values(), theirs.values()
    weight = values[:, DOC_WEIGHT]
    present = weight > 0.0
    differences = values[present, DOC_LOSS] - other[present, DOC_LOSS]
    total = accumulator.to_float(model.sums[layout.DENOMINATOR])
    return {"clustered_stderr": _ratio_stderr(differences, weight[present], difference, total)}
