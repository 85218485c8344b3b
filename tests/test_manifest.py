"""Manifests: one record per image from a folder, joined with label CSVs, written and read back."""

import csv
import logging
import shutil

import numpy as np
import pytest
from dicom_factory import without_preamble, write_mammo_dicom
from PIL import Image

from mammoxai.data.findings import match_findings, read_findings
from mammoxai.data.manifest import (
    MANIFEST_COLUMNS,
    build_manifest,
    find_images,
    join_labels,
    main,
    read_manifest,
    read_record,
    record_header,
    write_manifest,
)
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mammogram
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace

PIXELS = (np.arange(48 * 32, dtype=np.uint16).reshape(48, 32) * 3) % 4096


def write_csv(path, header, rows):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def archive(tmp_path):
    """Two DICOM files (one extension-less, in a sub-folder), one PNG, and files that are not images."""
    root = tmp_path / "archive"
    (root / "study1" / "series").mkdir(parents=True)
    write_mammo_dicom(root / "study1" / "a.dcm", PIXELS, SOPInstanceUID="1.2.3.1", PatientID="00123", KVP=28.0)
    write_mammo_dicom(
        root / "study1" / "series" / "IM0002", PIXELS, SOPInstanceUID="1.2.3.2", PatientID="00123",
        ImageLaterality="R", ViewPosition="MLO", PatientAge="061Y",
    )  # fmt: skip
    Image.fromarray(PIXELS[:40, :30]).save(root / "case7_L_CC.png")
    (root / "notes.csv").write_text("not,an,image\n")
    (root / "README").write_text("extension-less, but not DICOM\n")
    write_mammo_dicom(root / ".hidden.dcm", PIXELS)
    return root


def test_find_images_walks_subfolders_and_recognises_extensionless_dicom(archive):
    names = [path.name for path in find_images(archive)]
    assert names == ["case7_L_CC.png", "a.dcm", "IM0002"]


def test_find_images_follows_linked_folders_once_without_looping(archive, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_mammo_dicom(elsewhere / "b.dcm", PIXELS, SOPInstanceUID="1.2.3.3")
    (archive / "linked").symlink_to(elsewhere, target_is_directory=True)
    (archive / "more").symlink_to(elsewhere, target_is_directory=True)  # the same folder again: listed once
    (archive / "study1" / "up").symlink_to(archive, target_is_directory=True)  # a loop
    names = [path.relative_to(archive).as_posix() for path in find_images(archive)]
    assert names == ["case7_L_CC.png", "linked/b.dcm", "study1/a.dcm", "study1/series/IM0002"]


def test_dicom_records_carry_ids_view_and_header_fields(archive):
    records = {record["image_id"]: record for record in build_manifest(archive).records}
    assert set(records) == {"1.2.3.1", "1.2.3.2", "case7_L_CC"}
    right = records["1.2.3.2"]
    assert (right["laterality"], right["view"], right["rows"], right["cols"]) == ("R", "MLO", 48, 32)
    assert (right["patient_id"], right["age"], right["manufacturer"]) == ("00123", "061Y", "TestVendor")
    assert right["model"] == "Mammo 3000"
    assert right["study_uid"] and right["series_uid"] and right["sop_uid"] == "1.2.3.2"
    assert (records["1.2.3.1"]["kvp"], records["1.2.3.1"]["thickness_mm"]) == (28.0, 52.0)
    png = records["case7_L_CC"]
    assert (png["rows"], png["cols"], png["laterality"], png["sop_uid"]) == (40, 30, None, None)


def test_header_only_fast_path_gives_the_same_records_as_the_full_reader(archive):
    fast = build_manifest(archive, header_only=True).records
    full = build_manifest(archive, header_only=False).records
    assert fast == full


def test_bad_files_are_collected_and_the_rest_goes_on(archive, caplog):
    (archive / "broken.dcm").write_bytes(b"\0" * 300)
    write_mammo_dicom(archive / "ct.dcm", PIXELS, Modality="CT", BodyPartExamined="CHEST")
    with caplog.at_level(logging.WARNING):
        manifest = build_manifest(archive)
    assert len(manifest.records) == 3
    assert sorted(path.rsplit("/", 1)[-1] for path in manifest.errors) == ["broken.dcm", "ct.dcm"]
    assert "Modality CT" in manifest.errors[str(archive / "ct.dcm")]
    assert "2 of 5 files" in caplog.text and "ct.dcm" in caplog.text


def test_on_error_raise_stops_at_the_first_bad_file(archive):
    write_mammo_dicom(archive / "ct.dcm", PIXELS, Modality="CT", BodyPartExamined="CHEST")
    with pytest.raises(MammoXAIError, match="ct.dcm.*not a mammogram"):
        build_manifest(archive, on_error="raise")


def test_full_read_finds_broken_pixel_data_that_the_header_path_lets_through(tmp_path):
    path = write_mammo_dicom(tmp_path / "short.dcm", PIXELS)
    path.write_bytes(path.read_bytes()[:-100])  # truncate the pixel data, keep the header
    assert read_record(path, header_only=True)["rows"] == 48
    with pytest.raises(MammoXAIError, match="pixel data"):
        read_record(path, header_only=False)


def test_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(MammoXAIError, match="holds no readable mammogram"):
        build_manifest(tmp_path)


def test_label_csv_joined_by_sop_uid_adds_and_overrides_fields(archive, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["sop_uid", "case_label", "view"], [["1.2.3.1", "malignant", "XCCL"]])
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=labels, id_column="sop_uid").records}
    assert (records["1.2.3.1"]["case_label"], records["1.2.3.1"]["view"]) == ("malignant", "XCCL")
    assert "case_label" not in records["1.2.3.2"] and records["1.2.3.2"]["view"] == "MLO"


