"""``maft data``: convert official dataset downloads into the canonical layout, and check a data root.

``maft data prepare <dataset> --src <official download> --dst <root>`` writes
``<root>/<folder>/images/<split>/<id>.jpg`` and ``<root>/<folder>/masks/<split>/<id>.png``, where
``<folder>`` is the first folder of the dataset's class spec. Masks keep the official raw label values
(8-bit, or 16-bit PNG where ids pass 255); :mod:`maft.data.class_specs` maps them to contiguous ids when loading,
so the label mapping lives in one place. What each converter expects under ``--src``:

=============  ==============================================================================================
voc20          ``VOCdevkit/VOC2012``: JPEGImages/, SegmentationClass/ (palette PNGs),
               ImageSets/Segmentation/{train,val}.txt; with SegmentationClassAug/ (inside or beside it) also
               ``train_aug`` (ImageSets/Segmentation/train_aug.txt, or every Aug mask not in val: 10582).
coco_stuff171  COCO images ``{images/,}{train2017,val2017}/`` and COCO-Stuff ``stuffthingmaps_trainval2017/``
               ``{train2017,val2017}/*.png`` (values 0..181 = official id - 1, 255 = unlabeled).
ade150         ``ADEChallengeData2016``: images/{training,validation}/, annotations/{training,validation}/.
ade847         ``ADE20K_2021_17_01``: images/ADE/{training,validation}/**/<name>.jpg + <name>_seg.png (listed by
               index_ade20k.pkl when present); class id = R // 10 * 256 + G, stored as 16-bit PNG; images
               whose shorter side exceeds ``--max-size`` (512, as in the public ADE-847 conversion) are
               resized (bilinear image, nearest labels).
pc59, pc459    ``VOCdevkit/VOC2010``: JPEGImages/, ImageSets/Main/{train,val}.txt, plus the PASCAL-Context
               ``trainval/<id>.mat`` label files (LabelMap, 459-class ids) inside or beside it. Both
               benchmarks read the same prepared folder ``pascal_context``.
=============  ==============================================================================================

Nothing is ever written under ``--src``; an existing non-empty destination folder is kept unless
``--overwrite``. Output goes to ``<folder>.partial`` first and is renamed when complete.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import scipy.io
from PIL import Image

from ..utils.paths import check_output_path, data_roots
from ..utils.progress import progress_bar
from .class_specs import ClassSpec, load_class_spec
from .datasets import (
    DATASETS,
    SegDataset,
    available_splits,
    class_image_counts,
    locate_dataset,
    open_image,
    read_label,
    rgb_array,
    size_mismatches,
)
from .user_folder import resolve_spec

ADE847_MAX_SIZE = 512


class Pair(NamedTuple):
    """One converted sample: where the image comes from and how to get its raw label array."""

    split: str
    id: str
    image: Path
    label: Path
    read_label: Callable[[Path], np.ndarray]


def check_report(name: str, root=None, split: str | None = None, mode: str = "eval") -> str:
    """Text table of per-class image counts for each split of ``name`` under ``root``.

    Image and mask sizes are compared first (file headers only); then every mask is read and checked,
    and all problems (values outside the class list, unreadable files) are raised together in one
    ValueError naming the files.
    """
    spec = resolve_spec(name)
    folder, folder_spec = locate_dataset(spec, root)
    splits = [split] if split else available_splits(folder, folder_spec)
    for name_of_split in splits:  # headers only: quick, and before the labels are read
        dataset = SegDataset(spec, name_of_split, root=root, mode=mode)
        mismatched = size_mismatches(dataset)
        if mismatched:
            shown = "; ".join(mismatched[:3]) + (f"; and {len(mismatched) - 3} more" if len(mismatched) > 3 else "")
            raise ValueError(f"{spec.name} split {name_of_split}: {len(mismatched)} of {len(dataset)} image/mask "
                             f"pairs differ in size: {shown}")
    lines = [f"{spec.name}: {spec.title} at {folder} ({folder_spec.labels} labels, {spec.num_classes} classes, "
             f"{len(spec.unseen)} unseen)"]
    for name_of_split in splits:
        dataset = SegDataset(spec, name_of_split, root=root, mode=mode)
        present, problems = scan_dataset(dataset)
        raise_problems(problems, f"{spec.name} split {name_of_split} at {folder}")
        counts = class_image_counts(dataset, present=present)
        with_unseen = sum(bool(np.isin(ids, dataset.unseen).any()) for ids in present)
        absent = sum(1 for n in counts.values() if n == 0)
        lines.append(f"\nsplit {name_of_split} ({mode} view): {len(dataset)} images, {with_unseen} with an unseen "
                     f"class, {spec.num_classes - absent}/{spec.num_classes} classes present")
        width = min(max(len(c) for c in spec.classes), 40)  # ADE names list many synonyms
        lines.append(f"{'id':>5}  {'class':<{width}}  {'images':>6}  unseen")
        unseen = set(dataset.unseen)
        for index, (class_name, count) in enumerate(counts.items()):
            shown = class_name if len(class_name) <= width else class_name[:width - 3] + "..."
            lines.append(f"{index:>5}  {shown:<{width}}  {count:>6}  {'yes' if index in unseen else ''}".rstrip())
    return "\n".join(lines)


def list_report() -> str:
    roots = ", ".join(f"{source}={path}" for source, path in data_roots())
    lines = [f"data roots in order: {roots}"]
    for name in DATASETS:
        spec = load_class_spec(name)
        try:
            folder, folder_spec = locate_dataset(spec)
            where = f"{folder} (splits: {', '.join(available_splits(folder, folder_spec)) or 'none'})"
        except FileNotFoundError:
            where = f"not found (folders searched: {', '.join(f.name for f in spec.folders)})"
        lines.append(f"{name:<14} {where}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ conversion


def prepare_dataset(name: str, src, dst, splits: Iterable[str] | None = None, max_images: int | None = None,
                    overwrite: bool = False, max_size: int = ADE847_MAX_SIZE, progress: bool = True) -> Path:
    """Convert the official download ``src`` of dataset ``name`` into ``<dst>/<folder>``; returns that folder."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(CONVERTERS)}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be positive, got {max_images}")
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    spec = load_class_spec(name)
    folder = Path(dst).expanduser().resolve() / spec.folders[0].name
    _check_destination(folder, src, overwrite)

    pairs = list(CONVERTERS[name](src))
    if not pairs:
        raise FileNotFoundError(f"no {name} image/label pairs found under --src {src} (see `maft data prepare -h`)")
    wanted = sorted({p.split for p in pairs}) if splits is None else list(splits)
    unknown = sorted(set(wanted) - {p.split for p in pairs})
    if unknown:
        raise ValueError(f"{src} provides no {unknown} split for {name}; it has {sorted({p.split for p in pairs})}")
    selected = []
    for split in wanted:
        in_split = sorted((p for p in pairs if p.split == split), key=lambda p: p.id)
        selected += in_split[:max_images]

    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    resize_to = max_size if name == "ade847" else 0
    try:
        for pair in progress_bar(selected, desc=f"preparing {name}", disable=not progress):
            _write_pair(pair, partial, spec, resize_to)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave a half-written dataset behind
        raise
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


