"""How accurately could any model read a header field from the synthetic pixels? Bayes ceilings, from the generator.

Metadata pretraining (Litchfield et al., SPIE 2022) is judged by how well a backbone predicts header fields from
pixels, and the bar (78 %) applies to every field the generator makes learnable. Two default fields of
``configs/metadata_fields.json`` are never drawn into the image: the **compression force** follows the breast's
size plus the technologist's scatter, and the **age** reaches the pixels only through the breast's density. For
them no model of the pixels can beat the Bayes rule that knows every cause the pixels could show (breast size,
view, density) and misses only the field's own noise, so that rule's accuracy is an upper bound. This module
measures it with the generator's own draws (:func:`~mammoxai.data.synth.study.draw_body`,
:func:`~mammoxai.data.synth.study.compress`, :func:`~mammoxai.data.synth.vendors.choose_exposure`) for the cohort
that :func:`~mammoxai.data.synth.synthesize` makes with the same ``patients`` and ``seed``.

**kVp** is given from the exposure control's inputs (X-ray system, compressed thickness, density). That is not a
bound: kVp also sets the tissue contrast in the pixels (about 4 % per kV). It says how much of kVp the
generator's scatter and rounding leave readable to a model that recovers those inputs and nothing else. Thickness,
system and view are drawn into the pixels directly (noise level and technique, detector and processing, anatomy),
so the generator sets them no ceiling.

Every figure is on the current study's images (every patient has one; a prior study repeats the same draws a year
or two earlier).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammoxai.data.synth.cohort import plan_cohort
from mammoxai.data.synth.study import AGE_RANGE, PatientBody, compress, density_probabilities, patient_body
from mammoxai.data.synth.vendors import SYSTEMS, XraySystem, choose_exposure, system_by_key
from mammoxai.errors import check_output_path
from mammoxai.io.fields import BinnedField, MetadataLabelSpace
from mammoxai.metrics.classification import ConfidenceInterval, bootstrap_ci

__all__ = ["FieldCeiling", "age_ceiling", "compression_force_ceiling", "field_ceilings", "kvp_ceiling", "main"]

_VIEWS = ("CC", "MLO")
_CEILING_STREAM = 101  # replicate draws, apart from every stream the generator uses
_Draw = Callable[[np.random.Generator], float]  # draws a field's value for one image, given its noise generator


@dataclass(frozen=True)
class FieldCeiling:
    """The best accuracy any model of the pixels could reach on one field, and what it is measured against.

    Attributes:
        field: name in the label space (``compression_force``, ``age``, ``kvp``).
        accuracy: the Bayes rule's accuracy, with a bootstrap interval over patients (exact fields: low = high).
        majority: accuracy of always answering the most frequent bin.
        knows: what the rule is given.
        bound: True when no model of the pixels can exceed ``accuracy`` (the field is not drawn into the pixels);
            False when the pixels carry more than the rule is given.
    """

    field: str
    accuracy: ConfidenceInterval
    majority: float
    knows: str
    bound: bool

    def row(self) -> dict[str, object]:
        return {
            "field": self.field,
            "Bayes accuracy": self.accuracy.estimate,
            "95 % CI low": self.accuracy.low,
            "95 % CI high": self.accuracy.high,
            "majority bin": self.majority,
            "the rule knows": self.knows,
            "upper bound for pixels": "yes" if self.bound else "no",
        }


def _binned(label_space: MetadataLabelSpace, name: str) -> BinnedField:
    if name not in label_space.fields:
        raise ValueError(f"the label space has no field {name!r}; it has {label_space.fields}")
    field = label_space.field(name)
    if not isinstance(field, BinnedField):
        raise ValueError(f"field {name!r} is {type(field).__name__}, not binned: a ceiling needs bins")
    return field


def _bin(field: BinnedField, value: float) -> int:
    header_value = f"{int(value):03d}Y" if field.parse == "dicom_age" else value
    return field.encode({field.keys[0]: header_value})


def age_ceiling(label_space: MetadataLabelSpace) -> FieldCeiling:
    """Age bin from density, exactly: ages are uniform over the screening range and density follows age.

    ``sum over density d of max over bins b of P(b, d)``; nothing else the pixels show depends on age.
    """
    field = _binned(label_space, "age")
    ages = np.arange(*AGE_RANGE)
    bins = np.array([_bin(field, age) for age in ages])
    joint = np.zeros((len(field.class_names), 4))  # P(age bin, density)
    for age, age_bin in zip(ages, bins, strict=True):
        joint[age_bin] += density_probabilities(int(age)) / len(ages)
    accuracy = float(joint.max(axis=0).sum())
    exact = ConfidenceInterval(accuracy, accuracy, accuracy, 0.95, 0)
    return FieldCeiling("age", exact, float(joint.sum(axis=1).max()), "BI-RADS density", bound=True)


def _replicated_ceiling(
    name: str,
    label_space: MetadataLabelSpace,
    patients: int,
    seed: int,
    replicates: int,
    sampler: Callable[[PatientBody, str, XraySystem, np.random.Generator], _Draw],
    knows: str,
    bound: bool,
) -> FieldCeiling:
    """The Bayes rule for one field, estimated by redrawing the field's noise for each of the cohort's images.

    For every (patient, view), ``sampler(body, view, system, rng)`` draws once what the image fixes and returns
    a function that draws the field's value given it. The rule answers the most frequent bin of ``replicates``
    draws and is scored on ``replicates`` fresh ones, so choosing and scoring never share a draw.
    """
    if patients < 1:
        raise ValueError(f"patients is {patients}; use at least 1")
    if replicates < 2:
        raise ValueError(f"replicates is {replicates}; use at least 2: one draw says nothing of how the value scatters")
    field = _binned(label_space, name)
    plans = plan_cohort(patients, seed, [system.key for system in SYSTEMS])
    hits, groups, counts = [], [], np.zeros(len(field.class_names))
    for plan in plans:
        body = patient_body(seed, plan.index)
        system = system_by_key(plan.system)
        for code, view in enumerate(_VIEWS):
            rng = np.random.default_rng([seed, _CEILING_STREAM, plan.index, code])
            draw = sampler(body, view, system, rng)
            chosen, scored = (_bin_counts(field, draw, rng, replicates) for _ in range(2))
            if scored.sum() and chosen.sum():  # else every draw fell outside the field's range: no label to learn
                hits.append(scored[chosen.argmax()] / scored.sum())
                groups.append(plan.index)
                counts += scored
    if not hits:
        raise ValueError(f"every {name} value the generator draws is outside the field's range {field.valid_range}")
    accuracy = bootstrap_ci(np.mean, np.array(hits), groups=np.array(groups))
    return FieldCeiling(name, accuracy, float(counts.max() / counts.sum()), knows, bound)


def _bin_counts(field: BinnedField, draw: _Draw, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """How many of ``replicates`` draws fall in each bin; values outside the field's range are unknown and dropped,
    as training masks them out of the loss."""
    bins = np.array([_bin(field, draw(rng)) for _ in range(replicates)])
    return np.bincount(bins[bins >= 0], minlength=len(field.class_names))


def _force_sampler(body: PatientBody, view: str, system: XraySystem, rng: np.random.Generator) -> _Draw:
    return lambda noise: compress(body, view, system, noise)[1]


def _kvp_sampler(body: PatientBody, view: str, system: XraySystem, rng: np.random.Generator) -> _Draw:
    thickness = compress(body, view, system, rng)[0]  # the exposure this image had
    return lambda noise: choose_exposure(system, thickness, body.density, noise).kvp


def compression_force_ceiling(
    label_space: MetadataLabelSpace, patients: int = 500, seed: int = 0, replicates: int = 200
) -> FieldCeiling:
    """Compression force bin from the breast's size in mm and the view: an upper bound, the force is not drawn."""
    knows = "breast depth and height in mm, view"
    return _replicated_ceiling(
        "compression_force", label_space, patients, seed, replicates, _force_sampler, knows, bound=True
    )


