"""sfpn-edge gallery list / info / remove / rename on synthetic galleries, and the photo-hash store."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from sfpn_edge.cli import main
from sfpn_edge.gallery import FORMAT_VERSION, EmbeddingError, FaceGallery, GalleryError, check_gallery

SHA, DIM = "cd" * 32, 32
PHOTO = ["%064x" % i for i in range(1, 6)]


def make(path, people: dict) -> None:
    rng = np.random.default_rng(3)
    with FaceGallery(path, model_sha256=SHA, dim=DIM) as g:
        for name, hashes in people.items():
            g.enroll(name, rng.standard_normal((len(hashes), DIM)), photo_sha256=hashes)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_info(tmp_path, capsys):
    db = tmp_path / "g.db"
    make(db, {"bob": PHOTO[:2], "ada": [PHOTO[2], None]})
    code, out, _ = run(capsys, "gallery", "list", db, "--json")
    people = json.loads(out)["identities"]
    assert code == 0 and [(p["name"], p["images"]) for p in people] == [("ada", 2), ("bob", 2)]
    assert people[0]["enrolled"].endswith("Z")
    code, out, _ = run(capsys, "gallery", "list", db)
    assert code == 0 and "2 identities" in out and out.splitlines()[0].startswith("ada")
    code, out, _ = run(capsys, "gallery", "info", db, "--json")
    info = json.loads(out)
    assert code == 0 and (info["identities"], info["embeddings"], info["photo_hashes"]) == (2, 4, 3)
    assert info["model_sha256"] == SHA and info["descriptor_dim"] == DIM and info["format_version"] == FORMAT_VERSION
    code, _, err = run(capsys, "gallery", "info", tmp_path / "none.db")
    assert code == 2 and "no such gallery" in err and not (tmp_path / "none.db").exists()


def test_remove_is_all_or_nothing(tmp_path, capsys):
    db = tmp_path / "g.db"
    make(db, {"ada": PHOTO[:1], "bob": PHOTO[1:2], "cy": PHOTO[2:3]})
    code, _, err = run(capsys, "gallery", "remove", db, "ada", "nobody")
    assert code == 2 and "'nobody' is not enrolled; nothing was removed" in err and err.count("\n") == 1
    with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
        assert [i.name for i in g.identities()] == ["ada", "bob", "cy"]
    code, out, _ = run(capsys, "gallery", "remove", db, "ada", "cy", "--json")
    assert code == 0 and json.loads(out) == {"db": str(db), "removed": ["ada", "cy"], "identities": 1}
    with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
        assert [i.name for i in g.identities()] == ["bob"]
        assert g.enrolled_photos(PHOTO[:3]) == {PHOTO[1]: "bob"}  # removed people's photos are gone too


def test_rename_keeps_embeddings_and_checksums(tmp_path, capsys):
    db = tmp_path / "g.db"
    make(db, {"ada": PHOTO[:2], "bob": PHOTO[2:3]})
    with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
        before = g.embeddings("ada")
    code, _, err = run(capsys, "gallery", "rename", db, "ada", "bob")
    assert code == 2 and "'bob' is already enrolled" in err
    code, _, err = run(capsys, "gallery", "rename", db, "zed", "zoe")
    assert code == 2 and "'zed' is not enrolled" in err
    code, out, _ = run(capsys, "gallery", "rename", db, "ada", "ada lovelace")
    assert code == 0 and "renamed 'ada' to 'ada lovelace' (2 photo(s))" in out
    assert check_gallery(db)["identities"] == 2  # every row checksum (which covers the name) still holds
    with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
        np.testing.assert_array_equal(g.embeddings("ada lovelace"), before)
        assert "ada" not in g and g.enrolled_photos(PHOTO[:1]) == {PHOTO[0]: "ada lovelace"}
    code, _, err = run(capsys, "gallery", "rename", db, "bob", "")
    assert code == 2 and "non-empty" in err


def test_photo_hashes_are_checked_and_survive_reopening(tmp_path):
    db = tmp_path / "g.db"
    make(db, {"ada": PHOTO[:2]})
    with FaceGallery(db, model_sha256=SHA, dim=DIM) as g:
        with pytest.raises(EmbeddingError, match="64 hex digits"):
            g.enroll("bob", np.ones(DIM), photo_sha256=["not-a-hash"])
        with pytest.raises(EmbeddingError, match="photo hashes"):
            g.enroll("bob", np.ones((2, DIM)), photo_sha256=PHOTO[:1])
        assert g.enrolled_photos([PHOTO[0].upper(), PHOTO[4]]) == {PHOTO[0]: "ada"}
        g.enroll("ada", np.ones(DIM), photo_sha256=[PHOTO[4]], replace=True)
        assert g.enrolled_photos(PHOTO) == {PHOTO[4]: "ada"}
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT COUNT(*) FROM embeddings WHERE photo_sha256 IS NOT NULL").fetchone()[0] == 1
    raw.close()
    with pytest.raises(GalleryError, match="opened read-only"):
        with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
            g.rename("ada", "bob")


def test_format2_gallery_is_upgraded_keeping_its_rows(tmp_path):
    db = tmp_path / "v2.db"
    make(db, {"ada": [None, None]})
    raw = sqlite3.connect(db)  # back to format 2: no photo_sha256 column
    raw.executescript("DROP INDEX embeddings_photo; ALTER TABLE embeddings DROP COLUMN photo_sha256; "
                      "UPDATE meta SET value = '2' WHERE key = 'format_version'; PRAGMA user_version = 2;")
    raw.close()
    with FaceGallery(db, model_sha256=SHA, dim=DIM, readonly=True) as g:
        assert g.format_version == 2 and g.enrolled_photos(PHOTO) == {} and g.info()["photo_hashes"] == 0
    with FaceGallery(db, model_sha256=SHA, dim=DIM) as g:  # writable: upgraded in one transaction
        assert g.format_version == FORMAT_VERSION
        g.enroll("bob", np.ones(DIM), photo_sha256=PHOTO[:1])
        assert g.enrolled_photos(PHOTO) == {PHOTO[0]: "bob"}
    assert check_gallery(db)["embeddings"] == 3 and check_gallery(db)["format_version"] == FORMAT_VERSION
