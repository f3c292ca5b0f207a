"""Verification metrics against hand-computed values and brute-force references."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfpn_edge.evaluate import metrics

# Four genuine, four impostor pairs; hand-worked below.
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
Y = np.array([1, 1, 0, 1, 1, 0, 0, 0], bool)


def test_roc_points_by_hand():
    curve = metrics.roc(S, Y)
    np.testing.assert_allclose(curve.tar, [0, .25, .5, .5, .75, 1, 1, 1, 1])
    np.testing.assert_allclose(curve.far, [0, 0, 0, .25, .25, .25, .5, .75, 1])
    np.testing.assert_allclose(curve.thresholds[1:], S)
    assert curve.thresholds[0] > S.max()


def test_auc_by_hand():
    # Genuine/impostor pairs ordered correctly: 16 comparisons, only (0.6, 0.7) and (0.5, 0.7) wrong.
    assert metrics.auc(metrics.roc(S, Y)) == pytest.approx(14 / 16)


def test_eer_by_hand():
    # Going down the list: after 0.7 FAR=.25/FRR=.5, after 0.6 .25/.25 -> the curves meet exactly.
    rate, threshold = metrics.eer(metrics.roc(S, Y))
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.6)


def test_eer_interpolates_between_points():
    rate, threshold = metrics.eer(metrics.roc([0.9, 0.7, 0.6], [1, 0, 1]))
    # points (far, frr): (0,1) (0,.5) (1,.5) (1,0): d = -1, -.5, .5, 1 -> halfway from t=.9 to t=.7
    assert rate == pytest.approx(0.5)
    assert threshold == pytest.approx(0.8)


def test_eer_perfect_separation_is_zero():
    rate, threshold = metrics.eer(metrics.roc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]))
    assert rate == 0.0
    assert 0.2 < threshold <= 0.8


def test_tar_at_far_by_hand():
    curve = metrics.roc(S, Y)
    assert metrics.tar_at_far(curve, 0.0) == pytest.approx((0.5, 0.8))
    assert metrics.tar_at_far(curve, 0.25) == pytest.approx((1.0, 0.5))
    assert metrics.tar_at_far(curve, 0.49) == pytest.approx((1.0, 0.5))


def test_best_threshold_by_hand():
    # Accepting the top 5 (>= 0.5) gets 7/8 right; the only alternative with 7/8 does not exist.
    t = metrics.best_threshold(S, Y)
    assert 0.4 < t < 0.5 and t == pytest.approx(0.45)
    assert metrics.accuracy(S, Y, t) == pytest.approx(7 / 8)


def test_best_threshold_ties_and_extremes():
    # All genuine scores below all impostor scores: accepting nothing or all ties at 50 %;
    # the lowest threshold (accept all) wins the tie.
    t = metrics.best_threshold([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert t == 0.1
    # Accepting the top 1 or the top 3 both get 3/4 right: the lower threshold is chosen.
    assert metrics.best_threshold([0.9, 0.7, 0.5, 0.3], [1, 0, 1, 0]) == pytest.approx(0.4)
    # Tied scores are never split by the threshold.
    s, y = [0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0]
    t = metrics.best_threshold(s, y)
    assert t == pytest.approx(0.3)
    assert metrics.accuracy(s, y, t) == 0.75


def test_kfold_threshold_comes_from_other_folds():
    s = np.array([0.9, 0.4, 0.55, 0.3, 0.7, 0.5])
    y = np.array([1, 0, 1, 0, 1, 0], bool)
    f = np.array([1, 1, 2, 2, 3, 3])
    kf = metrics.kfold_accuracy(s, y, f)
    np.testing.assert_array_equal(kf.folds, [1, 2, 3])
    # Fold 2 is tested at the threshold of folds 1+3 (0.6): its genuine 0.55 is rejected.
    # Fold 3 is tested at the threshold of folds 1+2 (0.475): its impostor 0.5 is accepted.
    np.testing.assert_allclose(kf.thresholds, [0.525, 0.6, 0.475])
    np.testing.assert_allclose(kf.accuracies, [1.0, 0.5, 0.5])
    assert kf.mean == pytest.approx(2 / 3)
    assert kf.std == pytest.approx(np.std([1, 0.5, 0.5]))


def test_verification_metrics_one_fold_has_no_accuracy():
    out = metrics.verification_metrics(S, Y, np.ones(8))
    assert out["accuracy"] is None
    assert out["pairs"] == 8 and out["genuine_pairs"] == 4
    assert out["auc"] == pytest.approx(14 / 16)
    assert out["tar_at_far"]["0.01"]["tar"] == 0.5


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, 0.2], [1, 1], "genuine and one impostor"),
        ([0.1, np.nan], [1, 0], "NaN"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
        ([0.1, 0.2], [1, 0, 1], "equal length"),
        ([0.1, 0.2], [2, 0], "boolean"),
    ],
)
def test_bad_input_raises(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.roc(scores, labels)


def test_kfold_needs_two_folds():
    with pytest.raises(ValueError, match="two folds"):
        metrics.kfold_accuracy(S, Y, np.ones(8))


# ------------------------------------------------------------------ brute-force properties

pair_data = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        # Scores from a coarse grid so that ties are common.
        st.lists(st.integers(0, 12).map(lambda v: v / 12), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
    )
)


@settings(max_examples=100, deadline=None)
@given(pair_data)
def test_auc_equals_mann_whitney(data):
    s, y = np.array(data[0]), np.array(data[1])
    gen, imp = s[y], s[~y]
    wins = sum((g > i) + 0.5 * (g == i) for g, i in itertools.product(gen, imp))
    assert metrics.auc(metrics.roc(s, y)) == pytest.approx(wins / (len(gen) * len(imp)))


@settings(max_examples=100, deadline=None)
@given(pair_data)
def test_best_threshold_is_optimal(data):
    s, y = np.array(data[0]), np.array(data[1])
    candidates = np.r_[s, s.max() + 1]  # every possible acceptance set with ">="
    best = max(metrics.accuracy(s, y, t) for t in candidates)
    assert metrics.accuracy(s, y, metrics.best_threshold(s, y)) == pytest.approx(best)


@settings(max_examples=100, deadline=None)
@given(pair_data, st.sampled_from([0.0, 0.1, 0.25, 0.5]))
def test_roc_and_tar_at_far_match_brute_force(data, target):
    s, y = np.array(data[0]), np.array(data[1])
    curve = metrics.roc(s, y)
    assert np.all(np.diff(curve.far) >= 0) and np.all(np.diff(curve.tar) >= 0)
    assert curve.far[-1] == 1 and curve.tar[-1] == 1
    for far, tar, t in zip(curve.far, curve.tar, curve.thresholds):
        assert far == pytest.approx(np.mean(s[~y] >= t))
        assert tar == pytest.approx(np.mean(s[y] >= t))
    rates = [(np.mean(s[~y] >= t), np.mean(s[y] >= t)) for t in np.r_[s, s.max() + 1]]
    expected = max(tar for far, tar in rates if far <= target)
    tar, threshold = metrics.tar_at_far(curve, target)
    assert tar == pytest.approx(expected)
    assert np.mean(s[~y] >= threshold) <= target


@settings(max_examples=100, deadline=None)
@given(pair_data)
def test_eer_lies_between_far_and_frr_at_neighbouring_points(data):
    s, y = np.array(data[0]), np.array(data[1])
    curve = metrics.roc(s, y)
    rate, _ = metrics.eer(curve)
    d = curve.far - curve.frr
    i = int(np.argmax(d >= 0))
    lo = min(curve.far[i - 1 if i else 0], curve.frr[i])
    hi = max(curve.far[i], curve.frr[i - 1 if i else 0])
    assert lo - 1e-12 <= rate <= hi + 1e-12
