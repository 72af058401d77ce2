"""Semantic segmentation datasets: image + label pairs with contiguous class ids.

Layouts read (under a dataset folder found by :func:`maft.utils.paths.dataset_dir`):

- canonical, written by ``maft data prepare``: ``images/<split>/<id>.jpg`` + ``masks/<split>/<id>.png``
  (the layout of the shared ``voc2012`` sample);
- flat sample folders: ``images/<id>.jpg`` + ``masks/<id>.png``. A flat folder holds one split, named in
  the class spec (``coco128seg`` = COCO train2017 images -> ``train``; ``ade20k150`` = ADE validation
  images -> ``val``); asking it for another split is an error, never a silent substitute.

A folder is canonical when ``images/`` has sub-folders, flat otherwise. Labels are mapped to contiguous
ids with the dataset's :class:`maft.data.class_specs.ClassSpec` (raw official values or already contiguous, per
folder). ``mode="train"`` is the training view of the ``protocol``:

- ``"zero_shot"`` (the default; ZegFormer / ZSSeg / MAFT Tables 1, 2 and 4): the class spec's unseen
  classes are unseen, and their pixels become ignore in the training view;
- ``"open_vocabulary"`` (MAFT Tables 3 and 6, paper App. B: "all 171 classes are used for training"):
  every class is seen, no pixel is mapped to ignore beyond the spec's own void values, and ``unseen``
  is empty (evaluation then reports mIoU over all classes).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..utils.paths import dataset_dir
from ..utils.progress import progress_bar
from ..world import WorldDataset
from .class_specs import ClassSpec, FolderSpec, apply_lookup, check_protocol, load_class_spec
from .user_folder import resolve_spec

DATASETS = ("voc20", "coco_stuff171", "ade150", "ade847", "pc59", "pc459")
MODES = ("eval", "train")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_MODES = ("P", "L", "I", "I;16", "I;16L", "I;16B", "1")  # single-channel index images
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # grayscale beyond 8 bits (read_image)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
EXIF_ORIENTATION = 0x0112  # the EXIF tag phones set instead of rotating the stored pixels
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # orientations shown with width and height exchanged


class ImageConversionWarning(UserWarning):
    """An image was read, but not exactly as stored: its alpha channel was dropped, or only its first
    frame was used. The message names the file and what was done."""


@dataclass(frozen=True)
class SegItem:
    id: str
    image_path: Path
    label_path: Path


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs of one split of one benchmark.

    Attributes: ``name``, ``classes`` (list of names, contiguous-id order), ``seen`` / ``unseen`` (class
    indices under ``protocol``), ``ignore_index`` (255, or 65535 for ADE-847 / PASCAL-Context-459 whose
    ids pass 255), ``split``, ``mode``, ``protocol``, ``folder`` (dataset folder), ``labels`` ("raw" |
    "contiguous"), ``items``, ``prompts`` (the text put into the prompt templates for each class).
    A sample is ``{"image": uint8 [3,H,W] RGB, "label": int64 [H,W], "id", "image_path", "label_path"}``.
    """

    def __init__(self, name: str | ClassSpec, split: str, root: str | os.PathLike | None = None,
                 mode: str = "eval", max_images: int | None = None, protocol: str = "zero_shot"):
        spec = name if isinstance(name, ClassSpec) else load_class_spec(name)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_protocol(protocol)
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
        self.spec = spec
        self.name = spec.name
        self.classes = list(spec.classes)
        zero_shot = protocol == "zero_shot"
        self.seen = spec.seen_ids if zero_shot else list(range(spec.num_classes))
        self.unseen = spec.unseen_ids if zero_shot else []
        self.prompts = list(spec.prompt_names)
        self.ignore_index = spec.ignore_index
        self.split = split
        self.mode = mode
        self.protocol = protocol
        self.folder, folder_spec = locate_dataset(spec, root)
        self.labels = folder_spec.labels
        self.items = list_split(self.folder, folder_spec, split)[:max_images]
        # One table maps raw values straight to the requested view (unseen -> ignore when training
        # zero-shot; the open-vocabulary protocol trains on every class).
        self._table = spec.lookup_table(self.labels, drop_unseen=(mode == "train" and zero_shot))

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"SegDataset({self.name!r}, split={self.split!r}, mode={self.mode!r}, "
                f"protocol={self.protocol!r}, images={len(self)}, "
                f"folder={str(self.folder)!r})")

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = read_image(item.image_path)
        label = self.label_array(index)
        if tuple(image.shape[1:]) != label.shape:
            raise ValueError(
                f"image and mask sizes differ: {item.image_path} is {image.shape[2]}x{image.shape[1]} (WxH) "
                f"but {item.label_path} is {label.shape[1]}x{label.shape[0]}")
        return {"image": image, "label": torch.from_numpy(label), "id": item.id,
                "image_path": str(item.image_path), "label_path": str(item.label_path)}

    def label_array(self, index: int) -> np.ndarray:
        """The contiguous int64 label map of item ``index`` (this dataset's view), without the image."""
        item = self.items[index]
        return self.map_labels(read_label(item.label_path), str(item.label_path))

    def map_labels(self, raw: np.ndarray, source: str = "label array") -> np.ndarray:
        outside_is_ignore = self.labels == "raw" and self.spec.unlisted == "ignore"
        return apply_lookup(self._table, raw, source, outside_is_ignore, self.ignore_index,
                            f"{self.name} ({self.labels} labels)")


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, mode: str = "eval",
                  max_images: int | None = None, protocol: str = "zero_shot") -> SegDataset:
    """The ``split`` of benchmark ``name`` (one of :data:`DATASETS`) from the first data root holding it,
    with the seen/unseen classes of ``protocol`` (see the module doc).

    ``"world"`` is the generated offline world of :mod:`maft.world` (same sample contract, no files;
    zero-shot protocol only). ``name`` may also be your own dataset: a folder with ``images/``,
    ``masks/`` and ``classes.yaml``, that class file, or a class-spec YAML path (see :mod:`maft.data.user_folder`).
    """
    check_protocol(protocol)
    if name == "world":
        if protocol != "zero_shot":
            raise ValueError(f"data.protocol={protocol!r}: the world dataset has the zero-shot protocol only")
        return WorldDataset(split=split, mode=mode, max_images=max_images, root=root)
    if name not in DATASETS:
        return SegDataset(resolve_spec(name), split, root=root, mode=mode, max_images=max_images, protocol=protocol)
    return SegDataset(name, split, root=root, mode=mode, max_images=max_images, protocol=protocol)


