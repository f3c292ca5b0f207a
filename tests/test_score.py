"""sfpn_edge.score: cosine pairs / matrix, top-k on every path, Gallery storages, real CFP embeddings."""
import numpy as np
import pytest

from sfpn_edge import score
from sfpn_edge.kernels.scoring import l2_normalize


def gap_like(rng, n, d=1000):
    """Synthetic descriptors shaped like the model's GAP output: non-negative, a large shared part."""
    common = rng.gamma(2.0, 1.0, d).astype(np.float32)
    return np.maximum(0, common + rng.normal(0, 0.6, (n, d))).astype(np.float32)


def cos64(a, b):
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def reference_topk(scores, k):
    """argpartition + sort, ties broken by the lower index."""
    n = scores.shape[1]
    out = []
    for s in scores:
        part = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
        kth = s[part].min()
        cand = np.flatnonzero(s >= kth)  # every row tied with the k-th
        out.append(cand[np.lexsort((cand, -s[cand]))][:k])
    idx = np.array(out)
    return idx, np.take_along_axis(scores, idx, 1)


def one_hot_set(rng, n, d):
    """One-hot rows scaled by powers of two: normalising is exact, so every cosine is exactly 0
    or 1 (int8: one common value near 1) on every path, and ties are everywhere."""
    x = np.zeros((n, d), np.float32)
    x[np.arange(n), rng.integers(0, d, n)] = rng.choice([0.25, 0.5, 1.0, 2.0, 4.0], n)
    return x


@pytest.fixture
def every_path(monkeypatch, request):
    """Force the kernel path with thread splits, or the chunked BLAS path, on small inputs."""
    if request.param == "blas":
        monkeypatch.setattr(score, "TOPK_BLAS_MIN_PROBES", 1)
        monkeypatch.setattr(score, "BLAS_CHUNK_ROWS", 37)
    else:
        monkeypatch.setattr(score, "TOPK_BLAS_MIN_PROBES", 10**9)
        monkeypatch.setattr(score, "PARALLEL_MIN_MACS", 1)
    return request.param


def test_cosine_pairs_and_matrix_match_numpy():
    rng = np.random.default_rng(0)
    a, b = gap_like(rng, 20), gap_like(rng, 30)
    np.testing.assert_allclose(score.cosine_pairs(a, b[:20]), np.diag(cos64(a, b[:20])), atol=1e-6)
    np.testing.assert_allclose(score.cosine_pairs(a[0], b[0]), cos64(a[0], b[0])[0], atol=1e-6)
    for n, m in [(1, 30), (5, 30), (20, 3), (20, 30)]:  # kernel (either side small) and BLAS
        np.testing.assert_allclose(score.score_matrix(a[:n], b[:m]), cos64(a[:n], b[:m]), atol=1e-6)
    assert score.score_matrix(a[:2], b).flags.c_contiguous and score.score_matrix(a, b[:2]).flags.c_contiguous


@pytest.mark.parametrize("every_path", ["kernel", "blas"], indirect=True)
@pytest.mark.parametrize("storage", ["array", "fp32", "fp16", "int8"])
@pytest.mark.parametrize("threads", [1, 3])
def test_topk_exact_with_ties(every_path, storage, threads):
    rng = np.random.default_rng(4)
    g, q = one_hot_set(rng, 300, 12), one_hot_set(rng, 5, 12)
    ref_i, ref_s = reference_topk(cos64(q, g), 40)
    if storage == "array":
        idx, s = score.topk(q, g, 40, threads=threads)
    else:
        idx, s = score.Gallery(g, storage, threads=threads).topk(q, 40)
    if storage != "int8":
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(s, ref_s.astype(np.float32))
        return
    # int8 scores are approximate, but identical rows get identical codes: the exact matches
    # (cos 1) are one tie block, ranked first and by index; the zeros are ordered by noise
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-2)
    for i, r, rs in zip(idx, ref_i, ref_s):
        np.testing.assert_array_equal(i[rs == 1], r[rs == 1])


