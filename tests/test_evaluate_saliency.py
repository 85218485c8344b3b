"""Saliency evaluation: pointing game and baselines on a lesion whose place is known, and the entry point's errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import write_mammo_dicom
from monai.bundle import ConfigParser
from PIL import Image
from torch import nn

from mammoxai.cli import BUNDLE_ROOT
from mammoxai.data.findings import LESION_CLASSES
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.metrics import pointing_game, randomise_weights
from mammoxai.nets import MammoClassifier
from mammoxai.saliency import get_method
from mammoxai.saliency.comparison import main as compare_main
from mammoxai.saliency.evaluation import SaliencyEvaluator, main
from mammoxai.training.checkpoints import TrainingClasses, TrainingGrid
from mammoxai.training.lesion_crops import LesionCropRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

PIXEL_EXACT = {"tolerance": 0.0, "tolerance_unit": "px"}  # the evaluation's default pointing game
LESION = (66, 116, 82, 132)  # x0, y0, x1, y1 of the bright lesion, far from the breast's centre


class Brightness(nn.Module):
    """A network whose evidence for class ``positive`` is the image's brightness: its maps must peak on the lesion."""

    def __init__(self, num_classes: int, positive: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, num_classes)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.fc.weight.zero_()
            self.fc.weight[positive] = 10.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def write_lesion_study(folder: Path, mirrored: bool = False, box: tuple[int, int, int, int] | None = None):
    """A 160 x 128 PNG: breast tissue on the left (the right, ``mirrored``: a right breast), a bright 16-pixel mass
    near its lower edge, and its finding CSV (with the mass's box, or ``box``)."""
    pixels = np.zeros((160, 128), np.uint8)
    pixels[10:150, :100] = np.linspace(95, 85, 100).astype(np.uint8)  # tissue thinning towards the skin
    x0, y0, x1, y1 = LESION
    pixels[y0:y1, x0:x1] = 250
    if mirrored:
        pixels, x0, x1 = np.ascontiguousarray(pixels[:, ::-1]), 128 - x1, 128 - x0
    Image.fromarray(pixels).save(folder / "case1.png")
    csv = folder / "finding_annotations.csv"
    x0, y0, x1, y1 = box or (x0, y0, x1, y1)
    csv.write_text(f"image_id,finding_categories,xmin,ymin,xmax,ymax\ncase1,['Mass'],{x0},{y0},{x1},{y1}\n")
    return [{"path": str(folder / "case1.png"), "image_id": "case1", "case_label": "malignant"}], csv


@pytest.fixture(scope="module")
def lesion_study(tmp_path_factory):
    return write_lesion_study(tmp_path_factory.mktemp("lesion_study"))


#: Grad-CAM on the whole-image model of :func:`_models`, the method most tests here score
GRADCAM = {"name": "gradcam", "model": "whole_image", "settings": {"target_layer": "features"}}


def add_columns(csv: Path, **values: object) -> None:
    """Add columns to the one-finding CSV of :func:`write_lesion_study`, with the row's value for each."""
    header, row = csv.read_text().splitlines()
    csv.write_text(f"{header},{','.join(values)}\n{row},{','.join(map(str, values.values()))}\n")


def _models():
    return {
        "whole_image": {
            "network": Brightness(3, 2),
            "class_names": ["normal", "benign", "malignant"],
            "image_size": [80, 64],
        },
        "lesion_crops": {"network": Brightness(4, 0), "class_names": list(LESION_CLASSES), "image_size": [160, 128]},
    }


#: Grad-CAM of the whole-image model and CorRELAX of the lesion-crop model, at the tiny study's sizes
GRADCAM_AND_CORRELAX = [
    {"name": "gradcam", "model": "whole_image", "settings": {"target_layer": "features"}},
    {
        "name": "correlax", "model": "lesion_crops", "target": "finding",
        "settings": {"representation_layer": "pool", "view_size": 32, "stride": 16, "num_masks": 8},
    },
]  # fmt: skip


def test_a_map_on_the_lesion_beats_the_centre_and_random_baselines(lesion_study, tmp_path):
    records, csv = lesion_study
    methods = GRADCAM_AND_CORRELAX
    evaluator = SaliencyEvaluator(
        records, csv, _models(), methods, tmp_path, deletion_steps=4, sanity_images=1, baseline_draws=50, overlays=1
    )
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["mass"] == 1.0 and rows["gradcam"]["findings"] == 1
    assert rows["correlax"]["correlax_aggregate"] == 1.0
    assert rows["centre (baseline)"]["mass"] == 0.0
    assert rows["random in breast (baseline)"]["mass"] < 0.2 and rows["random in breast (baseline)"]["findings"] == 50
    assert rows["gradcam"]["deletion"] < rows["gradcam"]["insertion"]  # removing the lesion first kills the score
    assert rows["gradcam"]["energy"] > 0.0 and -1.0 <= rows["gradcam"]["sanity"] <= 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["method"] for row in report["tables"]["methods"]] == list(rows)
    assert (tmp_path / "overlay_1.png").is_file() and "| gradcam |" in (tmp_path / "report.md").read_text()


def test_the_report_says_the_random_baselines_findings_column_counts_draws(lesion_study, tmp_path):
    records, csv = lesion_study
    method = GRADCAM
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [method], tmp_path, deletion_steps=0, sanity_images=0, baseline_draws=7, overlays=0
    )
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["findings"] == 1 and rows["random in breast (baseline)"]["findings"] == 7
    assert (
        "draws 7 breast points per finding, so its findings column counts draws" in (tmp_path / "report.md").read_text()
    )


def test_one_finding_class_is_one_class_not_its_letters(lesion_study, tmp_path):
    records, csv = lesion_study
    method = GRADCAM
    evaluator = SaliencyEvaluator(records, csv, _models(), [method], tmp_path, finding_classes="mass")
    assert evaluator.finding_classes == ("mass",)


