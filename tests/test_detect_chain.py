"""Fallback chains: re-boxing between framings, lazy and skippable fallbacks, a real BlazeFace miss."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfpn_edge import align
from sfpn_edge.cli.common import _fallbacks
from sfpn_edge.detect import Face
from sfpn_edge.detect.chain import DetectorChain, reframe
from sfpn_edge.detect.registry import framing_of, get, make_detector
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.io import read_image

FRAMINGS = {"first": (0.30, -0.06), "second": (0.10, 0.0), "third": (0.0, 0.05)}
MISSED = ("014", "profile", "03.jpg")  # a CFP profile BlazeFace short range finds no face in; MTCNN does


class Fixed:
    """A detector that always answers ``faces`` and counts its calls."""

    def __init__(self, name, faces):
        self.name, self.faces, self.calls = name, faces, 0

    def detect(self, image):
        self.calls += 1
        return list(self.faces)


def face(x0=10.0, y0=20.0, x1=60.0, y1=80.0) -> Face:
    return Face((x0, y0, x1, y1), 0.9, np.zeros((5, 2), np.float32) + 33)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 500), st.floats(0, 500), st.floats(1, 300), st.floats(1, 300),
       st.floats(0, 0.6), st.floats(-0.2, 0.2), st.floats(0, 0.6), st.floats(-0.2, 0.2))
def test_reframed_box_gives_the_crop_the_fallbacks_own_framing_gives(x, y, w, h, m1, s1, m2, s2):
    found = Face((x, y, x + w, y + h), 0.5)
    moved = reframe(found, (m1, s1), (m2, s2))
    np.testing.assert_allclose(align.box_matrix(moved.box, m2, shift=s2), align.box_matrix(found.box, m1, shift=s1),
                               rtol=1e-9, atol=1e-6)
    assert moved.width == pytest.approx(moved.height)


def test_primary_faces_pass_through_and_fallbacks_are_never_built():
    built = []
    chain = DetectorChain(Fixed("first", [face()]), [("second", lambda: built.append(1))], FRAMINGS.get)
    out = chain.detect(np.zeros((100, 100, 3), np.uint8))
    assert [f.box for f in out] == [face().box] and out[0].found_by == "first"
    assert built == [] and chain.describe()["fallbacks"] == {"second": "not loaded yet"}


def test_a_miss_goes_to_the_first_fallback_that_finds_a_face():
    image = np.zeros((100, 100, 3), np.uint8)
    empty, third = Fixed("second", []), Fixed("third", [face()])
    chain = DetectorChain(Fixed("first", []), [("second", lambda: empty), ("third", lambda: third)], FRAMINGS.get)
    out = chain.detect(image)
    assert len(out) == 1 and out[0].found_by == "third"
    (m1, s1), (m3, s3) = FRAMINGS["first"], FRAMINGS["third"]
    np.testing.assert_allclose(align.box_matrix(out[0].box, m1, shift=s1), align.box_matrix(face().box, m3, shift=s3))
    np.testing.assert_array_equal(out[0].landmarks, face().landmarks)  # points are where they were
    chain.detect(image)
    assert (empty.calls, third.calls) == (2, 2)  # each built once, asked on every miss
    assert chain.describe()["fallbacks"] == {"second": "ready", "third": "ready"}


def test_a_fallback_without_weights_is_skipped_and_says_why():
    def missing():
        raise ModelError("no MTCNN nets in /nowhere: run `sfpn-edge fetch-weights --detector mtcnn`")

    third = Fixed("third", [face()])
    chain = DetectorChain(Fixed("first", []), [("second", missing), ("third", lambda: third)], FRAMINGS.get)
    assert chain.detect(np.zeros((50, 50, 3), np.uint8))[0].found_by == "third"
    assert chain.describe()["fallbacks"]["second"].startswith("skipped: no MTCNN nets")


def test_registry_chains_and_the_fallback_option():
    assert get("blazeface").fallbacks == ("blazeface-full", "mtcnn") and get("mtcnn").fallbacks == ()
    assert framing_of("blazeface") == (0.30, -0.06) and framing_of("mtcnn") == (0.10, 0.0)
    assert _fallbacks("none") == () and _fallbacks("mtcnn, blazeface-full") == ("mtcnn", "blazeface-full")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown detector 'retina'"):
        _fallbacks("mtcnn,retina")
    with pytest.raises(SfpnError, match="retina"):
        make_detector("mtcnn", fallbacks=("retina",))


@pytest.fixture(scope="module")
def real_chain(blazeface_dir, mtcnn_dir):
    from sfpn_edge.detect.blazeface import BlazeFace, BlazeFaceFull
    from sfpn_edge.detect.mtcnn import MTCNN

    return DetectorChain(BlazeFace(blazeface_dir, threads=1),
                         [("blazeface-full", lambda: BlazeFaceFull(blazeface_dir, threads=1)),
                          ("mtcnn", lambda: MTCNN(mtcnn_dir, threads=1))], framing_of)


def test_a_real_profile_blazeface_misses_is_found_by_mtcnn_and_framed_as_mtcnn_frames_it(
        real_chain, cfp_root, mtcnn_dir, model_dir):
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.pipeline import FaceVerifier

    image = read_image(cfp_root.joinpath("Data", "Images", *MISSED))
    assert real_chain.primary.detect(image) == []
    found = real_chain.detect(image)
    assert found and found[0].found_by == "mtcnn"
    own = MTCNN(mtcnn_dir, threads=1).detect(image)[0]
    verifier = FaceVerifier(model_dir, detector=real_chain, threads=1)
    assert verifier.detector_name == "blazeface" and verifier.margin == pytest.approx(0.30)
    np.testing.assert_allclose(verifier.crop_spec.matrix(found[0].box),
                               align.box_matrix(own.box, 0.10, verifier.crop_spec.size), atol=1e-6)
    used = verifier.find_face(image)
    assert used.how == "detected" and used.to_dict()["found_by"] == "mtcnn"
    assert verifier.describe()["fallbacks"] == {"blazeface-full": "ready", "mtcnn": "ready"}


def test_eval_counts_which_detector_found_each_face(real_chain, cfp_root, model_dir):
    from sfpn_edge.embed import FaceEmbedder
    from sfpn_edge.evaluate.protocols import Sample
    from sfpn_edge.evaluate.runner import embed_samples

    images = cfp_root / "Data" / "Images"
    samples = [Sample(images / "001" / "frontal" / "01.jpg"), Sample(images.joinpath(*MISSED))]
    emb = embed_samples(samples, FaceEmbedder(model_dir, backend="onnxruntime", threads=1), crop="detect",
                        detector=real_chain, threads=1)
    assert emb.face_sources == {"detected": 2}
    assert emb.found_by == {"blazeface": 1, "mtcnn": 1}


def test_a_far_face_short_range_misses_is_found_by_full_range(real_chain, cfp_root):
    photo = read_image(cfp_root / "Data" / "Images" / "001" / "frontal" / "01.jpg")
    h, w = photo.shape[:2]
    frame = np.full((int(h / 0.12), int(w / 0.12), 3), 110, np.uint8)  # the photo at 12 % of the frame side
    y, x = (frame.shape[0] - h) // 3, (frame.shape[1] - w) // 2
    frame[y:y + h, x:x + w] = photo
    assert real_chain.primary.detect(frame) == []
    found = real_chain.detect(frame)
    assert found and found[0].found_by == "blazeface-full"
    x0, y0, x1, y1 = found[0].box
    assert x <= (x0 + x1) / 2 <= x + w and y <= (y0 + y1) / 2 <= y + h
