"""The gallery on a real PostgreSQL + pgvector server (``postgresql://`` URLs)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sfpn_edge.gallery import FaceGallery, GalleryError, open_gallery

from gallery_people import DIM, SHA, people


@pytest.mark.parametrize("url", ["mysql://host/db", "file:///tmp/x.db", "sqlite://g.db", "Postgresq1://h/d"])
def test_other_url_schemes_are_refused_and_create_nothing(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GalleryError, match="galleries are not supported"):
        FaceGallery(url, model_sha256=SHA, dim=DIM)
    with pytest.raises(GalleryError, match="galleries are not supported"):
        open_gallery(url)
    assert list(tmp_path.iterdir()) == []


def test_round_trip_answers_as_the_sqlite_gallery(tmp_path, pg_url):
    gallery = people(20, 4)
    probes = np.stack([v[0] + 0.05 for v in gallery.values()])
    answers = []
    for db in (tmp_path / "g.db", pg_url):
        with FaceGallery(db, model_sha256=SHA, dim=DIM) as g:
            g.enroll_many(list(gallery.items()))
            assert g.calibration is not None  # 80 photos: fitted on the store's own rows
            assert g.remove("p019") and g.rename("p018", "q018").name == "q018"
            answers.append((g.identify_batch(probes, k=3), g.identify_batch(probes, k=3, calibrated=False),
                            [(i.name, i.images) for i in g.identities()], g.stored_calibration().entry(),
                            g.embeddings("p001")))
        with open_gallery(db) as g:
            assert len(g) == 19 and g.info()["bytes"] > 0
    (cal_s, raw_s, ids_s, entry_s, emb_s), (cal_p, raw_p, ids_p, entry_p, emb_p) = answers
    assert ids_s == ids_p and np.array_equal(emb_s, emb_p)
    assert {k: v for k, v in entry_s.items() if k not in ("fit_seconds", "created")} == \
           {k: v for k, v in entry_p.items() if k not in ("fit_seconds", "created")}
    for a, b in ((cal_s, cal_p), (raw_s, raw_p)):
        assert [[m.name for m in row] for row in a] == [[m.name for m in row] for row in b]
        assert np.allclose([[m.score for m in row] for row in a], [[m.score for m in row] for row in b], atol=1e-5)


def test_binding_checks_refuse_before_writing(pg_server, pg_url):
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM) as g:
        g.enroll("ada", people(1, 2)["p000"])
    with pytest.raises(GalleryError, match="another model"):
        FaceGallery(pg_url, model_sha256="cd" * 32, dim=DIM)
    with pytest.raises(GalleryError, match="64-d embeddings"):
        FaceGallery(pg_url, model_sha256=SHA, dim=128)
    with open_gallery(pg_url) as g:
        assert [(i.name, i.images) for i in g.identities()] == [("ada", 2)] and g.model_sha256 == SHA
    with pytest.raises(GalleryError, match="no such gallery"):
        FaceGallery(pg_server.get_uri("postgres"), model_sha256=SHA, dim=DIM, readonly=True)


def test_psycopg_is_imported_only_for_a_url(tmp_path, pg_url):
    code = ("import sys, numpy as np\nfrom sfpn_edge.gallery import FaceGallery\n"
            f"g = FaceGallery(sys.argv[1], model_sha256={SHA!r}, dim={DIM})\n"
            f"g.enroll('ada', np.ones({DIM}, np.float32)); g.identify(np.ones({DIM}, np.float32))\n"
            "print('psycopg' in sys.modules)")
    for db, imported in ((str(tmp_path / "g.db"), "False"), (pg_url, "True")):
        out = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == imported


WORKER = """
import sys, numpy as np
from sfpn_edge.gallery import FaceGallery
url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(worker)
with FaceGallery(url, model_sha256={sha!r}, dim={dim}) as g:
    for j in range(count):
        vectors = rng.random((2, {dim})).astype(np.float32)
        g.enroll(f"w{{worker}}-{{j:03d}}", vectors, calibrate=False)
        assert g.identify(vectors[0], k=1)[0].name == f"w{{worker}}-{{j:03d}}"  # sees its own write
        print(j, flush=True)
