"""The gallery's search matrix file: same answers as the in-memory index, kept in step
incrementally, mapped (not read) on open, and rebuilt (never served) when damaged or stale."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sfpn_edge import gallery_matrix
from sfpn_edge.gallery import FaceGallery

SHA = "cd" * 32
DIM = 48
PEOPLE = 120


def descriptors(seed: int, n: int) -> np.ndarray:
    """Non-negative descriptors, like the model's post-ReLU output."""
    return np.abs(np.random.default_rng(seed).standard_normal((n, DIM))).astype(np.float32)


def open_gallery(path, **kw) -> FaceGallery:
    kw.setdefault("model_sha256", SHA)
    kw.setdefault("dim", DIM)
    kw.setdefault("storage", "int8")
    return FaceGallery(path, **kw)


def enrolled(path, storage="int8", n=PEOPLE):
    x = descriptors(1, 2 * n)
    with open_gallery(path, storage=storage) as g:
        g.enroll_many([(f"p{i}", x[2 * i:2 * i + 2]) for i in range(n)], calibrate=False)
    return x


def probes(n=40, seed=7):
    x = descriptors(1, 2 * PEOPLE)
    return x[0:2 * n:2] + 0.3 * descriptors(seed, n)


def answers(path, memory=False, **kw):
    with open_gallery(path, **kw) as g:
        if memory:  # the in-memory index the matrix replaces, as the reference
            g._matrix_path = lambda: None
        return [[(m.name, round(m.score, 5)) for m in ms] for ms in g.identify_batch(probes(), k=5)]


def matrix_file(path, storage="int8"):
    return path.with_name(f"{path.name}.{storage}.matrix")


def check_file(path, storage="int8"):
    with open_gallery(path, readonly=True) as g:
        state = g._matrix_state(g._db)
    return gallery_matrix.load(matrix_file(path, storage), gallery_id=state.gallery_id, storage=storage,
                               dim=DIM, writable=False)


@pytest.mark.parametrize("storage", ["int8", "fp16", "fp32"])
def test_matrix_answers_equal_the_memory_index_through_changes(tmp_path, storage):
    db = tmp_path / "g.db"
    enrolled(db, storage)
    assert matrix_file(db, storage).is_file()  # written by the enrolment
    assert answers(db, storage=storage) == answers(db, memory=True, storage=storage)
    inode = matrix_file(db, storage).stat().st_ino
    with open_gallery(db, storage=storage) as g:
        g.remove("p0", calibrate=False)
        g.remove_many(["p1", "p2"], calibrate=False)
        g.enroll("p3", descriptors(9, 1), calibrate=False)  # new photo: its template changes
        g.enroll("p3", descriptors(9, 1), replace=True, calibrate=False)
        g.enroll("new", descriptors(10, 2), calibrate=False)
        g.rename("p4", "renamed")  # its rows' checksums change: logged, re-read, same template
    assert matrix_file(db, storage).stat().st_ino == inode  # updated in place, not rewritten
    matrix, why = check_file(db, storage)
    assert why == "ok" and matrix.live == PEOPLE - 2 and matrix.tombstones == 6
    got = answers(db, storage=storage, readonly=True)
    names = {m for ms in got for m, _ in ms}
    assert {"p0", "p1", "p2", "p4"}.isdisjoint(names) and "renamed" in names
    if storage == "int8":  # the memory index re-centres its codes: same ranking, scores within 1e-2
        ref = answers(db, memory=True, storage=storage)
        assert [ms[0][0] for ms in got] == [ms[0][0] for ms in ref]
    else:
        assert got == answers(db, memory=True, storage=storage)


def test_open_maps_the_file_and_reads_no_rows(tmp_path, monkeypatch):
    db = tmp_path / "g.db"
    enrolled(db)
    expected = answers(db)

    def no_rows(*_):
        raise AssertionError("a stored row was read")
    monkeypatch.setattr(FaceGallery, "_vector", no_rows)
    assert answers(db, readonly=True) == expected
    with open_gallery(db, readonly=True) as g:
        g.identify(probes(1)[0])
        assert isinstance(g._index.matrix.data, np.memmap)