def test_finding_classes_match_the_lesion_classes_regardless_of_case_and_spacing(lesion_study, tmp_path):
    """Matched as written, --finding_classes '["Mass"]' was refused as not a finding class; it is scored as "mass"."""
    records, csv = lesion_study
    settings = {"deletion_steps": 0, "sanity_images": 0, "overlays": 0}
    classes = [" Mass", "CALCIFICATION", "mass"]
    evaluator = SaliencyEvaluator(records, csv, _models(), [GRADCAM], tmp_path, finding_classes=classes, **settings)
    assert evaluator.finding_classes == ("mass", "calcification")
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["mass"] == 1.0


def test_a_class_target_matches_the_class_regardless_of_case_and_spacing(lesion_study, tmp_path):
    """A class named as a target was matched as written: ' Malignant ' was refused where the 'label' target took the
    manifest's 'Malignant' as the model's 'malignant'."""
    records, csv = lesion_study
    settings = {"deletion_steps": 0, "sanity_images": 0, "overlays": 0}
    evaluator = SaliencyEvaluator(records, csv, _models(), [{**GRADCAM, "target": " Malignant "}], tmp_path, **settings)
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["mass"] == 1.0  # the malignant map: the network's evidence for it is the bright mass
    message = (
        r"^saliency method gradcam: target 'cancer' is not one of \['normal', 'benign', 'malignant'\] "
        r"\(use a class of model 'whole_image' or one of"
    )
    with pytest.raises(MammoXAIError, match=message) as refused:
        SaliencyEvaluator(records, csv, _models(), [{**GRADCAM, "target": "cancer"}], tmp_path, **settings)
    assert "\n" not in str(refused.value)


def test_a_finding_target_matches_the_finding_classes_regardless_of_case_and_spacing(lesion_study, tmp_path):
    """A model whose classes are spelt "Mass", "Calcification", ... was refused as lacking 'mass' and
    'calcification'; a finding class the model does lack is still refused in one line naming its classes."""
    records, csv = lesion_study
    settings = {"deletion_steps": 0, "sanity_images": 0, "overlays": 0}
    method = {**GRADCAM, "model": "lesion_crops", "target": "finding"}
    models = _models()
    models["lesion_crops"]["class_names"] = [" Mass", "CALCIFICATION", "Other", "No_Finding"]
    evaluator = SaliencyEvaluator(records, csv, models, [method], tmp_path, **settings)
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["mass"] == 1.0  # the mass map: the network's evidence for class 0 is the bright mass
    models["lesion_crops"]["class_names"] = ["Mass", "Other", "No_Finding", "normal"]
    message = (
        r"^saliency method gradcam: finding class 'calcification' is not one of \['Mass', 'Other', 'No_Finding', "
        r"'normal'\] \(target 'finding' needs each finding class in model 'lesion_crops': explain a lesion-crop "
        r"classifier"
    )
    with pytest.raises(MammoXAIError, match=message) as refused:
        SaliencyEvaluator(records, csv, models, [method], tmp_path, **settings)
    assert "\n" not in str(refused.value)
    models["lesion_crops"]["class_names"] = ["Other", "No_Finding", "normal", "benign"]
    message = r"^saliency method gradcam: finding class names \['mass', 'calcification'\] are not among \['Other', "
    with pytest.raises(MammoXAIError, match=message):  # every class the model lacks, in one refusal
        SaliencyEvaluator(records, csv, models, [method], tmp_path, **settings)


@pytest.mark.parametrize("target", ["finding", "mass", "label"])
def test_a_model_naming_one_class_twice_is_refused_naming_its_class_names(lesion_study, tmp_path, target):
    """Two class names that are one class up to case and spacing were refused as the setting "class_names" wherever
    they came from; a saliency model's are named as its class_names."""
    records, csv = lesion_study
    settings = {"deletion_steps": 0, "sanity_images": 0, "overlays": 0}
    models = _models()
    models["lesion_crops"]["class_names"] = ["mass", "calcification", "Mass", "no_finding"]
    method = {**GRADCAM, "model": "lesion_crops", "target": target}
    message = (
        r"^class_names of saliency model 'lesion_crops': name 'mass' and 'Mass', one class up to case and spacing "
        r"\(name each class once\)$"
    )
    with pytest.raises(MammoXAIError, match=message):
        SaliencyEvaluator(records, csv, models, [method], tmp_path, **settings).run()


def test_a_right_breast_is_scored_on_its_original_pixels(tmp_path):
    """The mirrored image is flipped onto the model grid; its maps must come back onto the mass where the CSV has it."""
    records, csv = write_lesion_study(tmp_path, mirrored=True)
    methods = GRADCAM_AND_CORRELAX
    evaluator = SaliencyEvaluator(
        records, csv, _models(), methods, tmp_path / "out", deletion_steps=0, sanity_images=0, overlays=0
    )
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["mass"] == 1.0 and rows["correlax"]["mass"] == 1.0


def test_a_finding_named_by_its_file_name_in_another_case_is_scored(tmp_path):
    """The CSV names the image CASE1.PNG, the manifest case1: matched as written, the lesion was not scored."""
    records, csv = write_lesion_study(tmp_path)
    csv.write_text(csv.read_text().replace("\ncase1,", "\nCASE1.PNG,"))
    method = GRADCAM
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [method], tmp_path / "out", deletion_steps=0, sanity_images=0
    )
    rows = {row["method"]: row for row in evaluator.run()["methods"]}
    assert rows["gradcam"]["findings"] == 1 and rows["gradcam"]["mass"] == 1.0


