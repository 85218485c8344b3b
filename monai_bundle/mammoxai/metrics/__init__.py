"""Metrics MammoXAI reports: classification scores with bootstrap intervals (AUC ± 95 % CI and friends)."""

from mammoxai.metrics.classification import (
    ConfidenceInterval,
    accuracy,
    balanced_accuracy,
    balanced_threshold,
    bootstrap_ci,
    cohens_dz,
    confusion_matrix,
    pearson,
    roc_auc,
    spearman,
)

__all__ = [
    "ConfidenceInterval",
    "accuracy",
    "balanced_accuracy",
    "balanced_threshold",
    "bootstrap_ci",
    "cohens_dz",
    "confusion_matrix",
    "pearson",
    "roc_auc",
    "spearman",
]