def locate_dataset(spec: ClassSpec, root: str | os.PathLike | None = None) -> tuple[Path, FolderSpec]:
    """The dataset folder (root resolution of :func:`maft.utils.paths.dataset_dir`) and its folder spec."""
    if not spec.folders:
        raise ValueError(f"class spec {spec.name!r} ({spec.source}) lists no folders to search")
    fixed = Path(spec.folders[0].name)
    if fixed.is_absolute():  # a user's dataset folder (maft.data.user_folder): used as is, whatever the data roots
        if not fixed.is_dir():
            raise FileNotFoundError(f"dataset folder {fixed} (from {spec.source}) does not exist")
        return fixed, spec.folders[0]
    folder = dataset_dir([f.name for f in spec.folders], root)
    return folder, spec.folder(folder.name)


def list_split(folder: Path, folder_spec: FolderSpec, split: str) -> list[SegItem]:
    """Sorted image/mask pairs of ``split`` in ``folder`` (canonical or flat layout, see module doc)."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for path in (images_dir, masks_dir):
        if not path.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} has no {path.name}/ folder (expected {path})")
    splits = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if splits:
        if split not in splits:
            raise FileNotFoundError(f"{folder} has no split {split!r}; available splits: {splits}")
        images_dir, masks_dir = images_dir / split, masks_dir / split
        if not masks_dir.is_dir():
            raise FileNotFoundError(f"{folder}: masks for split {split!r} are missing (expected {masks_dir})")
    elif folder_spec.flat_split is None:
        raise FileNotFoundError(f"{images_dir} has no split sub-folders (expected {images_dir / split})")
    elif split != folder_spec.flat_split:
        raise FileNotFoundError(
            f"{folder} is a flat sample folder holding only the {folder_spec.flat_split!r} split; "
            f"split {split!r} does not exist there")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    items = [SegItem(p.stem, p, masks_dir / f"{p.stem}.png") for p in images]
    missing = [item for item in items if not item.label_path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) in {images_dir} have no mask, e.g. "
                                f"{missing[0].image_path} -> missing {missing[0].label_path}")
    return items


def open_image(path: str | os.PathLike) -> Image.Image:
    """The one image reader of maft: a decoded PIL image as viewers show it.

    EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored 400x200 with
    orientation 6 is shown, and returned, 200x400, so labels drawn on the photo as shown fit it. An
    image with several frames (animated GIF, multi-page TIFF) gives its first frame and an image with
    an alpha channel keeps it here (:func:`rgb_array` drops it); both with an
    :class:`ImageConversionWarning` naming the file. Unreadable files raise ValueError naming them.
    """
    try:
        image = Image.open(path)
        image.load()  # decodes now, so a truncated file fails here rather than as gray pixels later
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: corrupt or truncated file ({error})") from error
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        warnings.warn(f"image {path} has {frames} frames ({image.format}); using the first frame only",
                      ImageConversionWarning, stacklevel=2)
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"image {path} has an alpha channel (mode {image.mode}); it is dropped: transparent "
                      "pixels keep their stored colour, not a background", ImageConversionWarning, stacklevel=2)
    if exif_orientation(image) not in (None, 1):
        try:
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, KeyError) as error:
            image.close()
            raise ValueError(f"cannot read image {path}: bad EXIF orientation ({error})") from error
        image.close()
        image = upright
    return image


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag (1-8) of an open image, or None; unreadable EXIF counts as none."""
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError, KeyError):
        return None