def test_boxes_drawn_on_another_size_of_the_image_are_refused(tmp_path):
    """VinDr-style height and width of 320 x 256: the boxes are in pixels of a copy twice this PNG's size. Scored on
    the 160 x 128 file, a box that still lies inside it would be scored against other anatomy, without a word."""
    records, csv = write_lesion_study(tmp_path, box=(33, 58, 41, 66))
    add_columns(csv, height=320, width=256)
    method = GRADCAM
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [method], tmp_path / "out", deletion_steps=0, sanity_images=0
    )
    with pytest.raises(MammoXAIError, match=r"gives image case1 as 320x256 pixels, but .*case1.png has 160x128"):
        evaluator.run()
    with pytest.raises(MammoXAIError, match=r"scale xmin, xmax by 128/256 and ymin, ymax by 160/320"):
        SaliencyEvaluator([dict(records[0], rows=160, cols=128)], csv, _models(), [method], tmp_path / "out")
    csv.write_text(csv.read_text().replace(",320,256", ",160,128"))  # the file's own size is scored as before
    SaliencyEvaluator(records, csv, _models(), [method], tmp_path / "out", deletion_steps=0, sanity_images=0).run()


def test_a_box_without_finding_categories_is_refused_not_left_out(tmp_path):
    """The CSV names its category column 'category': every box read as no finding, and the lesion went unscored."""
    records, csv = write_lesion_study(tmp_path)
    csv.write_text(csv.read_text().replace("finding_categories", "category"))
    method = GRADCAM
    with pytest.raises(
        MammoXAIError, match=r"finding_annotations.csv: the box .* of image case1 has no finding_categories"
    ):
        SaliencyEvaluator(records, csv, _models(), [method], tmp_path / "out")


def test_a_lesion_mask_that_is_not_an_image_is_a_one_line_error(tmp_path):
    records, csv = write_lesion_study(tmp_path)
    (tmp_path / "mask.png").write_text("not an image")
    add_columns(csv, mask="mask.png")
    method = GRADCAM
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [method], tmp_path / "out", deletion_steps=0, sanity_images=0
    )
    with pytest.raises(MammoXAIError, match=r"mask.png: cannot be read as a lesion mask: is neither DICOM .*\(give"):
        evaluator.run()


def _corner_mask_png(folder: Path, corner: np.ndarray) -> str:
    Image.fromarray(corner).save(folder / "mask.png")
    return "mask.png"


def _corner_mask_opaque_rgba(folder: Path, corner: np.ndarray) -> str:
    # gray in R, G and B and an opaque alpha channel: read as a channel, the alpha made the whole image lesion
    Image.fromarray(np.dstack([corner, corner, corner, np.full_like(corner, 255)])).save(folder / "mask.png")
    return "mask.png"


def _corner_mask_dicom(folder: Path, corner: np.ndarray) -> str:
    # as CBIS-DDSM stores its ROI masks, and read_cbis_ddsm names them in the mask column
    write_mammo_dicom(folder / "1-2.dcm", corner)
    return "1-2.dcm"


@pytest.mark.parametrize("write_mask", [_corner_mask_png, _corner_mask_opaque_rgba, _corner_mask_dicom])
def test_the_lesion_mask_inside_the_box_is_what_the_map_must_point_at(tmp_path, write_mask):
    x0, y0, x1, y1 = LESION
    box = (x0 - 16, y0 - 16, x1, y1)  # the lesion the map peaks on is in the box's lower right quarter ...
    records, csv = write_lesion_study(tmp_path, box=box)
    corner = np.zeros((160, 128), np.uint8)
    corner[box[1] : box[1] + 8, box[0] : box[0] + 8] = 255  # ... and the mask in its upper left corner
    add_columns(csv, mask=write_mask(tmp_path, corner))
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [GRADCAM], tmp_path / "out", deletion_steps=0, sanity_images=0, overlays=0
    )

    rows = {row["method"]: row for row in evaluator.run()["methods"]}

    assert rows["gradcam"]["findings"] == 1 and rows["gradcam"]["mass"] == 0.0  # a hit on the box, not the mask


def test_a_box_without_a_mask_is_scored_on_the_box(tmp_path):
    x0, y0, x1, y1 = LESION
    records, csv = write_lesion_study(tmp_path, box=(x0 - 16, y0 - 16, x1, y1))
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [GRADCAM], tmp_path / "out", deletion_steps=0, sanity_images=0, overlays=0
    )

    assert {row["method"]: row for row in evaluator.run()["methods"]}["gradcam"]["mass"] == 1.0


def test_a_box_outside_the_image_names_the_csv_and_the_image(tmp_path):
    records, csv = write_lesion_study(tmp_path, box=(200, 10, 220, 30))
    method = GRADCAM
    evaluator = SaliencyEvaluator(
        records, csv, _models(), [method], tmp_path / "out", deletion_steps=0, sanity_images=0
    )
    with pytest.raises(
        MammoXAIError,
        match=r"finding_annotations.csv: the mass box \(200.0, 10.0, 220.0, 30.0\) "
        "of image case1 lies outside its 160x128 pixels",
    ):
        evaluator.run()


def test_local_views_larger_than_the_grid_are_refused(lesion_study, tmp_path):
    records, csv = lesion_study
    method = {"name": "correlax", "model": "lesion_crops", "target": "finding", "settings": {"view_size": 256}}
    with pytest.raises(MammoXAIError, match="runs on 160x128 pixels, smaller than one 256x256 local view"):
        SaliencyEvaluator(records, csv, _models(), [method], tmp_path)


def test_a_lesion_crop_model_is_explained_with_the_view_it_was_trained_on(lesion_study, tmp_path):
    records, csv = lesion_study
    models = _models()
    models["lesion_crops"]["view_size"] = 32
    method = {"name": "correlax", "model": "lesion_crops", "target": "finding", "settings": {"view_size": 64}}
    with pytest.raises(MammoXAIError, match="uses 64x64 local views; model 'lesion_crops' was trained on 32x32"):
        SaliencyEvaluator(records, csv, models, [method], tmp_path)


