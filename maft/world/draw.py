"""Drawing the world: textures, shapes, scenes and their captions (all of it a pure function of the spec,
the split and the scene index). Pretraining scenes and the zero-shot probes are drawn at the world
CLIP's pretraining size; the segmentation splits on a larger canvas with things at the same pixel size
(``canvas`` in world.yaml). The world CLIP's identity hashes the first pretraining scenes this code
draws (:func:`maft.world.pretrain.pretraining_data_fingerprint`): a change of the drawing re-pretrains it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .spec import WorldSpec, load_world_spec, scene_rng


# --------------------------------------------------------------------------------------------------
# Textures (float RGB [H,W,3] in 0..255, drawn over the whole image and cut to a region later)
# --------------------------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise in [0,1]: a random grid every ``cell`` pixels, bilinearly interpolated."""
    grid = rng.random((int(height / cell) + 2, int(width / cell) + 2))
    ys = (np.arange(height) + 0.5) / cell
    xs = (np.arange(width) + 0.5) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _mix(colour, colour2, t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(colour, np.float32), np.asarray(colour2, np.float32)
    return a + (b - a) * t[..., None]


def texture_sky(rng, h, w, colour, colour2):
    """Vertical gradient (deep blue at the top) with soft white clouds."""
    gradient = np.broadcast_to(np.linspace(0, 1, h)[:, None], (h, w))
    sky = _mix(colour, colour2, gradient)
    cloud = np.clip((smooth_noise(rng, h, w, rng.uniform(8, 16)) - 0.55) * 3.0, 0, 0.85)
    return sky * (1 - cloud[..., None]) + 248 * cloud[..., None]


def texture_blades(rng, h, w, colour, colour2):
    """Grass: vertical streaks (one random shade per column, varying slowly down it) and speckle."""
    columns = rng.random(w)[None, :]
    t = 0.55 * columns + 0.45 * smooth_noise(rng, h, w, 5)
    return _mix(colour, colour2, t) + rng.normal(0, 7, (h, w, 1))


def texture_waves(rng, h, w, colour, colour2, period=(4.5, 8)):
    """Water: horizontal ripples, bent along x, with sparse bright crests (``period`` range in pixels)."""
    period = rng.uniform(*period)
    bend = rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * np.arange(w) / rng.uniform(14, 30) + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.arange(h)[:, None] / period + bend[None, :] + rng.uniform(0, 6.3)
    crest = (0.5 + 0.5 * np.sin(phase)) ** 3
    return _mix(colour, colour2, crest) + rng.normal(0, 4, (h, w, 1))


def texture_grains(rng, h, w, colour, colour2):
    """Sand, snow, asphalt: fine per-pixel grain, sparse coloured grains, slow brightness drift."""
    base = _mix(colour, colour2, (rng.random((h, w)) < 0.09).astype(np.float32))
    drift = (smooth_noise(rng, h, w, 10) - 0.5) * 22
    return base + drift[..., None] + rng.normal(0, 7, (h, w, 1))


def texture_bricks(rng, h, w, colour, colour2):
    """Brick wall: staggered rows of bricks (each its own shade) with 1-pixel mortar lines."""
    brick_h = int(rng.integers(5, 8))
    brick_w = int(rng.integers(10, 15))
    ys, xs = np.mgrid[0:h, 0:w]
    row = (ys + int(rng.integers(0, brick_h))) // brick_h
    shifted = xs + (row % 2) * (brick_w // 2) + int(rng.integers(0, brick_w))
    col = shifted // brick_w
    shade = rng.normal(0, 14, (row.max() + 1, col.max() + 1))[row, col]
    mortar = ((ys + int(rng.integers(0, brick_h))) % brick_h == 0) | (shifted % brick_w == 0)
    bricks = np.asarray(colour, np.float32) + shade[..., None]
    image = np.where(mortar[..., None], np.asarray(colour2, np.float32), bricks)
    return image + rng.normal(0, 4, (h, w, 1))


TEXTURES = {
    "sky": texture_sky,
    "blades": texture_blades,
    "waves": texture_waves,
    "grains": texture_grains,
    "bricks": texture_bricks,
}


# --------------------------------------------------------------------------------------------------
# Shapes: boolean masks from pixel-centre coordinates
# --------------------------------------------------------------------------------------------------
def _regular_polygon(rho, phi, sides: int, circumradius: float) -> np.ndarray:
    """Inside a regular polygon with a vertex at angle 0 (distance to the edge in polar form)."""
    sector = 2 * np.pi / sides
    local = np.mod(phi, sector) - sector / 2
    return rho * np.cos(local) <= circumradius * np.cos(sector / 2)


def _star(rho, phi, outer: float, inner: float, points: int = 5) -> np.ndarray:
    """Inside a star polygon: the edge from an outer vertex (angle 0) to the next inner vertex."""
    half = np.pi / points
    psi = np.mod(phi, 2 * half)
    psi = np.where(psi > half, 2 * half - psi, psi)
    p1 = np.array([outer, 0.0])
    edge = np.array([inner * np.cos(half), inner * np.sin(half)]) - p1
    numerator = p1[0] * edge[1] - p1[1] * edge[0]
    denominator = np.cos(psi) * edge[1] - np.sin(psi) * edge[0]
    return rho <= numerator / denominator


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float) -> tuple[np.ndarray, int, int]:
    """Boolean mask of ``shape`` in a window around its centre; returns (mask, top, left) where
    (top, left) is the window's image position (may be negative: shapes can leave the image)."""
    reach = int(np.ceil(1.4 * radius)) + 1  # every shape lies within 1.35 radius of its centre
    top, left = int(np.floor(cy)) - reach, int(np.floor(cx)) - reach
    coords = np.arange(2 * reach + 1) + 0.5
    dx = coords[None, :] + left - cx
    dy = coords[:, None] + top - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if shape == "circle":
        mask = np.hypot(u, v) <= radius
    elif shape == "square":
        side = 0.85 * radius
        mask = (np.abs(u) <= side) & (np.abs(v) <= side)
    elif shape == "triangle":  # a vertex points up (image y grows downwards)
        mask = _regular_polygon(np.hypot(u, v), np.arctan2(v, u) + np.pi / 2, 3, 1.3 * radius)
    elif shape == "star":
        mask = _star(np.hypot(u, v), np.arctan2(v, u) + np.pi / 2, 1.35 * radius, 0.55 * radius)
    elif shape == "cross":
        arm = 0.38 * radius
        mask = ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    else:
        raise ValueError(f"unknown shape {shape!r} (world.yaml things.shapes)")
    return mask, top, left


def paste(window: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The part of a window mask that falls inside a ``size x size`` image, as a full-image mask."""
    full = np.zeros((size, size), bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + window.shape[0], size), min(left + window.shape[1], size)
    if y1 > y0 and x1 > x0:
        full[y0:y1, x0:x1] = window[y0 - top:y1 - top, x0 - left:x1 - left]
    return full


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------
@dataclass
class Scene:
    image: np.ndarray  # uint8 [H,W,3]
    label: np.ndarray  # int64 [H,W], class ids
    things: list[dict]  # per thing: class_id, area (visible pixels)
    stuff: list[int]  # stuff class ids, top band first
    caption: str


def _background(spec: WorldSpec, rng, stuff_ids: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bands of the given stuff classes (top first) with wavy, slightly tilted borders."""
    k = len(stuff_ids)
    xs = np.arange(size) + 0.5
    ys = (np.arange(size) + 0.5)[:, None]
    band = np.zeros((size, size), np.int64)
    for j in range(1, k):
        base = size * (j + rng.uniform(-0.25, 0.25)) / k
        border = (base + rng.uniform(-0.15, 0.15) * (xs - size / 2)
                  + rng.uniform(0, 3) * np.sin(2 * np.pi * xs / rng.uniform(16, 48) + rng.uniform(0, 6.3)))
        band += ys >= border[None, :]
    image = np.zeros((size, size, 3), np.float32)
    label = np.zeros((size, size), np.int64)
    for j, class_id in enumerate(stuff_ids):
        params = dict(spec.raw["stuff"][spec.classes[class_id]])
        kind, colour, colour2 = params.pop("texture"), params.pop("colour"), params.pop("colour2")
        jitter = spec.raw.get("stuff_colour_jitter", 0)
        if jitter:  # one shift per band, both colours alike: siblings' colour ranges overlap
            shift = rng.uniform(-jitter, jitter, 3)
            colour, colour2 = np.asarray(colour) + shift, np.asarray(colour2) + shift
        texture = TEXTURES[kind](rng, size, size, colour, colour2, **params)
        region = band == j
        image[region] = texture[region]
        label[region] = class_id
    return image, label


def _choose_stuff(spec: WorldSpec, rng, count: int | None = None, only: int | None = None,
                  regions=None, among: tuple[int, ...] | None = None) -> list[int]:
    """The scene's stuff bands (top first): ``count`` (or a count in ``regions``) distinct classes of
    ``among`` (a setting's stuff; at most all of them) or of every stuff class."""
    if only is not None:
        return [only]
    low, high = regions or spec.raw["background_regions"]
    count = int(rng.integers(low, high + 1)) if count is None else count
    pool = among or spec.stuff_ids
    chosen = [int(c) for c in rng.choice(pool, size=min(count, len(pool)), replace=False)]
    top = [c for c in chosen if spec.classes[c] in spec.raw.get("top_only", [])]
    rest = [c for c in chosen if c not in top]
    return top[:1] + rest + top[1:]  # at most one top-only class can really be on top


def pattern_mask(params: dict, rng, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Which of the pixels (ys, xs) show the pattern's second colour (random phase/orientation)."""
    kind = params["kind"]
    if kind == "solid":
        return np.zeros(len(ys), bool)
    if kind == "stripes":
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        return np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / params["period"] + phase) < 0
    if kind == "dots":
        dy, dx = rng.integers(0, params["period"], 2)
        return (((ys + dy) % params["period"]) < params["dot"]) & (((xs + dx) % params["period"]) < params["dot"])
    if kind == "checks":
        dy, dx = rng.integers(0, 2 * params["cell"], 2)
        return ((ys + dy) // params["cell"] + (xs + dx) // params["cell"]) % 2 == 1
    raise ValueError(f"unknown pattern kind {kind!r} (world.yaml things.patterns)")


def _paint_thing(spec: WorldSpec, rng, image: np.ndarray, mask: np.ndarray, class_id: int) -> None:
    """The thing's colour (with instance jitter) and pattern, a gentle lighting gradient, fine noise."""
    colour, pattern = spec.thing_parts(class_id)
    things = spec.raw["things"]
    params = things["patterns"][pattern]
    base = np.asarray(things["colours"][colour], np.float32)
    base = base + rng.uniform(-things["colour_jitter"], things["colour_jitter"], 3)
    second = np.asarray(params["dot_colour"], np.float32) if "dot_colour" in params else base * params.get("dark", 1.0)
    ys, xs = np.nonzero(mask)
    pixels = np.where(pattern_mask(params, rng, ys, xs)[:, None], second, base)
    direction = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(direction) + ys * np.sin(direction)
    along = (along - along.mean()) / (2 * np.abs(along - along.mean()).max() + 1e-6)  # in [-0.5, 0.5]
    light = along * rng.uniform(0, 24)  # at most +-12 across the thing
    image[ys, xs] = pixels + (light + rng.normal(0, 3, len(ys)))[:, None]


def _place_things(spec: WorldSpec, rng, image, label, thing_ids: list[int],
                  on_stuff: list[int | None] | None = None) -> list[dict]:
    """Draw things one over another; a placement is retried while it would hide too much of what is
    already there (a thing keeps ``min_visible`` of itself, every region keeps ``min_pixels``).
    ``on_stuff[k]``: a stuff class thing k's centre must lie on (its habitat), or None."""
    cfg = spec.raw["things"]
    size = label.shape[0]  # things keep their pixel size on any canvas
    placed: list[dict] = []
    stuff_present = [int(c) for c in np.unique(label)]
    bands = label.copy()  # the background alone: where a habitat is
    on_stuff = on_stuff or [None] * len(thing_ids)
    for class_id, habitat in zip(thing_ids, on_stuff):
        shape = str(rng.choice(cfg["shapes"]))  # shape is not part of the class
        for _attempt in range(25 if habitat is None else 40):
            radius = rng.uniform(*cfg["radius"])
            cx, cy = rng.uniform(0.5 * radius, size - 0.5 * radius, 2)
            if habitat is not None and bands[min(int(cy), size - 1), min(int(cx), size - 1)] != habitat:
                continue
            angle = 0.0 if shape == "circle" else rng.uniform(-0.5, 0.5)
            window, top, left = shape_mask(shape, cx, cy, radius, angle)
            mask = paste(window, top, left, size)
            full_area = int(window.sum())
            if mask.sum() < max(cfg["min_pixels"], cfg["min_visible"] * full_area):
                continue
            trial = np.where(mask, class_id, label)
            counts = np.bincount(trial.ravel(), minlength=len(spec.classes))
            ok = all(counts[t["class_id"]] >= cfg["min_visible"] * t["full_area"] for t in placed)
            ok = ok and all(counts[c] >= cfg["min_pixels"] for c in stuff_present)
            if ok:
                label[:] = trial
                _paint_thing(spec, rng, image, mask, class_id)
                placed.append({"class_id": class_id, "full_area": full_area})
                break
    for thing in placed:
        thing["area"] = int((label == thing["class_id"]).sum())
    return placed


def _choose_setting(spec: WorldSpec, rng) -> tuple[int, ...] | None:
    """The scene's setting (``context.settings``: a farm, a coast, a town), as real photographs have
    one: with probability ``context.setting_strength`` the stuff of one setting, chosen uniformly;
    otherwise None (any stuff). Since every thing's habitat lies in one setting, things of one
    setting meet in a scene more often than chance: co-occurring things carry context, as on real data.
    No random draw at all without settings, so a world without them draws as before."""
    settings = spec.settings
    if not settings:
        return None
    if rng.random() >= spec.raw["context"]["setting_strength"]:
        return None
    return settings[int(rng.integers(len(settings)))]


def _choose_things(spec: WorldSpec, rng, count: int, stuff_ids: list[int],
                   setting: tuple[int, ...] | None = None) -> tuple[list[int], list]:
    """``count`` distinct thing classes and, per thing, the stuff band it must stand on (or None).

    With probability ``context.strength`` a thing belongs to the scene: it comes from the habitat of
    one of the scene's stuff bands (chosen uniformly) and stands on it, or, when that habitat is used
    up, from the habitat of any stuff of the scene's ``setting`` and stands anywhere (a farm scene has
    more farm animals than its grass band alone holds). Otherwise it is any thing not yet chosen,
    anywhere. Without a ``context`` section, things are independent of the stuff (the world before
    issue 19)."""
    context = spec.raw.get("context")
    if not context:
        return [int(c) for c in rng.choice(spec.thing_ids, size=count, replace=False)], [None] * count
    habitats = spec.habitats
    chosen: list[int] = []
    on_stuff: list[int | None] = []
    for _ in range(count):
        if rng.random() < context["strength"]:
            stuff = int(rng.choice(stuff_ids))
            options = [c for c in habitats.get(stuff, ()) if c not in chosen]  # a stuff may house no thing
            if options:
                chosen.append(int(rng.choice(options)))
                on_stuff.append(stuff)
                continue
            options = [c for s in (setting or ()) for c in habitats.get(s, ()) if c not in chosen]
            if options:
                chosen.append(int(rng.choice(options)))
                on_stuff.append(None)
                continue
        chosen.append(int(rng.choice([c for c in spec.thing_ids if c not in chosen])))
        on_stuff.append(None)
    return chosen, on_stuff


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(spec: WorldSpec, rng, things: list[dict], stuff: list[int]) -> str:
    """An image-level caption naming every class of the scene once, wording and order random."""
    sizes = sorted(spec.raw["things"]["size_words"].items(), key=lambda kv: kv[1])
    phrases = []
    for thing in things:
        words = []
        if rng.random() < 0.6:  # like web captions, sizes are mentioned only sometimes
            words.append([word for word, low in sizes if thing["area"] >= low][-1])
        words.append(spec.classes[thing["class_id"]])
        phrases.append(" ".join(words))
    stuff_words = [("the " if rng.random() < 0.5 else "") + spec.classes[c] for c in stuff]
    rng.shuffle(phrases)
    rng.shuffle(stuff_words)
    kind = "with_things" if phrases else "stuff_only"
    template = rng.choice(spec.raw["captions"][kind])
    return template.format(things=_join(phrases) if phrases else "", stuff=_join(stuff_words))


def _repatterned(spec: WorldSpec, rng, thing_ids: list[int]) -> list[int] | None:
    """The same colours with other patterns (each thing one it did not have; classes distinct), or
    None when random tries find no such assignment (e.g. four things of one colour)."""
    patterns = spec.raw["things"]["patterns"]
    for _attempt in range(20):
        changed: list[int] = []
        for class_id in thing_ids:
            colour, pattern = spec.thing_parts(class_id)
            options = [spec.classes.index(f"{colour} {p}") for p in patterns if p != pattern]
            options = [c for c in options if c not in changed]
            if not options:
                break
            changed.append(int(rng.choice(options)))
        if len(changed) == len(thing_ids):
            return changed
    return None


def render_scene(spec: WorldSpec, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split``. Splits "single" and "stuff_only" are the zero-shot probes: one
    thing (class ``index mod #things``) on 1-2 stuff bands / one stuff band (``index mod #stuff``)."""
    if not 0 <= index < spec.split_size(split):
        raise IndexError(f"world split {split!r} has {spec.split_size(split)} scenes, asked for {index}")
    # Pretraining twins: odd scene 2k+1 repeats scene 2k (same background, colours and wording, the
    # first thing's shape and place; later things may move, as patterns draw differently) with every
    # thing's pattern changed: pairs in one batch that mostly only patterns tell apart.
    twin = split == "pretrain" and spec.raw.get("pretrain_twins", False) and index % 2 == 1
    return _render(spec, split, index, twin)


def _render(spec: WorldSpec, split: str, index: int, twin: bool) -> Scene:
    rng = scene_rng(spec.seed, split, index - 1 if twin else index)
    if split == "single":
        stuff_ids = _choose_stuff(spec, rng, count=int(rng.integers(1, 3)))
        thing_ids = [spec.thing_ids[index % len(spec.thing_ids)]]
    elif split == "stuff_only":
        stuff_ids = _choose_stuff(spec, rng, only=spec.stuff_ids[index % len(spec.stuff_ids)])
        thing_ids = []
    else:
        (low, high), regions = spec.scene_counts(split)
        setting = _choose_setting(spec, rng)
        stuff_ids = _choose_stuff(spec, rng, regions=regions, among=setting)
        count = int(rng.integers(low, high + 1))
        thing_ids, on_stuff = _choose_things(spec, rng, count, stuff_ids, setting)
        if twin:
            thing_ids = _repatterned(spec, scene_rng(spec.seed, "pretrain-twin", index), thing_ids) or []
            if not thing_ids:  # a stuff-only scene, or no repatterning: an independent scene instead
                return _render(spec, split, index, twin=False)
    if split in ("single", "stuff_only"):
        on_stuff = None  # the probes have no context
    # (a twin keeps its original's places, drawn alike, though its new patterns lose the habitat)
    image, label = _background(spec, rng, stuff_ids, spec.scene_size(split))
    things = _place_things(spec, rng, image, label, thing_ids, on_stuff)
    present_stuff = [c for c in stuff_ids if (label == c).any()]
    # wording from its own stream, so twins are worded alike
    caption_rng = scene_rng(spec.seed, f"{split}-caption", index - 1 if twin else index)
    caption = make_caption(spec, caption_rng, things, present_stuff)
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), label, things, present_stuff, caption)


def save_scene_grid(split: str, count: int, path: str | Path, columns: int = 8) -> Path:
    """Scenes and their label maps (one random colour per class) side by side, as one PNG."""
    spec = load_world_spec()
    palette = np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8)
    tiles = []
    for index in range(count):
        scene = render_scene(spec, split, index)
        tiles.append(np.concatenate([scene.image, palette[scene.label]], axis=1))
    rows = [np.concatenate(tiles[r:r + columns] + [np.zeros_like(tiles[0])] * (columns - len(tiles[r:r + columns])), 1)
            for r in range(0, len(tiles), columns)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    return path
