"""Protocol readers: the real CFP layout, LFW-style pairs files, and every layout error."""
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.errors import SfpnError
from sfpn_edge.evaluate.protocols import load_cfp, load_pairs, merge_samples
from sfpn_edge.samples import read_cfp_landmarks


def _identity(path: Path) -> str:
    return path.parent.parent.name  # Data/Images/<id>/<frontal|profile>/NN.jpg


@pytest.mark.parametrize("name", ["FF", "FP"])
def test_real_cfp_protocol(cfp_root, name):
    proto = load_cfp(cfp_root, name)
    assert proto.name == f"CFP-{name}"
    assert proto.pairs.shape == (7000, 2)
    assert proto.labels.sum() == 3500
    assert np.bincount(proto.folds).tolist() == [0] + [700] * 10
    a = [proto.samples[i].path for i in proto.pairs[:, 0]]
    b = [proto.samples[i].path for i in proto.pairs[:, 1]]
    # Off-by-one indexing would pair images across identities: same pairs share the identity folder.
    same_id = np.array([_identity(p) == _identity(q) for p, q in zip(a, b)])
    np.testing.assert_array_equal(same_id, proto.labels)
    assert all(p.parent.name == "frontal" for p in a)
    assert all(q.parent.name == ("frontal" if name == "FF" else "profile") for q in b)
    first = proto.samples[0]
    assert first.path.is_file() and first.landmarks.is_file()
    assert first.landmarks.parts[-4:] == ("Fiducials",) + first.path.parts[-3:-1] + (first.path.stem + ".txt",)
    assert read_cfp_landmarks(first.landmarks).shape == (30, 2)
    assert len({s.path for s in proto.samples}) == len(proto.samples)


def test_real_cfp_fold_subset_and_merge(cfp_root):
    fp = load_cfp(cfp_root, "FP", folds=[2, 1])
    assert sorted(set(fp.folds.tolist())) == [1, 2] and len(fp.pairs) == 1400
    assert len(fp.samples) == len(np.unique(fp.pairs))  # only the images the pairs use
    ff = load_cfp(cfp_root, "FF", folds=[1, 2])
    merged, (ff_pairs, fp_pairs) = merge_samples([ff, fp])
    shared_frontals = {s.path for s in ff.samples} & {s.path for s in fp.samples}
    assert len(merged) == len(ff.samples) + len(fp.samples) - len(shared_frontals)
    assert [merged[i].path for i in fp_pairs.ravel()] == [fp.samples[i].path for i in fp.pairs.ravel()]
    assert [merged[i].path for i in ff_pairs.ravel()] == [ff.samples[i].path for i in ff.pairs.ravel()]


# ------------------------------------------------------------------ a tiny fake CFP tree


def _fake_cfp(tmp_path: Path) -> Path:
    root = tmp_path / "cfp"
    (root / "Protocol").mkdir(parents=True)
    (root / "Protocol" / "Pair_list_F.txt").write_text(
        "".join(f"{i} ../Data/Images/00{(i + 1) // 2}/frontal/0{(i + 1) % 2 + 1}.jpg\n" for i in range(1, 5))
    )
    (root / "Protocol" / "Pair_list_P.txt").write_text(
        "1 ../Data/Images/001/profile/01.jpg\n2 ../Data/Images/002/profile/01.jpg\n"
    )
    for proto, same, diff in (("FF", "1,2\n", "1,3\n"), ("FP", "3,2\n", "1,2\n")):
        for fold in (1, 2):
            d = root / "Protocol" / "Split" / proto / f"{fold:02d}"
            d.mkdir(parents=True)
            (d / "same.txt").write_text(same)
            (d / "diff.txt").write_text(diff)
    return root


def test_fake_cfp_parses(tmp_path):
    root = _fake_cfp(tmp_path)
    fp = load_cfp(root, "fp", folds=[1, 2])
    paths = [[fp.samples[i].path.relative_to(root).as_posix() for i in pair] for pair in fp.pairs]
    assert paths[0] == ["Data/Images/002/frontal/01.jpg", "Data/Images/002/profile/01.jpg"]
    assert paths[1] == ["Data/Images/001/frontal/01.jpg", "Data/Images/002/profile/01.jpg"]
    assert fp.labels.tolist() == [True, False, True, False]
    assert fp.folds.tolist() == [1, 1, 2, 2]


