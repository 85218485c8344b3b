"""Classification metrics with the conventions MammoXAI reports them in, and a general bootstrap interval.

The point estimates are thin wrappers over ``sklearn.metrics`` and ``scipy.stats`` (the references everyone
checks against); what they add is behaviour that stays defined on the small, unbalanced evaluation sets of a
screening population: a metric that cannot be computed (an AUC with one class, a correlation with a constant
prediction) returns NaN instead of raising, so one empty class never stops a report.

:func:`bootstrap_ci` turns any of them (or any ``metric_fn(y_true[, y_score]) -> float``) into an estimate with
a percentile bootstrap interval (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). With
``groups`` it resamples whole groups (patients) instead of images: images of one patient are correlated, and
treating them as independent makes intervals too narrow.

Example:
    auc = bootstrap_ci(roc_auc, labels, scores, n=1000, seed=0, groups=patient_ids)
    f"AUC {auc.estimate:.3f} (95 % CI {auc.low:.3f}-{auc.high:.3f})"
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

__all__ = [
    "ConfidenceInterval",
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "per_class_scores",
    "spearman",
    "pearson",
    "roc_auc",
    "balanced_threshold",
    "cohens_dz",
    "bootstrap_ci",
]

ArrayLike = Sequence[Any] | np.ndarray


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of predictions equal to the label; NaN for no samples."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(skm.accuracy_score(y_true, y_pred)) if y_true.size else math.nan


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (``sklearn.metrics.balanced_accuracy_score``).

    Accuracy on a field where one class dominates (most screening images are CC or MLO of the same system)
    rewards always predicting that class; balanced accuracy gives every class the same weight.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not y_true.size:
        return math.nan
    with warnings.catch_warnings():  # predicted classes absent from y_true are wrong predictions, nothing more
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """``num_classes`` × ``num_classes`` counts, rows the true class and columns the predicted class.

    Classes are the indices ``0 .. num_classes - 1``, so the matrix keeps its shape (and its rows keep their
    meaning) when a class is absent from a small evaluation set.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not y_true.size:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def _correlation(method: Callable, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.size < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return math.nan
    return float(method(y_true, y_pred)[0])


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); NaN when either side is constant.

    For ordinal fields (binned thickness, force, kV, age) accuracy treats a prediction one bin off like one four
    bins off; the rank correlation between true and predicted bin index says whether the network orders images
    correctly.
    """
    return _correlation(stats.spearmanr, y_true, y_pred)


def pearson(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson's correlation (``scipy.stats.pearsonr``); NaN when either side is constant."""
    return _correlation(stats.pearsonr, y_true, y_pred)


def per_class_scores(
    labels: Sequence[int], predictions: Sequence[int], class_names: Sequence[str]
) -> tuple[list[dict[str, Any]], float]:
    """Per-class precision, recall, F1 and support, and the macro F1 over the classes that occur in ``labels``.

    A class absent from the labels (e.g. ``other`` on data that annotates only masses and calcifications) has
    undefined recall; its row reports NaN and it is left out of the macro mean rather than counted as 0.
    """
    classes = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=np.nan
    )
    rows = [
        {
            "class": name,
            "precision": float(precision[index]),
            "recall": float(recall[index]) if support[index] else float("nan"),
            "f1": float(f1[index]) if support[index] else float("nan"),
            "support": int(support[index]),
        }
        for index, name in enumerate(class_names)
    ]
    present = [row["f1"] for row in rows if row["support"]]
    macro = float(np.mean(np.nan_to_num(present))) if present else float("nan")
    return rows, macro


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); NaN where it is undefined.

    Args:
        y_true: binary labels (0/1) for a 1-D ``y_score``; class indices for a 2-D one.
        y_score: (N,) scores of the positive class, or (N, C) per-class scores (probabilities), in which case the
            result is the macro average of the one-vs-rest AUCs of the classes that have both positive and
            negative examples (a class absent from ``y_true`` has no defined AUC and is left out).
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1:
        return float(skm.roc_auc_score(y_true, y_score)) if np.unique(y_true).size == 2 else math.nan
    aucs = [
        skm.roc_auc_score(y_true == c, y_score[:, c])
        for c in range(y_score.shape[1])
        if 0 < (y_true == c).sum() < y_true.size
    ]
    return float(np.mean(aucs)) if aucs else math.nan


