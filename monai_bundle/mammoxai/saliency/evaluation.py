"""Does a saliency method point at the lesion? Every method on the same lesion images, scored the same way.

For each selected method (any of :func:`~mammoxai.saliency.get_method`'s, with a preset and settings) and each
image with annotated findings, the method's map of the target class is restored to the original pixel grid
(:meth:`~mammoxai.io.geometry.ImageGeometry.restore`), where the annotations live, and scored by
:mod:`mammoxai.metrics.saliency`:

- **pointing game** per finding (Zhang et al., ECCV 2016; Byra et al. 2022 for breast lesions, 71 %): a hit when
  the map's maximum lies within ``tolerance`` (pixels, or mm with the image's pixel spacing) of the lesion - its
  mask inside its box when the study set has masks, else its box - reported per finding class (mass,
  calcification), as the class mean and overall;
- **CorRELAX's aggregate** (Mellado et al., Frontiers in Oncology 2025: 0.6358 for prediction maps on VinDr-Mammo):
  one hit per image and target class when the maximum falls in any of its boxes widened by the method's stride
  (the resolution of a local-view map; 0 for methods without one), leaving out images whose class score is below
  ``score_threshold``;
- **energy pointing game** (Wang et al., Score-CAM, CVPRW 2020): the share of the map inside the lesion;
- **deletion and insertion AUC** (Petsiuk et al., RISE, BMVC 2018) on the model grid, restricted to the breast;
  for CorRELAX the image score is its highest local-view probability;
- **model randomisation** (Adebayo et al., NeurIPS 2018): Spearman correlation between the maps of the trained
  and of a randomly re-initialised network; a method that explains the model decorrelates.

Two baselines any useful map must beat by a wide margin take the same pointing game: the **centre** of the
breast's bounding box (the model grid's centre), and a **random point in the breast** (``baseline_draws`` draws
per image). The result is a report (``report.json``, ``report.md``: one row per method and baseline) and overlay
PNGs of the first ``overlays`` lesion images with every method's map; ``report.json`` also keeps each method's
outcome per finding (``finding_hits``), so two methods or two runs can be compared finding by finding
(:mod:`mammoxai.saliency.comparison`).

Example:
    evaluator = SaliencyEvaluator(
        records, "synth/finding_annotations.csv",
        models={"whole_image": {"network": net, "class_names": ["normal", "benign", "malignant"],
                                "image_size": [256, 208], "label_map": {"recalled_benign": "benign"}}},
        methods=[{"name": "gradcam", "model": "whole_image", "settings": {"target_layer": "features.block4"}}],
        output_dir="eval/saliency",
    )
    evaluator.run()
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from monai.networks import eval_mode
from torch import nn
from tqdm import tqdm

from mammoxai.cli import run_bundle_config
from mammoxai.data.dataset import LabelMap, MammogramDataset, batch_geometries, class_index, class_indices
from mammoxai.data.findings import LESION_CLASSES, Finding, box_class, check_image_shape, match_findings, read_findings
from mammoxai.data.manifest import record_shape
from mammoxai.errors import MammoXAIError, check_output_path, first_of, parse_names
from mammoxai.io import read_dicom_header, read_mammogram, read_mask
from mammoxai.io.breast import segment_breast
from mammoxai.io.dicom import pixel_spacing
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape
from mammoxai.io.read import sniff_format
from mammoxai.metrics.saliency import (
    deletion_insertion_auc,
    energy_pointing_game,
    pointing_game,
    pointing_game_summary,
    randomisation_sanity,
    randomise_weights,
    widen_box,
)
from mammoxai.reports import Report
from mammoxai.saliency.correlax import CorRELAX
from mammoxai.saliency.registry import SaliencyMethod, check_grid, get_method
from mammoxai.training.classification import patient_key
from mammoxai.training.evaluate_classifier import load_checkpoints
from mammoxai.training.lesion_crops import load_lesion_checkpoint
from mammoxai.training.settings import another_would_overrun, check_settings

logger = logging.getLogger(__name__)

__all__ = ["TARGETS", "LesionRegion", "FindingHit", "MethodSpec", "view_scores", "SaliencyEvaluator", "main"]

#: what a method's map explains besides a class name: the image's labelled class, the class of each finding
#: (a lesion-crop classifier's mass / calcification maps), or the predicted class
TARGETS = ("label", "finding", "predicted")
_TOLERANCE_UNITS = ("px", "mm")
_PIXEL_TOLERANCE = "give the tolerance in pixels of the original image: --tolerance_unit px --tolerance <pixels>"


@dataclass
class LesionRegion:
    """One annotated finding on the original pixel grid: its class, box (x0, y0, x1, y1) and (H, W) region."""

    category: str
    box: tuple[float, float, float, float]
    region: np.ndarray


@dataclass(frozen=True)
class FindingHit:
    """One pointing-game outcome: the finding (its ``image``, ``patient`` and index among the image's regions),
    its ``category`` and whether the map pointed at it."""

    image: str
    patient: str
    finding: int
    category: str
    hit: bool


@dataclass
class MethodSpec:
    """One evaluated method: ``name`` and ``preset`` / ``settings`` for :func:`~mammoxai.saliency.get_method`,
    the ``model`` it explains (a key of the evaluator's models), its ``target`` (a class name, regardless of case and
    spacing, or one of :data:`TARGETS`) and the ``label`` it is reported under (default: name, and preset when
    given)."""

    name: str
    model: str
    target: str = "label"
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        self.label = self.label or (f"{self.name} ({self.preset})" if self.preset else self.name)


def view_scores(
    network: nn.Module, view_size: int, stride: int, chunk: int = 256
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image scores of a lesion-crop classifier: per image (n, channels, H, W), each class's highest softmax
    probability over all its ``view_size`` local views ``stride`` apart - the per-view values CorRELAX spreads into
    its prediction map, before the overlap kernel smooths them, and background views included (the deletion
    curve blanks the image, so which views hold breast changes along it)."""

    def score(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[2:]
        rows, cols = (max(1, -(-(length - view_size) // stride) + 1) for length in (height, width))
        padding = (0, (cols - 1) * stride + view_size - width, 0, (rows - 1) * stride + view_size - height)
        padded = F.pad(images, padding)
        views = padded.unfold(2, view_size, stride).unfold(3, view_size, stride)  # (n, c, rows, cols, size, size)
        views = views.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1], view_size, view_size)
        with eval_mode(network):
            logits = torch.cat([network(views[i : i + chunk]).float() for i in range(0, len(views), chunk)])
        return torch.softmax(logits, dim=1).reshape(len(images), rows * cols, -1).amax(dim=1)

    return score


class SaliencyEvaluator:
    """Score saliency methods on images with annotated findings against the centre and random baselines.

    Args:
        records: manifest records (``path``, ``image_id`` / ``sop_uid``, the label); those without a finding box
            in ``findings_csv`` are left out. A finding names its image as
            :func:`~mammoxai.data.findings.match_findings` reads it: by id, or by the file's name or path.
        findings_csv: VinDr-style finding CSV (:mod:`mammoxai.data.findings`); its ``mask`` column, when present,
            gives lesion masks, which are used inside each finding's box.
        models: name -> ``{"network", "class_names", "image_size"[, "intensity_scaling", "field_of_view",
            "checkpoint", "label_map", "view_size"]}``: the networks explained; each model's images are preprocessed
            onto its ``image_size`` grid with its ``intensity_scaling`` (default ``"breast_percentiles"``) and
            ``field_of_view`` (default ``"breast"``). ``checkpoint`` is loaded into ``network`` when a selected
            method uses the model, and refused when it records another training grid than ``image_size``, the grid
            it runs on (CorRELAX's: the full-resolution grid), or another intensity scaling or field of view.
            ``view_size`` marks a lesion-crop classifier: its checkpoint must record that view size, the grid, the
            scaling, the field of view and ``class_names`` (:func:`~mammoxai.training.lesion_crops.load_lesion_checkpoint`),
            and its methods must use that view.
        methods: :class:`MethodSpec` s or dicts of their fields.
        select: labels or names of the methods to run (None: all of ``methods``; one name: that method).
        output_dir: where the report and overlays go.
        finding_classes: the finding classes scored (:data:`~mammoxai.data.findings.LESION_CLASSES` names,
            regardless of case and spacing; one name is one class, :func:`~mammoxai.errors.parse_names`).
        label_key: the record field holding the image's label (target ``"label"``).
        tolerance, tolerance_unit: the pointing game's tolerance, in ``"px"`` of the original image or ``"mm"``.
        score_threshold: CorRELAX's aggregate leaves out image-class pairs scored below it (None keeps all).
        deletion_steps: points of the deletion / insertion curves; 0 skips them.
        sanity_images: images that get the randomisation check (it runs every method twice); 0 skips it.
        baseline_draws: random breast points per image for the random baseline.
        overlays: lesion images drawn with every method's map.
        max_images: evaluate at most this many lesion images, at least 1 (None: all).
        max_images_per_patient: take at most this many lesion images of each patient, in manifest order, before
            ``max_images`` (None: all). The pointing game's intervals are bootstrapped over patients, so a costly
            method run on a few images learns most from images of different patients: a patient's CC and MLO
            views of one lesion count as little more than one.
        max_minutes: start no image that, at the mean time per image so far, would end after this many minutes,
            so that a costly method (the faithful CorRELAX preset: over a million masked passes per full-resolution
            image) scores what a time budget allows and still writes its report; the first image is always scored,
            and the report says how many were (None: no limit).
        cache_dir: preprocessed-tensor cache (:mod:`mammoxai.data.cache`).
        device: where the networks run.
        seed: seed of the random baseline and of the randomised weights.
        command: the command line, for the record.

    Raises:
        MammoXAIError: an unknown method, preset, setting, model or target; a target class the model lacks; an
            input grid smaller than a method's local view; a checkpoint trained on other settings; a negative
            tolerance or count; an ``output_dir`` that is a file; no image with a finding box; a missing mask file;
            a finding CSV whose ``height`` and ``width`` are not the size of the image file
            (:func:`~mammoxai.data.findings.check_image_shape`).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        findings_csv: str | os.PathLike,
        models: Mapping[str, Mapping[str, Any]],
        methods: Sequence[MethodSpec | Mapping[str, Any]],
        output_dir: str | os.PathLike,
        select: str | Sequence[str] | None = None,
        finding_classes: str | Sequence[str] = ("mass", "calcification"),
        label_key: str = "case_label",
        tolerance: float = 0.0,
        tolerance_unit: str = "px",
        score_threshold: float | None = None,
        deletion_steps: int = 20,
        sanity_images: int = 10,
        baseline_draws: int = 20,
        overlays: int = 3,
        max_images: int | None = None,
        max_images_per_patient: int | None = None,
        max_minutes: float | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        command: str | None = None,
    ) -> None:
        if tolerance_unit not in _TOLERANCE_UNITS:
            raise MammoXAIError("tolerance_unit", f"is {tolerance_unit!r}", f"use one of {list(_TOLERANCE_UNITS)}")
        finding_classes = parse_names(finding_classes, "finding_classes", ["mass", "calcification"])
        if not finding_classes:
            raise MammoXAIError("finding_classes", "is empty", f"use names of {list(LESION_CLASSES)}")
        # "Mass" is "mass", as a model's class_names match it; a misspelt class ("calcifications") matches no finding:
        # its column is n/a and the class mean is that of the other classes, which reads like a result
        fix = "use names among them"
        lesion_indices = class_indices(finding_classes, LESION_CLASSES, "finding_classes", fix, "finding class")
        check_settings(
            tolerance=tolerance,
            deletion_steps=deletion_steps,
            sanity_images=sanity_images,
            baseline_draws=baseline_draws,
            overlays=overlays,
        )
        limits = {
            "max_images": max_images,
            "max_images_per_patient": max_images_per_patient,
            "max_minutes": max_minutes,
        }
        check_settings(**{name: value for name, value in limits.items() if value is not None})
        self.max_minutes = None if max_minutes is None else float(max_minutes)
        self.deletion_steps, self.sanity_images = int(deletion_steps), int(sanity_images)
        self.baseline_draws, self.overlays = int(baseline_draws), int(overlays)
        self.output_dir = check_output_path(output_dir, "evaluation_dir", "give a folder for the saliency report")
        self.device = torch.device(device)
        self.methods = _selected([_method_spec(spec) for spec in methods], select)
        used = {spec.model for spec in self.methods}
        self.models = {name: self._model(name, model, name in used) for name, model in models.items()}
        self.finding_classes = tuple(dict.fromkeys(LESION_CLASSES[index] for index in lesion_indices))
        self.findings_csv = Path(findings_csv)
        self.label_key, self.tolerance, self.tolerance_unit = label_key, float(tolerance), tolerance_unit
        self.score_threshold, self.seed, self.command = score_threshold, int(seed), command
        self._check(self.methods)
        self.explainers = {
            spec.label: self._explainer(spec, self.models[spec.model]["network"]) for spec in self.methods
        }
        matched = match_findings(records, self._findings(self.findings_csv), self.findings_csv)
        lesion_images = [(dict(record), found) for record, found in zip(records, matched, strict=True) if found]
        lesion_images = _per_patient(lesion_images, max_images_per_patient)[:max_images]
        self.records = [record for record, _ in lesion_images]
        self.findings = [found for _, found in lesion_images]
        if not self.records:
            raise MammoXAIError(
                self.findings_csv,
                f"has no {' or '.join(self.finding_classes)} box on any of the {len(records)} images",
                "evaluate on studies with lesion annotations (e.g. python -m mammoxai.data.synth ... --prevalence "
                "malignant=0.5,normal=0.5) and check the CSV's image_id column against the manifest",
            )
        for record, found in zip(self.records, self.findings, strict=True):  # the manifest's size, before any map
            for finding in found:
                check_image_shape(finding, record_shape(record), record["path"], self.findings_csv)
        if self.tolerance_unit == "mm":
            self._check_spacing_possible()
        self.datasets = {
            name: MammogramDataset(
                self.records,
                model["image_size"],
                cache_dir=cache_dir,
                intensity_scaling=model["intensity_scaling"],
                field_of_view=model["field_of_view"],
            )
            for name, model in self.models.items()
            if name in used
        }

    # -- configuration checks ---------------------------------------------------------------------------------
    def _model(self, name: str, model: Mapping[str, Any], used: bool) -> dict[str, Any]:
        missing = sorted({"network", "class_names", "image_size"} - set(model))
        if missing:
            fix = "give network, class_names and image_size"
            raise MammoXAIError(f"saliency model {name!r}", f"lacks {missing}", fix)
        size = grid_shape(model["image_size"], f"image_size of saliency model {name!r}")
        scaling = model.get("intensity_scaling", "breast_percentiles")
        scaling = check_intensity_scaling(scaling, f"intensity_scaling of saliency model {name!r}")
        view = check_field_of_view(model.get("field_of_view", "breast"), f"field_of_view of saliency model {name!r}")
        network, checkpoint, names = model["network"], model.get("checkpoint"), model["class_names"]
        if used and checkpoint and model.get("view_size") is not None:
            network = load_lesion_checkpoint(network, checkpoint, size, model["view_size"], names, scaling, view)
        elif used and checkpoint:
            inputs = {"intensity_scaling": scaling, "field_of_view": view}
            network = load_checkpoints(network, checkpoint, image_size=size, class_names=names, **inputs)[0]
        network = network.to(self.device).eval()
        return {
            **model,
            "network": network,
            "image_size": size,
            "intensity_scaling": scaling,
            "field_of_view": view,
            "class_names": list(names),
        }

    def _check(self, methods: Sequence[MethodSpec]) -> None:
        labels = [spec.label for spec in methods]
        for spec in methods:
            if spec.model not in self.models:
                fix = f"use one of {sorted(self.models)}"
                raise MammoXAIError(f"saliency method {spec.label}", f"explains model {spec.model!r}", fix)
            if spec.target not in TARGETS:
                self._target_index(spec)
            if spec.target == "finding":
                self._finding_class_indices(spec)
            if labels.count(spec.label) > 1:
                fix = "give each a distinct 'label'"
                raise MammoXAIError("saliency methods", f"{spec.label!r} is listed twice", fix)

    def _target_index(self, spec: MethodSpec) -> int:
        """The index among its model's ``class_names`` of the class a method's class-name ``target`` names.

        A target matches a class regardless of case and spacing ("Malignant", " malignant "), by the rule labels and
        ``label_map`` keys follow (:class:`~mammoxai.data.dataset.LabelMap`): matched as written, a target was refused
        in the spelling that the same method's ``"label"`` target took from the manifest.

        Raises:
            MammoXAIError: the model has no such class; the message names the method, its target, the model and its
                classes.
        """
        names, classes_setting = self.models[spec.model]["class_names"], _class_names_setting(spec.model)
        fix = f"use a class of model {spec.model!r} or one of {list(TARGETS)}"
        return class_index(spec.target, names, f"saliency method {spec.label}", fix, "target", classes_setting)

    def _finding_class_indices(self, spec: MethodSpec) -> dict[str, int]:
        """Each finding class's index among the ``class_names`` of the model a ``"finding"`` target explains.

        A finding class matches a model class regardless of case and spacing (a model of "Mass", "Calcification",
        ...), by the :class:`~mammoxai.data.dataset.LabelMap` rule a class-name target follows (:meth:`_target_index`):
        matched as written, such a model was refused as lacking the classes it has.

        Raises:
            MammoXAIError: the model lacks finding classes; the message names the method, all of those classes, the
                model and its classes.
        """
        names, classes_setting = self.models[spec.model]["class_names"], _class_names_setting(spec.model)
        fix = (
            f"target 'finding' needs each finding class in model {spec.model!r}: explain a lesion-crop classifier, "
            "or give a class name as target"
        )
        setting = f"saliency method {spec.label}"
        indices = class_indices(self.finding_classes, names, setting, fix, "finding class", classes_setting)
        return dict(zip(self.finding_classes, indices, strict=True))

    def _explainer(self, spec: MethodSpec, network: nn.Module) -> SaliencyMethod:
        explainer = get_method(spec.name, network, spec.preset, **spec.settings)
        model = self.models[spec.model]
        check_grid(explainer, model["image_size"], f"saliency method {spec.label}", f"model {spec.model!r}")
        trained, view = model.get("view_size"), getattr(explainer, "view_size", None)
        if trained is not None and view is not None and view != trained:
            problem = f"uses {view}x{view} local views; model {spec.model!r} was trained on {trained}x{trained} crops"
            raise MammoXAIError(f"saliency method {spec.label}", problem, f"set its view_size to {trained}")
        return explainer

    def _findings(self, csv_path: Path) -> list[Finding]:
        """The CSV's findings of the scored classes."""
        return [finding for finding in read_findings(csv_path) if box_class(finding, csv_path) in self.finding_classes]

    # -- evaluation ---------------------------------------------------------------------------------------------
    def _regions(self, findings: Sequence[Finding], shape: tuple[int, int], image: object) -> list[LesionRegion]:
        """The image's findings as regions on the original grid: the mask inside the box, else the box."""
        regions = []
        for finding in findings:
            check_image_shape(finding, shape, image, self.findings_csv)
            category, box, mask_path = box_class(finding), finding.box, finding.mask
            region = widen_box(box, 0, shape)
            if not region.any():
                image, size = finding.image_id, f"{shape[0]}x{shape[1]}"
                problem = f"the {category} box {tuple(box)} of image {image} lies outside its {size} pixels"
                fix = "give xmin, ymin, xmax, ymax in pixels of the original image (columns, then rows)"
                raise MammoXAIError(self.findings_csv, problem, fix)
            if mask_path:
                if not Path(mask_path).is_file():
                    fix = f"fix the mask column of {self.findings_csv}"
                    raise MammoXAIError(mask_path, "lesion mask not found", fix)
                mask = _read_mask(mask_path, self.findings_csv)
                if mask.shape != shape:
                    problem = f"is {mask.shape}, the image {shape}"
                    raise MammoXAIError(mask_path, problem, "give masks of the image's size")
                inside = region & mask
                region = inside if inside.any() else region
            regions.append(LesionRegion(category, box, region))
        return regions

    def _targets(
        self, spec: MethodSpec, record: Mapping[str, Any], regions: Sequence[LesionRegion]
    ) -> list[tuple[int | None, list[int]]]:
        """Per map: the class index it explains (None: predicted) and the indices of the regions it is scored on."""
        model = self.models[spec.model]
        names = model["class_names"]
        if spec.target == "finding":
            indices = self._finding_class_indices(spec)
            categories = sorted({region.category for region in regions}, key=self.finding_classes.index)
            return [(indices[c], [i for i, r in enumerate(regions) if r.category == c]) for c in categories]
        everything = list(range(len(regions)))
        if spec.target == "predicted":
            return [(None, everything)]
        if spec.target == "label":
            raw = str(record.get(self.label_key) or "")
            label = LabelMap(model.get("label_map"), names, _class_names_setting(spec.model))(raw)
            if label not in names:
                raise MammoXAIError(
                    record["path"],
                    f"has {self.label_key} {raw!r}, a class model {spec.model!r} lacks ({names})",
                    "set the model's label_map, or give a class name as the method's target",
                )
            return [(names.index(label), everything)]
        return [(self._target_index(spec), everything)]

    def run(self) -> dict[str, Any]:
        """Evaluate every method and baseline and write the report; returns its per-method rows and the number of
        images scored."""
        hits: dict[str, list[FindingHit]] = defaultdict(list)
        aggregate: dict[str, list[tuple[str, bool, float]]] = defaultdict(list)
        values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        overlays = []
        start = time.monotonic()
        scored = 0
        for index, record in enumerate(tqdm(self.records, desc="saliency evaluation", unit="image")):
            if another_would_overrun(start, index, self.max_minutes):
                logger.warning(
                    "max_minutes: another image would end past %g minutes; %d of %d images scored",
                    self.max_minutes,
                    index,
                    len(self.records),
                )
                break
            mammogram = read_mammogram(record["path"])
            shape = tuple(mammogram.pixels.shape)
            spacing = self._spacing(mammogram)
            regions = self._regions(self.findings[index], shape, record["path"])
            samples = {name: dataset[index] for name, dataset in self.datasets.items()}
            maps_of_image = {}
            for spec in self.methods:
                sample = samples[spec.model]
                geometry = batch_geometries(sample)[0]
                x = torch.as_tensor(sample["image"])[None].to(self.device)
                maps_of_image[spec.label] = self._score_method(
                    spec, record, x, geometry, regions, spacing, index, hits, aggregate, values
                )
            geometry = batch_geometries(next(iter(samples.values())))[0]
            self._score_baselines(geometry, segment_breast(mammogram.pixels), record, regions, spacing, index, hits)
            if index < self.overlays:
                overlays.append((record, mammogram.pixels, regions, maps_of_image))
            scored += 1
        rows = self._rows(hits, aggregate, values)
        self._write(rows, overlays, {spec.label: hits[spec.label] for spec in self.methods}, scored)
        return {"methods": rows, "images": scored}

    def pointing_game_settings(self) -> dict[str, Any]:
        """What the per-finding outcomes depend on besides the maps, kept in ``report.json`` so that a comparison
        of two evaluations (:mod:`mammoxai.saliency.comparison`) can refuse outcomes scored differently."""
        return {"tolerance": self.tolerance, "tolerance_unit": self.tolerance_unit}

    def _check_spacing_possible(self) -> None:
        """Refuse, before any map is made, lesion images without a pixel spacing: PNG, TIFF and PGM files, which have
        no header to give one, and DICOM files whose header gives none that :func:`~mammoxai.io.dicom.pixel_spacing`
        accepts (read from the header alone, a few kB per file). A tolerance in mm cannot be measured on them, and
        the run stopped only at the first of them, losing every image scored before it."""
        lacking = [str(record["path"]) for record in self.records if _header_spacing(record["path"]) is None]
        if lacking:
            problem = (
                f"needs each image's pixel spacing, which {len(lacking)} file(s) lack (a PNG, TIFF or PGM has none, "
                f"and a DICOM header may give none): {first_of(lacking, 3)}"
            )
            raise MammoXAIError("tolerance_unit 'mm'", problem, _PIXEL_TOLERANCE)

    def _spacing(self, mammogram: Any) -> tuple[float, float] | None:
        if self.tolerance_unit == "px":
            return None
        if mammogram.spacing is None:
            problem = "has no pixel spacing in its header, which a tolerance in mm needs"
            raise MammoXAIError(mammogram.source, problem, _PIXEL_TOLERANCE)
        return tuple(mammogram.spacing)

    def _score_method(
        self,
        spec: MethodSpec,
        record: Mapping[str, Any],
        x: torch.Tensor,
        geometry: ImageGeometry,
        regions: Sequence[LesionRegion],
        spacing: tuple[float, float] | None,
        index: int,
        hits: dict[str, list[FindingHit]],
        aggregate: dict[str, list],
        values: dict[str, dict[str, list[float]]],
    ) -> np.ndarray:
        """Score one method on one image; returns its first map on the original grid (for the overlays)."""
        explainer, network = self.explainers[spec.label], self.models[spec.model]["network"]
        targets = self._targets(spec, record, regions)
        class_idx = None if targets[0][0] is None else [target for target, _ in targets]
        start = time.perf_counter()
        maps, scores = explainer(x, class_idx=class_idx)
        values[spec.label]["seconds"].append(time.perf_counter() - start)
        correlax = isinstance(explainer, CorRELAX)
        probabilities = (scores if correlax else torch.softmax(scores.float(), dim=1))[0].cpu()
        chosen = [int(probabilities.argmax()) if target is None else target for target, _ in targets]
        stride = getattr(explainer, "stride", 0)  # CorRELAX's map resolution, in model-grid pixels, per axis
        sides = zip(geometry.crop_shape, geometry.output_shape, strict=True)
        margin = tuple(stride * crop / output for crop, output in sides)
        first = None
        for k, (target, (_, members)) in enumerate(zip(chosen, targets, strict=True)):
            restored = geometry.restore(maps[0, k].cpu()).numpy()
            first = restored if first is None else first
            for member in members:
                region = regions[member]
                hit = pointing_game(restored, region.region, self.tolerance, spacing)
                hits[spec.label].append(_finding_hit(record, member, region, hit))
                values[spec.label]["energy"].append(energy_pointing_game(restored, region.region))
            widened = np.any([widen_box(regions[m].box, margin, restored.shape) for m in members], axis=0)
            category = regions[members[0]].category if spec.target == "finding" else "image"
            aggregate[spec.label].append((category, pointing_game(restored, widened), float(probabilities[target])))
            if self.deletion_steps:
                model = view_scores(network, explainer.view_size, explainer.stride) if correlax else network
                deletion, insertion = deletion_insertion_auc(
                    model, x[0], maps[0, k], target, steps=self.deletion_steps, softmax=not correlax
                )
                values[spec.label]["deletion"].append(deletion)
                values[spec.label]["insertion"].append(insertion)
        if index < self.sanity_images:
            randomised = self._explainer(spec, randomise_weights(network, self.seed))
            random_maps, _ = randomised(x, class_idx=chosen)
            for k in range(len(chosen)):
                correlation = randomisation_sanity(maps[0, k].cpu().numpy(), random_maps[0, k].cpu().numpy())
                values[spec.label]["sanity"].append(correlation)
        return first

    def _score_baselines(
        self,
        geometry: ImageGeometry,
        breast: np.ndarray,
        record: Mapping[str, Any],
        regions: Sequence[LesionRegion],
        spacing: tuple[float, float] | None,
        index: int,
        hits: dict[str, list[FindingHit]],
    ) -> None:
        """The centre of the breast's bounding box (the model grid's centre), and random points of the ``breast``
        mask, in the same pointing game."""
        y0, x0, y1, x1 = geometry.crop
        shape = geometry.original_shape
        centre = np.zeros(shape)
        centre[(y0 + y1) // 2, (x0 + x1) // 2] = 1.0
        rows, cols = np.nonzero(breast)
        rng = np.random.default_rng((self.seed, index))
        for member, region in enumerate(regions):
            hit = pointing_game(centre, region.region, self.tolerance, spacing)
            hits["centre (baseline)"].append(_finding_hit(record, member, region, hit))
            for pick in rng.integers(len(rows), size=self.baseline_draws):
                point = np.zeros(shape)
                point[rows[pick], cols[pick]] = 1.0
                hit = pointing_game(point, region.region, self.tolerance, spacing)
                hits["random in breast (baseline)"].append(_finding_hit(record, member, region, hit))

    def _rows(
        self,
        hits: dict[str, list[FindingHit]],
        aggregate: dict[str, list],
        values: dict[str, dict[str, list[float]]],
    ) -> list[dict[str, Any]]:
        rows = []
        for label in [spec.label for spec in self.methods] + ["centre (baseline)", "random in breast (baseline)"]:
            spec = next((spec for spec in self.methods if spec.label == label), None)
            summary = pointing_game_summary([(outcome.category, outcome.hit) for outcome in hits[label]])
            row: dict[str, Any] = {"method": label, "model": "", "target": ""}
            if spec is not None:
                row.update(model=spec.model, target=spec.target)
            row.update({name: summary.get(name, float("nan")) for name in self.finding_classes})
            row.update(class_mean=summary["class_mean"], overall=summary["overall"], findings=int(summary["n"]))
            if spec is not None:
                row["correlax_aggregate"] = pointing_game_summary(aggregate[label], self.score_threshold)["overall"]
                for name in ("energy", "deletion", "insertion", "sanity", "seconds"):
                    row[name] = float(np.mean(values[label][name])) if values[label][name] else float("nan")
                row["settings"] = dict(self.explainers[label].settings)
            rows.append(row)
        return rows

    def _write(
        self, rows: list[dict[str, Any]], overlays: list, hits: Mapping[str, Sequence[FindingHit]], scored: int
    ) -> None:
        unit = "mm" if self.tolerance_unit == "mm" else "pixels"
        stopped = (
            f" (of the {len(self.records)} selected: another would have ended past max_minutes, {self.max_minutes:g})"
            if scored < len(self.records)
            else ""
        )
        report = Report(
            "Saliency evaluation",
            f"{scored} images with {' / '.join(self.finding_classes)} findings{stopped} "
            f"from {self.findings_csv.name}. "
            f"Pointing game with a tolerance of {self.tolerance:g} {unit} on the original pixel grid, per finding; "
            "class_mean is the mean over finding classes; the random baseline draws "
            f"{self.baseline_draws} breast points per finding, so its findings column counts draws; "
            "correlax_aggregate counts one hit per image and target "
            "class inside its boxes widened by the method's stride"
            + (f", leaving out scores below {self.score_threshold}" if self.score_threshold is not None else "")
            + "; energy is the energy pointing game; deletion (lower is better) and insertion (higher is better) "
            "AUCs are restricted to the breast; sanity is the Spearman correlation of maps before and after "
            f"randomising the weights (first {self.sanity_images} images; low is good); seconds per image.",
            command=self.command,
            device=self.device,
        )
        columns = ["method", "model", "target", *self.finding_classes, "class_mean", "overall", "findings"]
        columns += ["correlax_aggregate", "energy", "deletion", "insertion", "sanity", "seconds"]
        report.add_table("methods", rows, "Methods and baselines", columns=columns)
        report.add_values("pointing_game", self.pointing_game_settings(), "Pointing game")
        images = {"selected": len(self.records), "scored": scored, "max_minutes": self.max_minutes}
        report.add_values("images", images, "Images")
        keys = [column.name for column in fields(FindingHit)]
        report.add_data(
            "finding_hits",
            {label: {key: [getattr(hit, key) for hit in outcomes] for key in keys} for label, outcomes in hits.items()},
        )
        for number, (record, pixels, regions, maps) in enumerate(overlays, start=1):
            name = Path(record["path"]).name
            report.add_figure(f"overlay_{number}", _overlay_figure(pixels, regions, maps, name), name)
        report.write(self.output_dir)
        logger.info("saliency evaluation of %d images -> %s", scored, self.output_dir)


def _header_spacing(path: str | os.PathLike) -> tuple[float, float] | None:
    """The (row, column) pixel spacing in mm that :func:`~mammoxai.io.read_mammogram` would give the image, from its
    header alone: None for a PNG, TIFF or PGM, or a DICOM header without a plausible one."""
    if sniff_format(path) != "dicom":
        return None
    return pixel_spacing(read_dicom_header(path), path)


def _read_mask(path: str | os.PathLike, findings_csv: Path) -> np.ndarray:
    """A lesion mask as a boolean (H, W) array, True inside (:func:`~mammoxai.io.read_mask`: a grayscale PNG, TIFF or
    PGM, or a DICOM such as CBIS-DDSM's ROI masks), refused with a one-line error when it cannot be read as one."""
    try:
        return read_mask(path)
    except MammoXAIError as error:
        fix = f"give a grayscale mask image or DICOM (non-zero inside the lesion) in the mask column of {findings_csv}"
        raise MammoXAIError(path, f"cannot be read as a lesion mask: {error.problem}", fix) from error


def _per_patient(images: list[tuple[dict[str, Any], list[Finding]]], limit: int | None) -> list:
    """The first ``limit`` images of each patient (:func:`~mammoxai.training.classification.patient_key`), in their
    order (all when ``limit`` is None)."""
    if limit is None:
        return images
    taken: Counter[str] = Counter()
    kept = []
    for record, found in images:
        patient = patient_key(record)
        taken[patient] += 1
        if taken[patient] <= limit:
            kept.append((record, found))
    return kept


def _finding_hit(record: Mapping[str, Any], member: int, region: LesionRegion, hit: bool) -> FindingHit:
    """A finding's outcome, keyed for the paired bootstrap by the patient every patient-level step uses."""
    return FindingHit(str(record["path"]), patient_key(record), member, region.category, bool(hit))


def _class_names_setting(model: str) -> str:
    """The setting a saliency model's class names come from, as a refusal of two that are one class names it."""
    return f"class_names of saliency model {model!r}"


def _selected(methods: list[MethodSpec], select: str | Sequence[str] | None) -> list[MethodSpec]:
    """The methods whose label or name is in ``select`` (all when None; a command line's ``--select gradcam``
    arrives as one string, which would otherwise be read letter by letter)."""
    if select is None:
        chosen = methods
    else:
        select = [select] if isinstance(select, str) else list(select)
        unknown = [name for name in select if not any(name in (spec.label, spec.name) for spec in methods)]
        if unknown:
            available = sorted({spec.label for spec in methods} | {spec.name for spec in methods})
            fix = f"use labels or names of 'methods': {available}"
            raise MammoXAIError("select", f"names unknown methods {unknown}", fix)
        chosen = [spec for spec in methods if spec.label in select or spec.name in select]
    if not chosen:
        raise MammoXAIError("saliency methods", "none selected", "list at least one method in 'methods'")
    return chosen


def _method_spec(spec: MethodSpec | Mapping[str, Any]) -> MethodSpec:
    if isinstance(spec, MethodSpec):
        return spec
    unknown = sorted(set(spec) - set(MethodSpec.__dataclass_fields__))
    if unknown or "name" not in spec or "model" not in spec:
        problem = f"{dict(spec)} has unknown keys {unknown}" if unknown else f"{dict(spec)} lacks name or model"
        raise MammoXAIError("saliency methods", problem, f"use the keys {list(MethodSpec.__dataclass_fields__)}")
    return MethodSpec(**spec)


def _overlay_figure(
    pixels: np.ndarray, regions: Sequence[LesionRegion], maps: Mapping[str, np.ndarray], title: str
) -> Figure:
    """The image, then each method's map over it, with the finding boxes and the map's maximum marked."""
    panels = [("image", None), *maps.items()]
    figure = Figure(figsize=(2.2 * len(panels), 2.8))
    for number, (name, heatmap) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), number)
        axes.imshow(pixels, cmap="gray")
        if heatmap is not None:
            axes.imshow(np.ma.masked_less(heatmap, 0.05), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
            axes.plot(peak[1], peak[0], marker="x", color="white", markersize=8, markeredgewidth=2)
        for region in regions:
            x0, y0, x1, y1 = region.box
            axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1))
        axes.set_title(name, fontsize=7)
        axes.axis("off")
    figure.suptitle(title, fontsize=8)
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/evaluate_saliency.py``: run ``configs/evaluate_saliency.json`` with ``--key value`` overrides.

    It is merged over ``configs/inference.json``, so the whole-image model is the served one: its network, class
    names, model grid and Grad-CAM layer are the ones the server explains predictions with.
    """
    return run_bundle_config(
        ["inference.json", "evaluate_saliency.json"], argv, program="python scripts/evaluate_saliency.py"
    )