def test_other_process_changes_are_caught_up_read_only(tmp_path):
    db = tmp_path / "g.db"
    enrolled(db)
    old = tmp_path / "old.matrix"
    shutil.copy(matrix_file(db), old)
    with open_gallery(db) as g:
        g.remove("p0", calibrate=False)
        g.enroll("late", descriptors(11, 1), calibrate=False)
    expected = answers(db)
    shutil.copy(old, matrix_file(db))  # as if the writer was killed before updating the matrix
    before = matrix_file(db).read_bytes()
    with open_gallery(db, readonly=True) as g:
        g.identify(probes(1)[0])
        assert g._index.matrix.tombstones == 1  # caught up from the change log, not rebuilt
    assert answers(db, readonly=True) == expected
    assert matrix_file(db).read_bytes() == before  # a read-only gallery never writes


def _damage(kind: str, path, other):
    data = bytearray(path.read_bytes())
    if kind == "data":
        rows_at = gallery_matrix._layout("int8", DIM, PEOPLE + 1024)[0]["rows"][0]
        data[rows_at + 5 * DIM + 3] ^= 0x40  # one code of the sixth row
    elif kind == "header":
        data[40] ^= 1
    elif kind == "truncated":
        data = data[:len(data) // 2]
    elif kind == "foreign":
        data = bytearray(other.read_bytes())
    elif kind == "garbage":
        data = bytearray(b"\x00" * 100)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["data", "header", "truncated", "foreign", "garbage"])
def test_damaged_matrix_is_rebuilt_never_served(tmp_path, kind):
    db, other = tmp_path / "g.db", tmp_path / "other.db"
    enrolled(db)
    enrolled(other)  # same rows, another gallery id
    expected = answers(db)
    _damage(kind, matrix_file(db), matrix_file(other))
    damaged = matrix_file(db).read_bytes()
    assert check_file(db)[0] is None
    assert answers(db, readonly=True) == expected  # searched in memory, file left alone
    assert matrix_file(db).read_bytes() == damaged
    assert answers(db) == expected  # a writer rebuilds it
    assert check_file(db)[1] == "ok"


def test_fifo_full_disk_or_unwritable_dir_is_searched_in_memory(tmp_path, monkeypatch):
    db = tmp_path / "g.db"
    enrolled(db)
    expected = answers(db)
    matrix_file(db).unlink()
    os.mkfifo(matrix_file(db))
    assert answers(db) == expected
    assert os.path.exists(matrix_file(db)) and not matrix_file(db).is_file()  # left alone, never opened
    matrix_file(db).unlink()

    def full(*_):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as patch:
        patch.setattr(gallery_matrix.os, "posix_fallocate", full)
        assert answers(db) == expected
    assert sorted(p.name for p in tmp_path.iterdir() if "matrix" in p.name) == []  # no file, no temp file

    def refused(*_, **__):
        raise PermissionError(13, "Read-only file system")
    monkeypatch.setattr(gallery_matrix.temp_files.tempfile, "mkstemp", refused)
    assert answers(db) == expected
    assert not matrix_file(db).exists()


KILLED = textwrap.dedent("""
    import sys, time
    from sfpn_edge import gallery_matrix
    from sfpn_edge.gallery import FaceGallery
    db, hook = sys.argv[1], sys.argv[2]

    def hang(*args, **kwargs):
        print("ready", flush=True)
        time.sleep(120)
    with FaceGallery(db, model_sha256="{sha}", dim={dim}, storage="int8") as g:
        setattr(gallery_matrix.temp_files if hook == "replace" else gallery_matrix, hook, hang)
        if hook == "replace":  # the rename into place
            g.recalibrate()  # a new calibration: the matrix is rebuilt
        else:
            g.remove("p0", calibrate=False)  # in place: tombstone, then the header
""").format(sha=SHA, dim=DIM)


@pytest.mark.parametrize("hook", ["replace", "_header"])
def test_sigkill_mid_matrix_write_is_never_served(tmp_path, hook):
    db = tmp_path / "g.db"
    enrolled(db)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db), hook], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open_gallery(db) as g:
        state = g._matrix_state(g._db)
    matrix, why = check_file(db)
    if hook == "_header":
        assert matrix is None  # rows tombstoned, header not: refused by its CRC
    else:
        assert matrix is not None and matrix.calibration != state.calibration_checksum  # the old, stale file
    for readonly in (True, False):
        got = answers(db, readonly=readonly)
        assert got == answers(db, memory=True) and all(m != "p0" for ms in got for m, _ in ms) == (hook == "_header")
    assert check_file(db)[1] == "ok"
