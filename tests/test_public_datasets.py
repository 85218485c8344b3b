"""VinDr-Mammo and CBIS-DDSM downloads, as laid out by PhysioNet and TCIA, become manifest records and findings."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_mammo_dicom
from PIL import Image
from test_manifest import write_csv

from mammoxai.data.cbis_ddsm import read_cbis_ddsm
from mammoxai.data.findings import Finding, match_findings, read_findings, write_findings
from mammoxai.data.manifest import build_manifest, read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.data.vindr import read_vindr
from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mask

FULL = (96, 64)


def mammogram(shape=FULL):
    return np.full(shape, 800, dtype=np.uint16)


# -- VinDr-Mammo ------------------------------------------------------------------------------------------------
BREAST_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split"]  # fmt: skip
FINDING_COLUMNS = [*BREAST_COLUMNS[:-1], "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax",
                   "split"]  # fmt: skip
BREASTS = [
    ["s1", "se1", "img1", "L", "CC", "96", "64", "BI-RADS 1", "DENSITY C", "training"],
    ["s1", "se1", "img2", "R", "MLO", "96", "64", "BI-RADS 4", "DENSITY C", "training"],
    ["s2", "se2", "img3", "L", "CC", "96", "64", "BI-RADS 3", "DENSITY B", "test"],
]


@pytest.fixture
def vindr(tmp_path):
    root = tmp_path / "vindr-mammo"
    for study, _series, image, laterality, view, *_ in BREASTS:
        (root / "images" / study).mkdir(parents=True, exist_ok=True)
        write_mammo_dicom(root / "images" / study / f"{image}.dicom", mammogram(), PatientID=f"patient-{study}",
                          ImageLaterality=laterality, ViewPosition=view, Manufacturer="SIEMENS")  # fmt: skip
    write_csv(root / "breast-level_annotations.csv", BREAST_COLUMNS, BREASTS)
    write_csv(
        root / "finding_annotations.csv",
        FINDING_COLUMNS,
        [
            BREASTS[0][:-1] + ["['No Finding']", "", "", "", "", "", "training"],
            BREASTS[1][:-1] + ["['Mass']", "BI-RADS 4", "10.5", "20.0", "30.25", "44.0", "training"],
            BREASTS[2][:-1] + ["['Mass', 'Suspicious Calcification']", "BI-RADS 3", "1", "2", "3", "4", "test"],
        ],
    )
    return root


def test_vindr_records_carry_the_csv_fields_and_birads_case_labels(vindr):
    records, _ = read_vindr(vindr)
    assert [r["image_id"] for r in records] == ["img1", "img2", "img3"]
    second = records[1]
    assert second["path"] == str(vindr / "images" / "s1" / "img2.dicom")
    fields = ("study_uid", "series_uid", "laterality", "view", "rows", "cols", "birads", "density", "split")
    assert [second[field] for field in fields] == ["s1", "se1", "R", "MLO", 96, 64, "4", "C", "training"]
    assert [r["case_label"] for r in records] == ["normal", "malignant", "benign"]


def test_vindr_findings_are_the_boxes_of_the_kept_images(vindr):
    _, findings = read_vindr(vindr)
    assert findings == [
        Finding("img2", ("Mass",), (10.5, 20.0, 30.25, 44.0), birads="4"),
        Finding("img3", ("Mass", "Suspicious Calcification"), (1.0, 2.0, 3.0, 4.0), birads="3"),
    ]
    records, findings = read_vindr(vindr, split="test")
    assert [r["image_id"] for r in records] == ["img3"] and [f.image_id for f in findings] == ["img3"]


def test_vindr_images_missing_from_the_download_raise_when_strict_and_are_skipped_otherwise(vindr):
    (vindr / "images" / "s2" / "img3.dicom").unlink()
    message = r"breast-level_annotations.csv: 1 images are missing .*img3.dicom.*strict=False"
    with pytest.raises(MammoXAIError, match=message):
        read_vindr(vindr)
    with pytest.warns(UserWarning, match="img3.dicom"):
        records, findings = read_vindr(vindr, strict=False)
    assert [r["image_id"] for r in records] == ["img1", "img2"] and [f.image_id for f in findings] == ["img2"]


def test_vindr_read_headers_adds_the_dicom_fields_and_keeps_vindr_ids(vindr):
    records, _ = read_vindr(vindr, read_headers=True)
    assert (records[0]["patient_id"], records[0]["manufacturer"], records[0]["kvp"]) == ("patient-s1", "SIEMENS", 29.0)
    assert (records[0]["image_id"], records[0]["study_uid"], records[0]["case_label"]) == ("img1", "s1", "normal")
    assert "patient_id" not in read_vindr(vindr)[0][0]


def test_vindr_folder_without_the_annotation_csv_or_a_column_is_named(vindr, tmp_path):
    with pytest.raises(MammoXAIError, match="breast-level_annotations.csv: does not exist"):
        read_vindr(tmp_path)
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS[:5], [row[:5] for row in BREASTS])
    with pytest.raises(MammoXAIError, match="has no column 'height', 'width', 'breast_birads'"):
        read_vindr(vindr)


def breast_rows(change=None):
    """BREASTS with cell ``column`` of the first row replaced: ``change`` = (column, value)."""
    rows = [list(row) for row in BREASTS]
    if change is not None:
        rows[0][BREAST_COLUMNS.index(change[0])] = change[1]
    return rows


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("breast_birads", "BIRADS 4", "breast_birads is 'BIRADS 4', not BI-RADS 1..5"),
        ("breast_birads", "BI-RADS 0", "breast_birads is 'BI-RADS 0', not BI-RADS 1..5"),
        ("laterality", "B", "laterality is 'B', not L or R"),
        ("breast_density", "DENSITY E", "breast_density is 'DENSITY E', not DENSITY A..D"),
        ("height", "n/a", "height x width is 'n/a' x '64', not a size in pixels"),
        ("image_id", "", "image_id is empty"),
    ],
)
def test_vindr_rows_outside_its_vocabulary_are_refused_naming_the_line(vindr, column, value, message):
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS, breast_rows((column, value)))
    with pytest.raises(MammoXAIError, match=f"breast-level_annotations.csv: line 2: {message} \\(fix the row"):
        read_vindr(vindr)


def test_vindr_an_image_listed_twice_is_refused(vindr):
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS, [*BREASTS, BREASTS[1]])
    with pytest.raises(MammoXAIError, match=r"annotations.csv: lists the same path more than once: .*img2"):
        read_vindr(vindr)
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS, [*BREASTS, ["s9", *BREASTS[1][1:]]])
    with pytest.raises(MammoXAIError, match=r"lists the same image_id more than once: img2 \(2 times\)"):
        read_vindr(vindr)


def test_vindr_a_split_the_csv_does_not_have_is_named_with_those_it_has(vindr):
    with pytest.raises(MammoXAIError, match=r"has no image of split 'train' \(splits: test, training\)"):
        read_vindr(vindr, split="train")


def test_vindr_a_table_without_images_is_refused_not_read_as_an_empty_data_set(vindr):
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS, [])
    with pytest.raises(MammoXAIError, match="breast-level_annotations.csv: lists no image"):
        read_vindr(vindr)
    write_csv(vindr / "breast-level_annotations.csv", BREAST_COLUMNS, BREASTS)
    shutil.rmtree(vindr / "images")
    with pytest.warns(UserWarning), pytest.raises(MammoXAIError, match="images: holds none of the 3 images listed"):
        read_vindr(vindr, strict=False)


def test_vindr_tables_saved_with_byte_order_mark_and_windows_line_endings_read_the_same(vindr):
    expected = read_vindr(vindr)
    for name in ("breast-level_annotations.csv", "finding_annotations.csv"):
        text = (vindr / name).read_text().replace("\r\n", "\n").replace("\n", "\r\n")
        (vindr / name).write_bytes(text.encode("utf-8-sig"))
    assert read_vindr(vindr) == expected


def finding_row(image_row, categories="['Mass']", box=("1", "2", "3", "4")):
    return [*image_row[:-1], categories, "BI-RADS 4", *box, image_row[-1]]


def test_vindr_findings_on_unlisted_images_or_outside_their_image_are_refused_or_skipped(vindr):
    rows = [finding_row(BREASTS[1]), finding_row(["s9", "se9", "img9", *BREASTS[1][3:]])]
    write_csv(vindr / "finding_annotations.csv", FINDING_COLUMNS, rows)
    with pytest.raises(MammoXAIError, match="finding_annotations.csv: 1 findings are on images not in .*: img9"):
        read_vindr(vindr)
    rows = [finding_row(BREASTS[1]), finding_row(BREASTS[2], box=("10", "50", "65", "96"))]  # 65 > width 64
    write_csv(vindr / "finding_annotations.csv", FINDING_COLUMNS, rows)
    with pytest.raises(MammoXAIError, match=r"1 boxes reach outside their image: img3 \(10.0, 50.0, 65.0, 96.0\)"):
        read_vindr(vindr)
    with pytest.warns(UserWarning, match="img3"):
        _, findings = read_vindr(vindr, strict=False)
    assert findings == [Finding("img2", ("Mass",), (1.0, 2.0, 3.0, 4.0), birads="4")]


@pytest.mark.parametrize(
    ("categories", "box", "message"),
    [
        ("['Mass']", ("10", "", "30", "44"), r"line 2 has a non-numeric or partial box \['10', '', '30', '44'\]"),
        ("['Mass']", ("30", "20", "10", "44"), "line 2 has the box .*, not 0 <= xmin < xmax, 0 <= ymin < ymax"),
        ("['Mass']", ("10", "20", "10", "44"), "line 2 has the box .*, not 0 <= xmin < xmax"),
        ("['Mass']", ("-1", "20", "10", "44"), "line 2 has the box .*, not 0 <= xmin < xmax"),
        ("['Mass']", ("nan", "20", "30", "44"), "line 2 has the box .*, not 0 <= xmin < xmax"),
        ("['Mass', 'Suspicious", ("10", "20", "30", "44"), "line 2 has finding_categories .*, not a list"),
    ],
    ids=["partial", "swapped", "empty", "negative", "nan", "cut-off categories"],
)
def test_a_finding_row_with_a_malformed_box_or_category_list_is_refused_naming_the_line(tmp_path, categories, box,
                                                                                        message):  # fmt: skip
    write_csv(tmp_path / "f.csv", FINDING_COLUMNS, [finding_row(BREASTS[1], categories, box)])
    with pytest.raises(MammoXAIError, match=f"f.csv: {message}"):
        read_findings(tmp_path / "f.csv")


def test_a_finding_error_names_the_line_an_editor_shows_after_blank_lines_and_multi_line_cells(tmp_path):
    write_csv(
        tmp_path / "f.csv",
        FINDING_COLUMNS,
        [finding_row(BREASTS[1], "['Mass',\n'Asymmetry']"), finding_row(BREASTS[1], "['Mass']", ("9", "2", "3", "4"))],
    )
    text = (tmp_path / "f.csv").read_text().splitlines(keepends=True)
    (tmp_path / "f.csv").write_text("".join([*text[:3], "\n", *text[3:]]))  # header, 2-line row, blank, bad row
    with pytest.raises(MammoXAIError, match="f.csv: line 5 has the box"):
        read_findings(tmp_path / "f.csv")


def test_finding_boxes_of_a_semicolon_separated_csv_are_read_with_a_decimal_comma(tmp_path):
    """Spreadsheets in comma-decimal locales save CSV with semicolons and write 10,5; that box was refused."""
    (tmp_path / "f.csv").write_text("image_id;finding_categories;xmin;ymin;xmax;ymax\nimg2;['Mass'];10,5;20;30,25;44\n")
    assert read_findings(tmp_path / "f.csv") == [Finding("img2", ("Mass",), (10.5, 20.0, 30.25, 44.0))]


def test_a_no_finding_row_whose_box_r_or_pandas_wrote_as_na_is_skipped_like_an_empty_one(tmp_path):
    """R writes a missing box as NA and pandas can write NaN: such a "No Finding" row refused the whole CSV."""
    header = "image_id,finding_categories,xmin,ymin,xmax,ymax\n"
    (tmp_path / "f.csv").write_text(header + "img1,['No Finding'],NA,NA,NA,NA\nimg2,['Mass'],1,2,3,4\n")
    assert read_findings(tmp_path / "f.csv") == [Finding("img2", ("Mass",), (1.0, 2.0, 3.0, 4.0))]
    (tmp_path / "f.csv").write_text(header + "img1,['Mass'],NA,2,3,4\n")  # a box with one corner missing
    with pytest.raises(MammoXAIError, match=r"f.csv: line 2 has a non-numeric or partial box \['NA', '2', '3', '4'\]"):
        read_findings(tmp_path / "f.csv")


def test_a_finding_rows_height_and_width_are_the_size_its_boxes_are_in(tmp_path):
    header = "image_id,height,width,finding_categories,xmin,ymin,xmax,ymax\n"
    (tmp_path / "f.csv").write_text(header + "img2,96,64,['Mass'],1,2,3,4\nimg3,,,['Mass'],1,2,3,4\n")
    assert [finding.image_shape for finding in read_findings(tmp_path / "f.csv")] == [(96, 64), None]
    (tmp_path / "f.csv").write_text(header + "img2,96,wide,['Mass'],1,2,3,4\n")
    with pytest.raises(MammoXAIError, match="f.csv: line 2 has height x width '96' x 'wide', not a size in pixels"):
        read_findings(tmp_path / "f.csv")


def test_findings_name_their_image_by_id_or_by_file_name_in_any_case():
    """A manifest names a DICOM file by its SOP Instance UID and a PNG by its stem; VinDr-style CSVs name the file
    (stem), spreadsheets change case. Matched as written only, these findings were silently dropped."""
    records = [
        {"path": "images/s1/4f2a.dicom", "image_id": "1.2.3.4", "sop_uid": "1.2.3.4"},
        {"path": "png/Case2.png", "image_id": "Case2"},
        {"path": "png/case3.png", "image_id": "case3"},
    ]
    findings = [Finding(image_id, ("Mass",), (1.0, 2.0, 3.0, 4.0)) for image_id in ("1.2.3.4", "4f2a", "CASE2.PNG")]
    matched = match_findings(records, [*findings, Finding("elsewhere", ("Mass",), (1.0, 2.0, 3.0, 4.0))])
    assert matched == [findings[:2], findings[2:], []]


def test_a_finding_id_that_names_two_images_by_file_name_is_refused():
    records = [{"path": f"{case}/1-1.png", "image_id": f"{case}/1-1"} for case in ("Mass_P_1", "Mass_P_2")]
    with pytest.raises(MammoXAIError, match=r"f.csv: image_id '1-1' names 2 images \(Mass_P_1/1-1.png, Mass_P_2"):
        match_findings(records, [Finding("1-1", ("Mass",), (1.0, 2.0, 3.0, 4.0))], "f.csv")


def test_a_finding_csv_names_images_by_their_path_as_a_label_csv_may(tmp_path):
    """Where every case folder holds a 1-1.png, the path is the only unique name: the label CSV joined by it, while
    its findings matched no image and the lesions went unscored."""
    root = tmp_path / "download"
    for case in ("Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00004_RIGHT_MLO"):
        (root / "images" / case).mkdir(parents=True)
        Image.fromarray(mammogram()).save(root / "images" / case / "1-1.png")
    records = build_manifest(root / "images").records
    ids = ["images/Mass-Training_P_00001_LEFT_CC/1-1.png", "MASS-TRAINING_P_00004_RIGHT_MLO\\1-1"]
    columns = ["image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax"]
    write_csv(tmp_path / "f.csv", columns, [[image_id, "['Mass']", "1", "2", "3", "4"] for image_id in ids])
    matched = match_findings(records, read_findings(tmp_path / "f.csv"), tmp_path / "f.csv")
    assert [[finding.image_id for finding in found] for found in matched] == [[ids[0]], [ids[1]]]


# -- CBIS-DDSM --------------------------------------------------------------------------------------------------
UID = "1.3.6.1.4.1.9590.100.1.2.{}"
MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]  # fmt: skip
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]  # fmt: skip


def tcia_file(root, folder, series, name="1-1.dcm"):
    """The TCIA download layout: <image or abnormality folder>/<study date folder>/<series folder>/1-N.dcm."""
    path = root / "CBIS-DDSM" / folder / "07-20-2016-DDSM-74994" / series / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_abnormality(root, folder, box, mask_name, crop_name, crop_series=None):
    """A ROI mask (full size, 255 inside ``box`` = (x0, y0, x1, y1)) and a smaller cropped patch."""
    mask = np.zeros(FULL, dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    write_mammo_dicom(tcia_file(root, folder, "1.000000-ROI mask images-12345", mask_name), mask)
    series = crop_series or "1.000000-ROI mask images-12345"
    write_mammo_dicom(tcia_file(root, folder, series, crop_name), np.full((y1 - y0, x1 - x0), 900, dtype=np.uint16))


def csv_paths(image_folder, abnormality_folder):
    """CSV cells as CBIS-DDSM writes them: UID folders, 00000N.dcm, and a trailing newline on some."""
    image = f"{image_folder}/{UID.format(1)}/{UID.format(2)}/000000.dcm"
    crop = f"{abnormality_folder}/{UID.format(3)}/{UID.format(4)}/000000.dcm\n"
    mask = f"{abnormality_folder}/{UID.format(3)}/{UID.format(4)}/000001.dcm\n"
    return [image, crop, mask]


@pytest.fixture
def cbis(tmp_path):
    root = tmp_path / "tcia"
    mass, calc = "Mass-Training_P_00001_LEFT_CC", "Calc-Test_P_00038_RIGHT_MLO"
    for folder in (mass, calc):
        full = tcia_file(root, folder, "1.000000-full mammogram images-24515")
        write_mammo_dicom(full, mammogram(), PatientID=folder)
    write_abnormality(root, f"{mass}_1", (5, 10, 25, 30), mask_name="1-2.dcm", crop_name="1-1.dcm")
    write_abnormality(root, f"{mass}_2", (40, 60, 50, 90), mask_name="1-1.dcm", crop_name="1-2.dcm")
    crop_series = "1.000000-cropped images-6789"  # newer downloads: mask and crop in series folders of their own
    write_abnormality(root, f"{calc}_1", (0, 0, 64, 3), "1-1.dcm", "1-1.dcm", crop_series=crop_series)
    write_csv(
        root / "mass_case_description_train_set.csv",
        MASS_COLUMNS,
        [
            [
                "P_00001",
                "3",
                "LEFT",
                "CC",
                "1",
                "mass",
                "IRREGULAR",
                "SPICULATED",
                "4",
                "MALIGNANT",
                "4",
                *csv_paths(mass, f"{mass}_1"),
            ],
            [
                "P_00001",
                "3",
                "LEFT",
                "CC",
                "2",
                "mass",
                "OVAL",
                "CIRCUMSCRIBED",
                "3",
                "BENIGN",
                "5",
                *csv_paths(mass, f"{mass}_2"),
            ],
        ],
    )
    write_csv(
        root / "calc_case_description_test_set.csv",
        CALC_COLUMNS,
        [
            [
                "P_00038",
                "2",
                "RIGHT",
                "MLO",
                "1",
                "calcification",
                "PUNCTATE",
                "CLUSTERED",
                "2",
                "BENIGN_WITHOUT_CALLBACK",
                "3",
                *csv_paths(calc, f"{calc}_1"),
            ]
        ],
    )
    return root


def test_cbis_records_take_ids_from_the_folder_and_the_most_severe_pathology(cbis):
    records, _ = read_cbis_ddsm(cbis)
    calc, mass = records
    fields = ("image_id", "patient_id", "laterality", "view", "case_label", "birads", "density", "abnormality", "split")
    assert [mass[f] for f in fields] == ["Mass-Training_P_00001_LEFT_CC", "P_00001", "L", "CC", "malignant", "4", "C",
                                         "mass", "training"]  # fmt: skip
    assert [calc[f] for f in fields] == ["Calc-Test_P_00038_RIGHT_MLO", "P_00038", "R", "MLO", "benign", "2", "B",
                                         "calcification", "test"]  # fmt: skip
    assert (mass["rows"], mass["cols"]) == FULL and mass["path"].endswith("full mammogram images-24515/1-1.dcm")


def add_calc_case(root, folder, patient, side, view, box):
    """A calcification case of ``folder`` (its full image and one abnormality), as a second test-set CSV."""
    write_mammo_dicom(tcia_file(root, folder, "1.000000-full mammogram images-24515"), mammogram(), PatientID=patient)
    write_abnormality(root, f"{folder}_1", box, mask_name="1-1.dcm", crop_name="1-2.dcm")
    row = [patient, "3", side, view, "1", "calcification", "PLEOMORPHIC", "CLUSTERED", "4", "MALIGNANT", "2",
           *csv_paths(folder, f"{folder}_1")]  # fmt: skip
    write_csv(root / f"calc_case_description_test_set_{folder}.csv", CALC_COLUMNS, [row])


def test_cbis_a_scan_with_a_mass_and_calcifications_is_one_record_in_the_test_split(cbis, caplog):
    """CBIS-DDSM lists such a scan twice, in the mass training set and the calcification test set here."""
    add_calc_case(cbis, "Calc-Test_P_00001_LEFT_CC", "P_00001", "LEFT", "CC", (30, 5, 40, 15))
    with caplog.at_level("INFO", logger="mammoxai.data.cbis_ddsm"):
        records, findings = read_cbis_ddsm(cbis)
    scan = next(record for record in records if record["patient_id"] == "P_00001")
    assert len(records) == 2 and scan["image_id"] == "Calc-Test_P_00001_LEFT_CC"
    assert (scan["split"], scan["case_label"], scan["abnormality"]) == ("test", "malignant", "calcification+mass")
    assert sorted(finding.box for finding in findings if finding.image_id == scan["image_id"]) == [
        (5.0, 10.0, 25.0, 30.0), (30.0, 5.0, 40.0, 15.0), (40.0, 60.0, 50.0, 90.0)
    ]  # fmt: skip
    assert {finding.image_id for finding in findings} <= {record["image_id"] for record in records}
    assert "both the training and the test split" not in caplog.text  # the patient has no other image


def test_cbis_patients_with_images_on_both_sides_of_the_published_split_are_counted(cbis, caplog):
    add_calc_case(cbis, "Calc-Test_P_00001_RIGHT_MLO", "P_00001", "RIGHT", "MLO", (30, 5, 40, 15))
    records, _ = read_cbis_ddsm(cbis)
    assert sorted(record["split"] for record in records if record["patient_id"] == "P_00001") == ["test", "training"]
    assert "1 patients (P_00001) have images in both the training and the test split" in caplog.text


def test_cbis_masks_are_told_from_crops_by_size_and_boxed(cbis):
    _, findings = read_cbis_ddsm(cbis)
    by_box = {finding.box: finding for finding in findings}
    assert set(by_box) == {(5.0, 10.0, 25.0, 30.0), (40.0, 60.0, 50.0, 90.0), (0.0, 0.0, 64.0, 3.0)}
    first = by_box[(5.0, 10.0, 25.0, 30.0)]
    assert (first.image_id, first.categories, first.birads, first.label) == (
        "Mass-Training_P_00001_LEFT_CC",
        ("Mass",),
        "4",
        "malignant",
    )
    assert first.mask.endswith("LEFT_CC_1/07-20-2016-DDSM-74994/1.000000-ROI mask images-12345/1-2.dcm")
    second = by_box[(40.0, 60.0, 50.0, 90.0)]
    assert second.label == "recalled_benign" and second.mask.endswith("1-1.dcm")
    assert by_box[(0.0, 0.0, 64.0, 3.0)].categories == ("Suspicious Calcification",)


def test_cbis_masks_named_by_the_findings_csv_are_read_as_lesion_masks_inside_their_boxes(cbis, tmp_path):
    # the saliency evaluation reads the mask column with read_mask; it opened these DICOM files with PIL and failed
    records, findings = read_cbis_ddsm(cbis)
    for finding in read_findings(write_findings(findings, tmp_path / "finding_annotations.csv")):
        inside = read_mask(finding.mask)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == finding.box


def test_cbis_image_with_a_missing_roi_folder_raises_when_strict_and_is_skipped_otherwise(cbis):
    shutil.rmtree(cbis / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC_2")
    message = "1 images could not be used: Mass-Training_P_00001_LEFT_CC_2: folder is missing"
    with pytest.raises(MammoXAIError, match=message):
        read_cbis_ddsm(cbis)
    with pytest.warns(UserWarning, match="LEFT_CC_2"):
        records, findings = read_cbis_ddsm(cbis, strict=False)
    assert [r["image_id"] for r in records] == ["Calc-Test_P_00038_RIGHT_MLO"] and len(findings) == 1


def test_cbis_unknown_pathology_and_missing_csvs_are_named(cbis, tmp_path):
    calc_csv = cbis / "calc_case_description_test_set.csv"
    calc_csv.write_text(calc_csv.read_text().replace("BENIGN_WITHOUT_CALLBACK", "UNPROVEN"))
    with pytest.raises(MammoXAIError, match="Calc-Test_P_00038_RIGHT_MLO: has pathology 'UNPROVEN'"):
        read_cbis_ddsm(cbis, description_csvs=[calc_csv])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MammoXAIError, match=r"empty: holds no \*case_description\*.csv"):
        read_cbis_ddsm(tmp_path / "empty")
    write_csv(tmp_path / "bad.csv", ["patient_id", "pathology"], [["P_1", "BENIGN"]])
    with pytest.raises(MammoXAIError, match="bad.csv: has no column 'left_or_right_breast'"):
        read_cbis_ddsm(cbis, description_csvs=[tmp_path / "bad.csv"])


def test_cbis_an_abnormality_listed_twice_is_refused_naming_both_csvs(cbis):
    mass_csv = cbis / "mass_case_description_train_set.csv"
    copy = shutil.copy(mass_csv, cbis / "mass_case_description_train_set (1).csv")  # the download made twice
    with pytest.raises(MammoXAIError, match=r"lists the abnormality Mass-Training_P_00001_LEFT_CC_1 again \(also in"):
        read_cbis_ddsm(cbis)
    Path(copy).unlink()
    with open(mass_csv, newline="") as stream:
        rows = list(csv.reader(stream))
    write_csv(mass_csv, rows[0], [*rows[1:], rows[2]])
    with pytest.raises(MammoXAIError, match="mass_case_description_train_set.csv: lists the abnormality .*LEFT_CC_2"):
        read_cbis_ddsm(cbis)


def test_cbis_csvs_with_a_header_only_are_refused_not_read_as_an_empty_data_set(cbis):
    for name, columns in (("mass_case_description_train_set.csv", MASS_COLUMNS),
                          ("calc_case_description_test_set.csv", CALC_COLUMNS)):  # fmt: skip
        write_csv(cbis / name, columns, [])
    with pytest.raises(MammoXAIError, match="calc_case_description_test_set.csv, .*mass_.*: list no abnormality"):
        read_cbis_ddsm(cbis)


def test_cbis_a_row_whose_roi_mask_belongs_to_another_image_is_refused(cbis):
    calc_csv = cbis / "calc_case_description_test_set.csv"
    text = calc_csv.read_text()
    calc_csv.write_text(text.replace("Calc-Test_P_00038_RIGHT_MLO_1/", "Mass-Training_P_00001_LEFT_CC_1/"))
    message = "Calc-Test_P_00038_RIGHT_MLO: has the ROI mask folder Mass-Training_P_00001_LEFT_CC_1"
    with pytest.raises(MammoXAIError, match=message):
        read_cbis_ddsm(cbis, description_csvs=[calc_csv])


# -- findings files ---------------------------------------------------------------------------------------------
def test_cbis_findings_round_trip_through_a_vindr_style_csv(cbis, tmp_path):
    _, findings = read_cbis_ddsm(cbis)
    csv_path = write_findings(findings, tmp_path / "out" / "finding_annotations.csv")
    assert read_findings(csv_path) == findings
    with open(csv_path, newline="") as stream:
        first = next(csv.DictReader(stream))
    assert first["finding_birads"].startswith("BI-RADS ") and first["mask"].startswith("../tcia/CBIS-DDSM/")


def test_findings_keep_the_size_of_their_image_through_a_csv(tmp_path):
    # read_vindr's findings carry the height and width of VinDr's CSV; written without them, a box drawn on another
    # size of the image was no longer refused by check_image_shape
    finding = Finding("a", ("Mass",), (1.0, 2.0, 3.0, 4.0), image_shape=(96, 64))
    without = Finding("b", ("Mass",), (1.0, 2.0, 3.0, 4.0))
    read = read_findings(write_findings([finding, without], tmp_path / "findings.csv"))
    assert [found.image_shape for found in read] == [(96, 64), None]


@pytest.mark.parametrize("cell", ["", "NA", "N/A"])
def test_a_finding_without_a_mask_file_has_no_mask(tmp_path, cell):
    # "NA" was read as the path <csv folder>/NA, and the saliency evaluation refused it as a missing mask
    (tmp_path / "f.csv").write_text(
        f"image_id,finding_categories,xmin,ymin,xmax,ymax,mask\na,['Mass'],1,2,3,4,{cell}\n"
    )
    assert read_findings(tmp_path / "f.csv")[0].mask is None


def test_a_finding_csv_without_box_columns_is_named(tmp_path):
    write_csv(tmp_path / "f.csv", ["image_id", "finding_categories"], [["a", "['Mass']"]])
    with pytest.raises(MammoXAIError, match="f.csv: has no column 'xmin', 'ymin', 'xmax', 'ymax'"):
        read_findings(tmp_path / "f.csv")


def test_the_synthetic_cohort_findings_read_as_boxes_with_their_masks(tmp_path):
    records = read_manifest(synthesize(tmp_path, patients=3, seed=1, size=128))
    findings = read_findings(tmp_path / "finding_annotations.csv")
    by_id = {record["image_id"]: record for record in records}
    assert findings and {finding.image_id for finding in findings} <= set(by_id)
    for finding in findings:
        x0, y0, x1, y1 = finding.box
        assert 0 <= x0 < x1 <= by_id[finding.image_id]["cols"] and 0 <= y0 < y1 <= by_id[finding.image_id]["rows"]
        assert finding.label in ("benign", "recalled_benign", "malignant")
        assert (tmp_path / "masks").samefile(Path(finding.mask).parent)