def test_a_tolerance_in_millimetres_reaches_a_lesion_the_peak_misses_in_pixels():
    lesion = np.zeros((20, 20), bool)
    lesion[5:8, 5:8] = True
    heatmap = np.zeros((20, 20))
    heatmap[11, 6] = 1.0  # four rows below the lesion
    assert not pointing_game(heatmap, lesion, tolerance=3)
    assert pointing_game(heatmap, lesion, tolerance=2.0, spacing=(0.5, 0.5))


def test_a_tolerance_in_millimetres_on_png_images_is_refused_before_any_map(tmp_path):
    """A PNG has no header to give its pixel spacing: refused up front, not at the first such image of a long run."""
    records, csv = write_lesion_study(tmp_path)
    method = GRADCAM
    with pytest.raises(MammoXAIError, match=r"tolerance_unit 'mm': needs .* 1 file\(s\) lack \(a PNG, .*: .*case1"):
        SaliencyEvaluator(records, csv, _models(), [method], tmp_path / "out", tolerance=5, tolerance_unit="mm")


def test_a_tolerance_in_millimetres_on_a_dicom_without_pixel_spacing_is_refused_before_any_map(tmp_path):
    """It failed part-way through the run, at the first such image, losing the images scored before it."""
    pixels = np.zeros((160, 128), np.uint16)
    pixels[10:150, :100], pixels[116:132, 66:82] = 900, 3000
    with_spacing = write_mammo_dicom(tmp_path / "a.dcm", pixels)
    without = write_mammo_dicom(tmp_path / "b.dcm", pixels, ImagerPixelSpacing=None, PixelSpacing=None)
    csv = tmp_path / "finding_annotations.csv"
    csv.write_text(
        "image_id,finding_categories,xmin,ymin,xmax,ymax\na,['Mass'],66,116,82,132\nb,['Mass'],66,116,82,132\n"
    )
    records = [
        {"path": str(path), "image_id": path.stem, "case_label": "malignant"} for path in (with_spacing, without)
    ]

    with pytest.raises(MammoXAIError, match=r"tolerance_unit 'mm': needs .* 1 file\(s\) lack .*: \S*b\.dcm \(give"):
        SaliencyEvaluator(records, csv, _models(), [GRADCAM], tmp_path / "out", tolerance=1, tolerance_unit="mm")
    SaliencyEvaluator(records[:1], csv, _models(), [GRADCAM], tmp_path / "out", tolerance=1, tolerance_unit="mm")


def test_a_constant_map_points_nowhere():
    lesion = np.zeros((20, 20), bool)
    lesion[5:8, 5:8] = True
    assert not pointing_game(np.zeros((20, 20)), lesion)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_randomised_weights_differ_and_leave_the_network_and_the_random_state_alone(device):
    network = MammoClassifier(num_classes=2).to(device)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    states = torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None
    randomised = randomise_weights(network, seed=1)
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert device == "cpu" or torch.equal(torch.cuda.get_rng_state(), states[1])
    assert not torch.equal(randomised.fc.weight, network.fc.weight)
    torch.testing.assert_close(randomise_weights(network, seed=1).fc.weight, randomised.fc.weight)


# -- the entry point: scripts/evaluate_saliency.py -------------------------------------------------------------------
def served_network() -> torch.nn.Module:
    """The network ``configs/inference.json`` serves (the whole-image model the evaluation explains), untrained."""
    parser = ConfigParser()
    parser.read_config(BUNDLE_ROOT / "configs" / "inference.json")
    parser.update({"bundle_root": str(BUNDLE_ROOT)})
    return parser.get_parsed_content("network_def")


