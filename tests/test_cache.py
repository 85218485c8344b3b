"""The preprocessed-tensor cache serves stored tensors without decoding, and re-reads what has changed."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from dicom_factory import write_mammo_dicom

import mammoxai.data.cache as cache_module
from mammoxai.data.cache import PreprocessedCache, preprocess_all, preprocess_file, update_with_file
from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mammogram
from mammoxai.io.preprocess import prepare_image

SHAPE = (64, 48)


def breast_pixels(height=128, width=96, value=3000, seed=0):
    """A bright half-ellipse against the left edge on a dark, slightly noisy background."""
    rows, cols = np.ogrid[:height, :width]
    inside = ((rows - height / 2) / (0.45 * height)) ** 2 + (cols / (0.7 * width)) ** 2 < 1
    noise = np.random.default_rng(seed).integers(0, 40, (height, width))
    return (np.where(inside, value, 100) + noise).astype(np.uint16)


@pytest.fixture
def scan(tmp_path):
    return write_mammo_dicom(tmp_path / "scan.dcm", breast_pixels())


def forbid_reading(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was decoded again")

    monkeypatch.setattr(cache_module, "read_mammogram", fail)


def test_a_stored_entry_is_served_without_decoding_the_file(scan, tmp_path, monkeypatch):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    image, geometry = cache.get(scan)
    forbid_reading(monkeypatch)
    again, same_geometry = cache.get(scan)
    assert image.shape == (1, *SHAPE) and torch.equal(image, again)
    assert same_geometry == geometry and geometry["output_shape"] == list(SHAPE)


def test_cached_tensor_equals_the_uncached_preprocessing(scan, tmp_path):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    cache.get(scan)
    image, geometry = cache.get(scan)
    fresh, fresh_geometry = preprocess_file(scan, SHAPE)
    assert torch.equal(image, fresh) and geometry == fresh_geometry


def test_a_changed_file_is_read_again(scan, tmp_path):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    before, _ = cache.get(scan)
    write_mammo_dicom(scan, breast_pixels(value=1500, seed=1))
    after, _ = cache.get(scan)
    assert not torch.equal(before, after)
    assert torch.equal(after, preprocess_file(scan, SHAPE)[0])


def test_content_keys_follow_a_copied_file_and_stat_keys_do_not(scan, tmp_path):
    copy = shutil.copy(scan, tmp_path / "copy.dcm")
    content, stat = PreprocessedCache(tmp_path / "c", SHAPE), PreprocessedCache(tmp_path / "s", SHAPE, file_key="stat")
    assert content.key(scan) == content.key(copy)
    assert stat.key(scan) != stat.key(copy)
    os.utime(scan, ns=(0, 0))  # same bytes, new modification time
    assert stat.key(scan) != stat.key(copy) and content.key(scan) == content.key(copy)


def test_stat_keys_also_serve_a_stored_entry_without_decoding(scan, tmp_path, monkeypatch):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE, file_key="stat")
    image, _ = cache.get(scan)
    forbid_reading(monkeypatch)
    assert torch.equal(cache.get(scan)[0], image)


def test_output_shape_input_settings_and_preprocessing_version_are_part_of_the_key(scan, tmp_path, monkeypatch):
    key = PreprocessedCache(tmp_path, SHAPE).key(scan)
    assert PreprocessedCache(tmp_path, (32, 24)).key(scan) != key
    assert PreprocessedCache(tmp_path, SHAPE, intensity_scaling="display_range").key(scan) != key
    assert PreprocessedCache(tmp_path, SHAPE, field_of_view="image").key(scan) != key
    monkeypatch.setattr(cache_module, "preprocessing_version", lambda: "edited reader")
    assert PreprocessedCache(tmp_path, SHAPE).key(scan) != key


def test_entries_are_complete_files_and_no_temporary_file_is_left(scan, tmp_path):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    cache.get(scan)
    files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert files == [cache.entry(scan)]
    stored = torch.load(files[0], weights_only=True)
    assert set(stored) == {"image", "geometry", "source"} and stored["source"] == str(scan)


def test_a_failed_write_leaves_neither_entry_nor_temporary_file(scan, tmp_path, monkeypatch):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)

    def disk_full(value, stream):
        stream.write(b"half an entry")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        cache.get(scan)
    assert [path for path in (tmp_path / "cache").rglob("*") if path.is_file()] == []


def cut_short(entry):
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def damage(kind):
    """Ways an entry stops being one: cut short by a full disk, overwritten, or another program's ``.pt`` file."""
    return {
        "garbage": lambda entry: entry.write_bytes(b"garbage"),
        "random bytes": lambda entry: entry.write_bytes(np.random.default_rng(0).bytes(3000)),
        "cut short": cut_short,
        "foreign": lambda entry: torch.save({"state": torch.zeros(2)}, entry),
        "no geometry": lambda entry: torch.save({"image": torch.zeros(1, *SHAPE)}, entry),
        "other shape": lambda entry: torch.save({"image": torch.zeros(1, 8, 8), "geometry": {}}, entry),
        "a tensor": lambda entry: torch.save(torch.zeros(1, *SHAPE), entry),
    }[kind]