def test_label_csv_supplies_what_a_png_lacks_by_file_name(archive, tmp_path):
    labels = write_csv(
        tmp_path / "labels.csv",
        ["File Name", "Patient", "Side", "View", "Density", "Label"],
        [["case7_L_CC.png", "0042", "LEFT", "cc", "C", "benign"]],
    )
    column_map = {
        "Patient": "patient_id", "Side": "laterality", "View": "view", "Density": "density", "Label": "case_label"
    }  # fmt: skip
    records = build_manifest(archive, label_csv=labels, id_column="File Name", column_map=column_map).records
    png = next(r for r in records if r["image_id"] == "case7_L_CC")
    fields = ("patient_id", "laterality", "view", "density", "case_label")
    assert [png[field] for field in fields] == ["0042", "L", "CC", "C", "benign"]


def test_label_csv_joined_by_patient_laterality_view_labels_every_matching_image(archive, tmp_path):
    write_mammo_dicom(archive / "prior.dcm", PIXELS, SOPInstanceUID="1.2.3.0", PatientID="00123")  # same breast, view
    records = build_manifest(archive).records
    header = ["patient_id", "laterality", "view", "case_label"]
    labels = write_csv(tmp_path / "labels.csv", header, [["00123", "L", "CC", "normal"]])
    joined = join_labels(records, labels, id_column=("patient_id", "laterality", "view"))
    labelled = sorted(r["path"].rsplit("/", 1)[-1] for r in joined if r.get("case_label") == "normal")
    assert labelled == ["a.dcm", "prior.dcm"]


def test_a_copy_of_a_manifest_as_label_csv_adds_its_labels_but_keeps_the_scanned_paths(tmp_path):
    cohort = tmp_path / "cohort"
    written = {r["sop_uid"]: r for r in read_manifest(synthesize(cohort, patients=1, seed=0, size=128))}
    (tmp_path / "man").mkdir()
    labels = shutil.copy(cohort / "manifest.csv", tmp_path / "man" / "labels.csv")  # its paths: P0000_S1_L_CC.dcm
    out = tmp_path / "man" / "manifest.csv"
    assert main([str(cohort), "--out", str(out), "--labels", str(labels), "--exclude", "masks/*"]) == 0
    records = read_manifest(out)
    assert {r["path"] for r in records} == {r["path"] for r in written.values()}
    assert all(r["case_label"] == written[r["sop_uid"]]["case_label"] for r in records)


@pytest.mark.parametrize(("column", "value"), [("rows", "49"), ("image_id", "other"), ("cols", "31")])
def test_a_label_row_that_gives_its_image_another_size_or_image_id_is_an_error(archive, tmp_path, column, value):
    labels = write_csv(tmp_path / "labels.csv", ["sop_uid", column], [["1.2.3.1", value]])
    with pytest.raises(MammoXAIError, match=rf"labels.csv: the row of .*a.dcm gives {column} .*but the image has"):
        build_manifest(archive, label_csv=labels)


def test_an_id_column_named_image_id_may_hold_file_names_without_renaming_the_image(archive, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["image_id", "path", "rows"], [["a.dcm", "elsewhere/a.dcm", "48"]])
    records = build_manifest(archive, label_csv=labels, id_column="image_id").records
    assert ("1.2.3.1", str(archive / "study1" / "a.dcm")) in [(r["image_id"], r["path"]) for r in records]


def test_label_rows_without_an_image_raise_when_strict_and_warn_otherwise(archive, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["sop_uid", "case_label"], [["1.2.3.1", "normal"], ["9.9.9", "benign"]])
    message = (
        r"labels.csv: 1 of 2 rows match no image by sop_uid: 9\.9\.9.*strict=False \(a bundle config: --strict false"
    )
    with pytest.raises(MammoXAIError, match=message):
        build_manifest(archive, label_csv=labels)
    with pytest.warns(UserWarning, match=r"9\.9\.9"):
        records = build_manifest(archive, label_csv=labels, strict=False).records
    assert [r["case_label"] for r in records if r.get("case_label")] == ["normal"]


def test_a_missing_id_column_names_the_csv_and_the_column(archive, tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["image", "case_label"], [["1.2.3.1", "normal"]])
    with pytest.raises(
        MammoXAIError, match=r"labels.csv: has no column 'sop_uid' \(columns: image, case_label\)"
    ) as error:
        build_manifest(archive, label_csv=labels)
    assert "--label_id_column" in str(error.value) and "--id-column" in str(error.value)  # the bundle's and the CLI's