def test_every_whole_image_method_of_the_config_applies_to_the_served_network():
    # CAM does not: the served MetadataClassifier's class head does not read the global average pool of its last block
    parser = ConfigParser()
    parser.read_config([BUNDLE_ROOT / "configs" / name for name in ("inference.json", "evaluate_saliency.json")])
    parser.update({"bundle_root": str(BUNDLE_ROOT)})
    methods = [spec for spec in parser.get_parsed_content("methods") if spec["model"] == "whole_image"]
    network = served_network()

    for spec in methods:
        get_method(spec["name"], network, spec.get("preset"), **spec.get("settings", {}))
    assert "gradcam" in [spec["name"] for spec in methods]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Synthetic studies with lesions and random-weight checkpoints of both classifiers, recording the grids (and
    the lesion-crop view size and classes) that :func:`_run` evaluates at, as training does."""
    folder = tmp_path_factory.mktemp("saliency_studies")
    synthesize(folder / "studies", patients=3, seed=5, size=128, prevalence={"malignant": 1.0}, prior_fraction=0.0)
    (folder / "models").mkdir()
    grid, classes = TrainingGrid([64, 52]).state_dict(), TrainingClasses(["normal", "benign", "malignant"]).state_dict()
    torch.save(
        {"model": served_network().state_dict(), "grid": grid, "classes": classes}, folder / "models" / "model.pt"
    )
    record = LesionCropRecord([64, 52], 32, LESION_CLASSES).state_dict()
    lesion = MammoClassifier(num_classes=4).state_dict()
    torch.save({"model": lesion, "crops": record}, folder / "models" / "lesion_crops.pt")
    return folder


def _run(synthetic, tmp_path, *overrides):
    arguments = {
        "--dataset_dir": str(synthetic / "studies"),
        "--ckpt_dir": str(synthetic / "models"),
        "--output_dir": str(tmp_path),
        "--eval_where": "{}",
        "--image_size": "[64, 52]",
        "--lesion_image_size": "[64, 52]",
        "--view_size": "32",
        "--max_images": "2",
        "--deletion_steps": "2",
        "--sanity_images": "1",
        "--overlays": "1",
    }
    arguments.update(dict(zip(overrides[::2], overrides[1::2], strict=True)))
    return main([item for pair in arguments.items() for item in pair])


def test_the_script_scores_the_selected_methods(synthetic, tmp_path):
    assert _run(synthetic, tmp_path, "--select", '["gradcam", "correlax prediction"]') == 0
    report = json.loads((tmp_path / "saliency_evaluation" / "report.json").read_text())
    rows = {row["method"]: row for row in report["tables"]["methods"]}
    assert list(rows) == ["gradcam", "correlax prediction", "centre (baseline)", "random in breast (baseline)"]
    assert rows["correlax prediction"]["settings"]["stride"] == 4  # view_size / 8, as published
    assert rows["correlax prediction"]["settings"]["refine_fraction"] == 0.0625  # the fast preset's
    assert all(0.0 <= rows[name]["overall"] <= 1.0 for name in rows)
    assert rows["gradcam"]["findings"] == rows["centre (baseline)"]["findings"] > 0


def _scored_images(report_dir: Path) -> tuple[list[str], dict]:
    """The images whose findings a report scored (in order, once each) and its ``images`` values."""
    report = json.loads((report_dir / "saliency_evaluation" / "report.json").read_text())
    hits = report["values"]["finding_hits"]["gradcam"]
    return list(dict.fromkeys(zip(hits["patient"], hits["image"], strict=True))), report["values"]["images"]


def test_images_per_patient_spreads_a_few_images_over_more_patients(synthetic, tmp_path):
    """Each synthetic patient's lesion shows on two views; the first three lesion images span two patients, the
    first of each patient's three."""
    assert _run(synthetic, tmp_path / "first", "--select", '["gradcam"]', "--max_images", "3") == 0
    first, _ = _scored_images(tmp_path / "first")
    arguments = ("--select", '["gradcam"]', "--max_images", "3", "--max_images_per_patient", "1")
    assert _run(synthetic, tmp_path / "spread", *arguments) == 0
    spread, images = _scored_images(tmp_path / "spread")
    assert len(first) == len(spread) == 3 and images == {"selected": 3, "scored": 3, "max_minutes": None}
    assert len({patient for patient, _ in first}) < 3 == len({patient for patient, _ in spread})
    assert spread[0] == first[0]  # manifest order within each patient


def test_images_without_a_patient_id_are_one_patient_per_study_as_in_every_patient_level_step(tmp_path):
    """Two views of one study naming no patient: max_images_per_patient counts them as one patient, and their
    findings are bootstrapped together (mammoxai.training.classification.patient_key)."""
    records, csv = write_lesion_study(tmp_path)
    (tmp_path / "case2.png").write_bytes((tmp_path / "case1.png").read_bytes())
    header, row = csv.read_text().splitlines()
    csv.write_text(f"{header}\n{row}\n{row.replace('case1', 'case2')}\n")
    records = [{**records[0], "study_uid": "1.2.3"}, {**records[0], "path": str(tmp_path / "case2.png")}]
    records[1].update(image_id="case2", study_uid="1.2.3")

    everything = SaliencyEvaluator(records, csv, _models(), [GRADCAM], tmp_path / "all", sanity_images=0, overlays=0)
    everything.run()
    hits = json.loads((tmp_path / "all" / "report.json").read_text())["values"]["finding_hits"]["gradcam"]
    assert hits["patient"] == ["1.2.3", "1.2.3"]
    capped = SaliencyEvaluator(
        records, csv, _models(), [GRADCAM], tmp_path / "one", sanity_images=0, overlays=0, max_images_per_patient=1
    )
    assert [record["image_id"] for record in capped.records] == ["case1"]


