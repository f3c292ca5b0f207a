"""FaceGallery: persistence, atomic enrolment under a real SIGKILL, concurrent readers, foreign files."""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.errors import SfpnError
from sfpn_edge.gallery import APPLICATION_ID, FaceGallery, GalleryError

SHA = "ab" * 32
DIM = 64


def open_gallery(path, **kw) -> FaceGallery:
    kw.setdefault("model_sha256", SHA)
    kw.setdefault("dim", DIM)
    return FaceGallery(path, **kw)


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_enroll_list_remove_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    db = tmp_path / "g.db"
    with open_gallery(db) as g:
        assert len(g) == 0 and g.identities() == []
        ada = g.enroll("ada", 3 * unit(rng, 3), ["a1.jpg", "a2.jpg", "a3.jpg"])
        assert (ada.name, ada.images) == ("ada", 3)
        g.enroll("bob", unit(rng, 2))
        assert g.enroll("ada", unit(rng, 1)).images == 4  # adds to the existing identity
        assert g.enroll("bob", unit(rng, 1), replace=True).images == 1
        assert g.remove("bob") and not g.remove("bob")
        stored = g.embeddings("ada")
    with open_gallery(db, readonly=True) as g:
        assert [(i.name, i.images) for i in g.identities()] == [("ada", 4)]
        assert "ada" in g and "bob" not in g
        np.testing.assert_allclose(g.embeddings("ada"), stored)
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-6)  # stored normalised
        with pytest.raises(GalleryError, match="read-only"):
            g.enroll("eve", unit(rng, 1))
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    blob, = raw.execute("SELECT vector FROM embeddings LIMIT 1").fetchone()
    assert isinstance(blob, bytes) and len(blob) == 4 * DIM  # float32 BLOB, no pickle
    raw.close()


@pytest.mark.parametrize("template", ["mean", "all"])
@pytest.mark.parametrize("storage", ["fp32", "int8"])
def test_identify_matches_brute_force(tmp_path, template, storage):
    rng = np.random.default_rng(1)
    centres = unit(rng, 30)
    with open_gallery(tmp_path / "g.db", template=template, storage=storage) as g:
        members = {}
        for i, c in enumerate(centres):
            members[f"id{i:02d}"] = c + 0.3 * unit(rng, 1 + i % 4)
            g.enroll(f"id{i:02d}", members[f"id{i:02d}"])
        probes = centres[[3, 17, 29]] + 0.2 * unit(rng, 3)
        got = g.identify_batch(probes, k=5)
        assert g.identify(probes[0], k=40)[0].name == "id03"
        assert len(g.identify(probes[0], k=40)) == 30  # k capped at the identity count
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    for probe, matches, truth in zip(p, got, ["id03", "id17", "id29"]):
        ref = {}
        for name, vecs in members.items():
            v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            if template == "mean":
                m = v.mean(0)
                ref[name] = float(probe @ (m / np.linalg.norm(m)))
            else:
                ref[name] = float((v @ probe).max())
        best = sorted(ref, key=ref.get, reverse=True)
        assert matches[0].name == truth and len(matches) == 5
        tol = 1e-5 if storage == "fp32" else 1e-2
        np.testing.assert_allclose([m.score for m in matches], [ref[m.name] for m in matches], atol=tol)
        if storage == "fp32":
            assert [m.name for m in matches] == best[:5]
        else:  # int8 may swap near-ties, never miss a clearly better identity
            assert all(ref[m.name] >= ref[best[4]] - 2 * tol for m in matches)


def test_enroll_many_is_all_or_nothing(tmp_path):
    rng = np.random.default_rng(6)
    with open_gallery(tmp_path / "g.db") as g:
        made = g.enroll_many([("a", unit(rng, 2)), ("b", unit(rng, 1), ["b.jpg"])])
        assert [(i.name, i.images) for i in made] == [("a", 2), ("b", 1)]
        with pytest.raises(ValueError):
            g.enroll_many([("c", unit(rng, 1)), ("d", np.full((1, DIM), np.inf))])
        with pytest.raises(GalleryError):
            g.enroll_many([("e", unit(rng, 1)), ("", unit(rng, 1))])
        assert [i.name for i in g.identities()] == ["a", "b"]


