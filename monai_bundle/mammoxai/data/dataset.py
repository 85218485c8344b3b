"""The torch Dataset every MammoXAI model trains and evaluates on.

Example:
    records = read_manifest("synth/manifest.csv")
    dataset = MammogramDataset(
        records, image_size=(512, 416), cache_dir="cache/",
        class_names=["normal", "benign", "malignant"], label_map={"recalled_benign": "benign"},
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, shuffle=True)
    batch = next(iter(loader))
    batch["image"].shape                        # (8, 1, 512, 416)
    geometries = batch_geometries(batch)        # per image: maps heatmaps and boxes back to the original
"""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import monai.data
import torch

from mammoxai.data.cache import PreprocessedCache, preprocess_file
from mammoxai.data.manifest import read_manifest
from mammoxai.errors import MammoXAIError
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.preprocess import check_field_of_view, check_intensity_scaling, grid_shape

__all__ = [
    "ID_KEYS",
    "MammogramDataset",
    "batch_geometries",
    "class_index",
    "class_indices",
    "class_key",
    "class_spellings",
    "LabelMap",
    "setting_mapping",
]

#: record fields copied into every sample ("" when unknown, so the default collate keeps them as lists of str).
ID_KEYS: tuple[str, ...] = ("image_id", "patient_id", "study_uid", "sop_uid", "laterality", "view")


#: an underscore or hyphen between two letters or digits, which :func:`class_key` reads as a space
_WORD_JOINER = re.compile(r"(?<=[^\W_])[_-](?=[^\W_])")


def class_key(label: Any) -> str:
    """A label as class names and ``label_map`` keys are compared: case folded, an underscore or hyphen between two
    letters or digits read as a space, and spacing collapsed, whatever its type (``"Recalled  Benign"``,
    ``"recalled_benign"``, ``"recalled-benign"``; ``5`` and ``"5"``).

    Class names are written as identifiers (``no_finding``) where data sets write words (VinDr-Mammo's "No
    Finding", a CSV's "Recalled Benign"): folding case and spacing alone made them other classes. Only a joiner
    between two words counts, so a leading minus stays a sign: the labels ``-1`` (a negative, as some data sets
    write it) and ``1`` stay apart.
    """
    return " ".join(_WORD_JOINER.sub(" ", str(label)).split()).casefold()


class LabelMap:
    """``label_map`` (raw label -> class name) as everything that labels an image applies it: training and its
    patient split, the classifier and saliency evaluations, the experiments' labelled draws and the ablation probe.

    A key matches a label regardless of case and spacing, an underscore or hyphen between two words counting as a
    space (:func:`class_key`), and of type: ``python -m monai.bundle run ... --label_map "{5: 'malignant'}"`` gives
    number keys where a manifest cell is text (``"5"``), and a CSV that writes "Recalled Benign" on some rows and
    "recalled_benign" on others means one label. Training matched keys as written while the ablation folded them, so
    one ``--label_map`` gave the classifier and the probe different classes. A label no key matches is its own class
    name. Given ``class_names``, a name is returned as they spell it ("Malignant" is
    "malignant"), for the same reason: training compared it as written and refused what the probe took.

    Args:
        label_map: raw label -> class name; None is an empty map.
        class_names: the classes a name is spelt as, when one is it up to case and spacing; None leaves names as
            the map or the label gives them.
        class_names_setting: the setting ``class_names`` come from (``"lesion_class_names"``, a saliency model's),
            named when two of them are one class: the user fixes that setting, which may not be ``class_names``.

    Raises:
        MammoXAIError: ``label_map`` is not a mapping, or two of its keys are one label up to case and spacing and
            name different classes (which of them a label meant cannot be told); two of ``class_names`` are one
            name up to case and spacing (no label could tell them apart), naming ``class_names_setting``.

    Example:
        LabelMap({"Recalled Benign": "benign"})("recalled_benign")  # "benign"
        LabelMap(None, ["normal", "malignant"])("Malignant ")  # "malignant"
        LabelMap(None, ["mass", "no_finding"])("No Finding")  # "no_finding"
    """

    def __init__(
        self,
        label_map: Mapping[Any, Any] | None,
        class_names: Sequence[str] | None = None,
        class_names_setting: str = "class_names",
    ):
        written: dict[str, tuple[Any, str]] = {}  # folded key -> the first key written so, its class
        for key, name in setting_mapping(label_map, "label_map", '{"Cancer": "malignant"}').items():
            first, first_name = written.setdefault(class_key(key), (key, str(name)))
            if first_name != str(name):
                problem = f"maps {first!r} to {first_name!r} and {key!r} to {name!r}, one label up to case and spacing"
                raise MammoXAIError("label_map", problem, "keep one of the two keys")
        self.classes = {folded: name for folded, (_, name) in written.items()}
        self.spellings: dict[str, str] = {}
        for name in class_names or ():
            first = self.spellings.setdefault(class_key(name), str(name))
            if first != str(name):
                problem = f"name {first!r} and {name!r}, one class up to case and spacing"
                raise MammoXAIError(class_names_setting, problem, "name each class once")

    def __call__(self, label: Any) -> str:
        """The class name of a raw label."""
        name = self.classes.get(class_key(label), str(label).strip())
        return self.spellings.get(class_key(name), name)