def test_max_minutes_scores_what_the_time_allows_and_the_report_says_so(synthetic, tmp_path):
    """A limit spent before the second image: the first is scored and reported, the rest are not started."""
    assert _run(synthetic, tmp_path, "--select", '["gradcam"]', "--max_images", "3", "--max_minutes", "1e-6") == 0
    scored, images = _scored_images(tmp_path)
    assert len(scored) == 1 and images == {"selected": 3, "scored": 1, "max_minutes": 1e-6}
    summary = (tmp_path / "saliency_evaluation" / "report.md").read_text()
    assert (
        "1 images with mass / calcification findings (of the 3 selected: another would have ended past max_minutes, 1e-06)"
        in summary
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("--methods", '[{"name": "gradcam++", "model": "whole_image"}]'), "'gradcam++' is not available"),
        (("--select", '["scorecam"]'), "names unknown methods ['scorecam']"),
        (
            (
                "--methods",
                '[{"name": "gradcam", "model": "whole_image", "target": "mass", "settings": {"target_layer": "features.block4"}}]',
            ),
            "target 'mass' is not one of ['normal', 'benign', 'malignant'] (use a class of model 'whole_image'",
        ),
        (("--select", '["correlax prediction"]', "--view_size", "256"), "trained with view_size 32, not the 256"),
        # the models were trained at 64 x 52 (and on 32-pixel crops): other settings are refused, not evaluated
        (
            ("--select", '["gradcam"]', "--image_size", "[128, 104]"),
            "trained with image_size [64, 52], not the [128, 104] of this run (pass --image_size '[64, 52]'",
        ),
        (
            ("--select", '["gradcam"]', "--class_names", '["malignant", "benign", "normal"]'),
            'was trained with class_names ["normal", "benign", "malignant"], not the ["malignant", "benign", "normal"] '
            "of this run (the same values in another order)",
        ),
        (
            ("--select", '["correlax prediction"]', "--lesion_image_size", "[128, 104]"),
            "trained with lesion_image_size [64, 52], not the [128, 104] of this run (pass --lesion_image_size '[64, 52]'",
        ),
        (
            ("--select", '["correlax prediction"]', "--view_size", "16"),
            "trained with view_size 32, not the 16 of this run (pass --view_size 32,",
        ),
        (
            (
                "--select",
                '["correlax prediction"]',
                "--lesion_class_names",
                '["calcification", "mass", "other", "no_finding"]',
            ),
            "trained with lesion_class_names",
        ),
        (
            (
                "--select",
                '["correlax prediction"]',
                "--lesion_class_names",
                '["mass", "calcification", "other", "none"]',
            ),
            "lesion_class_names: class 'no_finding' is not one of ['mass', 'calcification', 'other', 'none'] (CorRELAX "
            "needs the lesion-crop model's background class, no_finding, among them)",
        ),
        (
            (
                "--select",
                '["correlax prediction"]',
                "--lesion_class_names",
                '["mass", "calcification", "Mass", "no_finding"]',
            ),
            "lesion_class_names: name 'mass' and 'Mass', one class up to case and spacing (name each class once)",
        ),
        (
            ("--select", '["correlax prediction"]', "--lesion_checkpoint", "missing.pt"),
            "lesion-crop checkpoint not found (train one first: python -m monai.bundle run "
            "--config_file configs/train_lesion_crops.json",
        ),
        (
            ("--select", '["gradcam"]', "--intensity_scaling", "display_range"),
            'model.pt: was trained with intensity_scaling "breast_percentiles", not the "display_range" of this run '
            """(pass --intensity_scaling '"breast_percentiles"'""",
        ),
        (
            ("--select", '["correlax prediction"]', "--lesion_intensity_scaling", "display_range"),
            'lesion_crops.pt: was trained with lesion_intensity_scaling "breast_percentiles", not the "display_range"',
        ),
        (
            ("--select", '["gradcam"]', "--field_of_view", "image"),
            'model.pt: was trained with field_of_view "breast", not the "image" of this run '
            """(pass --field_of_view '"breast"'""",
        ),
        (
            ("--select", '["correlax prediction"]', "--lesion_field_of_view", "image"),
            'lesion_crops.pt: was trained with lesion_field_of_view "breast", not the "image" of this run '
            """(pass --lesion_field_of_view '"breast"'""",
        ),
        (
            ("--select", '["gradcam"]', "--field_of_view", "whole"),
            """field_of_view: is 'whole', not a field of view (use "breast" or "image")""",
        ),
        (
            ("--select", '["correlax prediction"]', "--lesion_field_of_view", "whole"),
            """lesion_field_of_view: is 'whole', not a field of view (use "breast" or "image")""",
        ),
        (("--select", '["gradcam"]', "--max_images", "0"), "max_images: is 0, not a positive whole number"),
        (
            ("--select", '["gradcam"]', "--max_images_per_patient", "0"),
            "max_images_per_patient: is 0, not a positive whole number",
        ),
        (("--select", '["gradcam"]', "--max_minutes", "0"), "max_minutes: is 0, not a positive number of minutes"),
        (("--select", '["gradcam"]', "--max_minutes", "ten"), "max_minutes: is 'ten', not a positive number"),
        (("--select", '["gradcam"]', "--tolerance", "-5"), "tolerance: is -5, not a distance of 0 or more"),
        (
            ("--select", '["gradcam"]', "--finding_classes", '["mass", "calcifications"]'),
            "finding_classes: finding class 'calcifications' is not one of ['mass', 'calcification', 'other', "
            "'no_finding'] (use names among them)",
        ),
        (
            ("--select", '["gradcam"]', "--finding_classes", '["masses", "calcification", "calcifications"]'),
            "finding_classes: finding class names ['masses', 'calcifications'] are not among ['mass', 'calcification',",
        ),
        (
            ("--select", '["gradcam"]', "--finding_classes", "mass,calcification"),
            "finding_classes: is 'mass,calcification', not a name or a list of names (give one name, or a list, e.g. "
            """--finding_classes '["mass", "calcification"]')""",
        ),
        (
            ("--select", '["gradcam"]', "--deletion_steps", "abc"),
            "deletion_steps: is 'abc', not a whole number of 0 or more",
        ),
    ],
)
def test_bad_configurations_are_one_line_errors(synthetic, tmp_path, capsys, overrides, message):
    assert _run(synthetic, tmp_path, *overrides) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_both_models_are_explained_on_the_intensity_scaling_and_field_of_view_they_were_trained_with(
    synthetic, tmp_path
):
    models = tmp_path / "models"
    models.mkdir()
    inputs = {"intensity_scaling": "display_range", "field_of_view": "image"}
    for name in ("model.pt", "lesion_crops.pt"):
        state = torch.load(synthetic / "models" / name, weights_only=True)
        record = "grid" if name == "model.pt" else "crops"
        state[record] = {**state[record], **inputs}
        torch.save(state, models / name)
    select = ("--select", '["gradcam", "correlax prediction"]', "--ckpt_dir", str(models))
    settings = ("--intensity_scaling", "display_range", "--field_of_view", "image")  # the lesion model's follow them
    assert _run(synthetic, tmp_path, *select, *settings) == 0
    report = json.loads((tmp_path / "saliency_evaluation" / "report.json").read_text())
    assert [row["method"] for row in report["tables"]["methods"]][:2] == ["gradcam", "correlax prediction"]


