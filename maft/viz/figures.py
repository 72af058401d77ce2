"""Pictures of segmentations: a class palette, coloured overlays with a legend, and proposals with their
top-k class scores before/after fine-tuning (the paper's Figs. 3 and 7).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they work headless
(Agg) and inside notebooks alike, and are never left open behind the caller's back. Importing this module
touches no IPython: a notebook's :func:`maft.notebook.setup` makes these figures display as PNG.
"""
from __future__ import annotations

import colorsys
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..ipclip import class_token_attention_mask
from ..masks import binarize_masks, mask_on

NO_CLASS = 255


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------
def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3] distinct RGB colours, the same for the same class index every time.

    The first 20 are matplotlib's tab20 (saturated ones first), the rest walk the hue circle by the
    golden ratio with alternating lightness, so neighbouring indices stay distinguishable.
    """
    tab20 = np.asarray(colormaps["tab20"].colors)
    base = np.concatenate([tab20[0::2], tab20[1::2]])
    colours = [tuple(c) for c in base[:num_classes]]
    for i in range(len(colours), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        lightness = (0.45, 0.6, 0.35)[i % 3]
        colours.append(colorsys.hls_to_rgb(hue, lightness, 0.75))
    return np.round(np.asarray(colours, dtype=np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def as_hwc_uint8(image) -> np.ndarray:
    """An RGB image as a numpy uint8 [H, W, 3], from a uint8 [3,H,W]/[H,W,3] tensor or array."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be RGB [3,H,W] or [H,W,3], got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array)


def _label_array(label_map) -> np.ndarray:
    array = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    if array.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {array.shape}")
    return array.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Overlay and legend