def class_indices(
    names: Sequence[Any],
    class_names: Sequence[str],
    setting: str | os.PathLike,
    fix: str = "name one of them",
    what: str = "class",
    class_names_setting: str = "class_names",
) -> list[int]:
    """The index among ``class_names`` of the class each of ``names`` names, regardless of case and spacing.

    For settings that name classes of a model's list (the background class of lesion crops and of CorRELAX, the
    evaluation's positive class, a saliency target, the finding classes a ``"finding"`` target needs): by the
    :class:`LabelMap` rule labels follow, so a lesion-crop model whose classes are spelt "Mass", "No_Finding" is
    trained and explained as it is evaluated, where matched as written it was refused; and one look-up, so every
    such setting is refused in the same one line, which names every missing class at once.

    Args:
        names: the classes, as the setting or data gives them.
        class_names: the classes, in output order.
        setting: the setting or file that gives ``names`` or ``class_names``, shown first in the message.
        fix: what to do when a name is no class.
        what: what a name is to ``setting``, the message's first word (``"target"`` for a saliency method's); with
            several missing, ``"{what} names"`` lists them.
        class_names_setting: the setting ``class_names`` come from, named when two of them are one class
            (:class:`LabelMap`).

    Raises:
        MammoXAIError: a name is no class up to case and spacing; the message names ``setting``, the missing names
            and the classes. Two of ``class_names`` are one class up to case and spacing.

    Example:
        class_indices(["mass", "no_finding"], ["Mass", "Calcification", "Other", "No_Finding"], "finding_classes")
        # [0, 3]
    """
    classes = [str(class_name) for class_name in class_names]
    spell = LabelMap(None, classes, class_names_setting)
    spelt = [spell(name) for name in names]
    missing = [name for name, spelling in zip(names, spelt, strict=True) if spelling not in classes]
    if len(missing) == 1:
        raise MammoXAIError(setting, f"{what} {missing[0]!r} is not one of {classes}", fix)
    if missing:
        raise MammoXAIError(setting, f"{what} names {missing} are not among {classes}", fix)
    return [classes.index(spelling) for spelling in spelt]


def class_index(
    name: Any,
    class_names: Sequence[str],
    setting: str | os.PathLike,
    fix: str = "name one of them",
    what: str = "class",
    class_names_setting: str = "class_names",
) -> int:
    """The index among ``class_names`` of the class ``name`` names, regardless of case and spacing: the
    :func:`class_indices` of one name, for a setting that names one class of a model's list.

    Raises:
        MammoXAIError: no class is ``name`` up to case and spacing; the message names ``setting``, ``name`` and the
            classes. Two of ``class_names`` are one class up to case and spacing, naming ``class_names_setting``.

    Example:
        class_index("no_finding", ["Mass", "Calcification", "Other", "No_Finding"], "background_class")  # 3
    """
    return class_indices([name], class_names, setting, fix, what, class_names_setting)[0]


def class_spellings(names: Iterable[str]) -> list[str]:
    """The classes of labelled names where no class names are given: one per name up to case and spacing (a CSV
    writing "Malignant" on some rows and "malignant" on others means one class), spelt as most names spell it (ties:
    the first in sort order), sorted."""
    counts = Counter(names)
    by_key: dict[str, list[str]] = {}
    for name in sorted(counts):
        by_key.setdefault(class_key(name), []).append(name)
    return sorted(max(spellings, key=lambda name: counts[name]) for spellings in by_key.values())


