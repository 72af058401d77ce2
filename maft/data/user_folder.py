"""Your own dataset: a folder with ``images/``, ``masks/`` and a small ``classes.yaml``.

``data.dataset`` (and ``maft.build_dataset``, ``maft data check``) accepts, besides the shipped benchmarks:

- a **dataset folder**: ``<folder>/classes.yaml`` plus ``images/<split>/<id>.jpg|png`` and
  ``masks/<split>/<id>.png`` (or flat ``images/<id>.jpg`` + ``masks/<id>.png``, which hold one split,
  ``split`` in the class file, default ``val``);
- the path of that **class file** itself (its folder is the dataset folder);
- a **class-spec YAML** in the format of ``maft/assets/datasets/*.yaml`` (it has a ``label_map``); its
  ``folders`` are searched under the data roots like a shipped benchmark's, or used as is when absolute.

The class file::

    name: kitchen                     # optional; default: the folder's name
    classes: [table, cup, plate, knife, wall]   # mask value k is classes[k] ...
    mask_values: [1, 2, 3, 4, 5]      # ... unless given here, one value per class
    unseen: [knife]                   # optional: classes kept out of fine-tuning (zero-shot split)
    ignore_value: 255                 # optional: mask value(s) of unlabelled pixels; an int or a list
    split: val                        # optional: the split a flat folder holds

Masks are single-channel PNGs (8-bit, or 16-bit for values above 255), one per image with the same
stem and size. A mask value that is neither a class value nor an ignore value is an error naming the
file (``maft data check`` lists every such file before any long run).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from .class_specs import ClassSpec, available_datasets, load_class_spec, spec_from_dict

CLASS_FILE = "classes.yaml"
CLASS_FILE_KEYS = ("name", "title", "classes", "mask_values", "unseen", "ignore_value", "split")
DEFAULT_FLAT_SPLIT = "val"
_EXAMPLE = "classes: [cat, dog, grass]  # mask value k = classes[k]; optional: unseen, ignore_value, split"


def resolve_spec(dataset: str | os.PathLike) -> ClassSpec:
    """The class spec ``data.dataset`` names: a shipped benchmark, a dataset folder, a class file or a
    class-spec YAML (see the module doc). Errors name the path and what is missing."""
    text = os.fspath(dataset)
    if text in available_datasets():
        return load_class_spec(text)
    path = Path(text).expanduser()
    if path.is_dir():
        class_file = path / CLASS_FILE
        if not class_file.is_file():
            raise FileNotFoundError(f"dataset folder {path} has no class file {class_file}; write one, e.g. "
                                    f"'{_EXAMPLE}' (see maft.data.user_folder)")
        return class_file_spec(class_file)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"data.dataset: class file {path} does not exist")
        data = _read_yaml(path)
        return load_class_spec(path) if "label_map" in data else class_file_spec(path)
    if os.sep in text or path.exists():
        raise FileNotFoundError(f"data.dataset: {path} is neither a dataset folder (with {CLASS_FILE}) nor a "
                                "class YAML file")
    raise ValueError(f"unknown dataset {text!r}; available: {', '.join(available_datasets() + ['world'])}, "
                     f"or a folder with images/, masks/ and {CLASS_FILE}, or a class-spec YAML path")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with at least 'classes' ({_EXAMPLE})")
    return data


def _int_list(value, key: str, source: Path) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{source}: {key} must be a non-negative integer or a list of them, got {value!r}")
    return values


def class_file_spec(class_file: str | os.PathLike) -> ClassSpec:
    """The :class:`ClassSpec` of a user's ``classes.yaml``; its folder is the dataset folder."""
    class_file = Path(class_file).resolve()
    data = _read_yaml(class_file)
    unknown = sorted(set(data) - set(CLASS_FILE_KEYS))
    if unknown:
        raise ValueError(f"{class_file}: unknown keys {unknown}; a class file has {', '.join(CLASS_FILE_KEYS)}")
    if "classes" not in data:
        raise ValueError(f"{class_file}: missing 'classes' (the class names, in mask-value order)")
    classes = data["classes"]
    if not isinstance(classes, list):
        raise ValueError(f"{class_file}: classes must be a list of names, got {classes!r}")
    values = _int_list(data["mask_values"], "mask_values", class_file) if "mask_values" in data \
        else list(range(len(classes)))
    if len(values) != len(classes):
        raise ValueError(f"{class_file}: mask_values has {len(values)} values for {len(classes)} classes")
    ignore = _int_list(data.get("ignore_value", 255), "ignore_value", class_file)
    clash = sorted(set(ignore) & set(values))
    if clash:
        named = ", ".join(f"{v} ({classes[values.index(v)]!r})" for v in clash)
        raise ValueError(f"{class_file}: ignore_value {clash} is also the mask value of a class: {named}; "
                         f"choose another ignore_value or give mask_values")
    unseen = data.get("unseen") or []
    if not isinstance(unseen, list):
        raise ValueError(f"{class_file}: unseen must be a list of class names, got {unseen!r}")
    split = data.get("split", DEFAULT_FLAT_SPLIT)
    if not isinstance(split, str) or not split or "/" in split:
        raise ValueError(f"{class_file}: split must be a split name such as 'val', got {split!r}")
    folder = class_file.parent
    name = str(data.get("name") or folder.name)
    spec = {
        "name": name,
        "title": str(data.get("title") or f"{name} (your dataset)"),
        "protocol": "zero_shot" if unseen else "open_vocabulary",
        # contiguous ids pass 255 from 256 classes on; 65535 stays free, as for ADE-847 / PC-459
        "ignore_index": 255 if len(classes) <= 255 else 65535,
        "classes": classes,
        "unseen": unseen,
        "label_map": {"raw_ids": values, "ignore": ignore, "unlisted": "error"},
        # an absolute folder is used as is (maft.data.datasets.locate_dataset), whatever the data roots
        "folders": [{"name": str(folder), "labels": "raw", "flat_split": split}],
    }
    return spec_from_dict(spec, source=str(class_file))  # checks names, duplicates, unseen-in-classes
