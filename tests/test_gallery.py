"""FaceGallery: persistence, atomic enrolment under a real SIGKILL, concurrent readers, foreign files."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.cli import main as cli_main
from sfpn_edge.errors import SfpnError
from sfpn_edge.gallery import (APPLICATION_ID, FORMAT_VERSION, EmbeddingError, FaceGallery, GalleryError,
                               check_gallery, row_checksum)

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
    with open_gallery(tmp_path / "g.db", template=template, storage=storage, calibration=False) as g:
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
    raw.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
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
    with open_gallery(db, readonly=False):  # a writer removes what writers killed mid-write left
        pass
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


# ---------------------------------------------------------------- damage and hostile files (issue 20)

FORMAT1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, enrolled REAL NOT NULL);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    identity INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    source TEXT,
    vector BLOB NOT NULL
);
CREATE INDEX embeddings_identity ON embeddings(identity);
"""


def write_format1(path: Path, people: dict) -> None:
    """A gallery as sfpn-edge 0.1.0 (format 1, no row checksums) wrote it: {name: [n, DIM] unit rows}."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.executescript(FORMAT1_SCHEMA)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "sfpn-edge-gallery"), ("format_version", "1"),
                                                       ("model_sha256", SHA), ("descriptor_dim", str(DIM))])
    for name, vectors in people.items():
        ident = db.execute("INSERT INTO identities (name, enrolled) VALUES (?, 0)", (name,)).lastrowid
        db.executemany("INSERT INTO embeddings (identity, source, vector) VALUES (?, NULL, ?)",
                       [(ident, v.astype("<f4").tobytes()) for v in vectors])
    db.execute("PRAGMA journal_mode = WAL")
    db.close()


def test_format1_gallery_is_read_as_is_and_upgraded_when_written(tmp_path):
    rng = np.random.default_rng(7)
    people = {f"p{i}": unit(rng, 2) for i in range(5)}
    db = tmp_path / "old.db"
    write_format1(db, people)
    before = digest(db)
    probe = people["p3"].mean(0)
    with open_gallery(db, readonly=True) as g:
        assert g.format_version == 1 and g.identify(probe, k=1)[0].name == "p3"
    assert check_gallery(db)["format_version"] == 1
    assert digest(db) == before  # reading and checking never write
    with open_gallery(db) as g:  # opening for writing upgrades it in one transaction
        assert g.format_version == FORMAT_VERSION
        g.enroll("new", unit(rng, 1))
        assert g.identify(probe, k=1)[0].name == "p3"
    raw = sqlite3.connect(db)
    rows = raw.execute("SELECT i.name, e.vector, e.checksum FROM embeddings e JOIN identities i "
                       "ON i.id = e.identity").fetchall()
    assert raw.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0] == str(FORMAT_VERSION)
    assert "photo_sha256" in [row[1] for row in raw.execute("PRAGMA table_info(embeddings)")]  # format 3
    raw.close()
    assert len(rows) == 11 and all(c == row_checksum(n, v) for n, v, c in rows)
    assert check_gallery(db)["embeddings"] == 11


def test_format1_gallery_with_a_damaged_row_is_not_blessed_with_checksums(tmp_path):
    rng = np.random.default_rng(8)
    bad = unit(rng, 2)
    bad[1, :3] = 7.0  # no longer unit length: damage
    db = tmp_path / "old.db"
    write_format1(db, {"ok": unit(rng, 1), "bad": bad})
    before = digest(db)
    with pytest.raises(GalleryError, match="not unit length"):
        open_gallery(db)
    assert digest(db) == before


def _copy_with_page_damaged(src: Path, dst: Path, page: int, seed: int) -> None:
    data = bytearray(src.read_bytes())
    start = page * 4096 + 512 + 1024 * (seed % 3)
    data[start:start + 400] = np.random.default_rng(page * 7 + seed).bytes(400)
    dst.write_bytes(bytes(data))


def test_damaged_pages_are_refused_never_served(tmp_path):
    """Every page of a real gallery file damaged in turn: each copy is refused with the check
    that failed named, or (damage in unused space) still gives exactly the right answers."""
    rng = np.random.default_rng(9)
    people = {f"id{i:02d}": unit(rng, 2, 1000) for i in range(30)}
    src = tmp_path / "g.db"
    with open_gallery(src, dim=1000) as g:
        for name, vectors in people.items():
            g.enroll(name, vectors)
    probes = {name: v.mean(0) for name, v in people.items()}
    pages = src.stat().st_size // 4096
    outcomes = {"served correctly": 0}
    for page in range(1, pages):
        for seed in range(2):
            copy = tmp_path / "copy.db"
            _copy_with_page_damaged(src, copy, page, seed)
            oracle = sqlite3.connect(f"{copy.as_uri()}?mode=ro&immutable=1", uri=True)
            try:
                intact = oracle.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            except sqlite3.DatabaseError:
                intact = False
            oracle.close()
            try:
                with open_gallery(copy, dim=1000, readonly=True) as g:
                    got = {name: g.identify(p, k=1)[0] for name, p in probes.items()}
            except GalleryError as exc:
                assert "\n" not in str(exc) and "damaged gallery" in str(exc) or "readable" in str(exc)
                key = "checksum" if "checksum" in str(exc) else "other"
                outcomes[key] = outcomes.get(key, 0) + 1
            else:
                assert all(m.name == n and m.score > 0.999 for n, m in got.items()), (page, seed)
                outcomes["served correctly"] += 1
            if not intact:
                with pytest.raises(GalleryError, match="quick_check|readable"):
                    open_gallery(copy, dim=1000)  # opening for writing runs PRAGMA quick_check
                with pytest.raises(GalleryError):
                    check_gallery(copy)
    assert outcomes.get("checksum", 0) >= 30  # most pages hold embedding rows


def test_zero_and_nonunit_blobs_are_refused_on_read(tmp_path):
    rng = np.random.default_rng(10)
    db = tmp_path / "g.db"
    with open_gallery(db) as g:
        g.enroll("ada", unit(rng, 1))
        g.enroll("bob", unit(rng, 1))
    raw = sqlite3.connect(db)
    zero = bytes(4 * DIM)
    raw.execute("UPDATE embeddings SET vector = ?, checksum = ? WHERE id = 1", (zero, row_checksum("ada", zero)))
    raw.commit()
    raw.close()
    for template in ("mean", "all"):  # before: a NaN template and a ValueError traceback
        with open_gallery(db, readonly=True, template=template) as g, pytest.raises(GalleryError,
                                                                                     match="not unit length"):
            g.identify(unit(rng, 1)[0])
    with pytest.raises(GalleryError, match="not unit length"):
        check_gallery(db)
    raw = sqlite3.connect(db)
    good = unit(rng, 1)[0].astype("<f4").tobytes()
    raw.execute("UPDATE embeddings SET vector = ?, checksum = ? WHERE id = 1", (good, row_checksum("ada", good)))
    raw.execute("UPDATE embeddings SET vector = ? WHERE id = 2", (good,))  # bob's row, ada's checksum
    raw.commit()
    raw.close()
    with pytest.raises(GalleryError, match="'bob' fails its row checksum"):
        check_gallery(db)


def test_embeddings_checked_on_write(tmp_path):
    rng = np.random.default_rng(11)
    tiny = (unit(rng, 1) * 1e-41).astype(np.float32)  # subnormal values: still a direction
    with open_gallery(tmp_path / "g.db") as g:
        g.enroll("tiny", tiny)
        np.testing.assert_allclose(np.linalg.norm(g.embeddings("tiny"), axis=1), 1.0, rtol=1e-5)
        for bad, message in [(np.zeros((1, DIM)), "all zeros"), (np.full((1, DIM), np.inf), "NaN or infinity"),
                             (np.full((1, DIM), 1e39), "NaN or infinity")]:
            with pytest.raises(EmbeddingError, match=message):
                g.enroll("x", bad)
        assert issubclass(EmbeddingError, ValueError) and issubclass(EmbeddingError, SfpnError)


def test_undecodable_names_and_sources(tmp_path):
    rng = np.random.default_rng(12)
    with open_gallery(tmp_path / "g.db") as g:
        name = os.fsdecode(b"caf\xe9")  # a Latin-1 name from argv: surrogate escape, not UTF-8
        with pytest.raises(GalleryError, match="not valid UTF-8"):
            g.enroll(name, unit(rng, 1))
        g.enroll("ada", unit(rng, 1), [os.fsdecode(b"/photos/\xff.jpg")])
        assert len(g) == 1
    raw = sqlite3.connect(tmp_path / "g.db")
    assert raw.execute("SELECT source FROM embeddings").fetchone()[0] == "/photos/\\xff.jpg"
    raw.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_as_gallery_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.db"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "good.db"
    with open_gallery(good):
        pass
    os.mkfifo(tmp_path / "good.db-wal")  # a journal that is not a file: SQLite would open it
    results = {}

    def attempt(path):
        try:
            open_gallery(path, readonly=True)
            results[path] = "opened"
        except GalleryError as exc:
            results[path] = str(exc)

    for path in (fifo, zero, good):
        thread = threading.Thread(target=attempt, args=(path,), daemon=True)
        thread.start()
        thread.join(5)
        if thread.is_alive():  # the old code opened the FIFO and blocked: unblock it, then fail
            with open(fifo if path != good else tmp_path / "good.db-wal", "wb"):
                pass
            thread.join(5)
            results[path] = "hung"
    assert results[fifo].endswith("is a FIFO, not a regular file; a gallery is an SQLite file")
    assert "is a device, not a regular file" in results[zero]
    assert "good.db-wal: is a FIFO" in results[good]


def test_cli_gallery_check(tmp_path, capsys):
    rng = np.random.default_rng(13)
    db = tmp_path / "g.db"
    with open_gallery(db) as g:
        g.enroll("ada", unit(rng, 2))
    assert cli_main(["gallery", "check", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["identities"], report["embeddings"], report["format_version"]) == (1, 2, FORMAT_VERSION)
    assert report["checks"] == ["header", "quick_check", "meta", "foreign_key_check", "rows", "calibration"]
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA foreign_keys = OFF")
    raw.execute("DELETE FROM identities")  # leaves embeddings without an identity
    raw.commit()
    raw.close()
    assert cli_main(["gallery", "check", str(db)]) == 2
    err = capsys.readouterr().err
    assert "foreign_key_check" in err and err.count("\n") == 1
    assert cli_main(["gallery", "check", str(tmp_path / "missing.db")]) == 2
    assert "no such gallery" in capsys.readouterr().err
