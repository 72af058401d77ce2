"""Dataset downloads: fetch a benchmark's official archives, verify, unpack, then run ``maft data prepare``.

``download_dataset("voc20", dst="data")`` fetches the archives listed for the benchmark in
``maft/assets/downloads.yaml`` into ``<dst>/downloads/`` (verified, resumable, see :mod:`maft.downloads.verified`),
unpacks them into ``<dst>/downloads/<recipe>.unpacked/`` (through a ``.partial`` folder renamed when
complete, so an interrupted unpack is never mistaken for a finished one), runs the recipe's extra step if
any, and hands the folder to :func:`maft.data.prepare.prepare_dataset`, which writes ``<dst>/<folder>/``. The
unpacked copy is removed afterwards (``keep_unpacked=True`` keeps it); the verified archives stay, so a
later run needs no network.

The one extra step: ``sbd_augmentation`` turns the SBD labels (``benchmark_RELEASE/dataset/cls/*.mat``)
into ``SegmentationClassAug/*.png`` and adds VOC 2012's own masks (they take precedence where both
exist); ``prepare`` then builds the usual ``train_aug`` split from it (every such mask not in VOC val).
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import scipy.io
from PIL import Image

from ..clip import cached_tag_file  # the same cache lookup load_clip uses
from ..data.class_specs import load_class_spec
from ..data.prepare import prepare_dataset
from ..utils.progress import progress_bar
from .registry import Recipe, Registry, load_registry
from .verified import MissingFileError, fetch, is_verified, missing_message, offline_mode, weights_dir


def download_dataset(benchmark: str, dst: str | os.PathLike = "data", downloads: str | os.PathLike | None = None,
                     splits=None, max_images: int | None = None, overwrite: bool = False,
                     keep_unpacked: bool = False, progress: bool = True, registry: Registry | None = None) -> Path:
    """Download, verify, unpack and prepare ``benchmark`` under ``dst``; returns the prepared folder."""
    registry = registry or load_registry()
    recipe = registry.recipe_for(benchmark)
    dst = Path(dst).expanduser().resolve()
    folder = dst / load_class_spec(benchmark).folders[0].name
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        print(f"{benchmark}: already prepared at {folder} (pass --overwrite to download and prepare again)")
        return folder
    downloads = Path(downloads).expanduser().resolve() if downloads else dst / "downloads"
    unpacked = downloads / f"{recipe.name}.unpacked"
    if not unpacked.is_dir():
        _check_all_obtainable(recipe, registry, downloads)  # fail now, not after hours of other downloads
        archives = [fetch(item.file, downloads, progress=progress, registry=registry) for item in recipe.files]
        unpack_recipe(recipe, archives, unpacked, progress=progress)
    folder = prepare_dataset(benchmark, unpacked, dst, splits=splits, max_images=max_images, overwrite=overwrite,
                             progress=progress)
    if not keep_unpacked:
        shutil.rmtree(unpacked)
    return folder


def _check_all_obtainable(recipe: Recipe, registry: Registry, downloads: Path) -> None:
    problems = []
    for item in recipe.files:
        entry = registry.file(item.file)
        target = downloads / entry.name
        if not target.is_file() and (entry.manual or offline_mode()):
            problems.append(missing_message(entry, target))
    if problems:
        raise MissingFileError("\n".join(problems))


def unpack_recipe(recipe: Recipe, archives: list[Path], out: Path, progress: bool = True) -> Path:
    """Unpack every archive of ``recipe`` into ``out`` (via ``out.partial``), then run its extra step."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an earlier unpack that did not finish
    try:
        for item, archive in zip(recipe.files, archives, strict=True):
            extract(archive, partial / item.into, progress=progress)
        for expected in recipe.expect:
            if not (partial / expected).exists():
                raise FileNotFoundError(f"{', '.join(a.name for a in archives)} unpacked without {expected}/: "
                                        f"not the expected {recipe.title} archive")
        if recipe.after_unpack:
            AFTER_UNPACK[recipe.after_unpack](partial, progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)
    return out