def test_rows_that_disagree_about_one_image_are_an_error(archive, tmp_path):
    rows = [["1.2.3.1", "normal"], ["1.2.3.1", "malignant"]]
    labels = write_csv(tmp_path / "labels.csv", ["sop_uid", "case_label"], rows)
    with pytest.raises(MammoXAIError, match="rows that disagree"):
        build_manifest(archive, label_csv=labels)


def test_an_id_naming_several_images_is_an_error(archive, tmp_path):
    (archive / "other").mkdir()
    write_mammo_dicom(archive / "other" / "a.dcm", PIXELS, SOPInstanceUID="1.2.3.9")  # another image of that name
    labels = write_csv(tmp_path / "labels.csv", ["file", "case_label"], [["a.dcm", "normal"]])
    with pytest.raises(MammoXAIError, match="labels.csv: file 'a.dcm' names 2 images"):
        build_manifest(archive, label_csv=labels, id_column="file")


def test_written_manifest_reads_back_equal_with_paths_relative_to_the_csv(archive, tmp_path):
    records = build_manifest(archive).records
    records[0]["case_label"] = "benign"
    csv_path = write_manifest(records, archive / "manifest.csv")
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[1]["path"] == "study1/a.dcm" and rows[0]["case_label"] == "benign" and rows[1]["case_label"] == ""
    moved = shutil.copytree(archive, tmp_path / "moved")
    reread = read_manifest(moved / "manifest.csv")
    expected = [dict(r, path=r["path"].replace(str(archive), str(moved)), case_label=r.get("case_label"))
                for r in records]  # fmt: skip
    assert reread == expected
    assert isinstance(reread[1]["rows"], int) and isinstance(reread[1]["kvp"], float)
    assert reread[1]["patient_id"] == "00123"


