"""enroll --from-dir, duplicate photos, failed enrolments leave no file, identify on several photos
(exit 0 / 1 / 2), --security and the measured genuine-accept rates, on real CFP photos."""
from __future__ import annotations

import io
import json
import shutil

import cv2
import numpy as np
import pytest

from sfpn_edge.cli import main
from sfpn_edge.gallery import FaceGallery, open_gallery
from sfpn_edge.progress import Progress


def photo(cfp_root, person: int, kind: str = "frontal", n: int = 1):
    return cfp_root / "Data" / "Images" / f"{person:03d}" / kind / f"{n:02d}.jpg"


@pytest.fixture
def cli(model_dir, mtcnn_dir, capsys):
    """``sfpn-edge ARGS`` with the test model and MTCNN, one thread: (exit code, stdout, stderr)."""
    def run(*args):
        code = main([str(a) for a in args] + ["--model", str(model_dir), "--detector", "mtcnn",
                                               "--detector-weights", str(mtcnn_dir), "--threads", "1"])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def people_dir(tmp_path, cfp_root):
    root = tmp_path / "people"
    for name, person in (("ada", 50), ("bob", 51)):
        (root / name).mkdir(parents=True)
        for n in (1, 2):
            shutil.copy(photo(cfp_root, person, n=n), root / name / f"{n:02d}.jpg")
    shutil.copy(photo(cfp_root, 50, n=1), root / "ada" / "copy.JPG")  # same bytes as ada/01.jpg
    (root / "ada" / "notes.txt").write_text("not a photo")
    cv2.imwrite(str(root / "bob" / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    (root / "cy").mkdir()
    cv2.imwrite(str(root / "cy" / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    (root / "empty").mkdir()
    return root


def test_enroll_from_dir_skips_and_summarises(cli, cfp_root, tmp_path):
    root, db = people_dir(tmp_path, cfp_root), tmp_path / "g.db"
    code, out, err = cli("enroll", "--db", db, "--from-dir", root, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert [(p["name"], p["added"]) for p in record["people"]] == [("ada", 2), ("bob", 2)]
    reasons = {s["image"]: s["reason"] for s in record["skipped"]}
    assert reasons[str(root / "ada" / "copy.JPG")] == f"duplicate: same photo as {root / 'ada' / '01.jpg'}"
    assert reasons[str(root / "bob" / "blank.png")] == "no face found"
    assert reasons[str(root / "cy" / "blank.png")] == "no face found"
    assert reasons[str(root / "empty")].startswith("no photos")
    # stderr is not a terminal here: one progress line per photo (7 photos, notes.txt is no photo)
    assert [line.split("]")[0] for line in err.splitlines()] == [f"[{i}/7" for i in range(1, 8)]
    with open_gallery(db) as g:
        assert [(i.name, i.images) for i in g.identities()] == [("ada", 2), ("bob", 2)]
    code, out, err = cli("enroll", "--db", db, "--from-dir", root, "--no-progress")  # a re-run adds nothing
    assert code == 0 and err == "" and "0 photo(s) from" in out
    assert "already enrolled as 'ada'" in out and "skipped 8:" in out  # 5 duplicates, 2 faceless, 1 empty folder
    with open_gallery(db) as g:
        assert g.info()["embeddings"] == 4


def test_failed_enrolment_creates_no_file(cli, cfp_root, tmp_path):
    db = tmp_path / "new.db"
    code, out, err = cli("enroll", "--db", db, "--name", "ada", photo(cfp_root, 52), tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg: no such file" in err and err.count("\n") == 1
    assert not db.exists() and list(tmp_path.iterdir()) == []
    bad = tmp_path / "bad" / "cy"
    bad.mkdir(parents=True)
    cv2.imwrite(str(bad / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    code, _, err = cli("enroll", "--db", db, "--from-dir", bad.parent, "--no-progress")
    assert code == 2 and "no photo could be enrolled" in err and "no face found" in err and not db.exists()
    code, _, err = cli("enroll", "--db", db, "--from-dir", bad.parent, "--name", "x")
    assert code == 2 and "no IMG or --name" in err
    assert cli("enroll", "--db", db, photo(cfp_root, 52))[0] == 2 and not db.exists()


def test_duplicate_photos_are_skipped_with_a_message(cli, cfp_root, tmp_path):
    db = tmp_path / "g.db"
    one, two = photo(cfp_root, 53, n=1), photo(cfp_root, 53, n=2)
    assert cli("enroll", "--db", db, "--name", "ada", one)[0] == 0
    code, out, err = cli("enroll", "--db", db, "--name", "eve", one, "--json")
    assert code == 0 and f"{one}: skipped, duplicate: this photo is already enrolled as 'ada'" in err
    record = json.loads(out)
    assert record["added"] == 0 and record["images"] == 0 and record["identities"] == 1
    code, out, _ = cli("enroll", "--db", db, "--name", "eve", one)
    assert code == 0 and out.startswith("nothing new for 'eve': every photo is already enrolled")
    code, out, err = cli("enroll", "--db", db, "--name", "ada", one, two, two)
    assert code == 0 and "1 photo(s) added (2 duplicate(s) skipped), 2 stored" in out
    code, out, _ = cli("enroll", "--db", db, "--name", "ada", one, "--replace")  # its own photos do not count
    assert code == 0 and "1 photo(s) added, 1 stored" in out


def test_identify_several_photos_and_exit_status(cli, cfp_root, tmp_path):
    db = tmp_path / "g.db"
    for name, person in (("ada", 54), ("bob", 55)):
        assert cli("enroll", "--db", db, "--name", name, *[photo(cfp_root, person, n=n) for n in (1, 2, 3)])[0] == 0
    ada, bob, stranger = photo(cfp_root, 54, n=5), photo(cfp_root, 55, n=6), photo(cfp_root, 30, n=1)
    code, out, _ = cli("identify", "--db", db, ada, bob, "--json")
    records = json.loads(out)
    assert code == 0 and [r["match"] for r in records] == ["ada", "bob"]
    assert [r["image"] for r in records] == [str(ada), str(bob)]
    code, out, _ = cli("identify", "--db", db, ada, "--json")
    assert code == 0 and json.loads(out)["match"] == "ada"  # one photo: one object, as before
    code, out, _ = cli("identify", "--db", db, ada, stranger, "--json")
    assert code == 1 and [r["match"] for r in json.loads(out)] == ["ada", None]
    code, out, _ = cli("identify", "--db", db, stranger)
    assert code == 1 and "no match" in out
    code, out, err = cli("identify", "--db", db, ada, tmp_path / "missing.jpg", "--json")
    assert code == 2 and out == "" and "no such file" in err


def test_security_levels_and_genuine_accept_rates(cli, cfp_root):
    from sfpn_edge.models import WEIGHTS_SHA256
    from sfpn_edge.thresholds import BUILTIN, GENUINE_ACCEPT, LOW_FAR

    a, b = photo(cfp_root, 56, n=1), photo(cfp_root, 56, n=2)    # flip on by default: its points
    code, out, _ = cli("verify", a, b, "--security", "convenient", "--json")
    record = json.loads(out)
    assert code == 0 and record["far"] == 1e-2 and record["security"] == "convenient"
    assert record["threshold"] == BUILTIN[WEIGHTS_SHA256]["mtcnn"][True][1e-2]
    assert record["genuine_accept_rate"] == GENUINE_ACCEPT[WEIGHTS_SHA256]["mtcnn"][True][1e-2]
    assert "CFP genuine pairs" in record["genuine_accept_measured_on"]
    code, out, _ = cli("verify", a, b)
    assert code == 0 and "genuine pairs accepted at this threshold: CFP-FF 76.0 %, CFP-FP 27.8 %" in out
    code, out, _ = cli("verify", a, b, "--far", "3e-3", "--json")  # interpolated: no rate was measured there
    assert code == 0 and json.loads(out)["genuine_accept_rate"] is None
    code, out, _ = cli("verify", a, b, "--threshold", "0.5")
    assert code == 0 and "genuine-accept rate at this threshold: not measured" in out
    code, out, _ = cli("verify", a, b, "--security", "high", "--json")  # FAR 1e-4: on all CFP impostor pairs
    high = json.loads(out)
    threshold, shares = LOW_FAR[WEIGHTS_SHA256]["mtcnn"][True][1e-4]
    assert code == 0 and high["far"] == 1e-4 and high["threshold"] == threshold > record["threshold"]
    assert high["genuine_accept_rate"] == shares and "9,675,796" in high["threshold_source"]
    assert "all CFP same-person pairs" in high["genuine_accept_measured_on"]
    code, _, err = cli("verify", a, b, "--far", "1e-5")
    assert code == 2 and "FAR 1e-05 is outside the measured operating points (0.0001 … 0.1)" in err
    with pytest.raises(SystemExit):  # one way to choose the threshold
        cli("verify", a, b, "--security", "balanced", "--far", "0.01")


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(4, "photos", stream=stream)
    for name in "abcd":
        progress.step(name)
    progress.close()
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 4 and frames[1].startswith("[" + "#" * 12 + "." * 12 + "] 2/4 photos b")
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    piped = io.StringIO()
    Progress(2, stream=piped).step("x.jpg")
    assert piped.getvalue() == "[1/2] x.jpg\n"


def test_library_results_carry_the_measured_rate(model_dir, mtcnn_dir, cfp_root, tmp_path):
    from sfpn_edge import FaceGallery, FaceVerifier
    from sfpn_edge.models import WEIGHTS_SHA256
    from sfpn_edge.thresholds import GENUINE_ACCEPT

    measured = GENUINE_ACCEPT[WEIGHTS_SHA256]["mtcnn"][True][1e-2]
    verifier = FaceVerifier(model_dir, detector="mtcnn", detector_weights=mtcnn_dir, threads=1, flip=True, far=1e-2)
    result = verifier.verify(photo(cfp_root, 57, n=1), photo(cfp_root, 57, n=2))
    assert result.genuine_accept == measured and "mtcnn pipeline" in result.genuine_accept_on
    with FaceGallery(tmp_path / "g.db", model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as g:
        g.enroll("ada", verifier.embed_image(photo(cfp_root, 57, n=3))[0])
        (found,) = verifier.identify(photo(cfp_root, 57, n=4), g, k=1)
    assert found.genuine_accept == measured and found.threshold == result.threshold
    loose = FaceVerifier(model_dir, detector="mtcnn", detector_weights=mtcnn_dir, threads=1, margin=0.2)
    assert loose.operating_point.genuine_accept is None  # measured at margin 0.10, not this crop


def test_cli_on_a_postgresql_gallery(cli, cfp_root, tmp_path, pg_url, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pg_url = pg_url.replace("postgres:@", "postgres:s3cret@")  # the test server trusts its socket
    root = people_dir(tmp_path, cfp_root)
    code, out, err = cli("enroll", "--db", pg_url, "--from-dir", root, "--json")
    assert code == 0 and json.loads(out)["db"].startswith("postgresql://postgres:***@/"), err
    assert cli("enroll", "--db", pg_url, "--name", "cy", photo(cfp_root, 54, n=1), photo(cfp_root, 54, n=2))[0] == 0
    code, out, _ = cli("identify", "--db", pg_url, photo(cfp_root, 54, n=5), photo(cfp_root, 50, n=5), "--json")
    assert code == 0 and [r["match"] for r in json.loads(out)] == ["cy", "ada"] and "s3cret" not in out
    assert main(["gallery", "rename", pg_url, "cy", "dee"]) == 0 and main(["gallery", "remove", pg_url, "bob"]) == 0
    assert main(["gallery", "check", pg_url]) == 0
    out = capsys.readouterr().out
    assert "ok (2 identities" in out and "s3cret" not in out
    assert main(["gallery", "list", pg_url, "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)["identities"]] == ["ada", "dee"]
    assert main(["gallery", "recalibrate", pg_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["state"] == "none"  # 4 photos: raw cosine
    assert main(["gallery", "info", pg_url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["identities"], info["embeddings"]) == (2, 4) and info["bytes"] > 0
    assert info["db"].startswith("postgresql://postgres@/")  # the server, named without its password
    code, _, err = cli("enroll", "--db", "mysql://host/db", "--name", "x", photo(cfp_root, 54, n=1))
    assert code == 2 and "mysql:// galleries are not supported" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people"]  # no gallery file or `mysql:` folder


def test_identify_and_watch_answer_from_the_offline_cache(cli, cfp_root, tmp_path, pg_server, pg_url, monkeypatch):
    from sfpn_edge import gallery_pg

    monkeypatch.setattr(gallery_pg, "RETRY_DELAYS", ())
    pg_url = pg_url.replace("postgres:@", "postgres:s3cret@")  # the test server trusts its socket
    cache, frames = tmp_path / "cache" / "door.db", tmp_path / "frames"
    for name, person in (("ada", 50), ("bob", 51)):
        assert cli("enroll", "--db", pg_url, "--name", name, photo(cfp_root, person, n=1),
                   photo(cfp_root, person, n=2))[0] == 0
    probe = photo(cfp_root, 50, n=5)
    code, out, err = cli("identify", "--db", pg_url, "--offline-cache", cache, probe, "--json")
    online = json.loads(out)
    assert code == 0 and online["match"] == "ada" and err == "" and cache.exists()
    name = pg_url.split("?")[0].split("/")[-1]
    pg_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false;')
    try:
        code, out, err = cli("identify", "--db", pg_url, "--offline-cache", cache, probe, "--json")
        assert code == 0 and json.loads(out)["candidates"] == online["candidates"]
        assert err.startswith("sfpn-edge identify: warning: postgresql://postgres:***@/") and err.count("\n") == 1
        assert f"unreachable; answering from the offline cache {cache}, written " in err and "s3cret" not in err
        assert b"s3cret" not in cache.read_bytes()
        code, _, err = cli("identify", "--db", pg_url, probe)
        assert code == 2 and "cannot open gallery: server unreachable" in err
        frames.mkdir()
        framed = cv2.copyMakeBorder(cv2.imread(str(probe)), 120, 120, 120, 120, cv2.BORDER_CONSTANT)
        for i in range(4):  # the face well inside the picture, as a camera sees it
            cv2.imwrite(str(frames / f"{i:04d}.png"), framed)
        code, out, err = cli("watch", frames, "--db", pg_url, "--offline-cache", cache, "--detect-every", "1")
        assert code == 0 and "identify ada" in out and "answering from the offline cache" in err
    finally:
        pg_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true;')
    for command in (["identify", probe], ["watch", frames]):
        code, _, err = cli(*command, "--db", tmp_path / "g.db", "--offline-cache", cache)
        assert code == 2 and "--offline-cache needs a postgresql:// --db" in err
