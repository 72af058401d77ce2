"""The registry of known downloads (``maft/assets/downloads.yaml``): files with their official URL, recorded
size and checksum, and the dataset recipes that combine them. Loading validates every entry and names the
file and entry that is wrong; :mod:`maft.downloads.verified` does the downloading."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from ..utils import paths

REGISTRY_FILE = paths.ASSETS_DIR / "downloads.yaml"
HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class KnownFile:
    name: str
    url: str
    group: str
    size: int | None = None
    approx_size: str | None = None
    hash: str | None = None
    checksum_source: str = ""
    manual: str | None = None

    @property
    def size_text(self) -> str:
        if self.size is not None:
            return human_size(self.size)
        return f"~{self.approx_size}" if self.approx_size else "size not published"


@dataclass(frozen=True)
class RecipeFile:
    file: str
    into: str = "."


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    benchmarks: tuple[str, ...]
    files: tuple[RecipeFile, ...]
    after_unpack: str | None = None
    expect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Registry:
    files: dict[str, KnownFile]
    datasets: dict[str, Recipe]
    clip: tuple[tuple[str, str], ...]

    def file(self, name: str) -> KnownFile:
        if name not in self.files:
            raise KeyError(f"no known file {name!r}; known files: {', '.join(self.files)}")
        return self.files[name]

    def recipe_for(self, benchmark: str) -> Recipe:
        for recipe in self.datasets.values():
            if benchmark in recipe.benchmarks:
                return recipe
        known = [b for r in self.datasets.values() for b in r.benchmarks]
        raise ValueError(f"no download recipe for dataset {benchmark!r}; known: {', '.join(known)}")


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """The registry in ``path`` (default :data:`REGISTRY_FILE`), validated; errors name the file and entry."""
    return _load_registry(str(Path(path or REGISTRY_FILE).resolve()))


@lru_cache(maxsize=4)
def _load_registry(path: str) -> Registry:
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    files = {}
    for name, entry in (raw.get("files") or {}).items():
        where = f"{path}: files.{name}"
        unknown = set(entry) - {"url", "size", "approx_size", "hash", "checksum_source", "manual", "group"}
        if unknown or "url" not in entry or "group" not in entry:
            raise ValueError(f"{where}: needs url and group; unknown keys {sorted(unknown)}")
        if entry.get("hash") is not None:
            _check_hash_format(entry["hash"], where)
        elif not name.endswith(ARCHIVE_SUFFIXES):
            raise ValueError(f"{where}: without a hash the file must be an archive that carries its own CRCs "
                             f"({', '.join(ARCHIVE_SUFFIXES)})")
        if entry.get("size") is not None and (not isinstance(entry["size"], int) or entry["size"] <= 0):
            raise ValueError(f"{where}: size must be a positive number of bytes, got {entry['size']!r}")
        files[name] = KnownFile(name=name, **{k: v for k, v in entry.items() if v is not None})
    datasets = {}
    for name, entry in (raw.get("datasets") or {}).items():
        items = tuple(RecipeFile(**item) for item in entry.get("files", []))
        missing = [item.file for item in items if item.file not in files]
        if missing or not items:
            raise ValueError(f"{path}: datasets.{name} lists files not under files: {missing or 'none at all'}")
        datasets[name] = Recipe(name=name, title=entry.get("title", name), benchmarks=tuple(entry["benchmarks"]),
                                files=items, after_unpack=entry.get("after_unpack"),
                                expect=tuple(entry.get("expect", ())))
    clip = tuple((item["model"], item["tag"]) for item in raw.get("clip") or [])
    return Registry(files=files, datasets=datasets, clip=clip)


def _check_hash_format(value, where: str) -> None:
    algorithm, _, digest = str(value).partition(":")
    if algorithm not in HASH_LENGTHS or not re.fullmatch(f"[0-9a-f]{{{HASH_LENGTHS.get(algorithm, 0)}}}", digest):
        raise ValueError(f"{where}: hash must be 'md5:<32 hex>', 'sha1:<40 hex>' or 'sha256:<64 hex>', got {value!r}")


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
