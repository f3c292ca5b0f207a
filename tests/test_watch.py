"""``sfpn-edge watch`` / FaceStream on a video made in the test from real CFP photos (tests/video_scene.py):
two enrolled people (one leaves and returns), a third enrolled person who never appears, and a stranger
entering, crossing and leaving. Plus the tracker alone, real-time dropping, and broken sources."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import video_scene as scene
from sfpn_edge.cli import main
from sfpn_edge.detect import Face
from sfpn_edge.gallery import FaceGallery
from sfpn_edge.pipeline import FaceVerifier
from sfpn_edge.stream import FaceStream
from sfpn_edge.track import Tracker
from sfpn_edge.video import Frame, FrameSource, SourceError, ThreadedSource, open_source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video(cfp_root, tmp_path_factory) -> Path:
    return scene.write_video(tmp_path_factory.mktemp("watch") / "scene.avi", scene.render(cfp_root))


@pytest.fixture(scope="module")
def weights(mtcnn_dir, blazeface_dir) -> dict:
    return {"mtcnn": mtcnn_dir, "blazeface": blazeface_dir}


def _verifier(model_dir, weights, detector: str) -> FaceVerifier:
    return FaceVerifier(model_dir, detector=detector, detector_weights=weights[detector], fallbacks=(), threads=1)


@pytest.fixture(scope="module")
def galleries(model_dir, weights, cfp_root, tmp_path_factory) -> dict:
    """One gallery per detector: the ENROLLED people from their frontal photos 2-4 (the video uses photo 1)."""
    out = {}
    for detector in weights:
        verifier = _verifier(model_dir, weights, detector)
        path = tmp_path_factory.mktemp("gallery") / f"{detector}.db"
        with FaceGallery(path, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim) as gallery:
            for name in scene.ENROLLED:
                desc, _ = verifier.embed_images([scene.photo(cfp_root, int(name[1:]), n) for n in (2, 3, 4)])
                gallery.enroll(name, desc)
        out[detector] = path
    return out


def _check_against_truth(results, cfp_root) -> dict:
    """Every decision names the person in the box (the stranger: nobody); ids stable while fully visible."""
    named = {}
    ids_per_visit = {i: set() for i in range(len(scene.ACTORS))}
    for result in results:
        for event in result.events:
            actor = scene.actor_at(event.box, event.frame, cfp_root)
            if event.kind == "identify":
                assert actor is not None, event
                expected = actor.name if actor.name in scene.ENROLLED else None
                assert event.identity == expected, (event, actor.name)
                if event.identity:
                    named.setdefault(event.identity, set()).add(event.track_id)
        for track in result.tracks:
            actor = scene.actor_at(track.box, result.frame, cfp_root)
            if actor is not None and actor.name not in scene.ENROLLED:
                assert track.identity is None, (result.frame, track)
            for i, visit in enumerate(scene.ACTORS):
                if visit is actor and scene.fully_visible(visit, result.frame, cfp_root):
                    ids_per_visit[i].add(track.track_id)
    assert all(len(ids) == 1 for ids in ids_per_visit.values()), ids_per_visit  # one track per visit
    return named


@pytest.mark.parametrize("detector", ["blazeface", "mtcnn"])
def test_stream_names_the_enrolled_and_never_the_stranger(model_dir, weights, galleries, video, cfp_root, detector):
    verifier = _verifier(model_dir, weights, detector)
    with FaceGallery(galleries[detector], model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True) as gallery:
        stream = FaceStream(video, verifier, gallery)
        results = list(stream)
    assert [r.frame for r in results] == list(range(scene.FRAMES))  # file mode: every frame
    named = _check_against_truth(results, cfp_root)
    assert len(named["p010"]) == 2 and len(named["p011"]) == 1 and "p013" not in named  # p010 returned
    summary = stream.summary()
    assert summary["identities"] == {"p010": 2, "p011": 1} and summary["unknown_tracks"] == 1
    assert summary["frames"] == scene.FRAMES and summary["dropped"] == 0 and summary["threshold"] == round(
        verifier.threshold, 4)
    kinds = [e.kind for r in results for e in r.events]
    assert kinds.count("enter") == 4 and kinds.count("leave") == 2  # p011 and the returning p010 stay
    again = [e.to_dict() for r in FaceStream(video, verifier, FaceGallery(
        galleries[detector], model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim, readonly=True))
        for e in r.events]
    assert again == [e.to_dict() for r in results for e in r.events]  # deterministic


def _cli(model_dir, weights, *args, detector="blazeface"):
    return [str(a) for a in args] + ["--model", str(model_dir), "--detector", detector,
                                     "--detector-weights", str(weights[detector]), "--threads", "1"]


def test_cli_json_lines_every_frame_stats_and_folder_source(model_dir, weights, galleries, video, cfp_root,
                                                            tmp_path, capsys):
    code = main(_cli(model_dir, weights, "watch", video, "--db", galleries["blazeface"], "--json-lines",
                     "--every-frame", "--stats"))
    out, err = capsys.readouterr()
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    events = [r for r in records if r["event"] in ("enter", "identify", "leave")]
    assert all(set(e) == {"event", "track_id", "identity", "score", "threshold", "box", "frame", "time"} for e in events)
    assert [e["identity"] for e in events if e["event"] == "identify"] == ["p010", "p011", None, "p010"]
    assert sum(r["event"] == "frame" for r in records) == scene.FRAMES
    assert records[-1]["event"] == "summary" and records[-1]["identities"] == {"p010": 2, "p011": 1}
    assert "frames/s" in err and "dropped" in err and "detector" in err
    assert events[0]["time"] == pytest.approx(events[0]["frame"] / scene.FPS)

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(scene.render(cfp_root)):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    code = main(_cli(model_dir, weights, "watch", folder, "--db", galleries["blazeface"], "--fps", scene.FPS))
    out, _ = capsys.readouterr()
    assert code == 0 and "identify p010" in out and "identify p011" in out and "identify unknown" in out
    assert out.splitlines()[-1].startswith(f"{scene.FRAMES} frames, 4 tracks: p010 (2 tracks), p011 (1 track)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_realtime_run_with_the_summary(model_dir, weights, galleries, video, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sfpn_edge", *_cli(
        model_dir, weights, "watch", video, "--db", galleries["blazeface"], "--json-lines", "--realtime")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = json.loads(proc.stdout.readline())  # the first event: played at 10 frames/s, 8 s in all
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    records = [first] + [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    assert records[-1]["event"] == "summary" and records[-1]["frames"] < scene.FRAMES


def test_tracker_keeps_ids_through_motion_and_drops_missed_tracks():
    tracker = Tracker()
    face = lambda x, y: Face((x, y, x + 60.0, y + 60.0), 0.9)  # noqa: E731
    first = tracker.update([face(10, 10), face(200, 10)], 0)
    assert [t.id for t in first.new] == [1, 2]
    assert tracker.uncertain()  # new tracks: no velocity yet, FaceStream detects on the next frame
    for frame in (1, 6, 11, 16, 21):  # track 1 moves 12 px per frame: 60 px, a box side, between detections
        update = tracker.update([face(10 + 12 * frame, 10), face(200, 10 + frame)], frame)
        assert sorted(t.id for t, _ in update.matched) == [1, 2] and not update.new and not update.lost
    assert not tracker.uncertain()
    moving = next(t for t in tracker.tracks if t.id == 1)
    np.testing.assert_allclose(moving.box_at(23), moving.box + moving.velocity * 2)
    assert moving.velocity[0] == pytest.approx(12.0, rel=0.05)
    assert tracker.update([], 26).lost == [] and tracker.uncertain()  # one miss is tolerated ...
    assert sorted(t.id for t in tracker.update([], 31).lost) == [1, 2]  # ... two are not
    assert tracker.update([face(0, 0)], 36).new[0].id == 3  # ids are never reused
    assert [t.id for t in tracker.update([face(300, 0)], 37).new] == [4]  # 20 of its 60 px inside
    assert [t.id for t in tracker.leaving(37, 320, 240)] == [4] and [t.id for t in tracker.tracks] == [3]


class _Frames(FrameSource):
    """A fast fake camera: ``n`` frames as quickly as they can be made."""

    live = True

    def __init__(self, n):
        self.n, self.name = n, "fake camera"

    def __iter__(self):
        for i in range(self.n):
            yield Frame(i, i / 1000, np.zeros((8, 8, 3), np.uint8))


def test_realtime_drops_frames_rather_than_lag():
    source = ThreadedSource(_Frames(300))
    seen = []
    for frame in source:
        seen.append(frame.index)
        time.sleep(0.01)  # a slow consumer
    source.close()
    assert seen == sorted(seen) and seen[-1] == 299 and source.dropped > 100
    assert len(seen) + source.dropped == 300


def test_corrupt_truncated_and_unreachable_sources_fail_clearly(model_dir, weights, galleries, video, tmp_path,
                                                                capsys):
    data = video.read_bytes()
    cases = {
        "junk.avi": (np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes(), "cannot open the video file"),
        "cut.avi": (data[:len(data) * 6 // 10], "truncated"),
        "head.avi": (data[:4000], "cannot open the video file"),
        "empty.avi": (b"", "cannot open the video file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        code = main(_cli(model_dir, weights, "watch", tmp_path / name, "--db", galleries["blazeface"], "--json-lines"))
        out, err = capsys.readouterr()
        assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("sfpn-edge watch: error:"), (
            name, err)
        if name == "cut.avi":  # what was seen before the cut is reported, the summary too
            assert json.loads(out.splitlines()[-1])["event"] == "summary"
    start = time.monotonic()
    code = main(_cli(model_dir, weights, "watch", "rtsp://127.0.0.1:1/x", "--db", galleries["blazeface"],
                     "--retries", "2", "--timeout", "1"))
    _, err = capsys.readouterr()
    assert code == 2 and "cannot open the stream after 3 attempts" in err and time.monotonic() - start < 10
    code = main(_cli(model_dir, weights, "watch", tmp_path / "missing.avi", "--db", galleries["blazeface"]))
    assert code == 2 and "no such file or folder" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo.avi")
    with pytest.raises(SourceError, match="not a regular file"):
        open_source(tmp_path / "fifo.avi")
    (tmp_path / "fifo.avi").unlink()
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path)  # a folder without frames (only the .avi files above)


def test_a_stream_that_ends_is_reopened_then_fails_clearly(video):
    """An http:// stream (the test video served locally): read past its end means reconnecting; once
    the server is gone the retries run out with a one-line SourceError."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(video.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
    source = open_source(url, retries=1, backoff=0.1, timeout=2, realtime=False)
    assert source.live
    indices = []
    start = time.monotonic()
    with pytest.raises(SourceError, match="cannot open the stream after 2 attempts"):
        for frame in source:
            indices.append(frame.index)
            if frame.index == scene.FRAMES + 10:  # played once, reconnected, 10 frames into the second play
                server.shutdown()
                server.server_close()
    source.close()
    assert indices == list(range(len(indices))) and len(indices) > scene.FRAMES + 10
    assert time.monotonic() - start < 30


