"""The offline cache of a server gallery (``offline_cache=``), against a real PostgreSQL + pgvector."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from sfpn_edge import gallery_pg
from sfpn_edge.gallery import FaceGallery, GalleryError, check_gallery

from gallery_people import DIM, SHA, people


def answers(g: FaceGallery, probes: np.ndarray) -> tuple:
    """(names, scores) of calibrated and of raw answers, k=3."""
    out = []
    for calibrated in (True, False):
        rows = g.identify_batch(probes, k=3, calibrated=calibrated)
        out += [[[m.name for m in row] for row in rows], [[m.score for m in row] for row in rows]]
    return tuple(out)


def allow_connections(pg_server, url: str, allow: bool) -> None:
    """The database of ``url`` accepting connections again, or refusing them (its sessions cut): an
    outage of that gallery's server as its clients see it, the server itself left running."""
    name = url.split("?")[0].split("/")[-1]
    cut = "" if allow else (f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
                            "AND pid <> pg_backend_pid();")
    pg_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()};\n{cut}')


def cached_names(path) -> list:
    with FaceGallery(path, model_sha256=SHA, dim=DIM, readonly=True) as cache:
        return [i.name for i in cache.identities()]


def test_the_cache_answers_as_the_server_when_the_server_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_pg, "OFFLINE_RETRY_S", 0.0)  # every read tries the server again
    pgserver = pytest.importorskip("pgserver", reason="pgserver (PostgreSQL + pgvector wheel) is x86_64 only")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    url, cache = server.get_uri("postgres"), tmp_path / "cache" / "door.db"
    gallery = people(20, 4)
    probes = np.stack([v[0] + 0.05 for v in gallery.values()])
    plain = FaceGallery(url, model_sha256=SHA, dim=DIM)
    plain.enroll_many(list(gallery.items()))
    assert plain.calibration is not None
    summary, version, op = plain.calibration_summary(), plain._query_version(), plain.operating_point(1e-2)
    g = FaceGallery(url, model_sha256=SHA, dim=DIM, offline_cache=cache)
    server_answers = answers(g, probes)  # online: the cache file's search matrix, as a gallery file's
    assert g.offline is None and cache.exists()
    for mine, theirs in zip(server_answers, answers(plain, probes)):  # names equal, scores to rounding
        assert mine == theirs if isinstance(mine[0][0], str) else np.allclose(mine, theirs, atol=1e-5)
    assert not any(p.name.endswith(".tmp") for p in cache.parent.iterdir())
    server.cleanup()  # the server stops: the next read fails after its retries, then the cache answers
    assert answers(g, probes) == server_answers  # the same names and scores, calibrated and raw
    assert g.offline.path == cache and g.offline.data_version == version and 0 <= g.offline.age_s < 600
    assert g._offline is g._searched  # the index built online answers: no second copy, no rebuild
    assert len(g) == 20 and "p003" in g and g.calibration_summary() == summary
    before = cache.read_bytes()
    for write in (lambda: g.enroll("new", probes[0]), lambda: g.remove("p001"), lambda: g.rename("p002", "x"),
                  g.recalibrate):
        with pytest.raises(GalleryError, match="gallery server unreachable"):
            write()
    assert cache.read_bytes() == before
    with FaceGallery(url, model_sha256=SHA, dim=DIM, readonly=True, offline_cache=cache) as door:  # opened offline
        assert answers(door, probes) == server_answers and door.offline.data_version == version
        assert door.operating_point(1e-2) == op and len(door) == 20
    with pytest.raises(GalleryError, match="cannot open gallery: server unreachable"):
        FaceGallery(url, model_sha256=SHA, dim=DIM)
    with pytest.raises(GalleryError, match="server unreachable .*; no offline cache yet at .*none.db"):
        FaceGallery(url, model_sha256=SHA, dim=DIM, offline_cache=tmp_path / "none.db")
    door = FaceGallery(url, model_sha256=SHA, dim=DIM, offline_cache=cache)
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")  # the server is back
    assert server.get_uri("postgres") == url
    assert answers(g, probes) == server_answers and g.offline is None
    assert answers(door, probes) == server_answers and door.offline is None  # checked against the server first
    assert len(plain) == 20 and "new" not in plain and plain._query_version() == version  # nothing was queued
    for gallery_ in (g, door, plain):
        gallery_.close()
    server.cleanup()


