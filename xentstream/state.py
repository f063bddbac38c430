"""State files: versioned JSON, written atomically, never pickle.

A state file holds one metric's ``state_dict()``: its class, its full config and
its exact integer accumulators, so that a loaded metric continues bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from xentstream._errors import shorten

__all__ = ["FORMAT", "VERSION", "read_json", "write_json_atomic"]

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