def test_each_model_reads_its_images_with_its_own_intensity_scaling_and_field_of_view(lesion_study, tmp_path):
    records, csv = lesion_study
    models = _models()
    models["whole_image"]["intensity_scaling"] = "display_range"
    models["lesion_crops"]["field_of_view"] = "image"
    evaluator = SaliencyEvaluator(records, csv, models, GRADCAM_AND_CORRELAX, tmp_path, sanity_images=0)
    scalings = {name: dataset.intensity_scaling for name, dataset in evaluator.datasets.items()}
    assert scalings == {"whole_image": "display_range", "lesion_crops": "breast_percentiles"}
    views = {name: dataset.field_of_view for name, dataset in evaluator.datasets.items()}
    assert views == {"whole_image": "breast", "lesion_crops": "image"}
    models["lesion_crops"]["field_of_view"] = "whole"
    with pytest.raises(MammoXAIError, match="^field_of_view of saliency model 'lesion_crops': is 'whole', not a"):
        SaliencyEvaluator(records, csv, models, GRADCAM_AND_CORRELAX, tmp_path)
    models["lesion_crops"]["field_of_view"] = "image"
    models["lesion_crops"]["intensity_scaling"] = "raw"
    with pytest.raises(MammoXAIError, match="^intensity_scaling of saliency model 'lesion_crops': is 'raw', not an"):
        SaliencyEvaluator(records, csv, models, GRADCAM_AND_CORRELAX, tmp_path)


def test_a_lesion_model_spelling_its_background_class_otherwise_is_explained(synthetic, tmp_path):
    """CorRELAX's background class was looked up as written ('no_finding'): a lesion-crop model of "Mass", ...,
    "No_Finding" ended in a ValueError traceback; it is found regardless of case and spacing."""
    spelt = ["Mass", "Calcification", "Other", "No_Finding"]
    record = LesionCropRecord([64, 52], 32, spelt).state_dict()
    torch.save({"model": MammoClassifier(num_classes=4).state_dict(), "crops": record}, tmp_path / "lesion_crops.pt")
    overrides = ("--lesion_class_names", json.dumps(spelt), "--lesion_checkpoint", str(tmp_path / "lesion_crops.pt"))
    assert _run(synthetic, tmp_path, "--select", '["correlax prediction"]', "--sanity_images", "0", *overrides) == 0
    report = json.loads((tmp_path / "saliency_evaluation" / "report.json").read_text())
    assert report["tables"]["methods"][0]["settings"]["background_class"] == 3


def test_one_selected_name_is_one_method_not_its_letters(synthetic, tmp_path):
    assert _run(synthetic, tmp_path, "--select", "gradcam") == 0
    report = json.loads((tmp_path / "saliency_evaluation" / "report.json").read_text())
    assert [row["method"] for row in report["tables"]["methods"]][0] == "gradcam"
    assert report["values"]["pointing_game"] == PIXEL_EXACT


def test_an_evaluation_dir_that_is_a_file_is_refused_before_any_image_is_read(synthetic, tmp_path, capsys):
    (tmp_path / "taken").write_text("a user's file\n")
    assert _run(synthetic, tmp_path, "--select", '["gradcam"]', "--evaluation_dir", str(tmp_path / "taken")) == 1
    assert f"evaluation_dir {tmp_path / 'taken'}: is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_a_study_set_without_annotations_is_refused(synthetic, tmp_path, capsys):
    unannotated = tmp_path / "findings.csv"
    unannotated.write_text("image_id,finding_categories,xmin,ymin,xmax,ymax\nsome-image,['No Finding'],,,,\n")
    assert _run(synthetic, tmp_path, "--select", '["gradcam"]', "--findings_csv", str(unannotated)) == 1
    assert "has no mass or calcification box" in capsys.readouterr().err


def test_a_missing_lesion_mask_is_refused(synthetic, tmp_path, capsys):
    rows = (synthetic / "studies" / "finding_annotations.csv").read_text().splitlines()
    header = rows[0].split(",")
    mask = header.index("mask")
    broken = [rows[0]] + [
        ",".join(row.split(",")[:mask] + ["masks/missing.png"]) if "Mass" in row or "Calc" in row else row
        for row in rows[1:]
    ]
    (synthetic / "studies" / "broken.csv").write_text("\n".join(broken) + "\n")
    assert (
        _run(
            synthetic, tmp_path, "--select", '["gradcam"]', "--findings_csv", str(synthetic / "studies" / "broken.csv")
        )
        == 1
    )
    assert "lesion mask not found" in capsys.readouterr().err


# -- comparing two maps finding by finding: scripts/compare_saliency.py ----------------------------------------------
def _compare(tmp_path, *arguments):
    return compare_main([*arguments, "--n_bootstrap", "200", "--out", str(tmp_path / "comparison")])


def _comparison(tmp_path):
    report = json.loads((tmp_path / "comparison" / "report.json").read_text())
    return {row["measure"]: row for row in report["tables"]["pointing_game_difference"]}, report["values"]["findings"]


def test_two_methods_of_one_evaluation_compare_finding_by_finding(synthetic, tmp_path):
    assert _run(synthetic, tmp_path, "--select", '["gradcam", "hirescam"]') == 0
    report = tmp_path / "saliency_evaluation" / "report.json"
    assert _compare(tmp_path, "--reports", str(report), "--methods", "gradcam", "hirescam") == 0
    rows, findings = _comparison(tmp_path)
    methods = {row["method"]: row for row in json.loads(report.read_text())["tables"]["methods"]}
    assert list(rows)[-2:] == ["class mean", "overall"] and set(list(rows)[:-2]) <= {"mass", "calcification"}
    assert rows["overall"]["findings"] == findings["paired"] == methods["gradcam"]["findings"]
    assert rows["overall"]["first"] == pytest.approx(methods["gradcam"]["overall"])
    assert rows["overall"]["second"] == pytest.approx(methods["hirescam"]["overall"])
    assert rows["overall"]["difference"] == pytest.approx(rows["overall"]["first"] - rows["overall"]["second"])
    assert rows["overall"]["patients"] == 1  # the lesions drawn fall on one patient's images
    assert rows["overall"]["low"] is None and rows["overall"]["high"] is None  # so there is no interval