""".format(sha=SHA, dim=DIM)


def worker(url: str, n: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(n), str(count)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_four_devices_enrolling_at_once_lose_nothing(pg_url):
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM) as g:
        g.enroll("keep", np.ones(DIM, np.float32))
        g.identify(np.ones(DIM, np.float32))
        procs = [worker(pg_url, n, 25) for n in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        assert len(g) == 101 and len(g.identify(np.ones(DIM, np.float32), k=200)) == 101  # index refreshed
        assert sorted(i.images for i in g.identities()) == [1] + [2] * 100
        assert g._row_changes() == 201


def test_a_client_killed_mid_enrolment_loses_nothing_else(pg_url):
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM) as g:
        g.enroll("keep", np.ones(DIM, np.float32))
        proc = worker(pg_url, 1, 10_000)
        for _ in range(5):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        g.enroll("after", np.ones(DIM, np.float32))  # the lock died with the killed client's session
        names = {i.name: i.images for i in g.identities()}
        assert names.pop("keep") == 1 and names.pop("after") == 1
        assert len(names) >= 5 and set(names.values()) == {2}
        assert g._row_changes() == 2 + 2 * len(names)


def test_a_terminated_connection_is_replaced_for_reads_and_writes(pg_server, pg_url):
    vectors = people(3, 2)
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM) as g:
        g.enroll_many(list(vectors.items()))
        name = pg_url.split("?")[0].split("/")[-1]
        assert "1 row" in pg_server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         f"WHERE datname = '{name}' AND pid <> pg_backend_pid();")
        assert len(g) == 3 and g.identify(vectors["p001"][0], k=1)[0].name == "p001"
        pg_server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
                       "AND pid <> pg_backend_pid();")
        g.enroll("ada", vectors["p000"][0] + 1)
        assert "ada" in g


def test_a_stopped_server_is_a_clear_error_without_the_password(tmp_path):
    pgserver = pytest.importorskip("pgserver", reason="pgserver (PostgreSQL + pgvector wheel) is x86_64 only")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    url = server.get_uri("postgres").replace("postgres:@", "postgres:s3cret@")
    g = FaceGallery(url, model_sha256=SHA, dim=DIM)
    g.enroll("ada", np.ones(DIM, np.float32))
    server.cleanup()
    started = time.monotonic()
    with pytest.raises(GalleryError, match=r"postgresql://postgres@/tmp/.*/postgres: gallery server unreachable "
                                           r"after 5 attempts") as read:
        g.identify(np.ones(DIM, np.float32))
    assert 1.5 < time.monotonic() - started < 10
    with pytest.raises(GalleryError, match="unreachable") as write:
        g.enroll("bob", np.ones(DIM, np.float32))
    with pytest.raises(GalleryError, match="cannot open gallery") as reopen:
        FaceGallery(url, model_sha256=SHA, dim=DIM)
    with pytest.raises(GalleryError, match="gallery server unreachable") as meta:
        open_gallery(url)
    assert all("s3cret" not in str(e.value) for e in (read, write, reopen, meta))
    g.close()


def test_a_connection_lost_during_commit_is_reported_as_unknown_outcome(pg_server, pg_url):
    with FaceGallery(pg_url, model_sha256=SHA, dim=DIM) as g:
        g.enroll("ada", np.ones(DIM, np.float32))
        # a deferred trigger holds COMMIT for 3 s, long enough to cut the connection in the middle of it
        pg_server.psql(f"\\c {pg_url.split('?')[0].split('/')[-1]}\n"
                       "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;\n"
                       "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON identities DEFERRABLE "
                       "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow();")
        pid = g._db.conn.info.backend_pid
        cut = threading.Timer(1.0, pg_server.psql, [f"SELECT pg_terminate_backend({pid});"])
        cut.start()
        with pytest.raises(GalleryError, match="while committing: the change may or may not have been stored"):
            g.enroll("bob", np.ones(DIM, np.float32))
        cut.join()
        assert [i.name for i in g.identities()] == ["ada"]  # this time it was not: the backend died first