def shown_size(image: Image.Image) -> tuple[int, int]:
    """(W, H) of an open image as viewers show it (EXIF orientation applied), from its header only."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in SWAPPED_ORIENTATIONS else (width, height)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """uint8 [3,H,W] RGB as viewers show it (:func:`open_image`: EXIF orientation applied, warnings for
    alpha and extra frames); grayscale / palette / RGBA / CMYK are converted, unreadable files raise
    ValueError.

    Images with more than 8 bits per sample are scaled by the largest value their type can hold, the
    convention of scikit-image (``img_as_ubyte``) and torchvision (``to_dtype(..., scale=True)``): 16-bit
    grayscale (PIL modes ``I;16*``, and ``I`` holding 0..65535) maps v -> round(v * 255 / 65535), float
    images (mode ``F``) are taken to lie in [0, 1]. Scaling by the type, not by each image's own
    minimum and maximum, keeps a dataset's images comparable (one sensor value, one pixel value) and a
    constant image constant. PIL's own conversion would saturate every value above 255 to white.
    16-bit colour PNGs need nothing: PIL already reads them as 8-bit RGB(A) by their high byte.
    """
    image = open_image(path)
    try:
        return torch.from_numpy(rgb_array(image, path)).permute(2, 0, 1).contiguous()
    finally:
        image.close()


def rgb_array(image: Image.Image, path: str | os.PathLike = "image") -> np.ndarray:
    """uint8 [H,W,3] of a loaded PIL image, wide grayscale scaled by its type's range (see :func:`read_image`)."""
    if image.mode in WIDE_GRAY_MODES:
        return np.repeat(_wide_gray_to_uint8(np.array(image), image.mode, path)[:, :, None], 3, axis=2)
    return np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def _wide_gray_to_uint8(values: np.ndarray, mode: str, path) -> np.ndarray:
    """One 16-bit, 32-bit integer or float grayscale plane -> uint8 by the type's range (see read_image)."""
    if mode == "F":
        if not np.isfinite(values).all() or values.min(initial=0.0) < 0 or values.max(initial=0.0) > 1:
            raise ValueError(f"image {path} is a float image with values outside [0, 1] (or not finite); "
                             "expected intensities in [0, 1]")
        return np.rint(values * 255.0).astype(np.uint8)
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"image {path} is a 32-bit integer image with values in [{values.min()}, {values.max()}]; "
                         "only 16-bit intensities (0..65535) can be converted")
    return ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535), exact in integers


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The integer values of a single-channel label PNG (palette indices for mode 'P', not colours)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in LABEL_MODES:
                raise ValueError(f"label file {path} has image mode {image.mode!r}; expected a single-channel "
                                 f"index PNG (palette 'P', 8-bit 'L' or 16-bit), not colours")
            return np.array(image)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read label file {path}: corrupt or truncated file ({error})") from error


