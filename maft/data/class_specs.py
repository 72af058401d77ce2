"""Class specifications: names, zero-shot splits and label mappings, read from data files.

Each benchmark has one YAML file in ``maft/assets/datasets/<name>.yaml`` (sources cited there). It holds
the class names in contiguous-id order, the unseen class names, how raw label values in the files
written by ``maft data prepare`` map to contiguous ids, and the folder names searched under a data root.
Nothing else in the package hard-codes class lists.

Prompt names. A spec may map some classes to the text the prompt templates get (``prompts``), where
the authors' (or ZegFormer's) registration files prompt a class by another name than the dataset's
own, e.g. VOC's "tvmonitor" as "tv". Display names, metrics and ``classes`` stay the dataset's own.

Label encodings. A folder stores either ``raw`` labels (the official dataset values, mapped here through
``label_map``) or ``contiguous`` labels (already ``0..C-1`` with the spec's ignore value). The ignore
value is 255, except for datasets with more than 255 classes (ADE20K-847, PASCAL-Context-459), where
contiguous id 255 is a real class and 65535 is used instead (ZegFormer / MaskFormer do the same).
"""
from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

from ..utils.paths import ASSETS_DIR, read_yaml

SPEC_DIR = ASSETS_DIR / "datasets"
PROTOCOLS = ("zero_shot", "open_vocabulary")
LABEL_ENCODINGS = ("raw", "contiguous")
UNLISTED_POLICIES = ("error", "ignore")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS` (the values of ``data.protocol``), else ValueError."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


def class_key(name: str) -> str:
    """The form two class names are compared in: lower case, runs of white space folded to one space.

    "Potted Plant" and "potted  plant" are the same class to a text prompt, so every entry point (dataset
    specs, predict's class list, text classifiers, a generator's class list in the ensemble) matches and
    de-duplicates names through this one key.
    """
    return " ".join(str(name).lower().split())


def check_class_names(names: Iterable[str], argument: str = "class_names") -> list[str]:
    """Return ``names`` as a list after checking it is non-empty, all non-blank strings, no duplicates.

    Duplicates are found by :func:`class_key` (case and spacing ignored). Shared by the dataset specs
    and by anything taking user class names (predict, text classifiers), so that an empty or duplicated
    vocabulary fails loudly instead of producing ill-posed scores.
    """
    if isinstance(names, str):
        raise ValueError(f"{argument} must be a list of class names, got the single string {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{argument} is empty: at least one class name is needed")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{argument} holds empty or non-string names: {bad[:5]!r}")
    counts = Counter(class_key(n) for n in names)
    duplicates = sorted({n for n in names if counts[class_key(n)] > 1})
    if duplicates:
        raise ValueError(f"{argument} has duplicate class names: {duplicates} appear more than once "
                         "(case and spacing ignored); each class must be named once")
    return names


@dataclass(frozen=True)
class FolderSpec:
    """One folder name searched under a data root and how its labels are stored."""

    name: str
    labels: str = "raw"  # "raw" | "contiguous"
    flat_split: str | None = None  # the one split a flat images/<id>.jpg folder holds


@dataclass(frozen=True)
class ClassSpec:
    """Immutable description of one benchmark's classes (see module docstring)."""

    name: str
    classes: tuple[str, ...]
    unseen: tuple[str, ...]
    label_map: Mapping[int, int]  # raw value -> contiguous id or ignore_index (read-only)
    unlisted: str = "error"  # what a raw value missing from label_map means: "error" | "ignore"
    ignore_index: int = 255
    folders: tuple[FolderSpec, ...] = ()
    protocol: str = "zero_shot"
    title: str = ""
    source: str = ""  # the YAML file it was read from
    prompts: Mapping[str, str] = dataclass_field(default_factory=lambda: MappingProxyType({}))  # name -> prompt name

    def __post_init__(self):
        # A spec built in code (a user's own dataset) gets the checks of one read from YAML.
        where = self.source or self.name
        check_class_names(self.classes, f"{where}: classes")
        if self.unseen:
            check_class_names(self.unseen, f"{where}: unseen")
        known = {class_key(name) for name in self.classes}
        missing = [name for name in self.unseen if class_key(name) not in known]
        if missing:
            raise ValueError(f"{where}: unseen classes {missing} are not in classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def unseen_ids(self) -> list[int]:
        unseen = {class_key(name) for name in self.unseen}
        return [i for i, name in enumerate(self.classes) if class_key(name) in unseen]

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """The text each class (in ``classes`` order) is put into the prompt templates with."""
        return tuple(self.prompts.get(name, name) for name in self.classes)

    @property
    def seen_ids(self) -> list[int]:
        unseen = {class_key(name) for name in self.unseen}
        return [i for i, name in enumerate(self.classes) if class_key(name) not in unseen]

    def __reduce__(self):
        # A mappingproxy does not pickle; DataLoader workers started by spawn need to pickle datasets.
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["label_map"] = dict(self.label_map)
        state["prompts"] = dict(self.prompts)
        return _rebuild_spec, (state,)

    def folder(self, name: str) -> FolderSpec:
        for folder in self.folders:
            if folder.name == name:
                return folder
        raise ValueError(f"{self.name}: folder {name!r} is not one of {[f.name for f in self.folders]}")

    def lookup_table(self, labels: str = "raw", drop_unseen: bool = False) -> np.ndarray:
        """int64 table ``t`` with ``t[value]`` = contiguous id, ignore_index, or -1 (= not allowed).

        ``labels="contiguous"`` accepts exactly ``0..C-1`` and the ignore value. ``drop_unseen`` maps
        unseen classes to ignore (the zero-shot training view).
        """
        if labels not in LABEL_ENCODINGS:
            raise ValueError(f"labels must be one of {LABEL_ENCODINGS}, got {labels!r}")
        if labels == "raw":
            mapping = dict(self.label_map)
            default = self.ignore_index if self.unlisted == "ignore" else -1
        else:
            mapping = {i: i for i in range(self.num_classes)}
            mapping[self.ignore_index] = self.ignore_index
            default = -1
        table = np.full(max(max(mapping) + 1, 256), default, dtype=np.int64)
        table[list(mapping)] = list(mapping.values())
        if drop_unseen and self.unseen:
            table[np.isin(table, self.unseen_ids)] = self.ignore_index
        return table

    def to_contiguous(self, values: np.ndarray, labels: str = "raw", drop_unseen: bool = False,
                      source: str = "label array") -> np.ndarray:
        """Map an integer label array to contiguous int64 ids; unknown values raise ValueError naming ``source``."""
        table = self.lookup_table(labels, drop_unseen)
        return apply_lookup(table, values, source, self.unlisted == "ignore" and labels == "raw",
                            self.ignore_index, f"{self.name} ({labels} labels)")


def _rebuild_spec(state: dict) -> ClassSpec:
    return ClassSpec(**{**state, "label_map": MappingProxyType(state["label_map"]),
                        "prompts": MappingProxyType(state["prompts"])})


def apply_lookup(table: np.ndarray, values: np.ndarray, source: str, outside_is_ignore: bool,
                 ignore_index: int, what: str) -> np.ndarray:
    """``table[values]`` as int64, with a clear error for values the table does not allow.

    Values beyond the table (or negative) are ignore when ``outside_is_ignore`` (a raw map whose
    unlisted values mean "not a benchmark class"), otherwise an error like any value mapped to -1.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        raise ValueError(f"{source}: labels must be integers, got dtype {values.dtype}")
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    if values.min() >= 0 and values.max() < len(table):
        labels = table[values]
    else:
        inside = (values >= 0) & (values < len(table))
        labels = table[np.where(inside, values, 0)]
        labels[~inside] = ignore_index if outside_is_ignore else -1
    if labels.min() < 0:
        _raise_unknown(values[labels < 0], source, what)
    return labels


def _raise_unknown(values: np.ndarray, source: str, what: str) -> None:
    bad = np.unique(values)
    shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if len(bad) > 20 else "")
    raise ValueError(f"{source}: label values [{shown}] are not in the label map of {what}")


def available_datasets() -> list[str]:
    """Names of the shipped class specs (``maft/assets/datasets/*.yaml``)."""
    return sorted(path.stem for path in SPEC_DIR.glob("*.yaml"))


def load_class_spec(name: str | os.PathLike) -> ClassSpec:
    """Read and validate a class spec by dataset name (``"voc20"``) or YAML path."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = SPEC_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown dataset {str(name)!r}; available: {', '.join(available_datasets())}")
    elif not path.is_file():
        raise FileNotFoundError(f"class spec file not found: {path}")
    return _load_spec_file(str(path.resolve()))


@functools.lru_cache(maxsize=None)
def _load_spec_file(path: str) -> ClassSpec:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return spec_from_dict(data, source=path)


def spec_from_dict(data: dict, source: str = "<dict>") -> ClassSpec:
    """Build a ClassSpec from the YAML structure, with errors that name ``source`` and the field."""

    def field(key, default=None, required=True):
        if key not in data:
            if required:
                raise ValueError(f"{source}: missing field {key!r}")
            return default
        return data[key]

    name = str(field("name"))
    classes = check_class_names(field("classes") or [], f"{source}: classes")
    unseen = list(field("unseen", [], required=False) or [])
    if unseen:
        check_class_names(unseen, f"{source}: unseen")
    missing = [u for u in unseen if class_key(u) not in {class_key(c) for c in classes}]
    if missing:
        raise ValueError(f"{source}: unseen classes {missing} are not in classes")
    ignore_index = int(field("ignore_index", 255, required=False))
    if 0 <= ignore_index < len(classes):
        raise ValueError(f"{source}: ignore_index {ignore_index} collides with a class id (there are "
                         f"{len(classes)} classes); use 65535 for more than 255 classes")
    protocol = field("protocol", "zero_shot", required=False)
    if protocol not in PROTOCOLS:
        raise ValueError(f"{source}: protocol must be one of {PROTOCOLS}, got {protocol!r}")

    label_map_data = field("label_map")
    if not isinstance(label_map_data, dict):
        raise ValueError(f"{source}: label_map must be a mapping with raw_ids / ignore / unlisted")
    raw_ids = [int(v) for v in label_map_data.get("raw_ids", [])]
    ignore_raw = [int(v) for v in label_map_data.get("ignore", [])]
    unlisted = label_map_data.get("unlisted", "error")
    if len(raw_ids) != len(classes):
        raise ValueError(f"{source}: label_map.raw_ids has {len(raw_ids)} entries for {len(classes)} classes")
    repeated = sorted(v for v, count in Counter(raw_ids + ignore_raw).items() if count > 1)
    if repeated:
        raise ValueError(f"{source}: raw label values {repeated} are listed more than once in label_map")
    if any(v < 0 for v in raw_ids + ignore_raw):
        raise ValueError(f"{source}: raw label values must be >= 0")
    if unlisted not in UNLISTED_POLICIES:
        raise ValueError(f"{source}: label_map.unlisted must be one of {UNLISTED_POLICIES}, got {unlisted!r}")
    label_map = {raw: k for k, raw in enumerate(raw_ids)}
    label_map.update({raw: ignore_index for raw in ignore_raw})

    folders = tuple(_folder_spec(entry, source) for entry in field("folders", [], required=False) or [])
    prompts = _prompt_map(field("prompts", {}, required=False) or {}, classes, source)
    return ClassSpec(
        name=name, classes=tuple(classes), unseen=tuple(unseen), label_map=MappingProxyType(label_map),
        unlisted=unlisted, ignore_index=ignore_index, folders=folders, protocol=protocol,
        title=str(field("title", name, required=False)), source=source, prompts=MappingProxyType(prompts),
    )


def _prompt_map(data, classes: list[str], source: str) -> dict[str, str]:
    """``prompts`` checked: keys are class names, values non-blank, and the prompt names stay distinct."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: prompts must be a mapping of class name -> prompt name")
    unknown = [name for name in data if name not in classes]
    if unknown:
        raise ValueError(f"{source}: prompts name classes that are not in classes: {unknown}")
    prompts = {str(name): value for name, value in data.items()}
    check_class_names([prompts.get(name, name) for name in classes], f"{source}: prompt names")
    return prompts


def _folder_spec(entry, source: str) -> FolderSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    try:
        folder = FolderSpec(**entry)
    except TypeError as error:
        raise ValueError(f"{source}: bad folder entry {entry!r} (keys: name, labels, flat_split)") from error
    if folder.labels not in LABEL_ENCODINGS:
        raise ValueError(f"{source}: folder {folder.name!r} labels must be one of {LABEL_ENCODINGS}")
    return folder
