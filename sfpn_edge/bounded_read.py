"""Reading untrusted files within limits: regular files only, a byte cap, JSON with size and depth caps.

    info = regular_file(path)                                   # refuses FIFOs, devices, dirs, sockets
    data = read_bytes(path, 1 << 20)                            # at most 1 MiB, never trusting st_size
    doc = read_json(path, max_bytes=1 << 20, max_depth=16)      # also refuses NaN / Infinity

Problems with the file or document raise ``LimitError`` (a ValueError) with a message that does
not repeat the path; OSError (missing file, permission denied) propagates. Callers turn both
into their own one-line SfpnError naming the file.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class LimitError(ValueError):
    """A file or document is not a regular file, is over a size or depth limit, or is not strict JSON."""


def regular_file(path: PathLike) -> os.stat_result:
    """``os.stat(path)`` (links followed) if it is a regular file, else LimitError saying what it is."""
    info = os.stat(path)
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return info
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    raise LimitError(f"is {kind}, not a regular file")


def read_bytes(path: PathLike, limit: int) -> bytes:
    """The content of the regular file ``path``, refused (LimitError) when over ``limit`` bytes.

    Checked before opening, and again on the open descriptor (opened non-blocking, so a path
    swapped for a FIFO in between cannot hang); at most ``limit + 1`` bytes are ever read.
    """
    regular_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with open(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise LimitError("is not a regular file")
        if info.st_size > limit:
            raise LimitError(f"file is {info.st_size:,} bytes (limit {limit:,})")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise LimitError(f"file is over {limit:,} bytes")
    return data


def parse_json(data: Union[bytes, str], *, max_bytes: int, max_depth: int) -> Any:
    """``json.loads`` of at most ``max_bytes`` of UTF-8 nested at most ``max_depth`` arrays/objects
    deep, NaN and Infinity refused (they are not JSON); LimitError (a ValueError) otherwise."""
    if len(data) > max_bytes:
        raise LimitError(f"JSON document is {len(data):,} bytes (limit {max_bytes:,})")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise LimitError(f"JSON document is not UTF-8 ({exc})") from None
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise LimitError(f"JSON document is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise LimitError(f"not valid JSON ({exc})") from None


def read_json(path: PathLike, *, max_bytes: int, max_depth: int) -> Any:
    """``parse_json`` of the regular file ``path`` (see ``read_bytes``)."""
    return parse_json(read_bytes(Path(path), max_bytes), max_bytes=max_bytes, max_depth=max_depth)


def _refuse_constant(name: str) -> Any:
    raise LimitError(f"JSON document holds {name}, which is not a JSON number")