def balanced_threshold(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """The score threshold that maximises balanced accuracy on these samples, and that balanced accuracy.

    Maximising balanced accuracy is maximising Youden's J = sensitivity + specificity - 1. A sample is called
    positive when its score is ``>= threshold``. Chosen on the data it is then applied to, the accuracy is
    optimistic; choose it on a separate part to report an honest one.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if np.unique(y_true).size != 2:
        return math.nan, math.nan
    fpr, tpr, thresholds = skm.roc_curve(y_true, y_score)
    best = int(np.argmax(tpr - fpr))
    threshold = thresholds[best]
    if not np.isfinite(threshold):  # sklearn's first threshold (nothing positive) is +inf; keep it a number
        threshold = np.nextafter(y_score.max(), np.inf)
    return float(threshold), float((tpr[best] + 1.0 - fpr[best]) / 2.0)


def cohens_dz(differences: ArrayLike) -> float:
    """Cohen's d_z of paired differences: their mean over their standard deviation (ddof = 1).

    The standardised effect size of a within-subject change (Cohen, "Statistical Power Analysis for the
    Behavioral Sciences", 1988; Lakens, Front. Psychol. 2013, doi:10.3389/fpsyg.2013.00863). NaN for fewer than
    two differences; +/-inf when they are all equal and non-zero (a perfectly consistent change).
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size < 2:
        return math.nan
    mean, sd = differences.mean(), differences.std(ddof=1)
    if sd > 1e-12 * max(1.0, abs(mean)):
        return float(mean / sd)
    return 0.0 if mean == 0 else math.copysign(math.inf, mean)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with a bootstrap interval.

    Args:
        estimate: the metric on the full sample.
        low, high: the interval bounds (NaN when too few resamples gave a defined metric).
        level: the confidence level, e.g. 0.95.
        resamples: how many resamples gave a defined (finite) metric.
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} ({self.level:.0%} CI {self.low:.3f}-{self.high:.3f})"


def bootstrap_ci(
    metric_fn: Callable[..., float],
    y_true: ArrayLike,
    y_score: ArrayLike | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: ArrayLike | None = None,
    min_defined: float = 0.5,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric_fn(y_true, y_score)`` (or ``metric_fn(y_true)``).

    Samples (rows of ``y_true`` and ``y_score`` together, so pairs stay paired) are drawn with replacement ``n``
    times; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled metric.
    Resamples where the metric is undefined (NaN, infinite or raising ``ValueError``, e.g. an AUC drawn with a
    single class) are dropped and counted out of ``resamples``.

    Args:
        metric_fn: ``f(y_true, y_score) -> float``, or ``f(y_true) -> float`` when ``y_score`` is None (e.g.
            :func:`cohens_dz` of per-image differences).
        y_true: (N, ...) labels or values.
        y_score: (N, ...) scores or predictions, resampled with the same indices as ``y_true``; optional.
        n: number of resamples.
        seed: seed of the resampling; the same seed gives the same interval.
        level: confidence level of the interval.
        groups: (N,) cluster ids (patient ids): whole clusters are resampled (cluster bootstrap), so correlated
            images of one patient count as one unit of evidence. With a single cluster every resample is that
            cluster, so no interval is reported (NaN bounds) rather than one of zero width.
        min_defined: the smallest share of defined resamples for which an interval is reported; below it the
            bounds are NaN, since the surviving resamples are no longer a fair sample.

    Raises:
        ValueError: ``y_true`` and ``y_score`` (or ``groups``) differ in length, or ``n`` / ``level`` are invalid.
    """
    y_true = np.asarray(y_true)
    y_score = None if y_score is None else np.asarray(y_score)
    if y_score is not None and len(y_score) != len(y_true):
        raise ValueError(f"y_true has {len(y_true)} samples but y_score has {len(y_score)}")
    if n < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")

    def metric(index: np.ndarray | slice) -> float:
        arguments = (y_true[index],) if y_score is None else (y_true[index], y_score[index])
        try:
            return float(metric_fn(*arguments))
        except ValueError:
            return math.nan

    rng = np.random.default_rng(seed)
    if groups is None:
        draws = (rng.integers(0, len(y_true), len(y_true)) for _ in range(n))
    else:
        groups = np.asarray(groups)
        if len(groups) != len(y_true):
            raise ValueError(f"y_true has {len(y_true)} samples but groups has {len(groups)}")
        _, cluster = np.unique(groups, return_inverse=True)
        members = np.split(np.argsort(cluster, kind="stable"), np.cumsum(np.bincount(cluster))[:-1])
        if len(members) < 2:
            return ConfidenceInterval(metric(slice(None)), math.nan, math.nan, level, 0)
        draws = (np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))]) for _ in range(n))
    values = np.array([metric(index) for index in draws]) if len(y_true) else np.full(n, math.nan)
    values = values[np.isfinite(values)]
    estimate = metric(slice(None))
    if values.size < max(1, min_defined * n):
        return ConfidenceInterval(estimate, math.nan, math.nan, level, int(values.size))
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return ConfidenceInterval(estimate, float(low), float(high), level, int(values.size))


def paired_auc_difference(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    groups: ArrayLike | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ConfidenceInterval:
    """ROC AUC of ``score_a`` minus that of ``score_b`` on the same images, with a paired bootstrap interval.

    Both models' scores are resampled with the same draws (whole patients when ``groups`` is given), so the test
    set's own luck — which patients happen to be easy — is shared by the two AUCs and cancels in the difference.
    Two overlapping per-model intervals therefore do not mean "no difference"; this interval is the one to read.
    It covers the sampling of test patients only, not training noise (seeds), which needs repeated runs.

    Args:
        y_true: (N,) binary labels.
        score_a, score_b: (N,) scores of the two models on the same images, in the same order.
        groups, n, seed, level: as in :func:`bootstrap_ci`.
    """
    scores = np.stack([np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)], axis=1)
    return bootstrap_ci(
        lambda truth, pair: roc_auc(truth, pair[:, 0]) - roc_auc(truth, pair[:, 1]),
        y_true,
        scores,
        n=n,
        seed=seed,
        level=level,
        groups=groups,
    )