def kvp_ceiling(
    label_space: MetadataLabelSpace, patients: int = 500, seed: int = 0, replicates: int = 200
) -> FieldCeiling:
    """kVp bin from the exposure control's inputs, the image's compressed thickness among them: not a bound."""
    knows = "X-ray system, compressed thickness, density"
    return _replicated_ceiling("kvp", label_space, patients, seed, replicates, _kvp_sampler, knows, bound=False)


def field_ceilings(
    label_space: MetadataLabelSpace | None = None, patients: int = 500, seed: int = 0, replicates: int = 200
) -> list[FieldCeiling]:
    """Compression force, age and kVp ceilings for the cohort ``synthesize(out, patients, seed)`` writes."""
    label_space = label_space or MetadataLabelSpace.default()
    return [
        compression_force_ceiling(label_space, patients, seed, replicates),
        age_ceiling(label_space),
        kvp_ceiling(label_space, patients, seed, replicates),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/field_ceilings.py``: print the ceilings and write report.json / report.md."""
    from mammoxai.reports import Report  # torch and matplotlib only for the report, not for the functions above

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=500, help="cohort size, as given to the generator")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed, as given to the generator")
    parser.add_argument("--replicates", type=int, default=200, help="noise redraws per image to choose and to score")
    parser.add_argument("--fields", default=None, help="metadata_fields.json whose bins to use (default: the bundle's)")
    parser.add_argument("--output_dir", default="field_ceilings", help="where report.json and report.md go")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.output_dir, "--output_dir", "give a folder for the report")
        label_space = MetadataLabelSpace.from_file(args.fields) if args.fields else MetadataLabelSpace.default()
        ceilings = field_ceilings(label_space, args.patients, args.seed, args.replicates)
    except (ValueError, OSError) as error:
        print(f"field_ceilings: {error}", file=sys.stderr)
        return 2
    report = Report(
        "Bayes ceilings of the header fields the generator keeps out of the pixels",
        f"{args.patients} synthetic patients (seed {args.seed}), {args.replicates} noise redraws per image to choose "
        "the Bayes rule's bin and as many to score it. An upper bound holds for any model of the pixels; kVp's rule "
        "is given the exposure control's inputs and is not a bound (see mammoxai.data.synth.ceilings).",
        command=shlex.join(["python", "scripts/field_ceilings.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    rows = [ceiling.row() for ceiling in ceilings]
    report.add_table("ceilings", rows, "Ceilings (current study's images)")
    out = report.write(Path(args.output_dir))
    for row in rows:
        interval = f"({row['95 % CI low']:.1%}-{row['95 % CI high']:.1%})"
        print(
            f"{row['field']:<18} {row['Bayes accuracy']:6.1%} {interval}  majority {row['majority bin']:6.1%}"
            f"  bound: {row['upper bound for pixels']:<3}  knows: {row['the rule knows']}"
        )
    print(f"report: {out / 'report.md'}")
    return 0
