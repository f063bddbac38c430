"""State files: versioned JSON, written atomically, never pickle.

A state file holds one metric's ``state_dict()``: its class, its full config and
its exact integer accumulators, so that a loaded metric continues bit for bit.
Large tables inside one (a grouped state's groups) are arrays written as base64 of
their little-endian bytes with their dtype and shape (:func:`array_to_json`), so
that a million groups are a few strings, not millions of JSON values.
:class:`Stateful` is what every object with such a state shares (metrics and paired
comparisons): the lock, pickling without it, ``save`` / ``load_state_dict``, and the
strict loader's error form.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from xentstream._errors import shorten, show

__all__ = [
    "FORMAT",
    "VERSION",
    "Stateful",
    "array_from_json",
    "array_to_json",
    "read_json",
    "strict_loading",
    "write_json_atomic",
]

FORMAT = "xentstream.metric"
VERSION = 1


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename).

    A reader sees either the old file or the complete new one, even if the writer
    is killed half way.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, allow_nan=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


#: A state or checkpoint file larger than this is refused before it is parsed: real
#: ones hold a few accumulators per class or group (about 1.3 kB each).
MAX_FILE_BYTES = 1 << 30


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state or checkpoint file as a JSON object.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (the message names it).
    ValueError
        If ``path`` cannot be read (a directory, no permission), is larger than
        :data:`MAX_FILE_BYTES`, is not valid JSON (nested too deeply, an integer of
        more than 4300 digits included) or is not a JSON object; the message names
        the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(
                    f"{path}: {size} bytes is larger than any xentstream state file "
                    f"(at most {MAX_FILE_BYTES})"
                )
            data = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as error:  # a directory, no permission, an I/O error
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a valid xentstream state file (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        message = shorten(str(error), 200)
        raise ValueError(f"{path}: not a valid xentstream state file ({message})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a valid xentstream state file (not a JSON object)")
    return data


def array_to_json(array: np.ndarray) -> dict[str, Any]:
    """An array as JSON: ``{"dtype", "shape", "base64"}``, the bytes little-endian in C
    order (equal arrays, equal text: the form is canonical).

    Examples
    --------
    >>> import numpy as np
    >>> array_to_json(np.array([1, 2], dtype=np.int64))["dtype"]
    '<i8'
    >>> array_from_json(array_to_json(np.arange(6).reshape(2, 3)), "a", "<i8", 2).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "dtype": little.dtype.str,
        "shape": list(little.shape),
        "base64": base64.b64encode(little.data).decode("ascii"),
    }


def array_from_json(
    data: Any,
    name: str,
    dtype: str | tuple[str, ...],
    ndim: int,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Inverse of :func:`array_to_json`: an array of ``dtype`` (numpy's ``str`` form,
    such as ``"<i8"``; or one of several) with ``ndim`` dimensions, of ``shape`` where
    it gives a length.

    Raises
    ------
    ValueError
        Naming ``name`` and what is wrong: not such an object, another dtype or
        shape, text that is not base64, or bytes that do not fill the shape.
    """
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "base64"}:
        raise ValueError(f"{name}: must be an object with the keys dtype, shape, base64")
    allowed = (dtype,) if isinstance(dtype, str) else dtype
    if data["dtype"] not in allowed:
        expected = " or ".join(map(repr, allowed))
        raise ValueError(f"{name}: dtype {show(data['dtype'])}, expected {expected}")
    dtype = data["dtype"]
    found = data["shape"]
    if (
        not isinstance(found, list)
        or len(found) != ndim
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in found)
    ):
        raise ValueError(f"{name}: shape {show(found)} is not a list of {ndim} sizes")
    for axis, (size, expected) in enumerate(zip(found, shape or (None,) * ndim, strict=True)):
        if expected is not None and size != expected:
            raise ValueError(f"{name}: shape {found}, but axis {axis} must have {expected}")
    if not isinstance(data["base64"], str):
        raise ValueError(f"{name}: base64 must be a string")
    try:
        raw = base64.b64decode(data["base64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{name}: not base64 text ({error})") from None
    wanted = np.dtype(dtype)
    expected_bytes = wanted.itemsize * int(np.prod(found, dtype=np.float64))
    if len(raw) != expected_bytes:
        raise ValueError(
            f"{name}: {len(raw)} bytes of data, but shape {found} of {dtype} takes "
            f"{expected_bytes} (truncated or edited)"
        )
    array = np.frombuffer(raw, dtype=wanted).reshape(found)
    return array.astype(wanted.newbyteorder("="))


@contextmanager
def strict_loading(what: str) -> Iterator[None]:
    """Turn whatever a malformed state makes a loader raise into one ``ValueError``
    starting with ``what`` (``"state"``, ``"comparison state"``): a state is read
    exactly as written, or not at all."""
    try:
        yield
    except (KeyError, TypeError, IndexError, OverflowError) as error:
        raise ValueError(
            f"{what}: malformed ({type(error).__name__}: {show(str(error))})"
        ) from None
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(what) else f"{what}: {message}") from None


class Stateful:
    """Base of the objects with an exact, versioned JSON state (metrics, comparisons).

    A subclass provides ``state_dict``, ``from_state_dict(state, engine=...)``,
    ``reset``, ``merge``, ``engine`` and ``_check_loadable(other)`` (what
    :meth:`load_state_dict` refuses before it changes anything); this class adds the
    lock, pickling (for multiprocessing: the lock is recreated; files use JSON only),
    :meth:`save` and :meth:`load_state_dict`.
    """

    engine: str

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, engine: str = "auto") -> Stateful:
        raise NotImplementedError

    def reset(self) -> Stateful:
        raise NotImplementedError

    def merge(self, other: Any) -> Stateful:
        raise NotImplementedError

    def _check_loadable(self, other: Any) -> None:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` as JSON, atomically (temp, fsync, rename)."""
        write_json_atomic(path, self.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> Any:
        """Replace this object's state by one saved with ``state_dict`` (of the same
        class and configuration), as torch's ``load_state_dict``. Returns ``self``; on
        any error the state is unchanged.

        Examples
        --------
        >>> import xentstream as xs
        >>> saved = xs.CrossEntropy().update([[0.7, 0.3]], [0]).state_dict()
        >>> xs.CrossEntropy().load_state_dict(saved).compute().count
        1
        """
        other = type(self).from_state_dict(state, engine=self.engine)
        with self._lock:
            self._check_loadable(other)
            self.reset()
            self.merge(other)
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
