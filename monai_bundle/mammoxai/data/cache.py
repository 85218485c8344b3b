"""Preprocessed mammograms on disk, so that only the first epoch decodes DICOM.

Decoding a JPEG 2000 mammogram, segmenting the breast and resampling it onto the model grid costs far more
than the network's forward pass at training resolution. :class:`PreprocessedCache` stores the result of
:func:`mammoxai.io.preprocess.prepare_image` (tensor + :class:`~mammoxai.io.geometry.ImageGeometry`) under a
key made of

* the source file: by default the SHA-1 of its bytes, so a file replaced under the same name is re-read
  and a copied or moved file still hits; ``file_key="stat"`` uses (path, size, modification time) instead,
  which reads no bytes at all but misses an edit that keeps size and time, and misses after a copy or touch;
* the output shape and the intensity scaling;
* the preprocessing version: a hash of the ``mammoxai.io`` source code and of the versions of the packages that
  decode, segment and resize (pydicom and its pylibjpeg plugins, Pillow, NumPy, SciPy, PyTorch), so a change to
  the reader, the VOI LUT or the breast crop, or an upgrade that decodes or resamples differently, invalidates old
  entries without anyone having to remember to bump a number.

Each entry is one ``.pt`` file written to a temporary name and moved into place with ``os.replace``, which is
atomic, so DataLoader workers (or several training runs) sharing a cache never read half an entry. An entry that
cannot be read back as one (cut short by a full disk, edited, another program's file of that name) is a miss: it
is computed again and replaced.

``monai.data.PersistentDataset`` is not used because it keys entries by the data dict (the file *name*)
and would serve a stale image after a file is replaced.

Example:
    cache = PreprocessedCache("cache/", output_shape=(512, 416))
    image, geometry = cache.get("scan.dcm")   # decodes and stores
    image, geometry = cache.get("scan.dcm")   # reads the stored tensor
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import mammoxai.io
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.io import read_mammogram
from mammoxai.io.atomic import atomic_write
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, prepare_image

__all__ = ["PreprocessedCache", "preprocess_all", "preprocess_file", "preprocessing_version", "update_with_file"]

_CHUNK = 1 << 20

#: the distributions whose code turns a file into the model input: a new version may decode or resample differently
_DECODING_PACKAGES = (
    "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pillow", "numpy", "scipy",
    "torch",
)  # fmt: skip


def preprocess_file(
    path: str | os.PathLike,
    output_shape: Sequence[int],
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read and preprocess one file: the (1, h, w) model input and its geometry as a dict. No caching."""
    mammogram = read_mammogram(path)
    image, geometry = prepare_image(
        mammogram, tuple(output_shape), intensity_scaling=intensity_scaling, field_of_view=field_of_view
    )
    return image, geometry.to_dict()


def update_with_file(digest: Any, path: str | os.PathLike) -> Any:
    """Feed the bytes of ``path`` to the ``hashlib`` object ``digest`` a chunk at a time and return it.

    Mammograms and checkpoints run to hundreds of MB; reading them whole to hash them would hold that in memory.
    (``hashlib.file_digest`` does this from Python 3.11 on, without a way to seed the digest with settings.)
    """
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest


