"""The world's specification: ``maft/assets/world.yaml`` parsed and checked, and each scene's random stream."""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.class_specs import check_class_names
from ..utils.paths import ASSETS_DIR, read_yaml

IGNORE_INDEX = 255
WORLD_SPEC_PATH = ASSETS_DIR / "world.yaml"


@dataclass(frozen=True)
class WorldSpec:
    """The parsed ``world.yaml``: classes (things first, then stuff), split and drawing parameters."""

    raw: dict = field(repr=False)
    classes: tuple[str, ...]
    thing_ids: tuple[int, ...]
    stuff_ids: tuple[int, ...]
    unseen: tuple[int, ...]
    image_size: int
    seed: int
    fingerprint: str
    canvas_size: int = 0  # side of the segmentation scenes (``canvas.splits``); 0 = image_size

    def scene_size(self, split: str) -> int:
        """Side of the scenes of ``split``: the canvas for the segmentation splits, else image_size
        (the world CLIP's pretraining size: the pretraining stream and the zero-shot probes)."""
        canvas = self.raw.get("canvas")
        return self.canvas_size if canvas and split in canvas["splits"] else self.image_size

    def scene_counts(self, split: str) -> tuple[list[int], list[int]]:
        """(things, background regions) count ranges of a scene of ``split``."""
        canvas = self.raw.get("canvas")
        if canvas and split in canvas["splits"]:
            return canvas["count"], canvas["background_regions"]
        things = self.raw["things"]
        return things["pretrain_count"] if split == "pretrain" else things["count"], self.raw["background_regions"]

    @property
    def seen(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.classes)) if i not in self.unseen)

    def split_size(self, split: str) -> int:
        sizes = self.raw["splits"]
        if split not in sizes:
            raise ValueError(f"unknown world split {split!r}; world.yaml defines {sorted(sizes)}")
        return int(sizes[split])

    @property
    def habitats(self) -> dict[int, tuple[int, ...]]:
        """Stuff class id -> the thing class ids that prefer it (``context.habitat``); {} without context."""
        context = self.raw.get("context") or {}
        return {self.classes.index(stuff): tuple(self.classes.index(t) for t in things)
                for stuff, things in context.get("habitat", {}).items()}

    @property
    def settings(self) -> tuple[tuple[int, ...], ...]:
        """The scene settings (``context.settings``), each a tuple of stuff class ids; () without them."""
        context = self.raw.get("context") or {}
        return tuple(tuple(self.classes.index(s) for s in members) for members in (context.get("settings") or {}).values())

    def thing_parts(self, class_id: int) -> tuple[str, str]:
        """(colour, pattern) of a thing class."""
        colour, pattern = self.classes[class_id].split(" ")
        return colour, pattern


def load_world_spec(path: str | Path | None = None) -> WorldSpec:
    """Read and check a world specification (default: the shipped ``maft/assets/world.yaml``)."""
    return _load_world_spec(str(Path(path).resolve()) if path is not None else str(WORLD_SPEC_PATH))


@lru_cache(maxsize=8)
def _load_world_spec(path: str) -> WorldSpec:
    if not Path(path).is_file():
        raise FileNotFoundError(f"world specification {path} not found")
    raw = read_yaml(path)
    for key in ("image_size", "seed", "splits", "things", "stuff", "unseen", "captions"):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
    things = [f"{c} {p}" for c in raw["things"]["colours"] for p in raw["things"]["patterns"]]
    stuff = list(raw["stuff"])
    classes = tuple(check_class_names(things + stuff, f"{path}: classes"))
    unknown = [name for name in raw["unseen"] if name not in classes]
    if unknown:
        raise ValueError(f"{path}: unseen classes {unknown} are not world classes {list(classes)}")
    _check_context(raw.get("context"), things, stuff, path)
    return WorldSpec(
        raw=raw,
        classes=classes,
        thing_ids=tuple(range(len(things))),
        stuff_ids=tuple(range(len(things), len(classes))),
        unseen=tuple(sorted(classes.index(name) for name in raw["unseen"])),
        image_size=int(raw["image_size"]),
        canvas_size=int(raw["canvas"]["size"]) if raw.get("canvas") else int(raw["image_size"]),
        seed=int(raw["seed"]),
        # of the parsed content, not the text: editing a comment must not invalidate cached checkpoints;
        # nor recording what the probes measured (``targets``), which describes the world, not makes it
        fingerprint=f"{zlib.crc32(json.dumps({k: v for k, v in raw.items() if k != 'targets'}, sort_keys=True).encode()):08x}",
    )


def _check_probability(context: dict, key: str, path: str) -> None:
    value = context.get(key)
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{path}: context.{key} must be a number in [0, 1], got {value!r}")


def _check_partition(groups: dict, members: list[str], key: str, kind: str, path: str) -> None:
    """Each of ``members`` in exactly one of ``groups`` (``context.<key>``), and nothing else there."""
    listed = [m for group in groups.values() for m in group]
    wrong = sorted({m for m in listed if m not in members})
    twice = sorted({m for m in listed if listed.count(m) > 1})
    missing = [m for m in members if m not in listed]
    if wrong or twice or missing:
        raise ValueError(f"{path}: context.{key} must list every {kind} class once "
                         f"(not {kind} classes: {wrong}, twice: {twice}, missing: {missing})")


def _check_context(context, things: list[str], stuff: list[str], path: str) -> None:
    """Every habitat is a stuff class, every thing class has exactly one habitat, and, with settings,
    every stuff class lies in exactly one setting."""
    if not context:
        return
    _check_probability(context, "strength", path)
    habitat = context.get("habitat") or {}
    unknown = [s for s in habitat if s not in stuff]
    if unknown:
        raise ValueError(f"{path}: context.habitat names {unknown}, which are not stuff classes {stuff}")
    _check_partition(habitat, things, "habitat", "thing", path)
    if context.get("settings") is not None:
        _check_probability(context, "setting_strength", path)
        _check_partition(context["settings"], stuff, "settings", "stuff", path)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of scene ``index`` of ``split``: depends on nothing else."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]))
