"""Prompt templates for CLIP text classifiers, as data.

Each template is a format string with exactly one ``{}`` where the class name goes.

- ``"vild"``: the 14 templates of ViLD (Gu et al., "Open-vocabulary Object Detection via Vision and
  Language Knowledge Distillation", ICLR 2022), as used by ZSSeg and by the MAFT authors. The list is
  copied verbatim from the public ViLD prompt pool, including its uneven final punctuation.
- ``"imagenet"``: the 80 ImageNet templates of OpenAI CLIP, taken from open_clip's own copy
  (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``) so that the two can never drift apart.
- ``"single"``: one plain template.
"""
from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# open_clip stores these as callables (lambda c: f"... {c} ..."); calling each with "{}" gives back the
# format string.
IMAGENET_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)

SINGLE_TEMPLATES = ("a photo of a {}.",)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "vild": VILD_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "single": SINGLE_TEMPLATES,
}