@functools.lru_cache(maxsize=1)
def preprocessing_version() -> str:
    """SHA-1 of the ``mammoxai.io`` package source and the installed versions of the decoding packages: changes
    whenever the code that reads or preprocesses an image changes, ours or a dependency's."""
    digest = hashlib.sha1()
    for source in sorted(Path(mammoxai.io.__file__).parent.rglob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(json.dumps({package: _installed_version(package) for package in _DECODING_PACKAGES}).encode())
    return digest.hexdigest()


def _installed_version(package: str) -> str | None:
    """The installed version of the distribution ``package``, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class PreprocessedCache:
    """A directory of preprocessed tensors keyed by file content and preprocessing settings.

    Args:
        cache_dir: where entries live (created here when missing); safe to share between processes.
        output_shape: (h, w) of the model grid.
        file_key: ``"content"`` (default, SHA-1 of the file bytes) or ``"stat"`` (path, size and mtime);
            see the module docstring for the trade-off.
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scales intensities.
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` puts on the grid.

    Raises:
        MammoXAIError: an unknown ``file_key``, ``intensity_scaling`` or ``field_of_view``, or ``cache_dir`` (or a
            folder above it)
            is a file: found here, not at the first image a data-loader worker stores.

    Example:
        cache = PreprocessedCache("cache/", (512, 416))
        image, geometry = cache.get("scan.dcm")
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        output_shape: Sequence[int],
        file_key: str = "content",
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ):
        if file_key not in ("content", "stat"):
            raise MammoXAIError("file_key", f"is {file_key!r}", 'use "content" or "stat"')
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)
        self.cache_dir = check_output_path(cache_dir, "cache_dir", "give a folder for the preprocessed images")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.output_shape = tuple(int(size) for size in output_shape)
        self.file_key = file_key
        settings = {
            "output_shape": self.output_shape,
            "intensity_scaling": self.intensity_scaling,
            "field_of_view": self.field_of_view,
            "preprocessing": preprocessing_version(),
        }
        self._settings = json.dumps(settings, sort_keys=True).encode()

    def key(self, path: str | os.PathLike) -> str:
        """The entry name for ``path`` under this cache's settings.

        Raises:
            MammoXAIError: ``path`` does not exist.
        """
        if not Path(path).is_file():
            raise MammoXAIError(path, "does not exist", "check the manifest's path column")
        digest = hashlib.sha1(self._settings)
        if self.file_key == "stat":
            stat = os.stat(path)
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            update_with_file(digest, path)
        return digest.hexdigest()

    def entry(self, path: str | os.PathLike) -> Path:
        """Where the entry for ``path`` is (or would be) stored."""
        key = self.key(path)
        return self.cache_dir / key[:2] / f"{key}.pt"

    def fill(self, path: str | os.PathLike) -> None:
        """Preprocess ``path`` into the cache unless a readable entry is stored.

        A stored entry is checked by mapping it into memory (``torch.load(mmap=True)``), which reads its index and
        keys but not the image, so a damaged one is replaced here rather than found by a training worker.
        """
        entry = self.entry(path)
        if self._load(entry, mmap=True) is None:
            self._preprocess(path, entry)

    def get(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """The preprocessed (1, h, w) image of ``path`` and its geometry dict, from the cache when stored."""
        entry = self.entry(path)
        stored = self._load(entry)
        if stored is not None:
            return stored["image"], stored["geometry"]
        return self._preprocess(path, entry)

    def _preprocess(self, path: str | os.PathLike, entry: Path) -> tuple[torch.Tensor, dict[str, Any]]:
        image, geometry = preprocess_file(path, self.output_shape, self.intensity_scaling, self.field_of_view)
        self._store(entry, {"image": image, "geometry": geometry, "source": str(path)})
        return image, geometry

    def _load(self, entry: Path, mmap: bool = False) -> dict[str, Any] | None:
        """The stored entry, or None when there is none or it is not one this cache wrote (a miss, redone)."""
        if not entry.is_file():
            return None
        try:
            stored = torch.load(entry, weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 - cut-short or foreign bytes raise whatever torch trips on; the file redoes it
            return None
        image = stored.get("image") if isinstance(stored, dict) else None
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != (1, *self.output_shape):
            return None
        return stored if isinstance(stored.get("geometry"), dict) else None

    @staticmethod
    def _store(entry: Path, value: dict[str, Any]) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(entry, durable=False) as stream:  # a lost entry is computed again
            torch.save(value, stream)


class _Preprocessing(torch.utils.data.Dataset):
    """Item ``i``: ``""`` once file ``i`` is preprocessed (into the cache when there is one), else why it failed."""

    def __init__(
        self,
        paths: Sequence[str],
        output_shape: tuple[int, int],
        cache_dir: str | os.PathLike | None,
        file_key: str = "content",
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ):
        self.paths, self.output_shape = list(paths), output_shape
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)
        self.cache = (
            PreprocessedCache(cache_dir, output_shape, file_key, intensity_scaling, field_of_view)
            if cache_dir is not None
            else None
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        try:
            if self.cache is not None:
                self.cache.fill(self.paths[index])
            else:
                preprocess_file(self.paths[index], self.output_shape, self.intensity_scaling, self.field_of_view)
        except MammoXAIError as error:
            return error.problem
        return ""


def preprocess_all(
    paths: Sequence[str | os.PathLike],
    output_shape: Sequence[int],
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    file_key: str = "content",
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> dict[str, str]:
    """Preprocess every file up front, into the cache when there is one; the files that cannot be, with the reason.

    A damaged or foreign file in a training manifest otherwise ends the run when a data-loader worker first
    reads it, somewhere in the first epoch, after the work before it. Done here, the same decoding fills the
    cache the first epoch then reads (stored entries are only checked, not decoded again), so with a cache it
    costs nothing extra, provided ``file_key`` is the one the run's dataset keys its entries by; without one every
    file is decoded once more.

    Args:
        paths: the image files.
        output_shape: (h, w) of the model grid.
        cache_dir: the :class:`PreprocessedCache` folder of the run, or None.
        num_workers: worker processes, as for the run's DataLoader.
        file_key: how the cache recognises a file, as the run's dataset has it (:class:`PreprocessedCache`).
        intensity_scaling: how the run's dataset scales intensities (:func:`~mammoxai.io.preprocess.prepare_image`).
        field_of_view: what the run's dataset puts on the grid (:func:`~mammoxai.io.preprocess.prepare_image`).

    Returns:
        path -> the reader's reason (:class:`~mammoxai.errors.MammoXAIError` message without the file), for
        each file that cannot be read or preprocessed; empty when all can.
    """
    paths = [str(path) for path in paths]
    attempts = _Preprocessing(paths, tuple(output_shape), cache_dir, file_key, intensity_scaling, field_of_view)
    loader = torch.utils.data.DataLoader(attempts, batch_size=None, num_workers=num_workers)
    return {path: reason for path, reason in zip(attempts.paths, loader, strict=True) if reason}
