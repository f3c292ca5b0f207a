"""sfpn_edge.bounded_read: regular files only, byte caps, JSON with size and depth caps."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from hostile_corpus import deep_json
from sfpn_edge.bounded_read import LimitError, parse_json, read_bytes, read_json, regular_file


def test_regular_file_names_what_a_path_is(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    assert regular_file(tmp_path / "f").st_size == 1
    with pytest.raises(LimitError, match="is a directory"):
        regular_file(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(LimitError, match="is a FIFO"):
            read_bytes(tmp_path / "fifo", 10)  # refused before opening: no hang
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero").symlink_to("/dev/zero")
        with pytest.raises(LimitError, match="is a device"):
            read_bytes(tmp_path / "zero", 10)
    with pytest.raises(FileNotFoundError):
        regular_file(tmp_path / "missing")


def test_read_bytes_cap(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bytes(path, 10) == b"x" * 10
    with pytest.raises(LimitError, match="10 bytes"):
        read_bytes(path, 9)
    if Path("/proc/self/status").exists():  # st_size 0, content larger than the cap
        with pytest.raises(LimitError, match="over 16 bytes"):
            read_bytes("/proc/self/status", 16)


def test_parse_json_limits():
    assert parse_json(b'{"a": [1, {"b": "[[[[ {{ \\" ]"}]}', max_bytes=100, max_depth=3) == \
        {"a": [1, {"b": '[[[[ {{ " ]'}]}  # brackets inside strings do not count
    assert parse_json(deep_json(5), max_bytes=100, max_depth=5) == [[[[[]]]]]
    with pytest.raises(LimitError, match="nested more than 4"):
        parse_json(deep_json(5), max_bytes=100, max_depth=4)
    with pytest.raises(LimitError, match="limit 10"):
        parse_json(b"[" + b" " * 20 + b"]", max_bytes=10, max_depth=4)
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(LimitError, match="not a JSON number"):
            parse_json(f'{{"threshold": {constant}}}', max_bytes=100, max_depth=4)
    with pytest.raises(LimitError, match="not valid JSON"):
        parse_json(b"{not json", max_bytes=100, max_depth=4)
    with pytest.raises(LimitError, match="not UTF-8"):
        parse_json(b'"\xff"', max_bytes=100, max_depth=4)


def test_deep_nesting_is_refused_fast_without_recursion_error(tmp_path):
    depth = 50 * sys.getrecursionlimit()  # json.loads alone raises RecursionError here
    path = tmp_path / "deep.json"
    path.write_text(deep_json(depth))
    start = time.perf_counter()
    with pytest.raises(LimitError, match="nested more than 16"):
        read_json(path, max_bytes=1 << 20, max_depth=16)
    assert time.perf_counter() - start < 1.0
