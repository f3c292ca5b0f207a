"""Temporary files beside their target: a dead writer's leftovers are swept, a live writer's never."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sfpn_edge import temp_files

WRITER = """
import sys, time
from pathlib import Path
from sfpn_edge import temp_files
fd, tmp = temp_files.temp_beside(Path(sys.argv[1]))
(Path(str(tmp) + "-journal")).write_bytes(b"j")
print(tmp, flush=True)
time.sleep(60)
"""


def start_writer(target: Path) -> tuple:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_writers_file_is_swept_a_live_writers_is_kept(tmp_path):
    target = tmp_path / "g.db"
    dead, dead_tmp = start_writer(target)
    live, live_tmp = start_writer(target)
    try:
        dead.kill()
        dead.wait()
        assert dead_tmp.name.startswith(".g.db.") and dead_tmp.suffix == ".tmp" and dead_tmp.exists()
        assert temp_files.sweep(target) == 1
        assert not dead_tmp.exists() and not Path(f"{dead_tmp}-journal").exists()
        assert live_tmp.exists()  # its writer holds the lock
    finally:
        live.kill()
        live.wait()
    assert temp_files.sweep(target) == 1 and sorted(os.listdir(tmp_path)) == []


def test_sweep_leaves_other_files_and_symlinks_alone(tmp_path):
    target = tmp_path / "g.db"
    other = tmp_path / ".h.db.abc.tmp"
    other.write_bytes(b"x")
    (tmp_path / "elsewhere").write_bytes(b"keep")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".g.db.link.tmp")  # never followed
    fd, mine = temp_files.temp_beside(target)
    os.close(fd)  # its writer is done with it (the lock goes with the descriptor)
    assert temp_files.sweep(target) == 1 and not mine.exists()
    assert other.exists() and (tmp_path / "elsewhere").read_bytes() == b"keep"
    assert os.path.islink(tmp_path / ".g.db.link.tmp")
    assert temp_files.sweep(tmp_path / "missing" / "g.db") == 0
