"""Metrics MammoXAI reports: classification scores with bootstrap intervals (AUC ± 95 % CI and friends) and
saliency metrics (pointing game, deletion / insertion, randomisation sanity check)."""

from mammoxai.metrics.classification import (
    ConfidenceInterval,
    accuracy,
    balanced_accuracy,
    balanced_threshold,
    bootstrap_ci,
    cohens_dz,
    confusion_matrix,
    paired_auc_difference,
    pearson,
    per_class_scores,
    roc_auc,
    spearman,
)
from mammoxai.metrics.saliency import (
    deletion_insertion_auc,
    energy_pointing_game,
    paired_pointing_difference,
    pointing_game,
    pointing_game_summary,
    randomisation_sanity,
    randomise_weights,
    widen_box,
)

__all__ = [
    "ConfidenceInterval",
    "accuracy",
    "balanced_accuracy",
    "balanced_threshold",
    "bootstrap_ci",
    "cohens_dz",
    "confusion_matrix",
    "paired_auc_difference",
    "pearson",
    "per_class_scores",
    "roc_auc",
    "spearman",
    "pointing_game",
    "pointing_game_summary",
    "paired_pointing_difference",
    "widen_box",
    "energy_pointing_game",
    "deletion_insertion_auc",
    "randomisation_sanity",
    "randomise_weights",
]
