"""Proposals computed once per image and kept on disk (SAM's automatic masks cost seconds per image).

A cache folder is ``<root>/<dataset>/<kind>-<digest>/``: ``settings.json`` holds every setting that
changes the generator's output (model type, checkpoint, points per side, thresholds, the cap on
proposals, ...) and ``digest`` is the hash of exactly those settings, so a cache made with other
settings lives in another folder and is never reused. Each image is one ``<id>.npz`` in the proposal-
file format (:mod:`.files`; :class:`~maft.proposals.files.FileProposals` reads the folder too), written
under a temporary name and renamed, so an interrupted run leaves no half-written file and the next one
resumes where it stopped. The generator itself is built on the first image that is not cached, so a
fully cached run never loads SAM.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ..utils.paths import atomic_write
from ..utils.progress import progress_bar
from .files import load_proposals, save_proposals
from .types import Proposals

SETTINGS_FILE = "settings.json"


def settings_digest(settings: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``settings`` as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class CachedProposals:
    """``make_generator()``'s proposals for each sample, read from ``directory`` when cached there.

    ``settings`` (JSON-serialisable) are what the folder records; use :meth:`folder` to place a cache
    by them. A folder whose ``settings.json`` differs from ``settings`` is an error, never reused.
    """

    def __init__(self, make_generator: Callable[[], Callable[[dict], Proposals]], directory: str | os.PathLike,
                 settings: dict[str, Any]):
        self.make_generator = make_generator
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self._generator = None
        self.computed = 0  # images this object ran the generator on (the rest came from the cache)
        recorded = self.directory / SETTINGS_FILE
        if recorded.is_file():
            found = json.loads(recorded.read_text())
            if found != self.settings:
                changed = sorted(k for k in set(found) | set(self.settings) if found.get(k) != self.settings.get(k))
                raise ValueError(f"proposal cache {self.directory} was made with other settings ({changed} differ; "
                                 f"see {recorded}); use another cache folder or remove it")

    @staticmethod
    def folder(root: str | os.PathLike, dataset: str, kind: str, settings: dict[str, Any]) -> Path:
        """Where the cache of ``kind`` proposals with ``settings`` on ``dataset`` lives under ``root``."""
        return Path(root) / dataset / f"{kind}-{settings_digest(settings)}"

    def path_for(self, sample_id: str) -> Path:
        return self.directory / f"{sample_id}.npz"

    def is_cached(self, sample_id: str) -> bool:
        return self.path_for(sample_id).is_file()

    def __call__(self, sample: dict) -> Proposals:
        if sample.get("id") is None:
            raise ValueError("CachedProposals needs sample['id'] to name the cached file")
        path = self.path_for(str(sample["id"]))
        image = sample.get("image") if sample.get("image") is not None else sample.get("label")
        size = tuple(image.shape[-2:]) if image is not None else None
        if path.is_file():
            return load_proposals(path, size)  # masks of another image size: an error naming the file
        if self._generator is None:
            self._generator = self.make_generator()
            self._record()
        proposals = self._generator(sample)
        self.directory.mkdir(parents=True, exist_ok=True)
        # a temporary name with the .npz suffix (save_proposals picks the format by suffix), then a rename
        partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
        try:
            save_proposals(partial, proposals)
            os.replace(partial, path)
        finally:
            if partial.exists():
                partial.unlink()
        self.computed += 1
        return proposals

    def _record(self) -> None:
        recorded = self.directory / SETTINGS_FILE
        if not recorded.is_file():
            atomic_write(recorded, lambda partial: partial.write_text(json.dumps(self.settings, indent=1,
                                                                                 sort_keys=True)))

    def fill(self, dataset, indices: Iterable[int] | None = None, desc: str | None = None,
             progress: bool = True) -> int:
        """Compute the proposals of the images of ``dataset`` (a maft dataset, or any sequence of samples;
        ``indices``: which ones, default all) that are not cached yet; returns how many were computed.
        Cached images of a maft dataset (it lists its ``items``) are not even read."""
        items = getattr(dataset, "items", None)
        indices = range(len(dataset)) if indices is None else indices
        missing = [i for i in indices if items is None or not self.is_cached(str(items[i].id))]
        before = self.computed
        for index in progress_bar(missing, desc=desc or f"proposals -> {self.directory}", disable=not progress):
            self(dataset[index])
        return self.computed - before