def test_the_cache_follows_other_devices_and_the_server_coming_back(pg_server, pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    monkeypatch.setattr(gallery_pg, "OFFLINE_RETRY_S", 0.0)
    vectors, cache = people(4, 2), tmp_path / "door.db"
    admin = FaceGallery(pg_url, model_sha256=SHA, dim=DIM)
    admin.enroll_many([(n, v) for n, v in vectors.items() if n != "p003"])
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, readonly=True, offline_cache=cache) as door:
        assert door.identify(vectors["p001"][0], k=1)[0].name == "p001"
        assert cached_names(cache) == ["p000", "p001", "p002"]
        admin.enroll("p003", vectors["p003"])  # another device's write: data_version bumped
        assert door.identify(vectors["p003"][0], k=1)[0].name == "p003"  # the index and the cache follow it
        assert cached_names(cache) == ["p000", "p001", "p002", "p003"]
        version = admin._query_version()
        allow_connections(pg_server, pg_url, False)
        try:
            assert door.identify(vectors["p003"][0], k=1)[0].name == "p003"
            assert door.offline.data_version == version
            with pytest.raises(GalleryError, match="gallery server unreachable"):
                admin.remove("p000")
        finally:
            allow_connections(pg_server, pg_url, True)
        admin.enroll("p004", vectors["p000"][0] + 1)
        assert door.identify(vectors["p000"][0] + 1, k=1)[0].name == "p004" and door.offline is None
        assert cached_names(cache) == ["p000", "p001", "p002", "p003", "p004"]  # p000 not removed: never queued
    admin.close()


def test_a_cache_of_another_model_size_or_gallery_is_refused(pg_server, pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    cache, plain_file = tmp_path / "door.db", tmp_path / "plain.db"
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache) as g:
        g.enroll("ada", np.ones(DIM, np.float32))
        g.identify(np.ones(DIM, np.float32))
    with FaceGallery(plain_file, model_sha256=SHA, dim=DIM) as g:
        g.enroll("ada", np.ones(DIM, np.float32))
    with pytest.raises(ValueError, match="offline_cache is for postgresql:// galleries"):
        FaceGallery(plain_file, model_sha256=SHA, dim=DIM, offline_cache=cache)
    allow_connections(pg_server, pg_url, False)
    try:
        with pytest.raises(GalleryError, match="offline cache cannot be used: .*enrolled with another model"):
            FaceGallery(pg_url, model_sha256="cd" * 32, dim=DIM, offline_cache=cache)
        with pytest.raises(GalleryError, match="offline cache cannot be used: .*holds 64-d embeddings"):
            FaceGallery(pg_url, model_sha256=SHA, dim=128, offline_cache=cache)
        with pytest.raises(GalleryError, match="offline cache cannot be used: .*plain.db: not an offline cache of "
                                               "postgresql://"):
            FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=plain_file)
        with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache) as g:
            assert g.identify(np.ones(DIM, np.float32), k=1)[0].name == "ada" and g.offline is not None
    finally:
        allow_connections(pg_server, pg_url, True)


def test_a_truncated_or_missing_cache_is_a_clear_error_and_rebuilt(pg_server, pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    vectors, cache = people(30, 3), tmp_path / "door.db"
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache) as g:
        g.enroll_many(list(vectors.items()))
        assert g.identify(vectors["p007"][0], k=1)[0].name == "p007"
        with open(cache, "r+b") as fh:
            fh.truncate(cache.stat().st_size // 2)
        allow_connections(pg_server, pg_url, False)
        try:
            with pytest.raises(GalleryError, match=r"gallery server unreachable .*; the offline cache cannot be "
                                                   r"used: .*door.db: not a readable sfpn-edge gallery"):
                g.identify(vectors["p007"][0], k=1)
            with pytest.raises(GalleryError, match="offline cache cannot be used"):
                FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache)
        finally:
            allow_connections(pg_server, pg_url, True)
        assert g.identify(vectors["p007"][0], k=1)[0].name == "p007" and g.offline is None
        assert check_gallery(cache)["identities"] == 30  # rewritten by the read from the server
        cache.unlink()
        allow_connections(pg_server, pg_url, False)
        try:
            with pytest.raises(GalleryError, match="no offline cache yet at"):
                g.identify(vectors["p007"][0], k=1)
        finally:
            allow_connections(pg_server, pg_url, True)
        assert g.identify(vectors["p007"][0], k=1)[0].name == "p007" and cache.exists()  # and written again
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache's directory should be")
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=blocked / "door.db") as g:
        with pytest.raises(GalleryError, match="door.db: cannot write the offline cache"):
            g.identify(vectors["p007"][0], k=1)  # never a device silently without its cache