def test_reading_a_csv_that_is_not_a_manifest_is_an_error(tmp_path):
    message = r"labels.csv: has no column 'path' \(columns: sop_uid\) \(a manifest is written by"
    with pytest.raises(MammoXAIError, match=message):
        read_manifest(write_csv(tmp_path / "labels.csv", ["sop_uid"], [["1"]]))
    with pytest.raises(MammoXAIError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")


def test_record_header_gives_the_metadata_targets_of_the_full_header(archive):
    record = next(r for r in build_manifest(archive).records if r["image_id"] == "1.2.3.2")
    space = MetadataLabelSpace.default().fit([record_header(record)])
    labels = space.encode(record_header(record))
    assert labels == space.encode(read_mammogram(record["path"]).header)
    assert space.decode("view", labels["view"]) == "MLO" and space.decode("laterality", labels["laterality"]) == "R"
    assert UNKNOWN not in labels.values()


def test_command_line_writes_the_manifest_and_reports_failures(archive, tmp_path, capsys):
    (archive / "broken.dcm").write_bytes(b"\0" * 300)
    out = tmp_path / "out" / "manifest.csv"
    assert main([str(archive), "--out", str(out)]) == 0
    assert len(read_manifest(out)) == 3
    assert "3 images" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "other.csv")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_command_line_refuses_an_existing_out_unless_told_to_overwrite(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    manifest = synthesize(cohort, patients=1, seed=0, size=128)
    labelled = manifest.read_bytes()
    assert main([str(cohort), "--out", str(manifest), "--exclude", "masks/*"]) == 1
    assert f"--out {manifest}: already exists (pass --overwrite" in one_line_error(capsys)
    assert manifest.read_bytes() == labelled  # case_label, split, lesion_types... kept
    assert main([str(cohort), "--out", str(manifest), "--exclude", "masks/*", "--overwrite"]) == 0
    assert "case_label" not in read_manifest(manifest)[0]


def test_command_line_usage_names_the_module(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m mammoxai.data.manifest ")


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error, error
    return error


def test_command_line_refuses_a_folder_or_a_path_under_a_file_as_out_before_reading_a_header(archive, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.txt").write_text("a file")
    assert main([str(archive), "--out", str(out)]) == 1
    assert f"--out {out}: is a folder, not a file" in one_line_error(capsys)
    assert main([str(archive), "--out", str(out / "taken.txt" / "manifest.csv")]) == 1
    assert "taken.txt: is a file, not a folder" in one_line_error(capsys)
    assert list(out.iterdir()) == [out / "taken.txt"]


def test_command_line_refuses_an_image_given_as_the_label_csv(archive, tmp_path, capsys):
    dicom_file = archive / "study1" / "a.dcm"
    assert main([str(archive), "--out", str(tmp_path / "manifest.csv"), "--labels", str(dicom_file)]) == 1
    assert f"{dicom_file}: is not a CSV text file" in one_line_error(capsys)
    assert not (tmp_path / "manifest.csv").exists()


def test_a_synthetic_cohort_folder_gives_back_the_manifest_synth_wrote_without_its_masks(tmp_path, capsys):
    written = sorted(read_manifest(synthesize(tmp_path, patients=1, seed=0, size=128)), key=lambda r: r["path"])
    manifest = build_manifest(tmp_path)
    built = manifest.records
    assert [[r[k] for k in MANIFEST_COLUMNS] for r in built] == [[r[k] for k in MANIFEST_COLUMNS] for r in written]
    assert sorted(manifest.masks) == sorted(str(tmp_path / r["mask"]) for r in written)  # masks/<SOPInstanceUID>.png
    assert main([str(tmp_path), "--out", str(tmp_path / "rebuilt.csv")]) == 0
    assert f"{len(written)} images -> " in capsys.readouterr().out


def test_only_image_files_named_after_a_scanned_dicom_image_are_left_out_as_its_masks_unread(archive):
    (archive / "masks").mkdir()
    (archive / "masks" / "1.2.3.1.png").write_bytes(b"not even a PNG")  # read, it would be an error
    Image.fromarray(PIXELS).save(archive / "masks" / "9.9.9.png")  # no DICOM image of that UID: a mammogram
    manifest = build_manifest(archive)
    assert manifest.masks == [str(archive / "masks" / "1.2.3.1.png")] and not manifest.errors
    assert sorted(r["image_id"] for r in manifest.records) == ["1.2.3.1", "1.2.3.2", "9.9.9", "case7_L_CC"]


# -- one image, one row -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        (lambda r: dict(r), r"lists the same path more than once: .*study1/a.dcm \(2 times\)"),
        (lambda r: dict(r, image_id="renamed"), r"lists the same path more than once: .*study1/a.dcm \(2 times\)"),
        (lambda r: dict(r, path=r["path"] + ".copy"), r"lists the same image_id more than once: 1.2.3.1 \(2 times\)"),
    ],
    ids=["repeated row", "same path, other id", "same image_id, other path"],
)
def test_a_manifest_listing_an_image_twice_is_refused_naming_the_image(archive, repeat, message):
    records = build_manifest(archive).records
    first = next(r for r in records if r["image_id"] == "1.2.3.1")
    manifest = write_manifest([*records, repeat(first)], archive / "manifest.csv")
    with pytest.raises(MammoXAIError, match=rf"manifest.csv: {message} \(keep one row per image"):
        read_manifest(manifest)


def test_one_file_spelled_two_ways_in_a_manifest_is_listed_twice(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,image_id\nstudy1/a.dcm,a\n./study1/../study1/a.dcm,b\n")
    with pytest.raises(MammoXAIError, match=r"lists the same path more than once: .*study1/a.dcm \(2 times\)"):
        read_manifest(tmp_path / "manifest.csv")


def test_a_folder_holding_one_image_twice_is_refused_before_a_manifest_is_written(archive, tmp_path, capsys):
    shutil.copy(archive / "study1" / "a.dcm", archive / "a_exported_again.dcm")  # same SOP Instance UID
    with pytest.raises(MammoXAIError, match=r"archive: lists the same image_id more than once: 1.2.3.1 \(2 times\)"):
        build_manifest(archive)
    out = tmp_path / "manifest.csv"
    assert main([str(archive), "--out", str(out)]) == 1
    assert "--exclude" in one_line_error(capsys) and not out.exists()
    assert main([str(archive), "--out", str(out), "--exclude", "a_exported_again.dcm"]) == 0


def test_a_manifest_row_without_a_path_is_named(tmp_path):
    (tmp_path / "manifest.csv").write_text('path,image_id,note\na.dcm,a,"two\nlines"\n\n,b,\n')
    with pytest.raises(MammoXAIError, match="manifest.csv: line 5 has no path"):  # the line an editor shows
        read_manifest(tmp_path / "manifest.csv")


# -- CSV files as spreadsheets and other tools save them ---------------------------------------------------------
def test_a_label_csv_with_byte_order_mark_and_windows_line_endings_joins_like_a_plain_one(archive, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("sop_uid,case_label\r\n1.2.3.1,malignant\r\n1.2.3.2,benign\r\n".encode("utf-8-sig"))
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=labels).records}
    assert (records["1.2.3.1"]["case_label"], records["1.2.3.2"]["case_label"]) == ("malignant", "benign")


@pytest.mark.parametrize(
    "text",
    [
        "sop_uid;case_label;kvp;note\r\n1.2.3.1;malignant;28,5;ok, checked\r\n1.2.3.2;benign;;\r\n",
        "sop_uid\tcase_label\tkvp\tnote\n1.2.3.1\tmalignant\t28.5\tok, checked\n1.2.3.2\tbenign\t\t\n",
        'sop_uid,case_label,kvp,note\n1.2.3.1,malignant,28.5,"ok, checked"\n1.2.3.2,benign,,\n',
    ],
    ids=["semicolons with decimal commas", "tabs", "commas"],
)
def test_a_label_csv_separated_by_semicolons_or_tabs_joins_like_a_comma_separated_one(archive, tmp_path, text):
    """Spreadsheets save "CSV" with semicolons and decimal commas where the comma is the decimal mark (most of
    Europe); a table copied out of one is tab-separated. Each joins as the comma-separated file does."""
    labels = tmp_path / "labels.csv"
    labels.write_bytes(text.encode("utf-8-sig"))
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=labels).records}
    assert [records["1.2.3.1"][name] for name in ("case_label", "kvp", "note")] == ["malignant", 28.5, "ok, checked"]
    header_kvp = {r["image_id"]: r for r in build_manifest(archive).records}["1.2.3.2"]["kvp"]
    assert (records["1.2.3.2"]["case_label"], records["1.2.3.2"]["kvp"]) == ("benign", header_kvp)  # empty: no value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sop_uid;patient_id;age;force;note\n1.2.3.1;12,5;56,5;1,234;mass, calcification\n",
            ["12,5", "56.5", 1, "1.234", "mass, calcification"],
        ),
        (
            "sop_uid\tpatient_id\tage\tforce\tnote\n1.2.3.1\t12,5\t56,5\t1,234\t3,5\n1.2.3.2\tP2\t61\t987\t1.5\n",
            ["12,5", "56.5", 1, "1,234", "3,5"],
        ),
        (
            'sop_uid,patient_id,age,force,note\n1.2.3.1,"12,5","56,5","1,234","mass, calcification"\n',
            ["12,5", "56,5", UNKNOWN, "1,234", "mass, calcification"],
        ),
    ],
    ids=["semicolons: every number", "tabs: columns of decimal commas only", "commas: none"],
)
def test_a_decimal_comma_is_read_in_every_number_a_label_csv_gives_where_its_separator_allows_one(
    archive, tmp_path, text, expected
):
    """A semicolon-separated CSV writes 56.5 as "56,5" in every column, not only in the typed ones: an age or a column
    a metadata field bins stayed "56,5", read as no number, and the image was silently unlabelled. A tab-separated one
    is written in either locale, so only a column that holds a decimal comma and no point is read so ("1,234" may
    group thousands); ids and text stay as written."""
    (tmp_path / "labels.csv").write_text(text, encoding="utf-8")
    record = {r["image_id"]: r for r in build_manifest(archive, label_csv=tmp_path / "labels.csv").records}["1.2.3.1"]
    age_class = MetadataLabelSpace.default().field("age").encode(record_header(record))  # bins of 50, 60, 70 years
    assert [record["patient_id"], record["age"], age_class, record["force"], record["note"]] == expected