class _Rigged:
    """A gallery whose answers a test rewrites: ``answer(call, matches) -> matches`` per lookup."""

    def __init__(self, gallery, answer):
        self.gallery, self.answer, self.calls = gallery, answer, 0
        self.path = gallery.path

    def __len__(self):
        return len(self.gallery)

    def operating_point(self, far):
        return self.gallery.operating_point(far)

    def identify_batch(self, probes, k, calibrated=None):
        self.calls += 1
        return self.answer(self.calls, self.gallery.identify_batch(probes, k, calibrated=calibrated))


def test_reidentification_can_name_an_unknown_track_but_never_renames(model_dir, weights, galleries, video):
    from sfpn_edge.gallery import Match

    verifier = _verifier(model_dir, weights, "blazeface")
    with FaceGallery(galleries["blazeface"], model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim,
                     readonly=True) as gallery:
        def events(answer, **options):
            rigged = _Rigged(gallery, answer)
            found = [e for r in FaceStream(video, verifier, rigged, **options) for e in r.events if e.kind == "identify"]
            return found, rigged.calls

        plain, calls = events(lambda call, m: m, reid_margin=0.0, reid_after=1e9)
        assert [(e.track_id, e.identity) for e in plain] == [(1, "p010"), (2, "p011"), (3, None), (4, "p010")]
        assert calls == 4  # one lookup per track: neither near the threshold nor due again
        _, often = events(lambda call, m: m, reid_margin=0.0, reid_after=0.5)
        assert often > calls  # re-identified every 0.5 s of video
        # the first lookup says "below threshold": track 1 starts unknown, is named at a later crop
        rigged, _ = events(lambda call, m: [[Match(m[0][0].name, verifier.threshold - 0.01)]] if call == 1 else m)
        assert [e.identity for e in rigged if e.track_id == 1] == [None, "p010"]
        # later lookups say someone else above threshold: a named track keeps its name until lost
        other = [[Match("p013", 0.99)]]
        kept, _ = events(lambda call, m: m if call <= 2 else other, reid_after=0.2)
        assert [(e.track_id, e.identity) for e in kept if e.track_id <= 2] == [(1, "p010"), (2, "p011")]
