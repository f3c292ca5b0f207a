"""The gallery on a real PostgreSQL + pgvector server (``postgresql://`` URLs)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sfpn_edge.gallery import FaceGallery, GalleryError, open_gallery

SHA = "ab" * 32
DIM = 64


def people(n: int, photos: int, seed: int = 0) -> dict:
    """Identities with ``photos`` noisy non-negative embeddings around their own centre."""
    rng = np.random.default_rng(seed)
    centres = rng.random((n, DIM))
    return {f"p{i:03d}": np.abs(centres[i] + 0.15 * rng.standard_normal((photos, DIM))).astype(np.float32)
            for i in range(n)}


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