def test_a_tab_separated_column_of_decimals_below_one_with_three_places_is_read_with_a_decimal_comma(archive, tmp_path):
    """ "0,085" has three digits after its comma as "1,234" has, but no group of thousands starts with a zero: a column
    of such values (a pixel spacing in mm) was taken for one that may group thousands and stayed "0,085"."""
    text = "sop_uid\tspacing\tforce\n1.2.3.1\t0,085\t1,234\n1.2.3.2\t-0,100\t987\n"
    (tmp_path / "labels.csv").write_text(text, encoding="utf-8")
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=tmp_path / "labels.csv").records}
    assert [records["1.2.3.1"]["spacing"], records["1.2.3.2"]["spacing"]] == ["0.085", "-0.100"]
    assert records["1.2.3.1"]["force"] == "1,234"  # may group thousands: as written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sop_uid,case_label\n1.2.3.1;malignant\n", "line 2 has 1 cells, the header has 2 columns"),
        ("sop_uid,case_label\n1.2.3.1,malignant\n1.2.3.2,benign,BI-RADS 2\n", "line 3 has 3 cells, the header has 2"),
        ('sop_uid,note,case_label\n"1.2.3.1","two\nlines",normal\n1.2.3.2,benign\n', "line 4 has 2 cells"),
        ("sop_uid|case_label\n1.2.3.1|malignant\n", r"separated by '\|', not by commas.*save it as comma-separated"),
        ("sop_uid;case_label\n1.2.3.1;malignant;BI-RADS 5\n", "line 2 has 3 cells.*semicolon-separated as the header"),
        ("sop_uid,case_label,case_label\n1.2.3.1,normal,malignant\n", "names the column.* 'case_label' more than once"),
    ],
    ids=[
        "mixed separators",
        "extra cell",
        "line after a quoted line break",
        "pipes",
        "extra semicolon",
        "column twice",
    ],
)
def test_a_label_csv_whose_cells_do_not_line_up_with_its_header_is_refused(archive, tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(MammoXAIError, match=f"labels.csv: .*{message}"):
        build_manifest(archive, label_csv=tmp_path / "labels.csv")


def test_empty_cells_past_the_last_column_as_spreadsheets_leave_them_are_read(archive, tmp_path):
    (tmp_path / "labels.csv").write_text("sop_uid,case_label,,\n1.2.3.1,malignant,,\n")
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=tmp_path / "labels.csv").records}
    assert records["1.2.3.1"]["case_label"] == "malignant"