@pytest.mark.parametrize("every_path", ["kernel", "blas"], indirect=True)
def test_topk_fp32_matches_numpy(every_path):
    rng = np.random.default_rng(5)
    g, q = gap_like(rng, 2000), gap_like(rng, 4)
    scores = l2_normalize(q) @ l2_normalize(g).T
    ref_i, ref_s = reference_topk(scores, 10)
    for idx, s in (score.topk(q, g, 10), score.Gallery(g).topk(q, 10)):
        np.testing.assert_allclose(s, ref_s, rtol=0, atol=2e-6)
        # any index difference may only be a swap of scores within rounding of each other
        np.testing.assert_allclose(np.take_along_axis(scores, idx, 1), ref_s, rtol=0, atol=2e-6)
        assert (idx == ref_i).mean() > 0.9


def test_single_probe_gives_1d_results():
    rng = np.random.default_rng(6)
    g = gap_like(rng, 50)
    idx, s = score.topk(g[7], g, 3)
    assert idx.shape == (3,) and s.shape == (3,) and idx[0] == 7
    idx, s = score.Gallery(g, "int8").topk(g[9], 1)
    assert idx.tolist() == [9] and s[0] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("storage, per_row", [("fp32", 4000), ("fp16", 2000), ("int8", 1012)])
def test_gallery_add_remove_and_nbytes(storage, per_row):
    rng = np.random.default_rng(7)
    x = gap_like(rng, 100)
    g = score.Gallery(storage=storage)
    assert len(g) == 0 and g.nbytes == 0
    np.testing.assert_array_equal(g.add(x[:60]), np.arange(60))
    for row in x[60:]:  # one at a time: amortised growth
        g.add(row)
    assert len(g) == 100 and g.nbytes == 100 * per_row
    g.remove([3, 50, 50, 99])
    kept = np.delete(x, [3, 50, 99], axis=0)
    fresh = score.Gallery(kept, storage, center=g.center)  # int8: same centre, same codes
    probes = gap_like(rng, 6)
    (idx, s), (ref_i, ref_s) = g.topk(probes, 97), fresh.topk(probes, 97)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-5)  # BLAS rounding differs with batch size
    assert g.topk(x[51], 1)[0][0] == 49  # later rows moved up


@pytest.mark.parametrize("storage, tol", [("fp16", 2e-3), ("int8", 1e-2)])
def test_quantized_scores_close_to_fp32(storage, tol):
    rng = np.random.default_rng(8)
    g, q = gap_like(rng, 3000), gap_like(rng, 50)
    idx, s = score.Gallery(g, storage).topk(q, 5)
    np.testing.assert_allclose(s, np.take_along_axis(cos64(q, g), idx, 1), atol=tol)


def test_int8_top1_agrees_on_synthetic_gap_vectors():
    rng = np.random.default_rng(9)
    ids = gap_like(rng, 2000)
    g = ids + rng.normal(0, 0.3, ids.shape).astype(np.float32)
    q = np.maximum(0, ids[:1000] + rng.normal(0, 0.5, (1000, 1000))).astype(np.float32)
    top_fp32 = score.Gallery(g, "fp32").topk(q, 1)[0][:, 0]
    top_int8 = score.Gallery(g, "int8").topk(q, 1)[0][:, 0]
    assert (top_int8 == top_fp32).mean() >= 0.995


def _bad(**kw):
    base = dict(probes=np.ones((2, 8), np.float32), gallery=np.ones((10, 8), np.float32), k=3)
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "args, match",
    [
        (_bad(gallery=np.ones((10, 9), np.float32)), "D=9"),
        (_bad(probes=np.ones((2, 8), np.int64)), "floating-point"),
        (_bad(gallery=np.ones((10, 8), np.int8)), "float"),
        (_bad(probes=np.ones((2, 2, 8), np.float32)), r"\[N, D\]"),
        (_bad(probes=np.ones((2, 0), np.float32)), "length 0"),
        (_bad(probes=np.array([[1, np.nan] * 4], np.float32)), "NaN"),
        (_bad(probes=np.array([[1e300] * 8])), "NaN or inf"),  # overflows float32
        (_bad(k=0), "1..10"),
        (_bad(k=11), "1..10"),
        (_bad(k=1.5), "integer"),
        (_bad(gallery=np.ones((0, 8), np.float32)), "empty"),
    ],
)
def test_topk_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        score.topk(args["probes"], args["gallery"], args["k"])