def _check_destination(folder: Path, src: Path, overwrite: bool) -> None:
    if folder == src or src in folder.parents or folder in src.parents:
        raise ValueError(f"--dst must lie outside --src: writing {folder} would touch the source {src}")
    check_output_path(folder, "--dst", directory=True)  # before reading the whole source
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} already exists and is not empty; pass --overwrite to replace it")


def _write_pair(pair: Pair, out: Path, spec: ClassSpec, resize_to: int) -> None:
    label = pair.read_label(pair.label)
    # Validate against the spec now, so a wrong source fails at prepare time and names the file.
    spec.to_contiguous(np.unique(label), "raw", source=str(pair.label))
    with _open_image(pair.image) as image:
        if image.size != (label.shape[1], label.shape[0]):
            raise ValueError(f"image and label sizes differ: {pair.image} is {image.size[0]}x{image.size[1]} "
                             f"(WxH) but {pair.label} is {label.shape[1]}x{label.shape[0]}")
        image_out = out / "images" / pair.split / f"{pair.id}.jpg"
        label_out = out / "masks" / pair.split / f"{pair.id}.png"
        image_out.parent.mkdir(parents=True, exist_ok=True)
        label_out.parent.mkdir(parents=True, exist_ok=True)
        new_size = _shorter_side_size(image.size, resize_to)
        if new_size is None and image.format == "JPEG":
            shutil.copyfile(pair.image, image_out)  # byte copy: no re-encoding loss
        else:
            image = Image.fromarray(rgb_array(image, pair.image))  # 16-bit gray by its range, as read_image
            if new_size is not None:
                image = image.resize(new_size, Image.BILINEAR)
            image.save(image_out, quality=95)
    if new_size is not None:
        label = resize_nearest(label, new_size)
    _save_label(label, label_out, palette=_palette_of(pair.label))


def _open_image(path: Path) -> Image.Image:
    # the one reader (EXIF orientation applied): a rotated photo is written upright, so the byte copy
    # below only happens when nothing was transposed (format stays JPEG)
    return open_image(path)