def test_dicom_files_named_by_their_uid_or_without_preamble_are_scanned_and_other_files_are_not(tmp_path):
    """Older archives name files by SOP Instance UID (suffix ``.604``) and may omit the preamble; both are read."""
    folder = tmp_path / "archive"
    folder.mkdir()
    source = write_mammo_dicom(tmp_path / "source.dcm", PIXELS, SOPInstanceUID="1.2.840.113619.2.55.3.604")
    shutil.copy(source, folder / "1.2.840.113619.2.55.3.604")
    without_preamble(
        write_mammo_dicom(tmp_path / "bare.dcm", PIXELS, SOPInstanceUID="1.2.3.605"), folder / "1.2.3.605", file_meta=False
    )  # fmt: skip
    (folder / "report.txt").write_text("1.2.3 not an image\n")
    (folder / "empty.bin").write_bytes(b"")
    assert [path.name for path in find_images(folder)] == ["1.2.3.605", "1.2.840.113619.2.55.3.604"]
    ids = {record["image_id"] for record in build_manifest(folder).records}
    assert ids == {"1.2.3.605", "1.2.840.113619.2.55.3.604"}


def test_a_dcm_file_that_is_really_a_png_is_scanned_as_the_png_it_is(tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "scan.png")
    (tmp_path / "scan.png").rename(tmp_path / "scan.dcm")
    record = read_record(tmp_path / "scan.dcm", header_only=True)
    assert (record["image_id"], record["rows"], record["cols"]) == ("scan", 48, 32)


def test_image_files_of_one_name_in_case_folders_are_named_by_their_path(tmp_path):
    for case in ("Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00004_RIGHT_MLO"):
        (tmp_path / case).mkdir()
        Image.fromarray(PIXELS).save(tmp_path / case / "1-1.png")
    Image.fromarray(PIXELS).save(tmp_path / "single.png")
    records = build_manifest(tmp_path).records
    ids = sorted(record["image_id"] for record in records)
    assert ids == ["Mass-Training_P_00001_LEFT_CC/1-1", "Mass-Training_P_00004_RIGHT_MLO/1-1", "single"]
    write_manifest(records, tmp_path / "manifest.csv")
    assert len(read_manifest(tmp_path / "manifest.csv")) == 3


@pytest.mark.parametrize("marker", ["NA", "N/A", "n/a", "NaN", "null", "#N/A"])
def test_missing_value_markers_of_r_pandas_and_spreadsheets_are_read_as_empty_cells(archive, tmp_path, marker):
    """Read as text, 'NA' was a patient owning every image without an id, and a number column refused the CSV."""
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "patient_id", "laterality", "view", "kvp", "density"],
        [["case7_L_CC", marker, marker, marker, marker, marker]],
    )
    png = build_manifest(archive, label_csv=labels, id_column="image_id").records[0]
    assert png["image_id"] == "case7_L_CC"
    assert [png.get(name) for name in ("patient_id", "laterality", "view", "kvp", "density")] == [None] * 5


def test_rows_naming_one_image_by_different_ids_must_agree(archive, tmp_path):
    """By file name and by stem, one image had two rows; the later one silently replaced the earlier's label."""
    rows = [["case7_L_CC.png", "P1", "benign"], ["case7_L_CC", "P1", "malignant"]]
    labels = write_csv(tmp_path / "labels.csv", ["image_id", "patient_id", "case_label"], rows)
    with pytest.raises(MammoXAIError, match="rows 'case7_L_CC.png' and 'case7_L_CC' both name .*case7_L_CC.png"):
        build_manifest(archive, label_csv=labels, id_column="image_id")
    write_csv(labels, ["image_id", "patient_id", "case_label"], [rows[0], [rows[1][0], *rows[0][1:]]])
    png = build_manifest(archive, label_csv=labels, id_column="image_id").records[0]
    assert (png["image_id"], png["case_label"]) == ("case7_L_CC", "benign")  # the same row twice is fine


def test_a_label_csv_names_images_by_their_path_under_the_data_set_folder_with_or_without_extension(tmp_path):
    """Where every case folder holds a 1-1.png, the path is the only unique name; it matched no image."""
    root = tmp_path / "download"
    for case in ("Calc-Test_P_00038_LEFT_CC", "Calc-Test_P_00038_RIGHT_MLO"):
        (root / "images" / case).mkdir(parents=True)
        Image.fromarray(PIXELS).save(root / "images" / case / "1-1.png")
    rows = [
        ["images/Calc-Test_P_00038_LEFT_CC/1-1.png", "L"],  # from the download's root
        ["Calc-Test_P_00038_RIGHT_MLO\\1-1", "R"],  # Windows separators, no extension
    ]
    labels = write_csv(tmp_path / "labels.csv", ["file", "laterality"], rows)
    records = build_manifest(root / "images", label_csv=labels, id_column="file").records
    assert {record["image_id"]: record["laterality"] for record in records} == {
        "Calc-Test_P_00038_LEFT_CC/1-1": "L",
        "Calc-Test_P_00038_RIGHT_MLO/1-1": "R",
    }
    write_csv(labels, ["file", "laterality"], [["1-1.png", "L"]])
    with pytest.raises(MammoXAIError, match="file '1-1.png' names 2 images .*its path under the data set's folder"):
        build_manifest(root / "images", label_csv=labels, id_column="file")