@pytest.mark.parametrize("every_path", ["kernel", "blas"], indirect=True)
def test_topk_names_non_finite_gallery_row(every_path):
    g = np.ones((100, 8), np.float32)
    g[61, 2] = np.inf
    with pytest.raises(ValueError, match="gallery row 61"):
        score.topk(np.ones((2, 8), np.float32), g, 3, threads=1)


def test_gallery_rejects_bad_input():
    with pytest.raises(ValueError, match="storage"):
        score.Gallery(storage="int4")
    with pytest.raises(ValueError, match="threads"):
        score.Gallery(threads=0)
    with pytest.raises(ValueError, match="dim"):
        score.Gallery(dim=0)
    with pytest.raises(ValueError, match="one descriptor"):
        score.Gallery(storage="int8", center=np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="D=8"):
        score.Gallery(storage="int8", dim=9, center=np.ones(8, np.float32))
    g = score.Gallery(np.ones((5, 8), np.float32), "int8")
    with pytest.raises(ValueError, match="D=8"):
        g.add(np.ones((1, 9), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        g.add(np.array([[np.nan] * 8], np.float32))
    with pytest.raises(ValueError, match="D=8"):
        g.topk(np.ones(7, np.float32), 1)
    with pytest.raises(ValueError, match="1..5"):
        g.topk(np.ones(8, np.float32), 6)
    with pytest.raises(ValueError, match="row ids"):
        g.remove([5])
    with pytest.raises(ValueError, match="row ids"):
        g.remove([0.5])
    assert len(g) == 5  # nothing lost
    with pytest.raises(ValueError, match="empty"):
        score.Gallery(storage="fp16").topk(np.ones(8, np.float32), 1)


# ---------------------------------------------------------------- real CFP embeddings

IDENTITIES = 150


@pytest.fixture(scope="module")
def cfp_embeddings(model_dir, cfp_root):
    """Descriptors of CFP images resized whole to 113x113: gallery frontal 01/03, probes frontal 02
    and profile 01, for IDENTITIES people."""
    import cv2

    from sfpn_edge.embed import FaceEmbedder

    embedder = FaceEmbedder(model_dir)
    mean = np.array(embedder.mean, np.float32)

    def embed(paths):
        crops = [cv2.resize(cv2.imread(str(p))[:, :, ::-1], (113, 113), interpolation=cv2.INTER_AREA)
                 for p in paths]
        return embedder.embed(np.stack([c.astype(np.float32) - mean for c in crops]).transpose(0, 3, 1, 2))

    people = sorted((cfp_root / "Data" / "Images").iterdir())[:IDENTITIES]
    gallery = embed([p / "frontal" / f for p in people for f in ("01.jpg", "03.jpg")])
    probes = embed([p / v for p in people for v in ("frontal/02.jpg", "profile/01.jpg")])
    return gallery, probes


@pytest.mark.shared
def test_int8_top1_agrees_with_fp32_on_cfp(cfp_embeddings):
    gallery, probes = cfp_embeddings
    top = {s: score.Gallery(gallery, s).topk(probes, 1)[0][:, 0] for s in ("fp32", "fp16", "int8")}
    ref = np.argmax(cos64(probes, gallery), axis=1)
    assert (top["fp32"] == ref).all()
    assert (top["int8"] == top["fp32"]).mean() >= 0.995
    assert (top["fp16"] == top["fp32"]).mean() >= 0.995
    # and the embeddings are real: most probes find a gallery image of their own identity
    assert (top["fp32"] // 2 == np.arange(len(probes)) // 2).mean() > 0.7
