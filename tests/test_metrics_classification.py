"""Classification metrics against values worked out by hand, and the bootstrap interval's guarantees."""

import math

import numpy as np
import pytest

from mammoxai.metrics import (
    accuracy,
    balanced_accuracy,
    balanced_threshold,
    bootstrap_ci,
    cohens_dz,
    confusion_matrix,
    paired_auc_difference,
    pearson,
    roc_auc,
    spearman,
)

# 3 classes; class 0 is frequent: true 0,0,0,0,1,1,2 / predicted 0,0,0,1,1,0,2
Y_TRUE = [0, 0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 0, 1, 1, 0, 2]


def test_accuracy_is_share_of_correct_predictions():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 7)


def test_balanced_accuracy_is_mean_recall_per_class():
    # recalls: class 0 3/4, class 1 1/2, class 2 1/1
    assert balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((0.75 + 0.5 + 1.0) / 3)


def test_balanced_accuracy_counts_a_prediction_of_an_absent_class_as_wrong():
    assert balanced_accuracy([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx((0.5 + 1.0) / 2)


def test_confusion_matrix_rows_are_true_classes_and_keep_absent_classes():
    matrix = confusion_matrix(Y_TRUE, Y_PRED, num_classes=4)
    expected = np.array([[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(matrix, expected)


def test_spearman_of_a_monotone_but_nonlinear_relation_is_one_and_pearson_is_less():
    x = [0, 1, 2, 3, 4]
    y = [0, 1, 4, 9, 100]
    assert spearman(x, y) == pytest.approx(1.0)
    assert pearson(x, y) < 0.9


def test_pearson_matches_the_textbook_formula():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])
    # deviations (-1.5, -0.5, 0.5, 1.5) and (-0.5, -1.5, 1.5, 0.5): covariance 0.75, both variances 1.25
    assert pearson(x, y) == pytest.approx(0.75 / 1.25)


def test_correlation_with_a_constant_prediction_is_nan_not_an_error():
    assert math.isnan(spearman([0, 1, 2], [1, 1, 1]))
    assert math.isnan(pearson([0, 1, 2], [1, 1, 1]))


def test_binary_roc_auc_counts_correctly_ordered_pairs():
    # positives 0.9, 0.4; negatives 0.5, 0.1: ordered pairs (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3 of 4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)


def test_roc_auc_with_a_single_class_is_nan():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_paired_auc_difference_sees_a_gain_that_two_separate_intervals_hide():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60), np.zeros(140)].astype(int)
    shared = rng.normal(size=200) + 0.8 * y  # the images' own difficulty, seen by both models
    better = shared + 0.5 * y + 0.1 * rng.normal(size=200)
    worse = shared + 0.1 * rng.normal(size=200)
    difference = paired_auc_difference(y, better, worse, n=500)
    assert difference.estimate == pytest.approx(roc_auc(y, better) - roc_auc(y, worse))
    assert difference.low > 0  # the paired interval excludes "no difference" ...
    separate = bootstrap_ci(roc_auc, y, better, n=500), bootstrap_ci(roc_auc, y, worse, n=500)
    assert separate[0].low < separate[1].high  # ... where the two models' own intervals overlap
    same = paired_auc_difference(y, worse, worse, groups=np.arange(200) // 4, n=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_multiclass_roc_auc_averages_only_the_classes_present():
    scores = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]])
    labels = [0, 0, 1, 1]  # class 2 absent: its AUC is undefined and left out
    # class 0: positives 0.8, 0.6 vs negatives 0.3, 0.5 -> 4/4; class 1: 0.6, 0.4 vs 0.1, 0.3 -> 4/4
    assert roc_auc(labels, scores) == pytest.approx(1.0)
    scores[3] = [0.7, 0.2, 0.1]  # class 0: 0.8, 0.6 vs 0.3, 0.7 -> 3/4; class 1: 0.6, 0.2 vs 0.1, 0.3 -> 3/4
    assert roc_auc(labels, scores) == pytest.approx(0.75)


def test_balanced_threshold_separates_separable_scores():
    threshold, best = balanced_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8])
    assert best == pytest.approx(1.0)
    assert 0.3 < threshold <= 0.6


