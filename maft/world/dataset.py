"""The world as a segmentation dataset: scenes rendered on the fly, with zero-shot training views."""
from __future__ import annotations

from pathlib import Path

import torch

from .draw import render_scene
from .spec import IGNORE_INDEX, load_world_spec


class WorldDataset(torch.utils.data.Dataset):
    """The world as a segmentation dataset (the SegDataset contract of ``maft.data.datasets``).

    Samples are generated on the fly (about a millisecond each): ``image`` uint8 [3,H,W], ``label``
    int64 [H,W], ``id``, ``image_path``/``label_path`` (virtual ``world:<split>/<index>`` names: no
    file exists), and ``caption``. ``mode="train"`` is the zero-shot training view: unseen-class
    pixels become ``ignore_index`` (captions are left whole: they are not segmentation labels).
    """

    name = "world"
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", mode: str = "eval", max_images: int | None = None,
                 root=None, spec: str | Path | None = None):
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"max_images must be None or a positive int, got {max_images!r}")
        self.spec = load_world_spec(spec)
        self.split = split
        self.mode = mode
        self.root = root  # accepted for build_dataset's signature; the world needs no files
        size = self.spec.split_size(split)
        self.length = size if max_images is None else min(size, max_images)
        self.classes = list(self.spec.classes)
        self.seen = list(self.spec.seen)
        self.unseen = list(self.spec.unseen)
        self._train_map = torch.arange(256, dtype=torch.int64)
        self._train_map[self.unseen] = IGNORE_INDEX

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not -self.length <= index < self.length:
            raise IndexError(f"world {self.split} has {self.length} samples, asked for {index}")
        index = index % self.length
        scene = render_scene(self.spec, self.split, index)
        label = torch.from_numpy(scene.label)
        if self.mode == "train":
            label = self._train_map[label]
        name = f"world:{self.split}/{index:06d}"
        return {
            "image": torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
            "label": label,
            "id": f"world-{self.split}-{index:06d}",
            "image_path": name,
            "label_path": name,
            "caption": scene.caption,
        }
