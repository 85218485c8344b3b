"""Synthetic screening cohorts: real DICOM, consistent patients, lesions that carry their labels."""

from __future__ import annotations

import csv
import filecmp
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID

from mammoxai.data.findings import read_findings
from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import FINDING_COLUMNS, SYSTEMS, main, synthesize
from mammoxai.data.synth.cohort import CASE_LABELS, allocate, plan_cohort
from mammoxai.data.synth.lesions import KINDS, Lesion, mass_density, render_lesion
from mammoxai.data.synth.phantom import BreastModel, ViewLayout
from mammoxai.data.synth.vendors import choose_exposure
from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mammogram
from mammoxai.io.breast import chest_wall_side

EVERY_OUTCOME = dict.fromkeys(CASE_LABELS, 1.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four patients, one per X-ray system and one per outcome, two with a prior study."""
    out = tmp_path_factory.mktemp("cohort")
    synthesize(out, patients=4, seed=7, size=160, prevalence=EVERY_OUTCOME, prior_fraction=0.5)
    return out


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def manifest(cohort) -> list[dict[str, str]]:
    return _rows(cohort / "manifest.csv")


@pytest.fixture(scope="module")
def findings(cohort) -> list[dict[str, str]]:
    return _rows(cohort / "finding_annotations.csv")


# -- files ------------------------------------------------------------------------------------------------------
def test_every_file_is_digital_mammography_for_presentation_with_valid_uids(cohort, manifest):
    files = sorted(cohort.glob("*.dcm"))
    assert len(files) == len(manifest) == 4 * (4 + 2)
    sop_uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID):
            assert UID(uid).is_valid, uid
        sop_uids.add(ds.SOPInstanceUID)
        for keyword in (
            "PatientID",
            "StudyDate",
            "PatientAge",
            "BodyPartThickness",
            "CompressionForce",
            "KVP",
            "AnodeTargetMaterial",
            "FilterMaterial",
            "Manufacturer",
            "ManufacturerModelName",
            "ImagerPixelSpacing",
        ):
            assert ds.get(keyword) not in (None, ""), f"{path.name} lacks {keyword}"
    assert len(sop_uids) == len(files)


def test_view_codes_and_patient_orientation_follow_laterality_and_view(cohort):
    expected = {
        ("L", "CC"): (["A", "R"], "399162004"),
        ("L", "MLO"): (["A", "FR"], "399368009"),
        ("R", "CC"): (["P", "L"], "399162004"),
        ("R", "MLO"): (["P", "FL"], "399368009"),
    }
    for path in cohort.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation, code = expected[(ds.ImageLaterality, ds.ViewPosition)]
        assert list(ds.PatientOrientation) == orientation
        assert ds.ViewCodeSequence[0].CodeValue == code
        assert path.name.endswith(f"_{ds.ImageLaterality}_{ds.ViewPosition}.dcm")


def test_each_study_has_the_four_views(manifest):
    views = defaultdict(set)
    for row in manifest:
        views[row["study_uid"]].add((row["laterality"], row["view"]))
    assert len(views) == 6
    assert all(found == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")} for found in views.values())


def test_prior_studies_share_the_patient_and_come_earlier(manifest):
    by_patient = defaultdict(lambda: defaultdict(list))
    for row in manifest:
        by_patient[row["patient_id"]][row["is_prior"]].append(row)
    with_prior = {patient: studies for patient, studies in by_patient.items() if "1" in studies}
    assert len(with_prior) == 2
    for studies in with_prior.values():
        prior, current = studies["1"][0], studies["0"][0]
        assert prior["study_uid"] != current["study_uid"]
        assert prior["study_date"] < current["study_date"]
        assert int(prior["age"][:3]) <= int(current["age"][:3])
        assert Path(prior["path"]).name.split("_")[1] == "S1" and Path(current["path"]).name.split("_")[1] == "S2"


def test_systems_differ_in_matrix_bits_photometric_and_transfer_syntax(manifest):
    current = [row for row in manifest if row["is_prior"] == "0"]
    assert len({row["xray_system"] for row in current}) == len(SYSTEMS) == 4
    assert len({(row["rows"], row["cols"]) for row in current}) >= 3
    assert {row["bits_stored"] for row in current} >= {"10", "12", "14"}
    assert {row["photometric"] for row in current} == {"MONOCHROME1", "MONOCHROME2"}
    assert {row["transfer_syntax"] for row in current} >= {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"}
    spacing = {row["xray_system"]: float(row["spacing_mm"]) * int(row["rows"]) for row in current}
    assert max(spacing.values()) / min(spacing.values()) > 1.2  # detectors differ in physical size too


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2"])
def test_every_transfer_syntax_decodes_to_the_image_shape(cohort, manifest, syntax):
    rows = [row for row in manifest if row["transfer_syntax"] == syntax]
    assert rows
    for row in rows:
        ds = pydicom.dcmread(cohort / row["path"])
        assert ds.file_meta.TransferSyntaxUID == syntax
        pixels = ds.pixel_array
        assert pixels.shape == (int(row["rows"]), int(row["cols"])) == (ds.Rows, ds.Columns)
        assert pixels.max() <= 2**ds.BitsStored - 1 and pixels.max() > pixels.min()


def test_monochrome1_stores_air_as_the_largest_value(cohort, manifest):
    row = next(row for row in manifest if row["photometric"] == "MONOCHROME1")
    ds = pydicom.dcmread(cohort / row["path"])
    pixels = ds.pixel_array
    corner = pixels[-3:, :3] if row["laterality"] == "R" else pixels[-3:, -3:]  # away from the chest wall
    assert (corner == 2**ds.BitsStored - 1).all()


# -- lesions and labels -----------------------------------------------------------------------------------------
def test_masks_match_the_boxes_of_their_findings(cohort, manifest, findings):
    boxes = defaultdict(list)
    for row in findings:
        if row["xmin"]:
            boxes[row["image_id"]].append(tuple(int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax")))
    assert boxes
    for record in manifest:
        mask = np.array(Image.open(cohort / "masks" / f"{record['sop_uid']}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (int(record["rows"]), int(record["cols"]))
        assert set(np.unique(mask)) <= {0, 255}
        if record["sop_uid"] not in boxes:
            assert not mask.any(), "an image without findings has an empty mask"
            continue
        for x0, y0, x1, y1 in boxes[record["sop_uid"]]:
            box = mask[y0:y1, x0:x1] > 0
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), "the box is tight"
        union = np.zeros(mask.shape, bool)
        for x0, y0, x1, y1 in boxes[record["sop_uid"]]:
            union[y0:y1, x0:x1] = True
        assert not (mask.astype(bool) & ~union).any(), "no mask pixel lies outside every box"


def test_case_labels_follow_lesion_morphology(manifest, findings):
    severity = CASE_LABELS.index
    for row in manifest:
        kinds = [KINDS[name] for name in row["lesion_types"].split(";") if name]
        expected = max((kind.outcome for kind in kinds), key=severity, default="normal")
        assert row["case_label"] == expected
        assert severity(row["study_label"]) >= severity(row["case_label"])
        if row["case_label"] == "normal":
            assert row["birads"] == "1"
    assert {row["study_label"] for row in manifest if row["is_prior"] == "0"} == set(CASE_LABELS)
    categories = {row["image_id"]: row["finding_categories"] for row in findings if row["xmin"]}
    for row in manifest:
        if "mass" in row["lesion_types"] and "calcifications" not in row["lesion_types"]:
            assert categories[row["sop_uid"]] == "['Mass']"


def test_malignant_morphology_is_spiculated_or_pleomorphic_or_linear():
    assert {kind.name for kind in KINDS.values() if kind.outcome == "malignant"} == {
        "spiculated_mass",
        "pleomorphic_calcifications",
        "fine_linear_calcifications",
    }
    assert {kind.name for kind in KINDS.values() if kind.outcome == "benign"} == {
        "round_circumscribed_mass",
        "oval_circumscribed_mass",
        "punctate_calcifications",
    }


def test_a_lesion_shows_in_both_views_of_one_breast_at_the_same_depth(manifest):
    by_study = defaultdict(dict)
    for row in manifest:
        by_study[row["study_uid"]][(row["laterality"], row["view"])] = row
    checked = 0
    for views in by_study.values():
        affected = {side for (side, _), row in views.items() if row["lesion_types"]}
        assert len(affected) <= 1
        for side in affected:
            cc, mlo = views[(side, "CC")], views[(side, "MLO")]
            assert cc["lesion_types"] == mlo["lesion_types"]
            checked += 1
    assert checked >= 3


def test_lesion_depth_from_the_chest_wall_agrees_between_views(cohort, manifest, findings):
    """Radiologists triangulate a lesion by its distance from the chest wall, which CC and MLO share."""
    record = {row["sop_uid"]: row for row in manifest}
    depth = {}
    for row in findings:
        if not row["xmin"]:
            continue
        image = record[row["image_id"]]
        centre = (float(row["xmin"]) + float(row["xmax"])) / 2.0
        from_chest_wall = int(image["cols"]) - centre if image["laterality"] == "R" else centre
        depth[(image["study_uid"], image["laterality"], image["view"], row["finding_categories"])] = from_chest_wall
    pairs = [(cc, depth[key[:2] + ("MLO",) + key[3:]]) for key, cc in depth.items() if key[2] == "CC"]
    assert pairs
    for cc, mlo in pairs:
        assert 0.8 < mlo / cc < 1.35


def test_masses_are_brighter_than_their_surroundings(cohort, manifest):
    from scipy import ndimage

    rows = [row for row in manifest if "mass" in row["lesion_types"]]
    assert rows
    for row in rows:
        pixels = read_mammogram(cohort / row["path"]).pixels
        mask = np.array(Image.open(cohort / "masks" / f"{row['sop_uid']}.png")) > 0
        ring = ndimage.binary_dilation(mask, iterations=4) & ~mask
        assert pixels[mask].mean() > pixels[ring].mean()


def test_benign_lesions_persist_on_the_prior_and_new_ones_do_not(manifest):
    by_patient = defaultdict(dict)
    for row in manifest:
        by_patient[row["patient_id"]].setdefault(row["is_prior"], set()).add(row["lesion_types"])
    for studies in by_patient.values():
        if "1" not in studies:
            continue
        current = {name for names in studies["0"] for name in names.split(";") if name}
        prior = {name for names in studies["1"] for name in names.split(";") if name}
        assert prior == {name for name in current if KINDS[name].persistent}


# -- reading back -----------------------------------------------------------------------------------------------
def test_every_file_reads_as_a_mammogram_bright_where_dense(cohort, manifest):
    for row in manifest:
        mammogram = read_mammogram(cohort / row["path"])
        assert mammogram.shape == (int(row["rows"]), int(row["cols"]))
        assert mammogram.laterality == row["laterality"] and mammogram.view == row["view"]
        assert mammogram.spacing == pytest.approx((float(row["spacing_mm"]),) * 2, rel=1e-4)
        assert mammogram.header["PatientID"] == row["patient_id"]
        pixels = mammogram.pixels
        cols = pixels.shape[1]
        chest_wall = pixels[:, : cols // 8] if row["laterality"] == "L" else pixels[:, -cols // 8 :]
        far_side = pixels[:, -cols // 8 :] if row["laterality"] == "L" else pixels[:, : cols // 8]
        assert chest_wall.mean() > far_side.mean() + 0.1 * (pixels.max() - pixels.min()), row["photometric"]


def test_chest_wall_found_from_pixels_matches_laterality(cohort, manifest):
    from mammoxai.io import segment_breast

    for row in manifest:
        pixels = read_mammogram(cohort / row["path"]).pixels
        side = chest_wall_side(segment_breast(pixels))
        assert side == ("left" if row["laterality"] == "L" else "right")


def test_tables_have_the_shared_columns_and_read_back(cohort, manifest, findings):
    needed = (
        "path image_id patient_id study_uid series_uid sop_uid laterality view xray_system manufacturer model rows "
        "cols spacing_mm bits_stored photometric transfer_syntax density thickness_mm compression_force_n kvp age "
        "anode filter case_label study_label birads is_prior lesion_types split"
    ).split()
    assert set(needed) <= set(manifest[0])
    assert list(findings[0]) == list(FINDING_COLUMNS)
    records = read_manifest(cohort / "manifest.csv")
    assert all(Path(record["path"]).is_file() for record in records)
    assert all(record["age"].endswith("Y") and isinstance(record["kvp"], float) for record in records)
    assert {row["split"] for row in manifest} <= {"training", "test"}
    assert {row["breast_density"] for row in findings} <= {"DENSITY A", "DENSITY B", "DENSITY C", "DENSITY D"}
    assert all(row["breast_birads"].startswith("BI-RADS ") for row in findings)
    no_finding = [row for row in findings if not row["xmin"]]
    assert no_finding and all(row["finding_categories"] == "['No Finding']" for row in no_finding)
    boxes = read_findings(cohort / "finding_annotations.csv")
    assert len(boxes) == len(findings) - len(no_finding)
    assert all(Path(box.mask).is_file() and box.label in CASE_LABELS for box in boxes)


# -- determinism and the command line ---------------------------------------------------------------------------
def test_same_arguments_write_the_same_bytes_whatever_the_worker_count(tmp_path):
    synthesize(tmp_path / "one", patients=3, seed=11, size=128, workers=1)
    synthesize(tmp_path / "two", patients=3, seed=11, size=128, workers=2)
    names = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*") if path.is_file())
    assert len(names) == 2 + (3 + 1) * 4 * 2  # two CSVs; a DICOM file and a mask per image of 3 + 1 prior studies
    match, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "one", tmp_path / "two", [str(n) for n in names], shallow=False
    )
    assert not mismatch and not errors
    synthesize(tmp_path / "other", patients=3, seed=12, size=128)
    first = pydicom.dcmread(tmp_path / "one" / "P0000_S1_L_CC.dcm")
    other = pydicom.dcmread(tmp_path / "other" / "P0000_S1_L_CC.dcm")
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.PixelData != other.PixelData


def test_refuses_to_mix_two_cohorts_unless_told_to_overwrite(tmp_path):
    synthesize(tmp_path, patients=1, seed=0, size=128, prior_fraction=0.0)
    with pytest.raises(MammoXAIError, match="already holds"):
        synthesize(tmp_path, patients=1, seed=1, size=128, prior_fraction=0.0)
    synthesize(tmp_path, patients=1, seed=1, size=128, prior_fraction=0.0, overwrite=True)
    assert len(list(tmp_path.glob("*.dcm"))) == 4


def test_a_folder_of_other_files_is_refused_naming_them_not_calling_it_a_synthetic_cohort(tmp_path):
    (tmp_path / "manifest.csv").write_text("path\n")  # a user's own manifest, of the name synthesize writes
    with pytest.raises(MammoXAIError, match=r"already holds files of the names a synthetic cohort writes \(manifest"):
        synthesize(tmp_path, patients=1, seed=0, size=128)
    with pytest.raises(MammoXAIError, match=r"no earlier run's manifest.csv lists \(manifest.csv\)"):
        synthesize(tmp_path, patients=1, seed=0, size=128, overwrite=True)
    assert (tmp_path / "manifest.csv").read_text() == "path\n"


def test_overwrite_deletes_only_what_the_earlier_run_listed_and_refuses_other_files_of_its_names(tmp_path):
    synthesize(tmp_path, patients=1, seed=0, size=128, prior_fraction=0.0)
    (tmp_path / "P0099_S1_L_CC.dcm").write_text("a user's file")
    (tmp_path / "masks" / "mine.png").write_text("a user's mask")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    message = r"no earlier run's manifest.csv lists \(P0099_S1_L_CC.dcm, masks/mine.png\).*move them away"
    with pytest.raises(MammoXAIError, match=message):
        synthesize(tmp_path, patients=1, seed=1, size=128, prior_fraction=0.0, overwrite=True)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    "argument", [{"patients": 0}, {"prevalence": {"cancer": 1.0}}, {"prior_fraction": 2.0}, {"test_fraction": -1.0}]
)
def test_overwrite_with_a_bad_argument_keeps_the_earlier_cohort(tmp_path, argument):
    synthesize(tmp_path, patients=1, seed=0, size=128, prior_fraction=0.0)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    settings = {"patients": 1, "seed": 1, "size": 128, "prior_fraction": 0.0, **argument}
    with pytest.raises(MammoXAIError, match=next(iter(argument))):
        synthesize(tmp_path, overwrite=True, **settings)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


LABEL = "labels/final/P0000_S1_L_CC.json"  # where a MONAI Label server files a label of the image P0000_S1_L_CC.dcm


@pytest.mark.parametrize("served", [[LABEL], ["datastore_v2.json"], [LABEL, "datastore_v2.json"]])
def test_overwrite_refuses_a_folder_a_monai_label_server_kept_labels_in(tmp_path, served):
    synthesize(tmp_path, patients=1, seed=0, size=128, prior_fraction=0.0)
    for name in served:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    message = r"holds (labels/|datastore_v2\.json).* of a MONAI Label server.*choose an empty folder"
    with pytest.raises(MammoXAIError, match=message):  # the new P0000_S1_L_CC.dcm would inherit the old label
        synthesize(tmp_path, patients=1, seed=1, size=128, prior_fraction=0.0, overwrite=True)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_command_line_refuses_a_file_as_out_with_one_line(tmp_path, capsys):
    (tmp_path / "cohort").write_text("a file")
    assert main(["--out", str(tmp_path / "cohort"), "--patients", "1", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error and "cohort: is a file, not a folder" in error


def test_command_line_writes_a_cohort_and_prints_a_summary(tmp_path, capsys):
    assert (
        main(["--out", str(tmp_path), "--patients", "1", "--seed", "3", "--size", "128", "--workers", "1", "--quiet"])
        == 0
    )
    summary = capsys.readouterr().out
    assert "4 images, 1 patients" in summary and "per system" in summary and "per case label" in summary
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "finding_annotations.csv").is_file()


@pytest.mark.parametrize(
    "argument",
    [
        ["--size", "64"],
        ["--patients", "0"],
        ["--prevalence", "cancer=1"],
        ["--prevalence", "normal=nan"],
        ["--prevalence", "normal=inf"],
        ["--prevalence", "normal=1,malignant=1e308,benign=1e308"],
    ],
)
def test_command_line_rejects_bad_arguments_with_one_line(tmp_path, capsys, argument):
    assert main(["--out", str(tmp_path), "--quiet", *argument]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error
    assert not list(tmp_path.glob("*.dcm"))


def test_command_line_refuses_a_label_given_twice_instead_of_keeping_the_last(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--quiet", "--prevalence", "normal=1,malignant=1,normal=0"])
    assert exit_info.value.code == 2
    assert "gives normal more than once" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("share", [float("nan"), float("inf")])
def test_a_share_that_is_no_number_is_refused(share):
    with pytest.raises(MammoXAIError, match="prevalence: .*finite, non-negative"):
        plan_cohort(4, seed=0, systems=["a"], prevalence={"normal": share, "malignant": 1.0})


# -- the model behind the pixels --------------------------------------------------------------------------------
def test_cohort_plan_allocates_outcomes_priors_and_systems_exactly():
    plans = plan_cohort(20, seed=5, systems=["a", "b", "c", "d"])
    outcomes = [plan.outcome for plan in plans]
    assert [outcomes.count(label) for label in CASE_LABELS] == [8, 4, 3, 5]
    assert sum(plan.prior_system is not None for plan in plans) == 5
    assert sorted({plan.system for plan in plans}) == ["a", "b", "c", "d"]
    assert [plan.system for plan in plans].count("a") == 5
    assert sum(plan.split == "test" for plan in plans) == 4
    assert allocate([0.5, 0.3, 0.2], 7) == [4, 2, 1]


def test_views_of_one_breast_share_structure_that_another_breast_lacks():
    breast = BreastModel.sample(np.random.default_rng(1), density=2)
    other = BreastModel.sample(np.random.default_rng(2), density=2)
    current, prior = breast.glandular_map("MLO", 45.0), breast.glandular_map("MLO", 48.0)
    stranger = other.glandular_map("MLO", 45.0)
    same = np.corrcoef(current.ravel(), prior.ravel())[0, 1]
    different = np.corrcoef(current.ravel(), stranger.ravel())[0, 1]
    assert same > 0.9 and same > different + 0.2


def test_denser_categories_have_more_glandular_tissue():
    fractions = [
        np.mean(
            [
                BreastModel.sample(np.random.default_rng(seed), density).glandular_map("CC", 0.0).mean()
                for seed in range(3)
            ]
        )
        for density in range(4)
    ]
    assert fractions == sorted(fractions) and fractions[3] > 2 * fractions[0]


@pytest.mark.parametrize("system", SYSTEMS, ids=lambda system: system.key)
def test_exposure_control_hardens_the_beam_for_thicker_denser_breasts(system):
    thin = choose_exposure(system, 30.0, density=0, rng=np.random.default_rng(0))
    thick = choose_exposure(system, 85.0, density=3, rng=np.random.default_rng(0))
    assert thick.kvp > thin.kvp and thick.mas > thin.mas
    assert system.kvp_range[0] <= thin.kvp <= thick.kvp <= system.kvp_range[1]


def test_a_high_density_mass_attenuates_in_proportion_to_its_density():
    layout = ViewLayout(view="CC", depth_mm=80.0, height_mm=120.0, centre_mm=70.0, theta_deg=0.0, thickness_mm=50.0)
    isodense = Lesion(KINDS["spiculated_mass"], (0.5, 0.0, 0.0), 20.0, seed=3, birads="5", density=1.0)
    dense = replace(isodense, density=1.8)
    low, high = (render_lesion(lesion, layout, (160, 120), 1.0) for lesion in (isodense, dense))
    assert low.soft_mm.max() > 0
    np.testing.assert_allclose(high.soft_mm, 1.8 * low.soft_mm, rtol=1e-5)
    assert np.array_equal(high.mask, low.mask)  # density changes the attenuation, not the extent


def test_malignant_masses_are_drawn_high_density_more_often_than_benign_ones():
    rng = np.random.default_rng(0)
    share = {
        name: np.mean([mass_density(KINDS[name], rng) >= 1.4 for _ in range(2000)])
        for name in ("spiculated_mass", "oval_circumscribed_mass")
    }
    assert share["spiculated_mass"] == pytest.approx(0.70, abs=0.04)
    assert share["oval_circumscribed_mass"] == pytest.approx(0.22, abs=0.04)
