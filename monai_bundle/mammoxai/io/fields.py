"""The metadata label space: which DICOM header fields pretraining predicts, and their classes.

Metadata pretraining (Litchfield et al., "Mammographic image metadata learning for model pretraining and
explainable predictions", SPIE Medical Imaging 2022, doi:10.1117/12.2626199) trains a backbone to predict,
from pixels alone, seven header fields — X-ray system, view, laterality, binned compressed thickness,
compression force, tube voltage and (here) patient age — and to tell whether two images come from the same
patient and study. The labels are free: every DICOM mammogram carries them. This module turns a header
into those labels, one class index per field, with -1 where the header does not say (so each head's loss
can mask it), and exposes the patient and study identity used for matching.

The fields are defined in ``configs/metadata_fields.json``, not in code, so a site can re-bin or add a
field (e.g. anode/filter) without touching the library. Categorical vocabularies that depend on the data
(the X-ray systems a site owns) are learned with :meth:`MetadataLabelSpace.fit` and stored with the model
via :meth:`MetadataLabelSpace.to_file`.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from mammoxai.errors import MammoXAIError

__all__ = ["UNKNOWN", "CategoricalField", "BinnedField", "MetadataLabelSpace"]

UNKNOWN = -1
"""Class index of a value the header does not give (missing, empty, not a class, out of range)."""

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "metadata_fields.json"

_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
_DEFAULT_IDENTITY = {"patient": "PatientID", "study": "StudyInstanceUID"}


class _ConfigError(Exception):
    """A problem at one key of one field entry; turned into a MammoXAIError naming the file and the key."""

    def __init__(self, key: str, problem: str):
        super().__init__(key, problem)
        self.key, self.problem = key, problem


def _entry_value(entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``entry[key]`` checked to be of ``kind``; ``default`` when absent (required when no default)."""
    if key not in entry:
        if default is ...:
            raise _ConfigError(key, "is required")
        return default
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _ConfigError(key, f"must be {_kind_name(kind)}, not {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "an object", int: "an integer"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _numbers(values: list, key: str) -> tuple[float, ...]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise _ConfigError(key, f"must hold only finite numbers, not {values!r}")
    return tuple(float(v) for v in values)


def _normalise(value: Any) -> str:
    """Header text as compared with classes: whitespace collapsed, upper case ('Hologic,  Inc.' → 'HOLOGIC, INC.')."""
    return " ".join(str(value).split()).upper()


@dataclass(frozen=True)
class _Field:
    """What every field shares: its name, the header keys it reads and how several keys combine.

    ``combine="first"`` takes the first key with a non-empty value (fallbacks, e.g. ImageLaterality then
    Laterality); ``combine="join"`` needs all of them and joins them with a space (Manufacturer +
    ManufacturerModelName).
    """

    type_name: ClassVar[str]

    name: str
    keys: tuple[str, ...]
    combine: str = "first"
    description: str = ""

    def raw(self, header: Mapping[str, Any]) -> Any:
        """The header value(s) this field reads, or None when the header does not give them."""
        values = [header.get(key) for key in self.keys]
        present = [value for value in values if value is not None and str(value).strip() != ""]
        if self.combine == "join":
            return " ".join(str(value) for value in values) if len(present) == len(values) else None
        return present[0] if present else None

    @classmethod
    def _common(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        keys = _entry_value(entry, "keys", list)
        if not keys or not all(isinstance(key, str) and key for key in keys):
            raise _ConfigError("keys", f"must be a non-empty list of DICOM keywords, not {keys!r}")
        combine = _entry_value(entry, "combine", str, "first")
        if combine not in ("first", "join"):
            raise _ConfigError("combine", f"must be 'first' or 'join', not {combine!r}")
        return {
            "name": entry["name"],
            "keys": tuple(keys),
            "combine": combine,
            "description": _entry_value(entry, "description", str, ""),
        }

    def _common_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name}
        if self.description:
            config["description"] = self.description
        return {**config, "type": self.type_name, "keys": list(self.keys), "combine": self.combine}


@dataclass(frozen=True)
class CategoricalField(_Field):
    """A field whose header text names its class (view, laterality, X-ray system).

    Args:
        classes: the class names, or None while a ``"learned"`` vocabulary has not been fitted.
        aliases: header text → class name, for spellings of the same class (``"XCCL" → "CC"``).
        learned: whether the classes come from data (:meth:`MetadataLabelSpace.fit`) rather than the config.
        min_count: for a learned vocabulary, how often a value must occur to become a class.
    """

    type_name: ClassVar[str] = "categorical"

    classes: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = dataclass_field(default_factory=dict)
    learned: bool = False
    min_count: int = 1

    def value(self, header: Mapping[str, Any]) -> str | None:
        """The normalised, de-aliased header text, or None when missing."""
        raw = self.raw(header)
        if raw is None:
            return None
        text = _normalise(raw)
        return self.aliases.get(text, text)

    def encode(self, header: Mapping[str, Any]) -> int:
        value = self.value(header)
        classes = self.class_names
        return classes.index(value) if value in classes else UNKNOWN

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.classes is None:
            raise MammoXAIError(
                self.name,
                "the class vocabulary is learned from data and has not been learned yet",
                "fit the label space on the training headers (MetadataLabelSpace.fit) or load a fitted one",
            )
        return self.classes

    def fit(self, headers: Sequence[Mapping[str, Any]]) -> CategoricalField:
        """This field with its vocabulary learned from ``headers`` (sorted, so the order is reproducible)."""
        counts = Counter(value for value in map(self.value, headers) if value is not None)
        classes = tuple(sorted(value for value, count in counts.items() if count >= self.min_count))
        if not classes:
            raise MammoXAIError(
                self.name,
                f"no value of {' + '.join(self.keys)} occurs {self.min_count} time(s) in the {len(headers)} headers",
                "pretrain on DICOM files that carry these fields, or drop the field from the config",
            )
        # an alias to a value never seen has nothing to point to; dropping it keeps the fitted config valid
        aliases = {text: target for text, target in self.aliases.items() if target in classes}
        return replace(self, classes=classes, aliases=aliases)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> CategoricalField:
        classes = _entry_value(entry, "classes", (list, str))
        learned = classes == "learned"
        if isinstance(classes, str) and not learned:
            raise _ConfigError("classes", f"must be a list of class names or 'learned', not {classes!r}")
        if not learned:
            if not classes or not all(isinstance(name, str) and name.strip() for name in classes):
                raise _ConfigError("classes", f"must be a non-empty list of class names, not {classes!r}")
            classes = tuple(_normalise(name) for name in classes)
            if len(set(classes)) != len(classes):
                raise _ConfigError("classes", f"lists a class twice: {list(classes)}")
        aliases = _entry_value(entry, "aliases", dict, {})
        if not all(isinstance(target, str) for target in aliases.values()):
            raise _ConfigError("aliases", "must map header text to class names (strings)")
        aliases = {_normalise(text): _normalise(target) for text, target in aliases.items()}
        strays = sorted(set(aliases.values()) - set(classes)) if not learned else []
        if strays:
            raise _ConfigError("aliases", f"point to {strays}, which are not among the classes {list(classes)}")
        min_count = _entry_value(entry, "min_count", int, 1)
        if min_count < 1:
            raise _ConfigError("min_count", f"must be at least 1, not {min_count}")
        return cls(
            **cls._common(entry),
            classes=None if learned else classes,
            aliases=aliases,
            learned=learned,
            min_count=min_count,
        )

    def to_config(self) -> dict[str, Any]:
        """The config entry; a fitted learned vocabulary is written out as its class list."""
        config = {**self._common_config(), "classes": list(self.classes) if self.classes is not None else "learned"}
        if self.aliases:
            config["aliases"] = dict(self.aliases)
        if self.learned and self.classes is None:
            config["min_count"] = self.min_count
        return config


@dataclass(frozen=True)
class BinnedField(_Field):
    """A numeric field cut into bins (thickness, compression force, kV, age).

    Class ``i`` holds values in ``[edges[i-1], edges[i])``; below the first edge is class 0, from the last
    edge on the last class, so ``len(edges) + 1`` classes. Values outside ``valid_range`` (inclusive) are
    recording errors or placeholders (a force of 0 when none was measured) and are unknown.

    Args:
        edges: increasing bin edges.
        valid_range: (low, high) plausible values; others are unknown.
        units: printed in the class names ("40-50 mm").
        parse: ``"dicom_age"`` to read DICOM age strings ('056Y', '018M', '010W', '100D') as years;
            None to read plain numbers (DICOM DS/IS strings or numbers).
    """

    type_name: ClassVar[str] = "binned"
    parsers: ClassVar[tuple[str, ...]] = ("dicom_age",)

    edges: tuple[float, ...] = ()
    valid_range: tuple[float, float] = (-math.inf, math.inf)
    units: str = ""
    parse: str | None = None

    def value(self, header: Mapping[str, Any]) -> float | None:
        """The header value as a number (years for ages), or None when missing, unreadable or out of range."""
        raw = self.raw(header)
        number = _dicom_age_years(raw) if self.parse == "dicom_age" else _number(raw)
        if number is None or not self.valid_range[0] <= number <= self.valid_range[1]:
            return None
        return number

    def encode(self, header: Mapping[str, Any]) -> int:
        value = self.value(header)
        return UNKNOWN if value is None else bisect.bisect_right(self.edges, value)

    @property
    def class_names(self) -> tuple[str, ...]:
        units = f" {self.units}" if self.units else ""
        edges = [f"{edge:g}" for edge in self.edges]
        middle = [f"{low}-{high}{units}" for low, high in zip(edges, edges[1:], strict=False)]
        return (f"<{edges[0]}{units}", *middle, f">={edges[-1]}{units}")

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> BinnedField:
        edges = _numbers(_entry_value(entry, "edges", list), "edges")
        if not edges:
            raise _ConfigError("edges", "must hold at least one bin edge")
        if any(low >= high for low, high in zip(edges, edges[1:], strict=False)):
            raise _ConfigError("edges", f"must be strictly increasing, not {list(edges)}")
        valid_range = (-math.inf, math.inf)
        if "range" in entry:
            valid_range = _numbers(_entry_value(entry, "range", list), "range")
        if len(valid_range) != 2 or valid_range[0] >= valid_range[1]:
            raise _ConfigError("range", f"must be [low, high] with low < high, not {list(valid_range)}")
        parse = _entry_value(entry, "parse", str, None)
        if parse is not None and parse not in cls.parsers:
            raise _ConfigError("parse", f"must be one of {list(cls.parsers)}, not {parse!r}")
        return cls(
            **cls._common(entry),
            edges=edges,
            valid_range=valid_range,
            units=_entry_value(entry, "units", str, ""),
            parse=parse,
        )

    def to_config(self) -> dict[str, Any]:
        config = {**self._common_config(), "units": self.units, "edges": list(self.edges)}
        if math.isfinite(self.valid_range[0]) or math.isfinite(self.valid_range[1]):
            config["range"] = list(self.valid_range)
        if self.parse:
            config["parse"] = self.parse
        return config


_FIELD_TYPES: dict[str, type[CategoricalField] | type[BinnedField]] = {
    kind.type_name: kind for kind in (CategoricalField, BinnedField)
}


def _number(raw: Any) -> float | None:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dicom_age_years(raw: Any) -> float | None:
    """Years from a DICOM Age String ('nnnD', 'nnnW', 'nnnM', 'nnnY'); a bare number is taken as years."""
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", raw, flags=re.IGNORECASE)
        if match:
            return int(match.group(1)) * _DAYS_PER[match.group(2).upper()] / _DAYS_PER["Y"]
    return _number(raw)


class MetadataLabelSpace:
    """The metadata fields a model predicts, their classes, and how a DICOM header maps onto them.

    Args:
        fields: the field definitions, in head order.
        identity_keys: header keys of the patient and the study identity, for same-patient matching.
        description: free text kept with the config.

    Example:
        space = MetadataLabelSpace.default().fit(training_headers)
        labels = space.encode(mammogram.header)          # {"view": 1, "kvp": -1, ...}
        space.decode("view", labels["view"])             # "MLO"
        space.to_file(bundle_root / "models" / "metadata_fields.json")
    """

    def __init__(
        self,
        fields: Sequence[CategoricalField | BinnedField],
        identity_keys: tuple[str, str] = (_DEFAULT_IDENTITY["patient"], _DEFAULT_IDENTITY["study"]),
        description: str = "",
    ):
        self._fields = {field.name: field for field in fields}
        self.identity_keys = tuple(identity_keys)
        self.description = description

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], source: str | os.PathLike = "metadata fields config"
    ) -> MetadataLabelSpace:
        """Build from the parsed JSON config; errors name ``source`` and the offending key."""
        if not isinstance(config, Mapping):
            raise MammoXAIError(source, "must be a JSON object with a 'fields' list")
        entries = config.get("fields")
        if not isinstance(entries, list) or not entries:
            raise MammoXAIError(source, "fields must be a non-empty list of field definitions")
        fields, names = [], set()
        for position, entry in enumerate(entries):
            where = f"fields[{position}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise MammoXAIError(source, f"{where}.name is required (a non-empty string)")
            where = f"fields[{position}] ({entry['name']})"
            if entry["name"] in names:
                raise MammoXAIError(source, f"{where}.name is used by an earlier field too", "rename one of them")
            names.add(entry["name"])
            kind = _FIELD_TYPES.get(entry.get("type"))
            if kind is None:
                problem = f"{where}.type {entry.get('type')!r} is not a field type"
                raise MammoXAIError(source, problem, f"use one of {sorted(_FIELD_TYPES)}")
            try:
                fields.append(kind.from_config(entry))
            except _ConfigError as error:
                raise MammoXAIError(source, f"{where}.{error.key} {error.problem}") from None
        identity = config.get("identity", _DEFAULT_IDENTITY)
        keys = (identity.get("patient"), identity.get("study")) if isinstance(identity, Mapping) else (None, None)
        if not all(isinstance(key, str) and key for key in keys):
            raise MammoXAIError(source, f"identity must name the patient and study header keys, not {identity!r}")
        return cls(fields, keys, config.get("description", ""))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> MetadataLabelSpace:
        """Load a JSON config such as ``configs/metadata_fields.json``."""
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MammoXAIError(path, "metadata field config not found", "pass a metadata_fields.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MammoXAIError(path, f"is not a readable JSON file: {error}") from None
        return cls.from_config(config, source=path)

    @classmethod
    def default(cls) -> MetadataLabelSpace:
        """The label space shipped with the bundle (``configs/metadata_fields.json``)."""
        return cls.from_file(DEFAULT_CONFIG)

    def fit(self, headers: Iterable[Mapping[str, Any]]) -> MetadataLabelSpace:
        """A copy with every ``"learned"`` vocabulary learned from ``headers``; other fields are unchanged."""
        headers = list(headers)
        fields = [
            field.fit(headers) if isinstance(field, CategoricalField) and field.learned else field
            for field in self._fields.values()
        ]
        return MetadataLabelSpace(fields, self.identity_keys, self.description)

    def to_config(self) -> dict[str, Any]:
        """The JSON config of this space; :meth:`from_config` of it gives the same space back."""
        patient, study = self.identity_keys
        config = {
            "identity": {"patient": patient, "study": study},
            "fields": [field.to_config() for field in self._fields.values()],
        }
        return {"description": self.description, **config} if self.description else config

    def to_file(self, path: str | os.PathLike) -> None:
        """Save the config (with learned vocabularies) next to the weights whose heads it sizes."""
        Path(path).write_text(json.dumps(self.to_config(), indent=4) + "\n", encoding="utf-8")

    # -- queries ----------------------------------------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        """Field names, in head order."""
        return list(self._fields)

    def field(self, name: str) -> CategoricalField | BinnedField:
        """The definition of field ``name``."""
        if name not in self._fields:
            raise MammoXAIError(name, "is not a metadata field", f"use one of {self.fields}")
        return self._fields[name]

    def class_names(self, name: str) -> list[str]:
        """Class names of field ``name``, in class-index order."""
        return list(self.field(name).class_names)

    def num_classes(self, name: str) -> int:
        """Number of classes of field ``name``: the output size of its head."""
        return len(self.field(name).class_names)

    def encode(self, header: Mapping[str, Any]) -> dict[str, int]:
        """Class index per field for a header (keyed by DICOM keyword); :data:`UNKNOWN` (-1) where unknown."""
        return {name: field.encode(header) for name, field in self._fields.items()}

    def decode(self, name: str, index: int) -> str:
        """Class name of ``index`` in field ``name``; ``"unknown"`` for :data:`UNKNOWN`."""
        classes = self.class_names(name)
        if index == UNKNOWN:
            return "unknown"
        if not 0 <= index < len(classes):
            fix = f"use 0 to {len(classes) - 1}, or -1 for unknown"
            raise MammoXAIError(name, f"class index {index} is out of range", fix)
        return classes[index]

    def identity(self, header: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(patient id, study UID) for same-patient / same-study matching; None where the header is silent."""
        return tuple(_text(header.get(key)) for key in self.identity_keys)  # type: ignore[return-value]


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None