def _shorter_side_size(size: tuple[int, int], max_size: int) -> tuple[int, int] | None:
    """(W, H) with the shorter side scaled down to ``max_size``, or None when no resize is needed."""
    width, height = size
    if not max_size or min(width, height) <= max_size:
        return None
    if width >= height:
        return round(width / height * max_size), max_size
    return max_size, round(height / width * max_size)


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (W, H) picking source index floor(i * src / dst), as OpenCV's
    INTER_NEAREST does in the public ADE-847 conversion (PIL samples pixel centres instead)."""
    width, height = size
    rows = np.arange(height) * label.shape[0] // height
    cols = np.arange(width) * label.shape[1] // width
    return label[rows[:, None], cols[None, :]]


def _palette_of(path: Path) -> list[int] | None:
    if path.suffix.lower() != ".png":
        return None
    with Image.open(path) as image:
        return image.getpalette() if image.mode == "P" else None


def _save_label(label: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    if label.min() < 0 or label.max() > 65535:
        raise ValueError(f"label values for {path} do not fit 16 bits: {label.min()}..{label.max()}")
    if label.max() <= 255:
        height, width = label.shape
        image = Image.frombytes("P" if palette else "L", (width, height), label.astype(np.uint8).tobytes())
        if palette:
            image.putpalette(palette)  # keep the VOC colours so the files stay viewable
    else:
        image = Image.fromarray(label.astype(np.uint16))
    image.save(path)


# Label readers --------------------------------------------------------------------------------


def read_ade_full_seg(path: Path) -> np.ndarray:
    """ADE20K-full object class ids from a *_seg.png: R // 10 * 256 + G (0 = unlabeled)."""
    with Image.open(path) as image:
        if image.mode not in ("RGB", "RGBA"):
            raise ValueError(f"ADE20K-full segmentation {path} has mode {image.mode!r}; expected RGB")
        seg = np.array(image.convert("RGB")).astype(np.int32)
    return seg[..., 0] // 10 * 256 + seg[..., 1]


def read_context_mat(path: Path) -> np.ndarray:
    """PASCAL-Context LabelMap (459-class ids, 0 = unlabeled) from a trainval/<id>.mat file."""
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types for damaged files
        raise ValueError(f"cannot read PASCAL-Context label file {path}: {error}") from error
    if "LabelMap" not in mat:
        raise ValueError(f"{path} has no 'LabelMap' variable (found {sorted(k for k in mat if k[0] != '_')})")
    return np.asarray(mat["LabelMap"]).astype(np.int64)


# Source layouts -------------------------------------------------------------------------------


def _find_dir(src: Path, candidates: Iterable[str], marker: str, what: str) -> Path:
    """The first ``src/<candidate>`` containing ``marker``."""
    tried = []
    for candidate in candidates:
        path = (src / candidate).resolve()
        if (path / marker).exists():
            return path
        tried.append(str(path / marker))
    raise FileNotFoundError(f"{what} not found under --src {src}; looked for {', '.join(tried)}")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def voc_pairs(src: Path) -> Iterator[Pair]:
    voc = _find_dir(src, [".", "VOC2012", "VOCdevkit/VOC2012"], "JPEGImages", "VOC2012 (JPEGImages/)")
    lists = voc / "ImageSets" / "Segmentation"
    val_ids = set(_read_ids(lists / "val.txt"))
    for split in ("train", "val"):
        for id_ in _read_ids(lists / f"{split}.txt"):
            yield Pair(split, id_, _require(voc / "JPEGImages" / f"{id_}.jpg", "VOC image"),
                       _require(voc / "SegmentationClass" / f"{id_}.png", "VOC mask"), read_label)
    aug = next((p for p in (voc / "SegmentationClassAug", voc.parent / "SegmentationClassAug",
                            src / "SegmentationClassAug") if p.is_dir()), None)
    if aug is None:
        return
    # The usual train_aug (10582 ids) = every SBD+VOC mask that is not a VOC val image.
    aug_list = lists / "train_aug.txt"
    ids = _read_ids(aug_list) if aug_list.is_file() else sorted(
        p.stem for p in aug.glob("*.png") if p.stem not in val_ids)
    for id_ in ids:
        yield Pair("train_aug", id_, _require(voc / "JPEGImages" / f"{id_}.jpg", "VOC image"),
                   _require(aug / f"{id_}.png", "SegmentationClassAug mask"), read_label)


def coco_stuff_pairs(src: Path) -> Iterator[Pair]:
    for official, split in (("train2017", "train"), ("val2017", "val")):
        labels = next((p for p in (src / "stuffthingmaps_trainval2017" / official, src / "stuffthingmaps" / official,
                                   src / "annotations" / official) if p.is_dir()), None)
        images = next((p for p in (src / "images" / official, src / official) if p.is_dir()), None)
        if labels is None and images is None:
            continue
        if labels is None or images is None:
            raise FileNotFoundError(f"--src {src} has {official} {'images' if images else 'labels'} but not "
                                    f"{'labels (stuffthingmaps_trainval2017/' if images else 'images (images/'}"
                                    f"{official}/)")
        for label in sorted(labels.glob("*.png")):
            yield Pair(split, label.stem, _require(images / f"{label.stem}.jpg", "COCO image"), label, read_label)