def test_one_method_in_two_evaluations_compares_finding_by_finding(synthetic, tmp_path):
    assert _run(synthetic, tmp_path / "first", "--select", '["gradcam"]', "--tolerance", "30") == 0
    # no deletion curves nor randomisation in the second run: other measures, the same pointing game
    assert (
        _run(synthetic, tmp_path / "second", "--select", "gradcam", "--tolerance", "30", "--deletion_steps", "0") == 0
    )
    first, second = (tmp_path / name / "saliency_evaluation" / "report.json" for name in ("first", "second"))
    assert _compare(tmp_path, "--reports", str(first), str(second), "--methods", "gradcam", "--margin", "0") == 0
    rows, findings = _comparison(tmp_path)
    score = next(row for row in json.loads(first.read_text())["tables"]["methods"] if row["method"] == "gradcam")
    assert findings == {"paired": score["findings"], "only_first": 0, "only_second": 0}
    assert rows["overall"]["first"] == rows["overall"]["second"] == pytest.approx(score["overall"])
    assert rows["overall"]["difference"] == 0.0
    assert rows["overall"]["patients"] == 1  # the lesions drawn fall on one patient's images
    assert rows["overall"]["low"] is None and rows["overall"]["high"] is None  # so there is no interval
    patients = set(json.loads(first.read_text())["values"]["finding_hits"]["gradcam"]["patient"])
    assert (
        rows["overall"]["patients"] == len(patients) and rows["overall"]["verdict"] == "inconclusive"
    )  # too few to tell
    assert "Pointing game scored with tolerance 30 px in both" in (tmp_path / "comparison" / "report.md").read_text()


def test_evaluations_with_different_tolerances_are_not_compared(synthetic, tmp_path, capsys):
    assert _run(synthetic, tmp_path / "exact", "--select", "gradcam") == 0
    assert _run(synthetic, tmp_path / "tolerant", "--select", "gradcam", "--tolerance", "40") == 0
    exact, tolerant = (tmp_path / name / "saliency_evaluation" / "report.json" for name in ("exact", "tolerant"))
    capsys.readouterr()
    assert _compare(tmp_path, "--reports", str(exact), str(tolerant), "--methods", "gradcam") == 1
    error = capsys.readouterr().err
    assert "different pointing games (tolerance 0 px in the first, tolerance 40 px in the second)" in error
    assert error.count("\n") == 1 and not (tmp_path / "comparison").exists()


def test_reports_that_do_not_record_their_tolerance_are_compared_with_a_warning(tmp_path, caplog):
    first = _hits_report(tmp_path / "first" / "report.json", "gradcam", [("a.png", 0, "mass", False)], None)
    second = _hits_report(tmp_path / "second" / "report.json", "gradcam", [("a.png", 0, "mass", True)])
    assert _compare(tmp_path, "--reports", str(first), str(second), "--methods", "gradcam") == 0
    assert "NOT CHECKED" in caplog.text and "NOT CHECKED" in (tmp_path / "comparison" / "report.md").read_text()


def test_a_comparison_out_that_is_a_file_is_one_line(tmp_path, capsys):
    first = _hits_report(tmp_path / "first" / "report.json", "gradcam", [("a.png", 0, "mass", False)])
    (tmp_path / "comparison").write_text("a user's file\n")
    assert _compare(tmp_path, "--reports", str(first), "--methods", "gradcam", "gradcam") == 1
    error = capsys.readouterr().err
    assert f"--out {tmp_path / 'comparison'}: is a file, not a folder" in error and error.count("\n") == 1


def _hits_report(
    path: Path, method: str, findings: list[tuple[str, int, str, bool]], scoring: dict | None = PIXEL_EXACT
) -> Path:
    """A saliency report.json holding only ``method``'s per-finding outcomes (image, finding, category, hit) and
    its pointing game's ``scoring`` (None: an older report, without it)."""
    columns = {"image": [], "patient": [], "finding": [], "category": [], "hit": []}
    for image, finding, category, hit in findings:
        for key, value in zip(columns, (image, image, finding, category, hit), strict=True):
            columns[key].append(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"finding_hits": {method: columns}, **({"pointing_game": scoring} if scoring is not None else {})}
    path.write_text(json.dumps({"values": values, "tables": {}}))
    return path


@pytest.mark.parametrize(
    "second, arguments, message",
    [
        ([("a.png", 0, "mass", True)], ("--methods", "gradcam", "rise"), "has no method 'rise'"),
        ([("b.png", 0, "mass", True)], ("--methods", "gradcam"), "share no finding"),
        (
            [("a.png", 0, "calcification", True)],
            ("--methods", "gradcam"),
            "is a mass in one evaluation and a calcification",
        ),
        ([("a.png", 0, "mass", True)], ("--methods", "gradcam", "--margin", "-0.1"), "margin: is -0.1"),
        ([("a.png", 0, "mass", True)], ("--methods", "gradcam", "cam", "rise"), "do not name two maps"),
    ],
)
def test_comparisons_that_cannot_be_made_are_one_line_errors(tmp_path, capsys, second, arguments, message):
    first = _hits_report(tmp_path / "first" / "report.json", "gradcam", [("a.png", 0, "mass", False)])
    second = _hits_report(tmp_path / "second" / "report.json", "gradcam", second)
    assert _compare(tmp_path, "--reports", str(first), str(second), *arguments) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not (tmp_path / "comparison").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "report not found"),
        ("not json", "is not a JSON report"),
        ('{"tables": {}}', "holds no per-finding outcomes"),
    ],
)
def test_a_report_without_per_finding_outcomes_is_refused(tmp_path, capsys, content, message):
    report = tmp_path / "report.json"
    if content is not None:
        report.write_text(content)
    assert _compare(tmp_path, "--reports", str(report), "--methods", "cam", "gradcam") == 1
    assert message in capsys.readouterr().err