def test_bad_arguments(tmp_path):
    rng = np.random.default_rng(2)
    with open_gallery(tmp_path / "g.db") as g:
        for bad in (np.zeros((1, DIM)), np.full((1, DIM), np.nan), unit(rng, 2, DIM + 1), np.ones((0, DIM)),
                    np.ones((2, DIM), np.int32)):
            with pytest.raises(ValueError):
                g.enroll("x", bad)
        for name in ("", "   ", "a\nb", "x" * 300, None):
            with pytest.raises(GalleryError):
                g.enroll(name, unit(rng, 1))
        with pytest.raises(ValueError):
            g.enroll("x", unit(rng, 2), ["only-one"])
        assert len(g) == 0  # nothing half-written by the refused calls
        assert g.identify(unit(rng, 1)[0]) == []  # empty gallery: no candidates
        g.enroll("x", unit(rng, 1))
        for k in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                g.identify(unit(rng, 1)[0], k=k)
        with pytest.raises(KeyError):
            g.embeddings("nobody")
    with pytest.raises(ValueError):
        open_gallery(tmp_path / "h.db", template="median")
    with pytest.raises(ValueError):
        open_gallery(tmp_path / "h.db", storage="int4")
    assert not (tmp_path / "h.db").exists()


def test_foreign_files_are_refused_untouched(tmp_path):
    rng = np.random.default_rng(3)
    cases = {}
    (tmp_path / "random.db").write_bytes(os.urandom(8192))
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "text.db").write_text("name,embedding\nada,1 2 3\n")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    other.execute("INSERT INTO meta VALUES ('format', 'sfpn-edge-gallery')")
    other.commit()
    other.close()
    with open_gallery(tmp_path / "ours.db") as g:
        g.enroll("ada", unit(rng, 2))
    for name in ("random.db", "empty.db", "text.db", "other.db", "ours.db"):
        cases[name] = digest(tmp_path / name)
    expectations = [
        ("random.db", {}, "not an SQLite database"),
        ("empty.db", {}, "not an SQLite database"),
        ("text.db", {}, "not an SQLite database"),
        ("other.db", {}, "not an sfpn-edge gallery"),
        ("ours.db", {"model_sha256": "cd" * 32}, "another model"),
        ("ours.db", {"dim": DIM * 2}, f"{DIM}-d"),
    ]
    before = sorted(os.listdir(tmp_path))
    for name, kw, message in expectations:
        for readonly in (False, True):
            with pytest.raises(GalleryError, match=message):
                open_gallery(tmp_path / name, readonly=readonly, **kw)
    assert sorted(os.listdir(tmp_path)) == before  # no -wal/-shm/-journal or temp files left
    assert {name: digest(tmp_path / name) for name in cases} == cases
    with pytest.raises(GalleryError, match="directory"):
        open_gallery(tmp_path)
    with pytest.raises(GalleryError, match="no such gallery"):
        open_gallery(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    assert issubclass(GalleryError, SfpnError)


def test_newer_format_and_damaged_rows_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    db = tmp_path / "g.db"
    with open_gallery(db) as g:
        g.enroll("ada", unit(rng, 2))
    raw = sqlite3.connect(db)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    raw.commit()
    with pytest.raises(GalleryError, match="newer"):
        open_gallery(db)
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    raw.execute("UPDATE embeddings SET vector = x'0000' WHERE id = 1")
    raw.commit()
    raw.close()
    with open_gallery(db) as g, pytest.raises(GalleryError, match="damaged"):
        g.identify(unit(rng, 1)[0])


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from sfpn_edge.gallery import FaceGallery
    path, start, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(start)
    with FaceGallery(path, model_sha256="{sha}", dim={dim}) as g:
        i = start
        while True:
            g.enroll(f"id{{i:06d}}", rng.standard_normal((per, {dim})).astype(np.float32) + 0.1)
            print(i, flush=True)
            i += 1
""").format(sha=SHA, dim=DIM)


def start_writer(db: Path, start: int, per: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(start), str(per)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(proc: subprocess.Popen, n: int, timeout: float = 60.0) -> int:
    """Read progress lines until ``n`` enrolments were committed; return the last index printed."""
    deadline = time.monotonic() + timeout
    last = -1
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, f"writer died: {proc.stderr.read()}"
        last = int(line)
        assert time.monotonic() < deadline, "writer too slow"
    return last


def check_consistent(db: Path, per: int) -> int:
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    counts = raw.execute("SELECT i.name, COUNT(e.id) FROM identities i LEFT JOIN embeddings e "
                         "ON e.identity = i.id GROUP BY i.id ORDER BY i.name").fetchall()
    orphans = raw.execute("SELECT COUNT(*) FROM embeddings WHERE identity NOT IN "
                          "(SELECT id FROM identities)").fetchone()[0]
    raw.close()
    assert orphans == 0
    assert all(c == per for _, c in counts), "an enrolment was stored partially"
    assert [n for n, _ in counts] == [f"id{i:06d}" for i in range(len(counts))]  # no gaps
    return len(counts)


def test_sigkill_mid_enrolment_loses_at_most_that_enrolment(tmp_path):
    db, per = tmp_path / "g.db", 200  # big enrolments: most of the writer's time is inside a transaction
    committed = 0
    rng = np.random.default_rng(5)
    for _ in range(4):
        proc = start_writer(db, committed, per)
        try:
            last = wait_for_lines(proc, 3)
            time.sleep(float(rng.uniform(0.0, 0.05)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        count = check_consistent(db, per)
        assert count >= last + 1  # every enrolment reported as committed survived
        committed = count
        with open_gallery(db) as g:  # reopens cleanly and searches
            assert len(g) == count
            assert len(g.identify(unit(rng, 1)[0] + 0.1, k=3)) == 3
    assert committed >= 12


READER = textwrap.dedent("""
    import sys, time, numpy as np
    from sfpn_edge.gallery import FaceGallery
    path, per, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(0)
    seen = 0
    with FaceGallery(path, model_sha256="{sha}", dim={dim}, readonly=True) as g:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ids = g.identities()
            assert all(i.images == per for i in ids), ids
            assert len(ids) >= seen
            seen = len(ids)
            g.identify(rng.standard_normal({dim}).astype(np.float32), k=3)
    print(seen)
""").format(sha=SHA, dim=DIM)


def test_concurrent_readers_while_enrolling(tmp_path):
    db, per = tmp_path / "g.db", 20
    writer = start_writer(db, 0, per)
    try:
        wait_for_lines(writer, 2)
        readers = [subprocess.Popen([sys.executable, "-c", READER, str(db), str(per), "1.0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(3)]
        with open_gallery(db, readonly=True) as g:  # an in-process reader picks up new commits
            first = len(g)
            g.identify(np.ones(DIM, np.float32), k=1)
            last = wait_for_lines(writer, 1)
            while last < first + 3:
                last = wait_for_lines(writer, 1)
            assert len(g) >= last + 1 > first
            assert len(g.identify(np.ones(DIM, np.float32), k=last + 1)) == last + 1
        outputs = [r.communicate(timeout=60) for r in readers]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    for reader, (out, err) in zip(readers, outputs):
        assert reader.returncode == 0, err
        assert int(out) >= 2
    check_consistent(db, per)


def test_concurrent_creation_yields_one_valid_gallery(tmp_path):
    db = tmp_path / "new.db"
    procs = [start_writer(db, 1000 * k, 1) for k in range(3)]
    try:
        for p in procs:
            wait_for_lines(p, 2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    with open_gallery(db, readonly=True) as g:
        assert len(g) >= 6
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