@pytest.mark.parametrize("scores", [[0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]])
def test_balanced_threshold_reproduces_its_balanced_accuracy_when_applied(scores):
    labels = [0, 0, 1, 1]
    threshold, best = balanced_threshold(labels, scores)
    assert math.isfinite(threshold)
    assert balanced_accuracy(labels, (np.asarray(scores) >= threshold).astype(int)) == pytest.approx(best)


def test_cohens_dz_is_mean_over_sample_sd():
    # mean 2, sample sd of (1, 2, 3) = 1
    assert cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert cohens_dz([-1.0, -2.0, -3.0]) == pytest.approx(-2.0)
    assert math.isinf(cohens_dz([0.5, 0.5, 0.5]))
    assert cohens_dz([0.0, 0.0]) == 0.0


def _scores(n=200, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, labels * 1.0 + rng.normal(0, 1.0, n)


def test_bootstrap_interval_contains_the_estimate():
    labels, scores = _scores()
    interval = bootstrap_ci(roc_auc, labels, scores, n=300, seed=0)
    assert interval.estimate == pytest.approx(roc_auc(labels, scores))
    assert interval.low < interval.estimate < interval.high
    assert interval.resamples == 300


def test_bootstrap_is_deterministic_per_seed_and_differs_between_seeds():
    labels, scores = _scores()
    first = bootstrap_ci(roc_auc, labels, scores, n=200, seed=7)
    assert bootstrap_ci(roc_auc, labels, scores, n=200, seed=7) == first
    assert bootstrap_ci(roc_auc, labels, scores, n=200, seed=8) != first


def test_bootstrap_interval_narrows_with_more_samples():
    small = bootstrap_ci(roc_auc, *_scores(n=60), n=300, seed=0)
    large = bootstrap_ci(roc_auc, *_scores(n=2000), n=300, seed=0)
    assert large.high - large.low < small.high - small.low


def test_bootstrap_of_a_one_argument_statistic():
    differences = np.random.default_rng(0).normal(1.0, 1.0, 100)
    interval = bootstrap_ci(cohens_dz, differences, n=300, seed=0)
    assert interval.low < cohens_dz(differences) < interval.high
    assert 0.5 < interval.low and interval.high < 1.6


def test_cluster_bootstrap_is_wider_when_images_of_a_patient_are_copies():
    labels, scores = _scores(n=50)
    # each of 50 patients contributes 4 identical images: 200 rows but only 50 independent units
    copies = np.repeat(labels, 4), np.repeat(scores, 4)
    patients = np.repeat(np.arange(50), 4)
    naive = bootstrap_ci(roc_auc, *copies, n=300, seed=0)
    clustered = bootstrap_ci(roc_auc, *copies, n=300, seed=0, groups=patients)
    assert clustered.high - clustered.low > 1.5 * (naive.high - naive.low)


def test_bootstrap_drops_resamples_where_the_metric_is_undefined():
    # 1 positive in 20: about a third of resamples miss it and have no AUC
    labels = np.array([1] + [0] * 19)
    scores = np.linspace(1.0, 0.0, 20)
    interval = bootstrap_ci(roc_auc, labels, scores, n=300, seed=0)
    assert 100 < interval.resamples < 300
    assert interval.high == pytest.approx(1.0)


def test_bootstrap_reports_no_interval_when_the_metric_is_mostly_undefined():
    interval = bootstrap_ci(roc_auc, [1, 1, 1, 0], [0.5, 0.6, 0.7, 0.1], n=200, seed=0, min_defined=0.9)
    assert interval.estimate == pytest.approx(1.0)
    assert math.isnan(interval.low) and math.isnan(interval.high)


def test_bootstrap_of_one_cluster_reports_no_interval_rather_than_one_of_zero_width():
    """Every resample of a single patient is that patient: the spread is zero, and a report would state an estimate
    resting on the least evidence as certain (AUC 0.750, 95 % CI 0.750-0.750)."""
    interval = bootstrap_ci(roc_auc, [0, 1, 0, 1], [0.3, 0.2, 0.1, 0.9], n=200, seed=0, groups=["P1"] * 4)
    assert interval.estimate == pytest.approx(0.75)
    assert math.isnan(interval.low) and math.isnan(interval.high) and interval.resamples == 0


def test_bootstrap_rejects_arrays_of_different_length():
    with pytest.raises(ValueError, match="y_score has 2"):
        bootstrap_ci(roc_auc, [0, 1, 1], [0.1, 0.2])