# --------------------------------------------------------------------------------------------------
def overlay(image, label_map, classes: Sequence[str] | None = None, alpha: float = 0.55,
            colours: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: the image blended with one colour per class; pixels without a class (255 or
    any id outside the class list) keep the image."""
    pixels = as_hwc_uint8(image)
    labels = _label_array(label_map)
    if labels.shape != pixels.shape[:2]:
        raise ValueError(f"label map {labels.shape} and image {pixels.shape[:2]} differ in size")
    num_classes = len(classes) if classes is not None else int(labels[labels != NO_CLASS].max(initial=-1)) + 1
    colours = palette(num_classes) if colours is None else np.asarray(colours, dtype=np.uint8)
    coloured = (labels >= 0) & (labels < num_classes)
    blended = pixels.astype(np.float32)
    blended[coloured] = (1 - alpha) * blended[coloured] + alpha * colours[labels[coloured]]
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def legend_entries(label_map, classes: Sequence[str], colours: np.ndarray | None = None):
    """[(class name, (r, g, b), pixel fraction)] for the classes present, largest first."""
    labels = _label_array(label_map)
    colours = palette(len(classes)) if colours is None else np.asarray(colours, dtype=np.uint8)
    ids, counts = np.unique(labels[(labels >= 0) & (labels < len(classes))], return_counts=True)
    total = labels.size
    entries = [(classes[i], tuple(int(v) for v in colours[i]), c / total) for i, c in zip(ids, counts)]
    return sorted(entries, key=lambda entry: -entry[2])


def class_label(name: str, class_id: int, unseen: Sequence[int] = ()) -> str:
    """A class name as legends show it: unseen (zero-shot) classes carry " (unseen)"."""
    return f"{name} (unseen)" if int(class_id) in set(int(u) for u in unseen) else name


def class_legend(ax, class_ids: Sequence[int], classes: Sequence[str], unseen: Sequence[int] = (),
                 colours: np.ndarray | None = None, labels: Sequence[str] | None = None, max_entries: int = 20,
                 **kwargs):
    """A legend of colour patches for ``class_ids`` on ``ax`` (unseen classes marked); a last entry
    says how many were left out beyond ``max_entries``. Returns the legend, or None for no classes."""
    colours = palette(len(classes)) if colours is None else np.asarray(colours, dtype=np.uint8)
    ids = [int(i) for i in class_ids]
    labels = list(labels) if labels is not None else [class_label(classes[i], i, unseen) for i in ids]
    handles = [Patch(facecolor=colours[i] / 255, edgecolor="black", label=label)
               for i, label in zip(ids[:max_entries], labels[:max_entries])]
    if len(ids) > max_entries:
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"... {len(ids) - max_entries} more"))
    if not handles:
        return None
    options = {"fontsize": 8, "frameon": False, "loc": "upper left", **kwargs}
    return ax.legend(handles=handles, **options)


def classes_shown(label_maps: Sequence, num_classes: int) -> list[int]:
    """Class ids present in any of ``label_maps``, the first map's by pixel share first, then the
    others' (so a legend lists the ground truth's classes before classes only a prediction shows)."""
    order: list[int] = []
    for label_map in label_maps:
        labels = _label_array(label_map)
        ids, counts = np.unique(labels[(labels >= 0) & (labels < num_classes)], return_counts=True)
        order += [int(i) for i, _ in sorted(zip(ids, counts), key=lambda pair: -pair[1]) if int(i) not in order]
    return order


def overlay_figure(image, label_map, classes: Sequence[str], alpha: float = 0.55, title: str | None = None,
                   max_legend: int = 20, unseen: Sequence[int] = ()) -> Figure:
    """A figure of the overlay with a legend of the classes present (name and pixel share; classes in
    ``unseen`` marked)."""
    pixels = overlay(image, label_map, classes, alpha)
    height, width = pixels.shape[:2]
    fig = Figure(figsize=(4.0 * width / max(height, width) + 2.5, 4.0 * height / max(height, width) + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(pixels)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    entries = legend_entries(label_map, classes)
    ids = [list(classes).index(name) for name, _, _ in entries]
    labels = [f"{class_label(name, i, unseen)} ({100 * share:.1f}%)" for i, (name, _, share) in zip(ids, entries)]
    class_legend(ax, ids, classes, unseen, labels=labels, max_entries=max_legend, bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Proposals with their top-k classes (paper Figs. 3 and 7)
# --------------------------------------------------------------------------------------------------
def highlight_mask(image, mask, dim: float = 0.3, colour=(255, 64, 64), rim_width: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: the proposal's pixels as they are, everything else darkened, a coloured rim
    (``rim_width`` pixels; default about 1/150 of the shorter side, so it stays visible when scaled)."""
    pixels = as_hwc_uint8(image).astype(np.float32)
    on = mask_on(torch.as_tensor(mask).detach().cpu()).numpy()
    if on.shape != pixels.shape[:2]:
        raise ValueError(f"mask {on.shape} and image {pixels.shape[:2]} differ in size")
    pixels[~on] *= dim
    inner = on
    for _ in range(rim_width or max(1, min(on.shape) // 150)):
        inner = _eroded(inner)
    pixels[on & ~inner] = colour
    return pixels.astype(np.uint8)


def _eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def top_k(probs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the k largest entries of a probability vector, largest first."""
    values = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, float)
    order = np.argsort(-values, kind="stable")[: min(k, len(values))]
    return order, values[order]


def plot_proposals_topk(image, masks, probs_before, probs_after, classes: Sequence[str], k: int = 5,
                        proposals: Sequence[int] | None = None, titles: tuple[str, str] = ("frozen CLIP", "MAFT"),
                        true_class: Sequence[int | None] | None = None) -> Figure:
    """One column per proposal: the proposal on the image, then bar charts of the top-k classes of
    ``probs_before`` [N, C] and (if given) ``probs_after`` [N, C]. ``proposals`` picks the columns
    (default: all, at most 6). ``true_class`` (per picked proposal) paints that class's bar green.
    """
    if masks.shape[0] != probs_before.shape[0] or (probs_after is not None and probs_after.shape != probs_before.shape):
        raise ValueError(f"masks [N,H,W] and probs [N,C] disagree: {tuple(masks.shape)}, "
                         f"{tuple(probs_before.shape)}, {None if probs_after is None else tuple(probs_after.shape)}")
    if probs_before.shape[1] != len(classes):
        raise ValueError(f"probs have {probs_before.shape[1]} columns for {len(classes)} class names")
    picked = list(range(min(6, masks.shape[0]))) if proposals is None else [int(n) for n in proposals]
    if not picked:
        raise ValueError("plot_proposals_topk: no proposals to show")
    if any(not 0 <= n < masks.shape[0] for n in picked):
        raise ValueError(f"plot_proposals_topk: proposals {picked} outside 0..{masks.shape[0] - 1}")
    if true_class is not None and len(true_class) != len(picked):
        raise ValueError(f"plot_proposals_topk: {len(true_class)} true classes for {len(picked)} proposals")
    rows = [(titles[0], probs_before)] + ([(titles[1], probs_after)] if probs_after is not None else [])
    fig = Figure(figsize=(3.0 * len(picked), 2.6 + 1.9 * len(rows)))
    grid = fig.add_gridspec(1 + len(rows), len(picked), height_ratios=[2.6] + [1.9] * len(rows))
    for column, n in enumerate(picked):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(highlight_mask(image, masks[n]))
        ax.set_title(f"proposal {n}", fontsize=9)
        ax.set_axis_off()
        target = None if true_class is None else true_class[column]
        for row, (name, probs) in enumerate(rows, start=1):
            ax = fig.add_subplot(grid[row, column])
            ids, values = top_k(probs[n], k)
            colours = ["tab:green" if target is not None and i == target else "tab:blue" for i in ids]
            ax.barh(range(len(ids))[::-1], values, color=colours)
            ax.set_yticks(range(len(ids))[::-1], [classes[i] for i in ids], fontsize=8)
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=7)
            if column == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_proposal_scores(image, mask, scores: dict, classes: Sequence[str], k: int = 5,
                         true_class: int | None = None, unseen: Sequence[int] = (), title: str = "") -> Figure:
    """One proposal across the width: the proposal on the image, then one top-k bar chart per
    classifier (``scores``: name -> probabilities [C]), the true class's bar green, unseen classes
    marked. The explorer's figure."""
    fig = Figure(figsize=(3.6 + 3.9 * len(scores), 3.4))
    grid = fig.add_gridspec(1, 1 + len(scores), width_ratios=[1.0] + [1.15] * len(scores))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(highlight_mask(image, mask))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    for column, (name, probs) in enumerate(scores.items(), start=1):
        ax = fig.add_subplot(grid[0, column])
        ids, values = top_k(probs, k)
        colours = ["tab:green" if true_class is not None and i == true_class else "tab:blue" for i in ids]
        positions = list(range(len(ids)))[::-1]
        ax.barh(positions, values, color=colours)
        ax.set_yticks(positions, [class_label(classes[i], i, unseen) for i in ids], fontsize=8)
        for y, value in zip(positions, values):
            ax.text(min(value, 0.8) + 0.02, y, f"{value:.2f}", va="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{name}: top-{len(ids)} classes", fontsize=9)
        if true_class is not None and true_class not in ids:  # say where the true class went
            values_all = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
            rank = int((values_all > values_all[true_class]).sum()) + 1
            ax.set_xlabel(f"true class {class_label(classes[true_class], true_class, unseen)}: "
                          f"{values_all[true_class]:.2f}, rank {rank}", fontsize=8, color="tab:green")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def figure_to_array(fig: Figure, dpi: int = 80) -> np.ndarray:
    """Render a figure to uint8 [H, W, 3] (for tests and embedding)."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --------------------------------------------------------------------------------------------------
# Figures of the notebook series
# --------------------------------------------------------------------------------------------------
def sample_grid(samples: Sequence[dict], classes: Sequence[str], columns: int = 4,
                unseen: Sequence[int] = ()) -> Figure:
    """Dataset samples as ground-truth overlays, with the class names present as titles and one
    legend of the colours (unseen classes marked) under the grid."""
    rows = -(-len(samples) // columns)
    shown = classes_shown([sample["label"] for sample in samples], len(classes))
    legend_rows = -(-min(len(shown), 25) // 5) if shown else 0  # five entries per legend row
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.25 * legend_rows))
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[2.6] * rows + [0.25 * legend_rows + 0.01])
    for i, sample in enumerate(samples):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(overlay(sample["image"], sample["label"], classes, alpha=0.6))
        present = [classes[c] for c in torch.unique(sample["label"]).tolist() if 0 <= c < len(classes)]
        # wrapped by hand: matplotlib's wrap=True lets a long title run off the top of the figure
        ax.set_title(textwrap.fill(", ".join(present), 40), fontsize=7)
        ax.set_axis_off()
    legend_ax = fig.add_subplot(grid[rows, :])
    legend_ax.set_axis_off()
    class_legend(legend_ax, sorted(shown), classes, unseen, max_entries=25, ncol=5, loc="upper center")
    fig.tight_layout()
    return fig


def plot_attention_masks(image, masks, grid_size: tuple[int, int]) -> Figure:
    """Each proposal on the image, the same proposal on the patch grid, and the class-query rows of the
    attention mask (eq. 2: identity over the class tokens, then the flattened grid)."""
    masks = masks.float()
    on_grid = binarize_masks(masks, grid_size)
    attention = class_token_attention_mask(on_grid.flatten(1))
    count = masks.shape[0]
    fig = Figure(figsize=(2.2 * count + 4.5, 4.6))
    grid = fig.add_gridspec(2, count + 1, width_ratios=[1] * count + [2.2])
    for n in range(count):
        top = fig.add_subplot(grid[0, n])
        top.imshow(highlight_mask(image, masks[n]))
        top.set_title(f"proposal {n}", fontsize=9)
        top.set_axis_off()
        bottom = fig.add_subplot(grid[1, n])
        bottom.imshow(on_grid[n].numpy(), cmap="Greens", vmin=0, vmax=1)
        bottom.set_title(f"{int(on_grid[n].sum())} patches on", fontsize=8)
        bottom.set_xticks([]), bottom.set_yticks([])
    ax = fig.add_subplot(grid[:, count])
    ax.imshow(attention.numpy(), cmap="Greens", aspect="auto", interpolation="nearest")
    ax.axvline(count - 0.5, color="black", lw=1)
    ax.set_xlabel(f"keys: {count} class tokens | {on_grid[0].numel()} patches")
    ax.set_ylabel("class query")
    ax.set_yticks(range(count))
    ax.set_title("attention mask (green = may attend)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_segmentations(samples: Sequence[dict], maps: dict, classes: Sequence[str],
                       unseen: Sequence[int] = (), max_legend: int = 12) -> Figure:
    """Rows of: image, ground truth, then each method's label map (``maps``: name -> list of [H, W]),
    and at the end of each row a legend of the classes that row shows (unseen classes marked)."""
    names = list(maps)
    columns = 3 + len(names)  # image, ground truth, one per method, the legend
    fig = Figure(figsize=(2.4 * (2 + len(names)) + 1.9, 2.5 * len(samples)))
    grid = fig.add_gridspec(len(samples), columns, width_ratios=[1.0] * (columns - 1) + [0.8])
    for row, sample in enumerate(samples):
        label_maps = [sample["label"]] + [maps[name][row] for name in names]
        panels = [("image", as_hwc_uint8(sample["image"]))]
        panels += [(title, overlay(sample["image"], labels, classes))
                   for title, labels in zip(["ground truth"] + names, label_maps)]
        for column, (title, pixels) in enumerate(panels):
            ax = fig.add_subplot(grid[row, column])
            ax.imshow(pixels)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
        legend_ax = fig.add_subplot(grid[row, columns - 1])
        legend_ax.set_axis_off()
        class_legend(legend_ax, classes_shown(label_maps, len(classes)), classes, unseen,
                     max_entries=max_legend, loc="center left", borderaxespad=0.0)
    fig.tight_layout()
    return fig