def test_a_density_column_written_as_numbers_or_vindr_text_is_read_as_birads_letters(archive, tmp_path):
    """CBIS-DDSM writes densities 1-4, VinDr-Mammo "DENSITY C": a density field of classes A-D knew neither."""
    for value, letter in [("3", "C"), ("DENSITY B", "B"), ("d", "D"), ("35%", "35%")]:
        labels = write_csv(tmp_path / "labels.csv", ["image_id", "density"], [["case7_L_CC", value]])
        png = build_manifest(archive, label_csv=labels, id_column="image_id").records[0]
        assert png["density"] == letter


def test_label_csv_headers_name_manifest_fields_in_any_case_or_spacing(archive, tmp_path):
    """INbreast-style headers ("Laterality", "View") were joined under their own names: the fields stayed missing."""
    header = ["Image_ID", "Patient ID", "Laterality", "View", "Density", "KVP", "Case_Label", "Note"]
    labels = write_csv(tmp_path / "labels.csv", header, [["case7_L_CC", "0042", "l", "cc", "C", "28", "normal", "x"]])
    png = build_manifest(archive, label_csv=labels, id_column="Image_ID").records[0]
    fields = ("image_id", "patient_id", "laterality", "view", "density", "kvp", "case_label", "Note")
    assert [png.get(field) for field in fields] == ["case7_L_CC", "0042", "L", "CC", "C", 28.0, "normal", "x"]


def test_none_in_a_label_csv_is_a_value_not_a_missing_cell(archive, tmp_path):
    """A finding or label column may say "None" (no abnormality); only NA-style markers mean missing."""
    labels = write_csv(tmp_path / "labels.csv", ["image_id", "abnormality"], [["case7_L_CC", "None"]])
    png = build_manifest(archive, label_csv=labels, id_column="image_id").records[0]
    assert png["abnormality"] == "None"


def test_the_manifest_command_names_its_own_flag_for_skipping_unmatched_label_rows(archive, tmp_path, capsys):
    """The error said '--strict false', which the command does not have; its flag is --lenient."""
    labels = write_csv(
        tmp_path / "labels.csv", ["image_id", "case_label"], [["case7_L_CC", "normal"], ["gone", "benign"]]
    )
    arguments = [
        str(archive),
        "--out",
        str(tmp_path / "manifest.csv"),
        "--labels",
        str(labels),
        "--id-column",
        "image_id",
    ]
    assert main(arguments) == 1
    assert "--lenient" in capsys.readouterr().err
    assert main([*arguments, "--lenient"]) == 0


def test_a_manifest_written_on_windows_finds_its_images_in_subfolders(tmp_path):
    """Paths such as images\\P000\\a.png named files that exist nowhere outside Windows."""
    (tmp_path / "images" / "P000").mkdir(parents=True)
    Image.fromarray(PIXELS).save(tmp_path / "images" / "P000" / "a.png")
    write_csv(tmp_path / "manifest.csv", ["path", "image_id"], [["images\\P000\\a.png", "a"]])
    (record,) = read_manifest(tmp_path / "manifest.csv")
    assert record["path"] == str(tmp_path / "images" / "P000" / "a.png")


def test_a_label_csv_id_in_another_case_names_the_image_as_a_windows_or_macos_file_system_would(archive, tmp_path):
    """A CSV written where file names ignore case (CASE7_L_CC.PNG for case7_L_CC.png) matched no image."""
    labels = write_csv(tmp_path / "labels.csv", ["file", "view"], [["CASE7_L_CC.PNG", "CC"], ["Study1/A.DCM", "MLO"]])
    records = {r["image_id"]: r for r in build_manifest(archive, label_csv=labels, id_column="file").records}
    assert (records["case7_L_CC"]["view"], records["1.2.3.1"]["view"]) == ("CC", "MLO")


def test_ids_of_several_columns_match_as_written_so_patients_differing_in_case_stay_apart(tmp_path):
    """Case is ignored only for a one-column id (a file name on a case-insensitive file system): a row keyed on
    patient, laterality and view labelled patients AB1 and Ab1 both, and made them one patient."""
    records = [
        {"path": f"{name}.png", "image_id": name, "patient_id": patient, "laterality": "L", "view": "CC"}
        for name, patient in (("a", "AB1"), ("b", "Ab1"))
    ]
    columns = ["patient_id", "laterality", "view", "case_label"]
    labels = write_csv(
        tmp_path / "labels.csv", columns, [["AB1", "L", "CC", "benign"], ["ab1", "L", "CC", "malignant"]]
    )
    with pytest.warns(UserWarning, match="1 of 2 rows match no image"):
        joined = join_labels(records, labels, ("patient_id", "laterality", "view"), strict=False)
    assert [(r["patient_id"], r.get("case_label")) for r in joined] == [("AB1", "benign"), ("Ab1", None)]


def labelled_and_found(records, image_id, folder):
    """The paths of the records that a label CSV row and a finding CSV row with ``image_id`` name, or the problem
    each refuses it with."""
    labels = write_csv(folder / "labels.csv", ["image_id", "case_label"], [[image_id, "malignant"]])
    findings = write_csv(folder / "f.csv", ["image_id", "xmin", "ymin", "xmax", "ymax"], [[image_id, 1, 2, 3, 4]])

    def labelled():
        return sorted(r["path"] for r in join_labels(records, labels, "image_id", strict=False) if r.get("case_label"))

    def found():
        matched = match_findings(records, read_findings(findings), findings)
        return sorted(r["path"] for r, boxes in zip(records, matched, strict=True) if boxes)

    outcome = []
    for named in (labelled, found):
        try:
            outcome.append(named())
        except MammoXAIError as error:
            outcome.append(error.problem)
    return outcome