def available_splits(folder: Path, folder_spec: FolderSpec) -> list[str]:
    """Split names a dataset folder holds (sub-folders of ``images/``, or the flat folder's one split)."""
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} has no images/ folder (expected {images_dir})")
    splits = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    return splits or ([folder_spec.flat_split] if folder_spec.flat_split else [])


def size_mismatches(dataset: SegDataset, progress: bool = True) -> list[str]:
    """One line per item whose image and mask sizes differ (the pairs ``dataset[i]`` rejects).

    Only the file headers are read, so checking a whole split costs little next to reading its labels.
    """
    problems = []
    for item in progress_bar(dataset.items, desc=f"checking {dataset.name}/{dataset.split} sizes",
                             disable=not progress, leave=False):
        sizes = []
        for path, rotated in ((item.image_path, True), (item.label_path, False)):
            try:
                with Image.open(path) as image:
                    # as read_image / read_label return them: the photo turned by its EXIF orientation, the
                    # mask as stored (read_label applies no EXIF)
                    sizes.append(shown_size(image) if rotated else image.size)
            except (OSError, SyntaxError, ValueError) as error:
                raise ValueError(f"cannot read {path}: corrupt or not an image ({error})") from error
        if sizes[0] != sizes[1]:
            problems.append(f"{item.image_path} is {sizes[0][0]}x{sizes[0][1]} (WxH) but {item.label_path} is "
                            f"{sizes[1][0]}x{sizes[1][1]}")
    return problems


def classes_per_image(dataset: SegDataset, progress: bool = True) -> list[np.ndarray]:
    """For each item, the sorted contiguous class ids present in its label (this dataset's view)."""
    present = []
    for index in progress_bar(range(len(dataset)),
                              desc=f"reading {dataset.name}/{getattr(dataset, 'split', '')} labels",
                              disable=not progress, leave=False):
        if isinstance(dataset, SegDataset):
            item = dataset.items[index]
            # Mapping the distinct raw values is enough (and validates them); no need to map every pixel.
            ids = dataset.map_labels(np.unique(read_label(item.label_path)), str(item.label_path))
        else:  # any dataset with the sample contract, e.g. the generated world
            ids = np.unique(dataset[index]["label"].numpy())
        present.append(np.unique(ids[ids != dataset.ignore_index]))
    return present


def class_image_counts(dataset: SegDataset, progress: bool = True,
                       present: list[np.ndarray] | None = None) -> dict[str, int]:
    """Number of images of ``dataset`` (in its own view) holding each class, in class order.

    ``present`` (from :func:`classes_per_image`) avoids reading the labels a second time.
    """
    present = classes_per_image(dataset, progress) if present is None else present
    counts = np.zeros(len(dataset.classes), dtype=np.int64)
    for ids in present:
        counts[ids] += 1
    return {name: int(n) for name, n in zip(dataset.classes, counts, strict=True)}
