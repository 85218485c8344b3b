"""The hand-made field readout: its noise statistics, its report, and the inputs it refuses."""

import json

import numpy as np
import pytest

from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mammogram
from mammoxai.training.field_readout import READOUTS, breast_statistics, image_statistics, main


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readout") / "synth"
    synthesize(folder, patients=6, seed=3, size=128, prior_fraction=0.0)
    return folder


def _disc(noise_sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A flat disc of 0.5 with white noise of ``noise_sd``, and its mask."""
    rows, cols = np.mgrid[:96, :96]
    breast = (rows - 48) ** 2 + (cols - 48) ** 2 < 40**2
    image = 0.5 + noise_sd * np.random.default_rng(seed).standard_normal((96, 96))
    return np.where(breast, image, 0.0), breast


def test_each_noise_statistic_moves_by_log_2_when_the_noise_doubles():
    quiet, loud = breast_statistics(*_disc(0.01)), breast_statistics(*_disc(0.02, seed=1))

    for name in ("noise_box", "noise_diagonal", "noise_laplace"):
        assert loud[name] - quiet[name] == pytest.approx(np.log(2), abs=0.05), name
    assert loud["quantile_0.50"] == pytest.approx(0.5, abs=0.005)


def test_the_skin_line_is_not_read_as_noise():
    image, breast = _disc(0.0)

    assert breast_statistics(image, breast)["noise_laplace"] < np.log(1e-9)


def test_a_breast_too_thin_to_erode_is_named():
    image, breast = _disc(0.01)
    thin = np.zeros_like(breast)
    thin[40:43] = True

    with pytest.raises(MammoXAIError, match="no breast pixel away from its edge"):
        breast_statistics(image, thin)


def test_the_report_gives_each_readout_on_every_image_with_a_known_value(studies, tmp_path, capsys):
    out = tmp_path / "readout"

    arguments = ["--dataset_dir", str(studies), "--field", "view", "--folds", "2", "--image_size", "64x52"]

    code = main([*arguments, "--output_dir", str(out)])

    assert code == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["tables"]["readouts"]
    assert [row["readout"] for row in rows] == list(READOUTS)
    images = len((studies / "manifest.csv").read_text().splitlines()) - 1
    for row in rows:
        assert row["images"] == images and row["patients"] == 6
        assert 0.0 <= row["95 % CI low"] <= row["accuracy"] <= row["95 % CI high"] <= 1.0
        assert row["majority class"] == pytest.approx(0.5)
    # CC and MLO differ in the pectoral muscle's intensities, which every step keeps
    assert all(row["accuracy"] > 0.5 for row in rows)
    assert "report:" in capsys.readouterr().out


def test_display_range_scales_every_image_by_its_files_range_not_by_its_own_breast(studies):
    """Under display_range the scaled readouts are the pixel values over the file's value range: their noise is the
    pixels' less log(range) and the median moves with it, where the breast's percentiles would give each image its
    own divisor and pin its quantiles near 0 and 1."""
    path = sorted(studies.rglob("*.dcm"))[0]
    low, high = read_mammogram(path).value_range

    statistics = image_statistics(path, (64, 52), intensity_scaling="display_range")

    pixels, scaled = statistics["pixel values"], statistics["scaled, native size"]
    for name in ("noise_box", "noise_diagonal", "noise_laplace"):
        assert scaled[name] == pytest.approx(pixels[name] - np.log(high - low), abs=1e-3), name
    assert scaled["quantile_0.50"] == pytest.approx((pixels["quantile_0.50"] - low) / (high - low), abs=1e-4)
    percentiles = image_statistics(path, (64, 52))["scaled, native size"]
    assert percentiles["quantile_0.50"] != pytest.approx(scaled["quantile_0.50"], abs=1e-2)


def test_the_whole_image_changes_only_the_resized_readout(studies):
    """Under field_of_view image the native-size steps are the whole image, flipped, not resized: the same breast
    pixels as the breast's crop; only the model input, resized by the detector's factor rather than the breast's,
    differs."""
    path = sorted(studies.rglob("*.dcm"))[0]

    breast, image = image_statistics(path, (64, 52)), image_statistics(path, (64, 52), field_of_view="image")

    for step in ("pixel values", "scaled, native size"):
        assert image[step] == pytest.approx(breast[step], rel=1e-6), step
    assert image["model input"]["noise_box"] != pytest.approx(breast["model input"]["noise_box"], abs=1e-2)


@pytest.mark.parametrize(
    "setting, inputs",
    [
        (["--intensity_scaling", "display_range"], "intensity_scaling display_range, field_of_view breast"),
        (["--field_of_view", "image"], "intensity_scaling breast_percentiles, field_of_view image"),
    ],
    ids=["intensity_scaling", "field_of_view"],
)
def test_the_report_names_the_model_input_it_read_out_under(studies, tmp_path, capsys, setting, inputs):
    out = tmp_path / "readout"
    arguments = ["--dataset_dir", str(studies), "--field", "view", "--folds", "2", "--image_size", "64x52"]

    assert main([*arguments, *setting, "--output_dir", str(out)]) == 0

    report = json.loads((out / "report.json").read_text())
    assert " ".join(setting).lstrip("-") in report["description"]
    assert f"Readouts of view, {inputs}" in (out / "report.md").read_text()
    assert f"view, {inputs}:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--field", "shoe_size"], "--field: is 'shoe_size', not a field of the label space"),
        (["--folds", "7"], "fewer than the 7 folds"),
        (["--folds", "1"], "--folds: is 1"),
        (["--manifest", "missing.csv"], "missing.csv"),
        (["--intensity_scaling", "window"], "--intensity_scaling: is 'window', not an intensity scaling (use "),
        (["--field_of_view", "whole"], '--field_of_view: is \'whole\', not a field of view (use "breast" or "image")'),
    ],
)
def test_an_input_the_readout_cannot_use_is_one_line_naming_it(studies, tmp_path, capsys, arguments, message):
    code = main(["--dataset_dir", str(studies), "--output_dir", str(tmp_path / "out"), *arguments])

    error = capsys.readouterr().err
    assert code == 2
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