def ade150_pairs(src: Path) -> Iterator[Pair]:
    ade = _find_dir(src, [".", "ADEChallengeData2016"], "annotations", "ADEChallengeData2016 (annotations/)")
    for official, split in (("training", "train"), ("validation", "val")):
        labels = ade / "annotations" / official
        if not labels.is_dir():
            continue
        for label in sorted(labels.glob("*.png")):
            yield Pair(split, label.stem, _require(ade / "images" / official / f"{label.stem}.jpg", "ADE image"),
                       label, read_label)


def ade847_pairs(src: Path) -> Iterator[Pair]:
    ade = _find_dir(src, [".", "ADE20K_2021_17_01"], "images/ADE", "ADE20K_2021_17_01 (images/ADE/)")
    index = ade / "index_ade20k.pkl"
    if index.is_file():
        with open(index, "rb") as handle:
            data = pickle.load(handle)  # the official index of the user's own download
        images = [_resolve_index_path(ade, folder, name)
                  for folder, name in zip(data["folder"], data["filename"], strict=True)]
    else:
        images = sorted(p for p in (ade / "images" / "ADE").rglob("*.jpg"))
    for image in images:
        parts = set(image.parts)
        split = "val" if "validation" in parts else "train" if "training" in parts else None
        if split is None:
            raise ValueError(f"cannot tell the split of {image}: not under images/ADE/training or validation")
        yield Pair(split, image.stem, _require(image, "ADE20K image"),
                   _require(image.with_name(image.stem + "_seg.png"), "ADE20K-full segmentation"), read_ade_full_seg)


def _resolve_index_path(ade: Path, folder: str, name: str) -> Path:
    # index_ade20k.pkl folders start with the dataset folder name (ADE20K_2021_17_01/images/ADE/...).
    folder_path = Path(folder)
    if folder_path.parts and folder_path.parts[0] == ade.name:
        folder_path = Path(*folder_path.parts[1:])
    return ade / folder_path / name


def pascal_context_pairs(src: Path) -> Iterator[Pair]:
    voc = _find_dir(src, [".", "VOC2010", "VOCdevkit/VOC2010"], "JPEGImages", "VOC2010 (JPEGImages/)")
    mats = next((p for p in (voc / "trainval", voc.parent / "trainval", src / "trainval") if p.is_dir()), None)
    if mats is None:
        raise FileNotFoundError(f"PASCAL-Context label folder trainval/ (from trainval.tar.gz) not found in {voc} "
                                f"or beside it")
    for split in ("train", "val"):
        ids = _read_ids(voc / "ImageSets" / "Main" / f"{split}.txt")
        for id_ in ids:
            mat = mats / f"{id_}.mat"
            if mat.is_file():  # PASCAL-Context labels exist for the VOC2010 train/val images
                yield Pair(split, id_, _require(voc / "JPEGImages" / f"{id_}.jpg", "VOC2010 image"), mat,
                           read_context_mat)


CONVERTERS: dict[str, Callable[[Path], Iterator[Pair]]] = {
    "voc20": voc_pairs,
    "coco_stuff171": coco_stuff_pairs,
    "ade150": ade150_pairs,
    "ade847": ade847_pairs,
    "pc59": pascal_context_pairs,
    "pc459": pascal_context_pairs,
}


# ----------------------------------------------------------------------------------------------------
# Checking a whole split


def scan_dataset(dataset, progress: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """One pass over the masks of a :class:`maft.data.datasets.SegDataset`: the class ids present in each
    image (as :func:`maft.data.datasets.classes_per_image`) and every problem found, so a check can list
    all bad files at once: unreadable masks and values outside the class list (sizes are compared
    before, from the headers, by :func:`maft.data.datasets.size_mismatches`)."""
    present, problems = [], []
    for item in progress_bar(dataset.items, desc=f"checking {dataset.name}/{dataset.split}", disable=not progress,
                     leave=False):
        try:
            raw = read_label(item.label_path)
            ids = dataset.map_labels(np.unique(raw), str(item.label_path))
        except (ValueError, OSError) as error:
            problems.append(str(error))
            ids = np.zeros(0, dtype=np.int64)
        present.append(np.unique(ids[ids != dataset.ignore_index]))
    return present, problems


def raise_problems(problems: list[str], what: str, shown: int = 10) -> None:
    """A ValueError listing the first ``shown`` problems (and how many more), if there are any."""
    if problems:
        more = f"\n... and {len(problems) - shown} more" if len(problems) > shown else ""
        raise ValueError(f"{what}: {len(problems)} problem(s):\n" + "\n".join(problems[:shown]) + more)
