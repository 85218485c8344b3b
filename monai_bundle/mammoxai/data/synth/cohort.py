"""Who is in the synthetic screening cohort: case labels, X-ray systems, prior studies and the train/test split.

Counts are allocated exactly (largest remainder) and then shuffled, rather than drawn independently per patient,
so a 4-patient test set and a 10,000-patient demo set both get the requested mix; the plan depends on the seed
alone, never on how patients are later spread over worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mammoxai.errors import MammoXAIError

__all__ = ["CASE_LABELS", "DEFAULT_PREVALENCE", "PatientPlan", "allocate", "plan_cohort"]

CASE_LABELS: tuple[str, ...] = ("normal", "benign", "recalled_benign", "malignant")

#: study-level case mix: enriched for cancer so a demo model has enough malignant cases to learn from
DEFAULT_PREVALENCE: dict[str, float] = {"normal": 0.4, "benign": 0.2, "recalled_benign": 0.15, "malignant": 0.25}


@dataclass(frozen=True)
class PatientPlan:
    """What is decided about a patient before any pixel is drawn.

    Args:
        index: position in the cohort (0-based); seeds everything else about the patient.
        patient_id: PatientID, e.g. "P0007".
        outcome: case label of the current (latest) study.
        system: key of the X-ray system of the current study.
        prior_system: key of the system of the prior study, or None when the patient has no prior.
        split: "training" or "test" (VinDr-Mammo's names), by patient so no patient is in both.
    """

    index: int
    patient_id: str
    outcome: str
    system: str
    prior_system: str | None
    split: str


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest-remainder rounding)."""
    shares = np.asarray(weights, dtype=float) / float(np.sum(weights)) * total
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _shuffled(values: Sequence[str], counts: Sequence[int], rng: np.random.Generator) -> list[str]:
    pool = [value for value, count in zip(values, counts, strict=True) for _ in range(count)]
    return [pool[i] for i in rng.permutation(len(pool))]


def plan_cohort(
    patients: int,
    seed: int,
    systems: Sequence[str],
    prevalence: Mapping[str, float] | None = None,
    prior_fraction: float = 0.25,
    test_fraction: float = 0.2,
) -> list[PatientPlan]:
    """The plan of every patient of a cohort.

    Args:
        patients: number of patients.
        seed: cohort seed.
        systems: keys of the X-ray systems, used in equal shares; a prior study stays on the patient's system
            with probability 0.6 and otherwise comes from another one (sites replace equipment).
        prevalence: case label -> share of current studies (normalised); defaults to :data:`DEFAULT_PREVALENCE`.
        prior_fraction: share of patients with a prior screening study one or two years earlier.
        test_fraction: share of patients in the test split.

    Raises:
        MammoXAIError: a count, share or case label is out of range.
    """
    prevalence = dict(DEFAULT_PREVALENCE if prevalence is None else prevalence)
    if patients < 1:
        raise MammoXAIError("patients", f"is {patients}", "ask for at least one patient")
    unknown = sorted(set(prevalence) - set(CASE_LABELS))
    shares = list(prevalence.values())
    if unknown or not all(0 <= share < math.inf for share in shares) or not 0 < sum(shares) < math.inf:  # NaN too
        raise MammoXAIError(
            "prevalence",
            f"{prevalence} is not a finite, non-negative share for some of {', '.join(CASE_LABELS)}",
            "e.g. normal=0.4,benign=0.2,recalled_benign=0.15,malignant=0.25",
        )
    for name, share in (("prior_fraction", prior_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= share <= 1.0:
            raise MammoXAIError(name, f"is {share}", "use a share between 0 and 1")
    rng = np.random.default_rng([seed, 0])
    outcomes = _shuffled(CASE_LABELS, allocate([prevalence.get(label, 0.0) for label in CASE_LABELS], patients), rng)
    current = _shuffled(systems, allocate([1.0] * len(systems), patients), rng)
    has_prior = _shuffled(("yes", "no"), allocate([prior_fraction, 1.0 - prior_fraction], patients), rng)
    split = _shuffled(("test", "training"), allocate([test_fraction, 1.0 - test_fraction], patients), rng)
    width = max(4, len(str(patients - 1)))
    plans = []
    for index in range(patients):
        prior = None
        if has_prior[index] == "yes":
            others = [key for key in systems if key != current[index]] or [current[index]]
            prior = current[index] if rng.uniform() < 0.6 else str(rng.choice(others))
        plans.append(PatientPlan(index, f"P{index:0{width}d}", outcomes[index], current[index], prior, split[index]))
    return plans