DAMAGE = ["garbage", "random bytes", "cut short", "foreign", "no geometry", "other shape", "a tensor"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_entry_is_recomputed(scan, tmp_path, kind):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    image, geometry = cache.get(scan)
    damage(kind)(cache.entry(scan))
    again, same_geometry = cache.get(scan)
    assert torch.equal(again, image) and same_geometry == geometry
    assert torch.equal(torch.load(cache.entry(scan), weights_only=True)["image"], image)


@pytest.mark.parametrize("kind", DAMAGE)
def test_preprocess_all_replaces_a_damaged_entry(scan, tmp_path, kind):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    image, _ = cache.get(scan)
    damage(kind)(cache.entry(scan))
    assert preprocess_all([scan], SHAPE, tmp_path / "cache") == {}
    stored = torch.load(cache.entry(scan), weights_only=True)
    assert torch.equal(stored["image"], image) and stored["source"] == str(scan)


@pytest.mark.parametrize("method", ["get", "fill"])
def test_a_missing_file_names_the_path(tmp_path, method):
    with pytest.raises(MammoXAIError, match="gone.dcm: does not exist"):
        getattr(PreprocessedCache(tmp_path / "cache", SHAPE), method)(tmp_path / "gone.dcm")


def test_fill_stores_a_missing_entry_and_only_maps_a_stored_one(scan, tmp_path, monkeypatch):
    cache = PreprocessedCache(tmp_path / "cache", SHAPE)
    cache.fill(scan)
    image, _ = preprocess_file(scan, SHAPE)
    assert torch.equal(torch.load(cache.entry(scan), weights_only=True)["image"], image)
    forbid_reading(monkeypatch)
    load, loads = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or load(*args, **kwargs))
    cache.fill(scan)
    assert [kwargs.get("mmap") for kwargs in loads] == [True]  # its index and keys are read, not its image


@pytest.mark.parametrize("cached", [True, False])
def test_preprocess_all_names_each_unreadable_file_with_its_reason_and_caches_the_rest(scan, tmp_path, cached):
    other = write_mammo_dicom(tmp_path / "other.dcm", breast_pixels(seed=1))
    (tmp_path / "notes.dcm").write_text("not an image")
    cache_dir = tmp_path / "cache" if cached else None
    failures = preprocess_all([scan, tmp_path / "notes.dcm", other], SHAPE, cache_dir, num_workers=0)
    assert list(failures) == [str(tmp_path / "notes.dcm")] and failures[str(tmp_path / "notes.dcm")].startswith(
        "is not"
    )
    if cached:
        cache = PreprocessedCache(cache_dir, SHAPE)
        assert cache.entry(scan).is_file() and cache.entry(other).is_file()
    assert (tmp_path / "cache").exists() is cached


@pytest.mark.parametrize("where", ["cache", "cache/sub"])
def test_a_file_as_cache_dir_is_refused_when_the_cache_is_made(tmp_path, where):
    (tmp_path / "cache").write_text("a file")
    with pytest.raises(MammoXAIError, match=r"cache_dir .*cache: is a file, not a folder"):
        PreprocessedCache(tmp_path / where, SHAPE)


def test_the_cache_dir_is_made_with_the_cache(tmp_path):
    PreprocessedCache(tmp_path / "new" / "cache", SHAPE)
    assert (tmp_path / "new" / "cache").is_dir()


def test_preprocess_all_fills_the_entries_of_the_runs_file_key(scan, tmp_path, monkeypatch):
    assert preprocess_all([scan], SHAPE, tmp_path / "cache", file_key="stat") == {}
    forbid_reading(monkeypatch)
    stat = PreprocessedCache(tmp_path / "cache", SHAPE, file_key="stat")
    assert torch.equal(stat.get(scan)[0], torch.load(stat.entry(scan), weights_only=True)["image"])
    assert not PreprocessedCache(tmp_path / "cache", SHAPE).entry(scan).exists()


def test_preprocess_all_fills_the_entries_of_the_runs_field_of_view(scan, tmp_path):
    """The readability check fills what the run's dataset reads: the whole image under field_of_view "image"."""
    assert preprocess_all([scan], SHAPE, tmp_path / "cache", field_of_view="image") == {}
    whole = PreprocessedCache(tmp_path / "cache", SHAPE, field_of_view="image")
    image, geometry = whole.get(scan)
    assert geometry["crop"] == [0, 0, *read_mammogram(scan).shape]
    assert torch.equal(image, prepare_image(read_mammogram(scan), SHAPE, field_of_view="image")[0])
    assert not PreprocessedCache(tmp_path / "cache", SHAPE).entry(scan).exists()


def test_an_upgrade_of_a_decoding_package_changes_the_preprocessing_version(monkeypatch):
    assert cache_module._installed_version("no-such-package-mammoxai") is None
    before, installed = cache_module.preprocessing_version.__wrapped__(), cache_module._installed_version

    def upgraded(package):
        return "99.0" if package == "pydicom" else installed(package)

    monkeypatch.setattr(cache_module, "_installed_version", upgraded)
    assert cache_module.preprocessing_version.__wrapped__() != before


def test_an_unknown_file_key_is_refused(tmp_path):
    with pytest.raises(MammoXAIError, match="file_key"):
        PreprocessedCache(tmp_path, SHAPE, file_key="mtime")


def test_a_file_fed_twice_to_one_digest_is_hashed_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "_CHUNK", 2)  # several chunks
    (tmp_path / "f.bin").write_bytes(b"abcde")
    digest = hashlib.sha1()

    update_with_file(update_with_file(digest, tmp_path / "f.bin"), tmp_path / "f.bin")

    assert digest.hexdigest() == hashlib.sha1(b"abcdeabcde").hexdigest()
