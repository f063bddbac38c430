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


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state file; a ``ValueError`` names the file if it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid xentstream state file ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a valid xentstream state file (not a JSON object)")
    return data