@pytest.mark.parametrize(
    ("image_id", "path"),
    [
        ("1.2.3.1", "study1/a.dcm"),  # SOP Instance UID
        ("a", "study1/a.dcm"),  # file stem
        ("A.DCM", "study1/a.dcm"),  # file name in another case
        ("Study1/A", "study1/a.dcm"),  # path tail in another case, no extension
        ("archive\\study1\\series\\IM0002", "study1/series/IM0002"),  # Windows path from the data set's parent
        ("CASE7_L_CC.PNG", "case7_L_CC.png"),
        ("elsewhere.png", None),
    ],
)
@pytest.mark.filterwarnings("ignore:.*match no image")
def test_a_label_csv_and_a_finding_csv_name_the_same_image_by_the_same_id(archive, tmp_path, image_id, path):
    """Each had its own rule: a path under a folder above the file labelled the image and its findings matched
    nothing."""
    records = build_manifest(archive).records
    expected = [] if path is None else [str(archive / path)]
    assert labelled_and_found(records, image_id, tmp_path) == [expected, expected]


def test_an_id_naming_two_images_is_refused_alike_by_the_label_join_and_the_finding_match(archive, tmp_path):
    (archive / "other").mkdir()
    write_mammo_dicom(archive / "other" / "a.dcm", PIXELS, SOPInstanceUID="1.2.3.9")
    records = build_manifest(archive).records
    labels, findings = labelled_and_found(records, "A.dcm", tmp_path)
    assert labels == findings and labels.startswith("image_id 'A.dcm' names 2 images")


def test_the_last_part_of_a_uid_a_file_is_named_by_is_no_extension(tmp_path):
    """``1.2.840.5`` without its "extension" named the image ``1.2.840`` too, and the label of that one was refused."""
    records = [{"path": "a/1.2.840.5", "image_id": "1.2.840.5"}, {"path": "b/1.2.840.png", "image_id": "1.2.840"}]
    assert labelled_and_found(records, "1.2.840", tmp_path) == [["b/1.2.840.png"]] * 2


def test_an_id_names_the_file_of_its_own_case_where_another_file_differs_in_case_only(archive, tmp_path):
    """The finding match compared file names in any case only, and refused an id that the label join took."""
    Image.fromarray(PIXELS).save(archive / "study1" / "CASE7_L_CC.png")
    records = build_manifest(archive).records
    found = [str(archive / "case7_L_CC.png")]
    assert labelled_and_found(records, "case7_L_CC.png", tmp_path) == [found, found]
    labels, findings = labelled_and_found(records, "Case7_l_cc.png", tmp_path)
    assert labels == findings and labels.startswith("image_id 'Case7_l_cc.png' names 2 images")


@pytest.mark.parametrize(
    ("text", "column"),
    [
        (
            'sop_uid,case_label,"note (mass; calc; other; none)"\n1.2.3.1,malignant,x\n',
            "note (mass; calc; other; none)",
        ),
        ('sop_uid;case_label;"kvp, kV, tube, nominal"\n1.2.3.1;malignant;28,5\n', "kvp, kV, tube, nominal"),
    ],
    ids=["semicolons in a quoted name of a comma file", "commas in a quoted name of a semicolon file"],
)
def test_separators_inside_quoted_header_names_do_not_decide_the_separator(archive, tmp_path, text, column):
    labels = tmp_path / "labels.csv"
    labels.write_text(text, encoding="utf-8")
    record = {r["image_id"]: r for r in build_manifest(archive, label_csv=labels).records}["1.2.3.1"]
    assert record["case_label"] == "malignant" and column in record


def test_the_manifest_command_renames_label_csv_columns_to_manifest_fields(archive, tmp_path, capsys):
    """A data set's CSV names its columns its own way (INbreast's ``ACR`` is the BI-RADS density): ``--rename``
    reads them as manifest fields, where editing the header of a published CSV was the only way."""
    labels = tmp_path / "labels.csv"
    labels.write_text("File Name;ACR;Image View\ncase7_L_CC;3;cc\n", encoding="utf-8")
    out = tmp_path / "manifest.csv"
    renames = ["--rename", "File Name=file", "ACR = density", "Image View=view"]

    assert main([str(archive), "--out", str(out), "--labels", str(labels), "--id-column", "file", *renames]) == 0

    png = {record["image_id"]: record for record in read_manifest(out)}["case7_L_CC"]
    assert (png["density"], png["view"]) == ("C", "CC")
    assert main([str(archive), "--out", str(tmp_path / "other.csv"), "--labels", str(labels), "--rename", "ACR"]) == 1
    assert "error: --rename 'ACR': is not COLUMN=FIELD (e.g. --rename 'ACR=density')" in capsys.readouterr().err
    assert not (tmp_path / "other.csv").exists()