def _break(root: Path, rel: str, text):
    path = root / rel
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    "rel, text, match",
    [
        ("Protocol/Pair_list_F.txt", None, "missing file .*Pair_list_F.txt"),
        ("Protocol/Pair_list_F.txt", "1 a.jpg\n3 b.jpg\n", "Pair_list_F.txt line 2: index 3 out of sequence"),
        ("Protocol/Pair_list_F.txt", "one ../x.jpg\n", "Pair_list_F.txt line 1: expected 'index path'"),
        ("Protocol/Pair_list_F.txt", "", "Pair_list_F.txt lists no images"),
        ("Protocol/Split/FP/02/same.txt", "1,9\n", "02/same.txt line 1: index out of range"),
        ("Protocol/Split/FP/01/diff.txt", "1;2\n", "01/diff.txt line 1: expected 'i,j'"),
        ("Protocol/Split/FP/01/diff.txt", "\n", "01/diff.txt holds no pairs"),
        ("Protocol/Split/FP/02/same.txt", None, "missing file .*FP/02/same.txt"),
    ],
)
def test_fake_cfp_layout_errors_name_the_file(tmp_path, rel, text, match):
    root = _fake_cfp(tmp_path)
    _break(root, rel, text)
    with pytest.raises(SfpnError, match=match):
        load_cfp(root, "FP", folds=[1, 2])


def test_cfp_root_errors(tmp_path):
    with pytest.raises(SfpnError, match="CFP root not found"):
        load_cfp(tmp_path / "nope", "FF")
    (tmp_path / "Data").mkdir()
    with pytest.raises(SfpnError, match="not a CFP root: missing .*Protocol"):
        load_cfp(tmp_path, "FF")
    root = _fake_cfp(tmp_path)
    with pytest.raises(SfpnError, match="choose FF or FP"):
        load_cfp(root, "PP")
    with pytest.raises(SfpnError, match="within 1..10"):
        load_cfp(root, "FF", folds=[0, 11])
    with pytest.raises(SfpnError, match="missing file .*FF/03/same.txt"):
        load_cfp(root, "FF", folds=[3])


def test_landmark_file_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2\n3,x\n")
    with pytest.raises(SfpnError, match="bad.txt line 2"):
        read_cfp_landmarks(bad)
    bad.write_text("1,2\n")
    with pytest.raises(SfpnError, match="at least two"):
        read_cfp_landmarks(bad)
    with pytest.raises(SfpnError, match="missing file"):
        read_cfp_landmarks(tmp_path / "none.txt")


# ------------------------------------------------------------------ pairs.txt

PAIRS = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t2
Cy\t1\tAnn\t3
Cy\t1\t2
Bob\t2\t3
Bob\t1\tCy\t1
Ann\t2\tCy\t2
"""


def test_pairs_file_parses(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(PAIRS)
    proto = load_pairs(tmp_path, pairs)
    assert proto.name == "pairs.txt"
    assert proto.labels.tolist() == [True, True, False, False] * 2
    assert proto.folds.tolist() == [1] * 4 + [2] * 4
    names = [[proto.samples[i].path.relative_to(tmp_path).as_posix() for i in p] for p in proto.pairs]
    assert names[0] == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"]
    assert names[3] == ["Cy/Cy_0001.jpg", "Ann/Ann_0003.jpg"]
    assert len(proto.samples) == len({s.path for s in proto.samples}) == 8
    assert all(s.landmarks is None for s in proto.samples)


def test_pairs_file_single_number_header_is_one_fold(tmp_path):
    pairs = tmp_path / "pairsDevTest.txt"
    pairs.write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    proto = load_pairs(tmp_path, pairs)
    assert proto.folds.tolist() == [1, 1] and proto.labels.tolist() == [True, False]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("ten 2\n", "line 1: expected header 'folds n'"),
        ("2 0\n", "line 1: expected header"),
        ("1 2\nAnn 1 2\n", "promises 1 folds x 4 pairs = 4 lines, found 1"),
        ("1 1\nAnn 1 2\nAnn one Bob 2\n", "line 3: expected 'name i j' or 'name1 i name2 j'"),
        ("1 1\nAnn 1 2\nBob 1 2\n", "fold 1 has 2 same-person pairs, header says 1"),
    ],
)
def test_pairs_file_errors(tmp_path, text, match):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    with pytest.raises(SfpnError, match=match):
        load_pairs(tmp_path, pairs)


def test_pairs_missing_files(tmp_path):
    with pytest.raises(SfpnError, match="missing file .*nothere.txt"):
        load_pairs(tmp_path, tmp_path / "nothere.txt")
    with pytest.raises(SfpnError, match="image root not found"):
        load_pairs(tmp_path / "noroot", tmp_path / "pairs.txt")
