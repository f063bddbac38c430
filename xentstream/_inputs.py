"""Turn user inputs (numpy, lists, polars, pyarrow, torch tensors) into numpy arrays.

Zero-copy wherever the source memory allows it; nothing here imports polars,
pyarrow, torch or numba.cuda (their objects are recognised by their module or by
``__cuda_array_interface__``). Device arrays reach the CUDA engine untouched
(:func:`xentstream._kernels.devices.is_device_array`); :func:`as_array` copies them
to the host only when the CPU engine was forced. A null value raises a
:class:`~xentstream._errors.DataError` naming its row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xentstream._errors import DataError
from xentstream._kernels.devices import is_device_array

__all__ = ["as_array"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _module(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


_NULL_RULE = "value is null; nulls are not allowed"


def _first_null_error(name: str, mask: np.ndarray, row_offset: int) -> DataError:
    return DataError.at(name, row_offset + int(np.argmax(mask)), _NULL_RULE)


def half_precision(value: Any) -> str | None:
    """``"float16"`` or ``"bfloat16"`` when ``value`` holds half-precision floats.

    :func:`as_array` (and the device path) widen them to float32 for the kernels,
    but the clipping eps and sum tolerance follow the dtype the user gave
    (scikit-learn's rule, SPEC section 2), so the batch layer asks here first.
    """
    if type(value) is np.ndarray and value.dtype in _FLOAT_DTYPES:
        return None  # str(dtype) below costs microseconds on every small batch
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        dtype = getattr(value, "type", None)  # pyarrow arrays
    name = str(dtype).lower().removeprefix("torch.")
    if name in ("float16", "halffloat", "half"):
        return "float16"
    if name == "bfloat16":
        return "bfloat16"
    return None


def as_array(value: Any, name: str, *, floating: bool = False, row_offset: int = 0) -> np.ndarray:
    """Return ``value`` as a numpy array, without copying when possible.

    Parameters
    ----------
    value
        A numpy array, list, polars Series/DataFrame, pyarrow (Chunked)Array, a torch
        tensor or a device array (copied to the host: the CPU engine was forced).
    name
        The argument or column name used in error messages.
    row_offset
        Rows of the stream before this batch, added to the row named by null errors.
    floating
        Require a floating-point result: integer lists are widened to float64;
        integer arrays are a ``TypeError``. float16 and bfloat16 are widened to
        float32 either way (soft targets and weights too), as the CUDA engine widens
        them on the device.

    Raises
    ------
    TypeError
        For an unsupported object or dtype.
    DataError
        For null values (a ``ValueError`` naming the row).

    Examples
    --------
    >>> as_array([[0.5, 0.5]], "preds", floating=True).dtype
    dtype('float64')
    """
    module = "numpy" if type(value) is np.ndarray else _module(value)  # the common case first
    from_list = False
    if isinstance(value, np.ndarray):
        array = value
    elif module == "torch":
        tensor = value.detach()
        if tensor.device.type != "cpu":  # engine="cpu" forced on a device tensor
            tensor = tensor.cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()
        array = tensor.numpy()
    elif module == "polars":
        if hasattr(value, "null_count") and callable(value.null_count):
            nulls = value.null_count()
            if not isinstance(nulls, int):  # a DataFrame: one count per column
                nulls = int(nulls.sum_horizontal().item())
            if nulls:
                mask = value.is_null().to_numpy() if hasattr(value, "is_null") else None
                if mask is None:
                    mask = value.select(_any_null_expr()).to_series().to_numpy()
                raise _first_null_error(name, mask, row_offset)
        dtype = getattr(value, "dtype", None)
        if dtype is not None and dtype.is_nested():
            # null_count() sees whole rows only; a null inside an Array row would
            # otherwise reach the kernels as NaN and be reported as one.
            _arrow_to_numpy(value.to_arrow(), name, row_offset)
        array = value.to_numpy()
    elif module == "pyarrow":
        array = _arrow_to_numpy(value, name, row_offset)
    elif isinstance(value, list | tuple) or np.isscalar(value):
        from_list = True
        array = np.asarray(value)
    elif is_device_array(value):
        from xentstream._kernels import load_cuda  # lazy: only device arrays need it

        array = load_cuda().to_host(value)
    elif hasattr(value, "__array__"):
        array = np.asarray(value)
    else:
        raise TypeError(f"{name}: unsupported type {type(value).__name__}")
    if array.dtype == object:
        raise TypeError(f"{name}: ragged or non-numeric data (dtype object)")
    if array.dtype == np.float16:  # any argument: the kernels read float32 and float64
        array = array.astype(np.float32)
    if floating and array.dtype not in _FLOAT_DTYPES:
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif from_list and array.dtype.kind in "iub":
            array = array.astype(np.float64)
        else:
            raise TypeError(
                f"{name}: must be floating point (float32 or float64), got {array.dtype}"
            )
    return array


def _arrow_to_numpy(value: Any, name: str, row_offset: int = 0) -> np.ndarray:
    """A pyarrow (Chunked)Array as numpy; fixed-size lists become trailing dimensions."""
    if value.null_count:
        raise _first_null_error(name, np.asarray(value.is_null()), row_offset)
    if getattr(value.type, "list_size", None) is None:
        return value.to_numpy(zero_copy_only=False)
    if hasattr(value, "combine_chunks"):
        value = value.combine_chunks()
    shape = [len(value)]
    while getattr(value.type, "list_size", None) is not None:
        shape.append(value.type.list_size)
        value = value.flatten()
        if value.null_count:
            element = int(np.argmax(np.asarray(value.is_null())))
            row = row_offset + element // int(np.prod(shape[1:]))
            raise DataError.at(name, row, _NULL_RULE)
    return value.to_numpy(zero_copy_only=False).reshape(shape)


def _any_null_expr() -> Any:
    import polars as pl

    return pl.any_horizontal(pl.all().is_null())


def squeeze_label_column(target: Any, leading_shape: tuple[int, ...]) -> Any:
    """Integer labels of shape ``(..., 1)`` (a column vector: ``df[["y"]]``,
    ``y.reshape(-1, 1)``) for predictions of leading shape ``(...)``, as ``(...)``.

    Examples
    --------
    >>> squeeze_label_column(np.array([[0], [2]]), (2,)).shape
    (2,)
    """
    if tuple(target.shape) == (*leading_shape, 1) and target.dtype.kind in "iub":
        return target.reshape(leading_shape)
    return target


def binary_columns(
    preds: Any,
    target: Any,
    *,
    input: str,
    sum_tol: float,
    validate: bool,
    name: str,
    row_offset: int = 0,
) -> tuple[Any, Any]:
    """Binary predictions and targets of one shape from the shapes people have.

    A trailing axis of length 1 on either side is dropped (column vectors). Predictions
    with a trailing axis of 2 where the target has none are scikit-learn's
    ``predict_proba`` layout, (P(class 0), P(class 1)): probabilities must sum to 1
    within ``sum_tol`` and column 1 is used; log-probabilities use column 1; the two
    logits of a softmax give the binary logit ``x1 - x0``.

    Raises
    ------
    DataError
        For (N, 2) probabilities whose rows do not sum to 1 (``validate`` on; a
        ``ValueError`` naming the row).

    Examples
    --------
    >>> p, t = binary_columns(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 1]),
    ...                       input="probs", sum_tol=1e-8, validate=True, name="preds")
    >>> p
    array([0.2, 0.7])
    """
    p_shape, t_shape = tuple(preds.shape), tuple(target.shape)
    if p_shape[-1:] == (2,) and t_shape == (*p_shape[:-1], 1):  # proba and a label column
        target, t_shape = target.reshape(p_shape[:-1]), p_shape[:-1]
    if p_shape == (*t_shape, 1):
        return preds.reshape(t_shape), target
    if t_shape == (*p_shape, 1):
        return preds, target.reshape(p_shape)
    if p_shape != (*t_shape, 2) or is_device_array(preds):
        return preds, target
    if input == "logits":
        return np.ascontiguousarray(preds[..., 1] - preds[..., 0]), target
    if input == "probs" and validate:
        totals = (preds[..., 0] + preds[..., 1]).reshape(-1)
        bad = ~(np.abs(totals - 1.0) <= sum_tol)  # NaN counts as bad
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError.at(
                name,
                row_offset + row,
                f"the two columns sum to {float(totals[row])!r}, not 1 within "
                f"sum_tol={sum_tol:.3g}; binary predictions of shape (N, 2) are read as "
                "predict_proba output: P(class 0), P(class 1)",
            )
    return np.ascontiguousarray(preds[..., 1]), target