def setting_mapping(value: Mapping[Any, Any] | None, name: str, example: str = '{"split": "test"}') -> dict[Any, Any]:
    """A mapping setting (``label_map``, ``holdout``, ``eval_where``) as a dict; None is empty.

    A value that is not a mapping (text a command line could not read as one, e.g. ``--label_map Cancer``) is
    refused here; it ended in a traceback deep in the data set.

    Raises:
        MammoXAIError: ``value`` is not a mapping, naming the setting and how to write it.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MammoXAIError(
            name,
            f"is {value!r}, not a mapping",
            f"write it as a JSON object or a Python dict, e.g. --{name} {shlex.quote(example)}",
        )
    return dict(value)


class MammogramDataset(monai.data.Dataset):
    """Manifest records -> {"image", "label", "geometry", "path", ids} samples on the model grid.

    Each sample holds ``image``: float tensor (1, h, w) from :func:`mammoxai.io.preprocess.prepare_image`;
    ``label``: class index, or -1 when the record has no label; ``geometry``: the
    :class:`~mammoxai.io.geometry.ImageGeometry` as a dict of tensors (``original_shape`` (2,), ``crop``
    (4,), ``flip`` (), ``output_shape`` (2,)), which torch's default collate stacks into a batch and
    :func:`batch_geometries` turns back into one ``ImageGeometry`` per image; ``path``; and the record's
    :data:`ID_KEYS` as strings. No ``collate_fn`` is needed.

    Args:
        records: manifest records (see :mod:`mammoxai.data.manifest`), or the path of a manifest CSV.
        image_size: (h, w) of the model grid, or one int for a square grid.
        cache_dir: where to keep preprocessed tensors (:class:`~mammoxai.data.cache.PreprocessedCache`) so that
            later epochs decode no DICOM; None preprocesses every time.
        label_key: the record field holding the raw label (default ``"case_label"``).
        class_names: the classes, in output order. Default: the sorted distinct labels of ``records`` (after
            ``label_map``, up to case and spacing: :func:`class_spellings`) - pass them explicitly whenever a split
            might lack a class, or indices shift.
        label_map: raw label -> class name, e.g. ``{"recalled_benign": "benign"}`` for a 3-class model, keys
            matched regardless of case and spacing (:class:`LabelMap`); labels not in the map are used as they are,
            and match a class name regardless of case and spacing too.
        transform: applied to each sample dict (e.g. MONAI dictionary transforms with ``keys="image"``).
            Spatial augmentation moves pixels away from ``geometry``; keep it for training only.
        file_key: how the cache recognises a file, ``"content"`` or ``"stat"`` (see :mod:`mammoxai.data.cache`).
        intensity_scaling: how :func:`~mammoxai.io.preprocess.prepare_image` scales intensities; the network's own
            (checkpoints record it).
        field_of_view: what :func:`~mammoxai.io.preprocess.prepare_image` puts on the grid; the network's own too.

    Raises:
        MammoXAIError: a record has no ``path``, its label is not one of ``class_names``, or ``intensity_scaling``
            or ``field_of_view`` is unknown.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]] | str | os.PathLike,
        image_size: int | Sequence[int],
        cache_dir: str | os.PathLike | None = None,
        label_key: str = "case_label",
        class_names: Sequence[str] | None = None,
        label_map: Mapping[str, str] | None = None,
        transform: Callable | None = None,
        file_key: str = "content",
        intensity_scaling: str = "breast_percentiles",
        field_of_view: str = "breast",
    ):
        if isinstance(records, (str, os.PathLike)):
            records = read_manifest(records)
        super().__init__(data=list(records), transform=transform)
        self.image_size = grid_shape(image_size)
        self.label_key = label_key
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        self.field_of_view = check_field_of_view(field_of_view)
        self.cache = (
            PreprocessedCache(cache_dir, self.image_size, file_key, intensity_scaling, field_of_view)
            if cache_dir is not None
            else None
        )
        raw_labels = [self._raw_label(record) for record in self.data]
        if class_names is None:
            unspelt = LabelMap(label_map)
            class_names = class_spellings(unspelt(raw) for raw in raw_labels if raw is not None)
        self.class_names = tuple(class_names)
        self.label_map = LabelMap(label_map, self.class_names)
        names = [None if raw is None else self.label_map(raw) for raw in raw_labels]
        self.labels = [self._label_index(name, record) for name, record in zip(names, self.data, strict=True)]

    def _raw_label(self, record: Mapping[str, Any]) -> Any:
        """The record's label as written, None when it has none."""
        if "path" not in record:
            raise MammoXAIError(f"record {record}", "has no 'path'", "build records with mammoxai.data.manifest")
        raw = record.get(self.label_key)
        return None if raw is None or raw == "" else raw

    def _label_index(self, name: str | None, record: Mapping[str, Any]) -> int:
        if name is None:
            return -1
        if name not in self.class_names:
            raise MammoXAIError(
                record["path"],
                f"has {self.label_key} {record[self.label_key]!r}, not one of {list(self.class_names)}",
                "add it to class_names or map it with label_map",
            )
        return self.class_names.index(name)

    def _transform(self, index: int) -> dict[str, Any]:
        record = self.data[index]
        path = str(record["path"])
        if self.cache is not None:
            image, geometry = self.cache.get(path)
        else:
            image, geometry = preprocess_file(path, self.image_size, self.intensity_scaling, self.field_of_view)
        sample = {
            "image": image,
            "label": self.labels[index],
            "geometry": {key: torch.as_tensor(value) for key, value in geometry.items()},
            "path": path,
            **{key: str(record.get(key) or "") for key in ID_KEYS},
        }
        return self.transform(sample)


def batch_geometries(batch: Mapping[str, Any]) -> list[ImageGeometry]:
    """One :class:`ImageGeometry` per image of a collated batch (or of a single sample, as a list of one)."""
    single = batch["geometry"]["crop"].ndim == 1
    columns = {key: (value[None] if single else value).tolist() for key, value in batch["geometry"].items()}
    count = len(columns["crop"])
    return [ImageGeometry.from_dict({key: values[i] for key, values in columns.items()}) for i in range(count)]
