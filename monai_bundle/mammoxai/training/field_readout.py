"""How much of a header field a hand-made reading of the breast's noise and intensities recovers, from the image's
own pixel values and from the model input the preprocessing makes of them.

Compressed thickness reaches a presented mammogram mainly through its quantum noise: the synthetic generator's
presentation divides the log signal by the thickness, so the noise falls as thickness^-1/2
(:mod:`mammoxai.data.synth.imaging`). The model input (:func:`~mammoxai.io.preprocess.prepare_image`) scales the
intensities (under its default ``intensity_scaling``, by each breast's own percentiles) and resizes the crop onto a
fixed grid, by a factor that differs from image to image with the breast's size; both can change the noise level a
pixel shows, so the preprocessing itself can hide a cue the pixels hold. Reading the same few statistics at each
step, with the same classifier, says how much of a field each step leaves readable before any network is trained,
which tells a pretraining run that falls short of 78 % on a field (Litchfield et al., SPIE 2022) where to look. (The
resize also removes the breast's size in pixels, which no readout here uses.) ``--intensity_scaling`` picks the
scaling the two scaled readouts apply and ``--field_of_view`` what the model input frames (the breast, resized by
its own factor, or the whole image, resized by its detector's), so each model input a pretraining run may use can be
read out; the report names the ones it used.

The readouts (:data:`READOUTS`), each a multinomial logistic regression on standardised features with the X-ray
system one-hot, scored by patient-grouped k-fold cross-validation (no patient on both sides), accuracy with a
patient-bootstrap 95 % interval:

* **pixel values**: the model input's crop and flip at one original pixel per pixel, intensities as read;
* **scaled, native size**: the same, with the model input's intensity scaling (``intensity_scaling``);
* **model input**: the model input itself, on the model grid.

A readout is a lower bound on what a model of those pixels could read, not a ceiling: a network may find more.

Example:
    python scripts/field_readout.py --dataset_dir synth300 --field thickness --output_dir field_readout
    python scripts/field_readout.py --dataset_dir synth300 --field thickness --intensity_scaling display_range \\
        --output_dir field_readout_display_range
    python scripts/field_readout.py --dataset_dir synth300 --field thickness --intensity_scaling display_range \\
        --field_of_view image --output_dir field_readout_whole_image
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mammoxai import benchmarks
from mammoxai.data.manifest import read_manifest
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.io import read_mammogram
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, prepare_image
from mammoxai.metrics.classification import ConfidenceInterval, bootstrap_ci
from mammoxai.reports import Report
from mammoxai.training.classification import patient_key
from mammoxai.training.pretrain import record_metadata

__all__ = ["READOUTS", "FieldReadout", "breast_statistics", "field_readouts", "image_statistics", "main"]

READOUTS = ("pixel values", "scaled, native size", "model input")
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_EDGE_PX = 4  # pixels eroded off the breast, so the skin line's step is not read as noise


@dataclass(frozen=True)
class FieldReadout:
    """One readout's cross-validated accuracy on a field.

    Attributes:
        readout: one of :data:`READOUTS`.
        accuracy: accuracy with a patient-bootstrap 95 % interval.
        majority: accuracy of always answering the most frequent class.
        images: images with a known value of the field.
        patients: their patients.
    """

    readout: str
    accuracy: ConfidenceInterval
    majority: float
    images: int
    patients: int

    def row(self) -> dict[str, object]:
        return {
            "readout": self.readout,
            "accuracy": self.accuracy.estimate,
            "95 % CI low": self.accuracy.low,
            "95 % CI high": self.accuracy.high,
            "majority class": self.majority,
            "images": self.images,
            "patients": self.patients,
        }


def breast_statistics(image: np.ndarray, breast: np.ndarray) -> dict[str, float]:
    """Log noise levels and intensity quantiles of the ``breast`` (a boolean mask) in ``image``.

    Three noise estimates, each the median absolute response of a zero-mean filter inside the breast (robust to
    the tissue's own structure, which is sparse at this scale): the residual from the 3 x 3 mean, the diagonal
    difference of neighbours, and the Laplacian. For white noise of standard deviation sigma each is proportional
    to sigma, so its log moves by log k when the noise is k times larger.

    Raises:
        MammoXAIError: no breast pixel is left once the edge is eroded.
    """
    image = np.asarray(image, dtype=np.float64)
    inside = ndimage.binary_erosion(breast, iterations=_EDGE_PX)
    if not inside.any():
        raise MammoXAIError("image", "has no breast pixel away from its edge", "check the image shows a breast")
    responses = {
        "noise_box": image - ndimage.uniform_filter(image, 3),
        "noise_diagonal": np.pad(image[1:, 1:] - image[:-1, :-1], ((0, 1), (0, 1))),
        "noise_laplace": ndimage.laplace(image),
    }
    noise = {name: float(np.log(np.median(np.abs(response[inside])) + 1e-12)) for name, response in responses.items()}
    levels = np.quantile(image[inside], _QUANTILES)
    return {**noise, **{f"quantile_{q:.2f}": float(level) for q, level in zip(_QUANTILES, levels, strict=True)}}


def image_statistics(
    path: str | Path,
    image_size: tuple[int, int],
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> dict[str, dict[str, float]]:
    """:func:`breast_statistics` of one file at each step of its preprocessing onto the ``image_size`` grid, by the
    step's name in :data:`READOUTS`; the scaled steps scale as ``intensity_scaling`` says, and every step frames
    what ``field_of_view`` says.

    The native-size steps use :func:`~mammoxai.io.preprocess.prepare_image` onto the crop's own shape: the crop for
    a grid of that aspect is the same box, so they are the model input's crop and flip, not resized; its breast mask
    (the non-zero pixels) serves the unscaled pixel values too.
    """
    mammogram = read_mammogram(path)
    inputs = {"intensity_scaling": intensity_scaling, "field_of_view": field_of_view}
    model_input, geometry = prepare_image(mammogram, image_size, **inputs)
    scaled, native = prepare_image(mammogram, geometry.crop_shape, **inputs)
    breast = scaled[0].numpy() > 0
    pixel_values = native.apply(np.asarray(mammogram.pixels, dtype=np.float32)).numpy()
    return {
        "pixel values": breast_statistics(pixel_values, breast),
        "scaled, native size": breast_statistics(scaled[0].numpy(), breast),
        "model input": breast_statistics(model_input[0].numpy(), model_input[0].numpy() > 0),
    }


def readout_features(
    statistics: Sequence[Mapping[str, Mapping[str, float]]], systems: Sequence[str], readout: str
) -> np.ndarray:
    """The (N, F) feature matrix of ``readout`` (one of :data:`READOUTS`): its step's statistics and the X-ray system
    one-hot."""
    if readout not in READOUTS:
        raise ValueError(f"readout is {readout!r}, not one of {READOUTS}")
    rows = [item[readout] for item in statistics]
    names = sorted(rows[0])
    columns = [np.array([[row[name] for name in names] for row in rows])]
    kinds = sorted(set(systems))
    columns.append(np.array([[float(system == kind) for kind in kinds] for system in systems]))
    return np.concatenate(columns, axis=1)


def field_readouts(
    records: Sequence[Mapping[str, Any]],
    field: str,
    image_size: tuple[int, int],
    label_space: MetadataLabelSpace | None = None,
    folds: int = 5,
    n_bootstrap: int = 1000,
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> list[FieldReadout]:
    """Each readout of :data:`READOUTS` on ``field`` for the images of ``records`` whose value of it is known, the
    scaled ones under ``intensity_scaling``, all framed by ``field_of_view``
    (:func:`~mammoxai.io.preprocess.prepare_image`).

    Raises:
        MammoXAIError: ``field`` is not in the label space, or fewer patients than ``folds`` have a known value.
    """
    headers = [record_metadata(record) for record in records]
    label_space = (label_space or MetadataLabelSpace.default()).fit(headers)
    if field not in label_space.fields:
        raise MammoXAIError(
            "--field", f"is {field!r}, not a field of the label space", f"use one of {label_space.fields}"
        )
    labels = np.array([label_space.encode(header)[field] for header in headers])
    known = [i for i, label in enumerate(labels) if label != UNKNOWN]
    patients = np.array([patient_key(records[i]) for i in known])
    if len(set(patients)) < folds:
        problem = f"gives {field} for {len(set(patients))} patients, fewer than the {folds} folds"
        raise MammoXAIError("manifest", problem, "use more patients or fewer --folds")
    statistics = [image_statistics(records[i]["path"], image_size, intensity_scaling, field_of_view) for i in known]
    systems = [_system(label_space, headers[i]) for i in known]
    labels = labels[known]
    majority = float(np.bincount(labels).max() / len(labels))
    results = []
    for readout in READOUTS:
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        features = readout_features(statistics, systems, readout)
        predicted = cross_val_predict(classifier, features, labels, groups=patients, cv=GroupKFold(folds))
        hits = (predicted == labels).astype(float)
        accuracy = bootstrap_ci(np.mean, hits, n=n_bootstrap, groups=patients)
        results.append(FieldReadout(readout, accuracy, majority, len(labels), len(set(patients))))
    return results


def _system(label_space: MetadataLabelSpace, header: Mapping[str, Any]) -> str:
    """The image's X-ray system as the label space reads it; ``"unknown"`` also where the space has no such field."""
    if "xray_system" not in label_space.fields:
        return "unknown"
    return label_space.decode("xray_system", label_space.encode(header)["xray_system"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/field_readout.py``: print the readouts and write report.json / report.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="folder of the images and their manifest.csv")
    parser.add_argument("--manifest", default=None, help="manifest CSV (default: <dataset_dir>/manifest.csv)")
    parser.add_argument("--field", default="thickness", help="a field of the label space (default thickness)")
    parser.add_argument(
        "--image_size", type=benchmarks.image_size, default=(512, 416), help="model grid HxW (pretrain.json's)"
    )
    parser.add_argument(
        "--intensity_scaling",
        default="breast_percentiles",
        help="how the scaled readouts scale intensities, as pretrain.json's intensity_scaling (default "
        "breast_percentiles; or display_range)",
    )
    parser.add_argument(
        "--field_of_view",
        default="breast",
        help="what every readout frames, as pretrain.json's field_of_view (default breast; or image)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, by patient (default 5)")
    parser.add_argument("--fields", default=None, help="metadata_fields.json whose bins to use (default: the bundle's)")
    parser.add_argument("--output_dir", default="field_readout", help="where report.json and report.md go")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.output_dir, "--output_dir", "give a folder for the report")
        if args.folds < 2:
            raise MammoXAIError("--folds", f"is {args.folds}", "give 2 or more: one fold leaves nothing to fit on")
        check_intensity_scaling(args.intensity_scaling, "--intensity_scaling")
        check_field_of_view(args.field_of_view, "--field_of_view")
        label_space = MetadataLabelSpace.from_file(args.fields) if args.fields else MetadataLabelSpace.default()
        records = read_manifest(args.manifest or Path(args.dataset_dir) / "manifest.csv")
        inputs = {"intensity_scaling": args.intensity_scaling, "field_of_view": args.field_of_view}
        readouts = field_readouts(records, args.field, args.image_size, label_space, args.folds, **inputs)
    except (MammoXAIError, OSError) as error:
        print(f"field_readout: {error}", file=sys.stderr)
        return 2
    report = Report(
        f"How much of {args.field} a hand-made noise and intensity readout recovers",
        f"{readouts[0].images} images of {readouts[0].patients} patients, model grid "
        f"{args.image_size[0]}x{args.image_size[1]}, intensity_scaling {args.intensity_scaling} (the scaled "
        f"readouts), field_of_view {args.field_of_view}, {args.folds}-fold cross-validation by patient; a lower "
        "bound on what a model could read, not a ceiling (see mammoxai.training.field_readout).",
        command=shlex.join(["python", "scripts/field_readout.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    rows = [readout.row() for readout in readouts]
    inputs = f"intensity_scaling {args.intensity_scaling}, field_of_view {args.field_of_view}"
    print(f"{args.field}, {inputs}:")
    report.add_table("readouts", rows, f"Readouts of {args.field}, {inputs}")
    out = report.write(Path(args.output_dir))
    for row in rows:
        interval = f"({row['95 % CI low']:.1%}-{row['95 % CI high']:.1%})"
        print(f"{row['readout']:<20} {row['accuracy']:6.1%} {interval}  majority {row['majority class']:6.1%}")
    print(f"report: {out / 'report.md'}")
    return 0