KILLED = """
import sys, time, numpy as np
from sfpn_edge import gallery
from sfpn_edge.gallery import FaceGallery
url, cache, hook = sys.argv[1:]
def pause(*args):
    print("paused", flush=True)
    time.sleep(120)
if hook == "replace":  # the new cache written and fsynced, not yet in place
    gallery.os.replace = pause
else:  # the new cache half written: schema made, rows not yet inserted, transaction open
    create = gallery._create_schema
    gallery._create_schema = lambda *args: (create(*args), pause())
with FaceGallery(url, model_sha256={sha!r}, dim={dim}, offline_cache=cache) as g:
    g.identify(np.ones({dim}, np.float32))
""".format(sha=SHA, dim=DIM)


@pytest.mark.parametrize("hook", ["replace", "rows"])
def test_a_process_killed_while_writing_the_cache_leaves_the_old_one(pg_server, pg_url, tmp_path, monkeypatch, hook):
    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    vectors, cache = people(3, 2), tmp_path / "door.db"
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache) as g:
        g.enroll_many([(n, v) for n, v in vectors.items() if n != "p002"])
        g.identify(vectors["p000"][0])
        version = g._query_version()
        g.enroll("p002", vectors["p002"])
    proc = subprocess.Popen([sys.executable, "-c", KILLED, pg_url, str(cache), hook], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "paused\n", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[-1] == "door.db" and left[0].startswith(".door.db.") and ".tmp" in left[0]  # the kill's leftover
    assert check_gallery(cache)["identities"] == 2 and cached_names(cache) == ["p000", "p001"]  # the old one
    allow_connections(pg_server, pg_url, False)
    try:
        with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache) as g:
            assert g.identify(vectors["p001"][0], k=1)[0].name == "p001" and g.offline.data_version == version
    finally:
        allow_connections(pg_server, pg_url, True)


def test_offline_reads_wait_for_the_retry_interval_and_writes_try_at_once(pg_server, pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    monkeypatch.setattr(gallery_pg, "OFFLINE_RETRY_S", 60.0)
    vectors, cache = people(3, 2), tmp_path / "door.db"
    admin = FaceGallery(pg_url, model_sha256=SHA, dim=DIM)
    admin.enroll_many(list(vectors.items()))
    door = FaceGallery(pg_url, model_sha256=SHA, dim=DIM, offline_cache=cache)
    assert door.identify(vectors["p001"][0], k=1)[0].name == "p001"
    attempts = []
    connect = gallery_pg._Connection.__init__
    monkeypatch.setattr(gallery_pg._Connection, "__init__", lambda *a, **k: (attempts.append(1), connect(*a, **k))[1])
    allow_connections(pg_server, pg_url, False)
    try:
        for _ in range(5):  # the first loses its connection; the rest answer from the cache, no new connection
            assert door.identify(vectors["p002"][0], k=1)[0].name == "p002" and door.offline is not None
        assert len(attempts) == 0
        with pytest.raises(GalleryError, match="gallery server unreachable"):
            door.enroll("late", vectors["p000"][0])  # a write tries the server at once
        assert len(attempts) == 1
    finally:
        allow_connections(pg_server, pg_url, True)
    door.enroll("late", vectors["p000"][0] + 1)  # the server is back: the write goes through, before the interval
    assert door.offline is None and door.identify(vectors["p000"][0] + 1, k=1)[0].name == "late"
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM, readonly=True) as fresh:  # admin's session was cut
        assert "late" in fresh and len(fresh) == 4
    for g in (door, admin):
        g.close()