def extract(archive: Path, dest: Path, progress: bool = True) -> None:
    """Extract a zip or tar(.gz) archive into ``dest`` with a progress bar (paths are kept inside ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:  # zipfile drops absolute paths and '..' parts
            for member in progress_bar(handle.infolist(), desc=f"unpacking {archive.name}", unit=" files",
                               disable=not progress):
                handle.extract(member, dest)
    elif archive.name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:*") as handle:
            for member in progress_bar(handle, desc=f"unpacking {archive.name}", unit=" files", disable=not progress):
                handle.extract(member, dest, filter="data")  # refuses links and paths leaving dest
    else:
        raise ValueError(f"do not know how to unpack {archive} (expected .zip, .tar, .tar.gz or .tgz)")


# ------------------------------------------------------------------------------- extra unpack steps


def read_sbd_mat(path: Path) -> np.ndarray:
    """Class ids (0 = background, 1..20 = VOC classes) of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation).astype(np.uint8)
    except Exception as error:  # scipy raises several types for damaged files; a KeyError for other .mat files
        raise ValueError(f"cannot read SBD label file {path} (expected a GTcls.Segmentation struct): "
                         f"{error!r}") from error


def sbd_augmentation(root: Path, progress: bool = True) -> None:
    """``root/SegmentationClassAug/<id>.png`` from SBD's .mat labels plus VOC 2012's own masks."""
    cls = root / "benchmark_RELEASE" / "dataset" / "cls"
    voc_masks = root / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    mats = sorted(cls.glob("*.mat"))
    if not mats:
        raise FileNotFoundError(f"no SBD labels in {cls} (expected benchmark.tgz to unpack there)")
    if not voc_masks.is_dir():
        raise FileNotFoundError(f"VOC 2012 masks not found at {voc_masks}")
    out = root / "SegmentationClassAug"
    out.mkdir()
    for mat in progress_bar(mats, desc="SBD labels -> SegmentationClassAug", disable=not progress):
        Image.fromarray(read_sbd_mat(mat), mode="L").save(out / f"{mat.stem}.png")
    for mask in voc_masks.glob("*.png"):  # the official VOC masks are finer (void borders): they win
        shutil.copyfile(mask, out / mask.name)


AFTER_UNPACK: dict[str, Callable[[Path, bool], None]] = {"sbd_augmentation": sbd_augmentation}


# ------------------------------------------------------------------------------------------ listing


def _file_state(entry, directory: Path) -> str:
    target, part = directory / entry.name, directory / f"{entry.name}.part"
    if target.is_file():
        return "present, verified" if is_verified(entry, target) else "present, not yet verified"
    if part.is_file():
        of = f" of {entry.size}" if entry.size else ""
        return f"partial ({part.stat().st_size}{of} bytes; the next download resumes)"
    return "needs registration, missing" if entry.manual else "missing"


def list_report(dst: str | os.PathLike = "data", downloads: str | os.PathLike | None = None,
                weights: str | os.PathLike | None = None, registry: Registry | None = None) -> str:
    """Every known file: size, checksum, and whether it is present (nothing is hashed or fetched)."""
    registry = registry or load_registry()
    dst = Path(dst).expanduser().resolve()
    downloads = Path(downloads).expanduser().resolve() if downloads else dst / "downloads"
    weights = Path(weights).expanduser().resolve() if weights else weights_dir()
    width = max(len(name) for name in registry.files) + 2

    def line(entry, directory):
        return (f"  {entry.name:<{width}}{entry.size_text:>18}  {entry.hash or 'no published checksum':<45}  "
                f"{_file_state(entry, directory)}")

    lines = [f"SAM checkpoints (in {weights}; `maft download sam vit_b`):"]
    lines += [line(e, weights) for e in registry.files.values() if e.group == "sam"]
    lines.append(f"\nDatasets (archives in {downloads}; prepared under {dst}; `maft download data <dataset>`):")
    for recipe in registry.datasets.values():
        prepared = []
        for benchmark in recipe.benchmarks:
            folder = dst / load_class_spec(benchmark).folders[0].name
            state = "prepared" if folder.is_dir() and any(folder.iterdir()) else "not prepared"
            prepared.append(f"{benchmark} {state}")
        lines.append(f" {recipe.title}: {', '.join(prepared)}")
        lines += [line(registry.file(item.file), downloads) for item in recipe.files]
    lines.append("\nCLIP weights (open_clip / Hugging Face cache; `maft download clip ViT-B-16 openai`):")
    lines += [f"  {model} / {tag}: {_clip_state(model, tag)}" for model, tag in registry.clip]
    if offline_mode():
        lines.append("\nOffline mode is on (MAFT_OFFLINE or HF_HUB_OFFLINE): nothing will be downloaded.")
    return "\n".join(lines)


def _clip_state(model: str, tag: str) -> str:
    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    if not tag_cfg:
        return f"not an open_clip tag of {model}"
    path, looked = cached_tag_file(tag_cfg, None)
    return f"cached at {path}" if path else f"not cached (looked for {looked[0]})"
