"""The offline world: procedurally generated scenes where the whole MAFT story runs on a CPU.

A scene is an RGB image with a pixel-exact label map: a background of 1-3 textured "stuff" bands (sky,
grass, playingfield, water, sea, sand, brick, snow, road; playingfield and sea are confusable siblings)
and 1-4 "things", each a colour x pattern compound ("red stripes", "blue dots", "purple blob", ...)
drawn as a random shape; things prefer habitats among the stuff classes (``context`` in world.yaml).
Everything the world is made of (classes, zero-shot split, colours, textures, caption wordings) lives in
``maft/assets/world.yaml``.

Scene ``i`` of split ``s`` is a pure function of ``(seed, s, i)``: every scene draws from its own
random stream, so scenes can be generated on the fly, in any order, in any process. Each sample also
carries an image-level ``caption`` that names every class in it, unseen ones included, which is what
the world's tiny CLIP is pretrained on.

Layout: :mod:`.spec` (the parsed specification), :mod:`.draw` (textures, shapes, scenes, captions),
:mod:`.dataset` (:class:`WorldDataset`, the SegDataset contract of ``maft.data.datasets``) and
:mod:`.pretrain` (the world CLIP: contrastive pretraining and the zero-shot probe; imported on its own,
as it needs open_clip), :mod:`.probe` and :mod:`.probe_plot` (is the world's CLIP like CLIP?) and
:mod:`.context` (class-context mutual information, any dataset). The MAFT story on top of it is
``maft.world.story.run_story``; the command line is ``maft world pretrain|zero-shot|probe|sweep|story|readme|show``.
"""
from .dataset import WorldDataset
from .draw import Scene, render_scene, save_scene_grid, shape_mask
from .spec import IGNORE_INDEX, WORLD_SPEC_PATH, WorldSpec, load_world_spec, scene_rng

__all__ = ["IGNORE_INDEX", "WORLD_SPEC_PATH", "Scene", "WorldDataset", "WorldSpec", "load_world_spec",
           "render_scene", "save_scene_grid", "scene_rng", "shape_mask"]
