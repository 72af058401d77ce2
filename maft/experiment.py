"""One config -> the parts of an experiment, built in one place for every entry point.

``build_experiment(config)`` assembles what train, eval, predict, the analyses, the studies and the
notebooks all need: the CLIP model (a random tower seeded by ``config['seed']``, so every entry point
rebuilds the same one), the dataset split, the proposal generator, the text classifier, and the
proposal classifiers (IP-CLIP, frozen or fine-tuned, and the frozen crop-and-classify baseline).
Each builder below reads only its own config section; the sections and their defaults are in
:mod:`maft.config`.
"""
from __future__ import annotations

import copy
import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch

from .checkpoints import load_finetuned
from .clip import load_clip, tower_input_size
from .config import ExperimentConfig, ModelConfig, ProposalsConfig, apply_overrides, load
from .crop_classifier import FrozenCLIP
from .data.datasets import build_dataset
from .inference import Segmenter
from .ipclip import IPCLIP
from .proposals import CachedProposals, build_proposal_generator, generator_record
from .text import text_classifier
from .utils import paths
from .world.pretrain import MODEL_NAME as WORLD_MODEL_NAME
from .world.pretrain import ensure_world_clip

SPLITS = {"eval": ("eval_split", "eval"), "train": ("train_split", "train")}


# --------------------------------------------------------------------------------------------------
# The builders, one per config section
# --------------------------------------------------------------------------------------------------
def model_weights(model_cfg: ModelConfig):
    """``model.pretrained`` as :func:`maft.clip.load_clip` takes it; the tag ``world`` is the world CLIP,
    pretrained on first use and cached."""
    if model_cfg.pretrained == "world":
        if model_cfg.name != WORLD_MODEL_NAME:
            raise ValueError(f"pretrained 'world' exists only for model {WORLD_MODEL_NAME!r}, "
                             f"not {model_cfg.name!r}")
        return str(ensure_world_clip())
    return model_cfg.pretrained


def build_clip(config: ExperimentConfig, device: str = "cpu"):
    """(model, preprocess, tokenizer) for ``config['model']``, tower resized to ``image_size``.

    Random initialisation (``pretrained: null``) is seeded by ``config['seed']`` (the global RNG is left
    untouched), so training, evaluation and every notebook rebuild the same random tower.
    """
    config = load(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return load_clip(config.model.name, pretrained=model_weights(config.model), device=device,
                         image_size=config.model.image_size)


def build_dataset_split(config: ExperimentConfig, split_key: str, mode: str):
    """The dataset for ``data[split_key]`` (``train_split`` or ``eval_split``) in ``mode``."""
    data = load(config).data
    return build_dataset(data.dataset, data[split_key], root=data.root, mode=mode,
                         max_images=data.max_images, protocol=data.protocol)


def proposal_section(config: ExperimentConfig, split: str = "train") -> ProposalsConfig:
    """The proposals a split uses: ``proposals`` for training (and by default for evaluation);
    ``eval.proposals`` for the evaluation split when set (e.g. label-free proposals at test time)."""
    config = load(config)
    if split == "eval" and config.eval.proposals is not None:
        return config.eval.proposals
    return config.proposals


def build_generator(config: ExperimentConfig, split: str = "train", **extra):
    """The proposal generator of :func:`proposal_section` (``extra`` overrides its settings)."""
    config = load(config)
    proposals = proposal_section(config, split)
    settings = {**proposals.settings, **extra}
    kind = proposals.kind
    if kind == "gt":
        settings.setdefault("seed", config.seed)  # GT corruptions follow the experiment's seed
    # SAM's proposals are kept on disk by default (seconds per image); any kind may set cache: true | PATH
    cache = settings.pop("cache", kind == "sam")
    if not cache or "model" in settings:  # a ready model object has no settings to key a cache by
        return build_proposal_generator(kind, **settings)
    record = generator_record(kind, settings)
    root = paths.cache_dir("proposals") if cache is True else paths.REPO_ROOT / Path(cache).expanduser()
    dataset = Path(config.data.dataset).stem  # a user's dataset path: its folder name
    folder = CachedProposals.folder(root, dataset, kind, record)
    return CachedProposals(lambda: build_proposal_generator(kind, **settings), folder, record)


def build_text_classifier(config: ExperimentConfig, model, tokenizer, class_names, device: str = "cpu",
                          prompts: Sequence[str] | None = None):
    """Text embeddings [C, D] for ``class_names`` with the config's prompt templates; ``prompts`` (one per
    class) is the text the templates get where it differs from the name (a dataset's prompt names)."""
    templates = load(config).text.templates
    prompt_name = None if prompts is None else dict(zip(class_names, prompts, strict=True))
    return text_classifier(model, tokenizer, class_names, templates=templates, device=device,
                           prompt_name=prompt_name)


def build_ipclip(config: ExperimentConfig, visual: torch.nn.Module, checkpoint=None, **settings) -> IPCLIP:
    """IP-CLIP on ``visual`` with the config's start layer; with ``checkpoint``, on a copy of the tower
    with the fine-tuned parameters loaded (a clear error for another model, weights or config)."""
    config = load(config)
    start_layer = config.model.start_layer
    if checkpoint is None:
        return IPCLIP(visual, start_layer=start_layer, **settings).eval()
    classifier = IPCLIP(copy.deepcopy(visual), start_layer=start_layer, **settings)
    return load_into(classifier, checkpoint, config).eval()


def load_into(classifier: IPCLIP, checkpoint, config: ExperimentConfig) -> IPCLIP:
    """:func:`maft.checkpoints.load_finetuned` with the config's checks, start layer included: another
    ``model.start_layer`` than the checkpoint's is an error unless ``eval.allow_other_start_layer``."""
    return load_finetuned(classifier, checkpoint, config=config,
                          other_start_layer=load(config).eval.allow_other_start_layer)


def build_classifier(config: ExperimentConfig, model, checkpoint=None) -> torch.nn.Module:
    """The proposal classifier of ``config['eval']``: IP-CLIP (optionally fine-tuned) or frozen CLIP.

    A fine-tuned IP-CLIP is loaded into ``model.visual`` itself (not a copy): the model is built for it.
    """
    config = load(config)
    settings = config.eval
    if settings.classifier == "ipclip":
        classifier = build_ipclip(config, model.visual)
        if checkpoint is not None:
            load_into(classifier, checkpoint, config)
        return classifier.eval()
    if checkpoint is not None:
        raise ValueError("a checkpoint holds a fine-tuned IP-CLIP; eval.classifier=frozen takes none "
                         "(set eval.classifier=ipclip)")
    return FrozenCLIP(model.visual, merge=settings.merge, input_size=settings.input_size).eval()


# --------------------------------------------------------------------------------------------------
# The whole experiment
# --------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """Everything built from one config: the model, one dataset split, the generator, the text classifier.

    ``classes`` are the names the text classifier scores (``text`` [C, D]); ``class_ids`` their ids in the
    dataset (all classes, or the seen ones for the training view), None without a dataset.
    """

    config: ExperimentConfig
    device: str
    model: torch.nn.Module
    tokenizer: Any
    dataset: Any
    generator: Any
    text: torch.Tensor
    classes: list[str]
    class_ids: list[int] | None

    @property
    def image_size(self) -> int:
        """``model.image_size``, or (null) the size the tower was built at: its own pretraining size."""
        return self.config.model.image_size or tower_input_size(self.model.visual)

    @property
    def frozen(self) -> IPCLIP:
        """IP-CLIP on the original weights (built once; it shares the model's tower)."""
        if not hasattr(self, "_frozen"):
            self._frozen = build_ipclip(self.config, self.model.visual)
        return self._frozen

    def finetuned(self, checkpoint) -> IPCLIP:
        """IP-CLIP on a copy of the tower with the fine-tuned parameters of ``checkpoint``."""
        return build_ipclip(self.config, self.model.visual, checkpoint)

    def crop(self, merge: str | None = None) -> FrozenCLIP:
        """The frozen-CLIP two-step baseline on the same tower, with the config's ``eval.merge`` (or
        ``merge``) and ``eval.input_size``: the very classifier ``eval.classifier=frozen`` evaluates."""
        overrides = ["eval.classifier=frozen"] + ([f"eval.merge={merge}"] if merge is not None else [])
        return build_classifier(apply_overrides(self.config, overrides), self.model).to(self.device)

    def classifier(self, checkpoint=None) -> torch.nn.Module:
        """The proposal classifier ``eval.classifier`` names (see :func:`build_classifier`)."""
        return build_classifier(self.config, self.model, checkpoint).to(self.device)

    def with_proposals(self, split: str) -> "Experiment":
        """The same experiment (model shared) with the generator of ``split``'s proposals: "train" (e.g.
        GT-derived ones of known quality) or "eval" (the test proposals, :func:`proposal_section`)."""
        return dataclasses.replace(self, generator=build_generator(self.config, split))

    def segmenter(self, classifier, class_ids: Sequence[int] | None = None) -> Segmenter:
        """CLIP-only whole-image segmenter over the text classes, or over those at rows ``class_ids``
        only (e.g. the seen classes, as in training, where the softmax runs over C_seen)."""
        if class_ids is None:
            return Segmenter(classifier, self.generator, self.text, self.image_size, classes=self.classes)
        ids = list(class_ids)
        return Segmenter(classifier, self.generator, self.text[ids], self.image_size,
                         classes=[self.classes[i] for i in ids])


def build_experiment(config: ExperimentConfig | dict | str, device: str = "cpu", split: str | None = "eval",
                     text_classes: str | Sequence[str] = "all", model=None, generator=None,
                     proposals: str | None = None) -> Experiment:
    """The parts of ``config`` (anything :func:`maft.config.load` takes; checked before any model is built).

    ``split``: "eval" (``data.eval_split``, all labels), "train" (``data.train_split``, the training view
    of ``data.protocol``: zero-shot maps unseen pixels to ignore, open-vocabulary trains on every class)
    or None (no dataset, e.g. predict on one image).
    ``text_classes``: "all" (the dataset's classes), "seen" (the seen ones, as in training) or a list of
    names. ``model``: an already loaded ``(clip_model, preprocess, tokenizer)`` to reuse; ``generator``: a
    ready proposal generator to use instead of the config's. ``proposals``: None (the split's proposals,
    :func:`proposal_section`), "train" (the training proposals on any split) or "gt" (GT-derived
    proposals of known quality for the mask-awareness diagnostic: the training section when it is
    GT-derived, else GT corruptions with their default settings, e.g. in a SAM profile).
    """
    config = load(config)
    clip_model, _, tokenizer = model if model is not None else build_clip(config, device=device)
    dataset = None
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)} or None, got {split!r}")
        dataset = build_dataset_split(config, *SPLITS[split])
    if isinstance(text_classes, str):
        if dataset is None:
            raise ValueError(f"text_classes={text_classes!r} needs a dataset; give class names when split=None")
        if text_classes not in ("all", "seen"):
            raise ValueError(f"text_classes must be 'all', 'seen' or a list of names, got {text_classes!r}")
        class_ids = list(range(len(dataset.classes))) if text_classes == "all" else list(dataset.seen)
        classes = [dataset.classes[i] for i in class_ids]
        # the names the authors' registration files prompt with (e.g. VOC "tvmonitor" -> "tv")
        dataset_prompts = getattr(dataset, "prompts", None)
        prompts = None if dataset_prompts is None else [dataset_prompts[i] for i in class_ids]
    else:
        classes, class_ids, prompts = list(text_classes), None, None
    # the generator before the text classifier: a missing proposal folder fails in a second, not after
    # minutes of encoding prompts
    if proposals not in (None, "train", "gt"):
        raise ValueError(f"proposals must be None, 'train' or 'gt', got {proposals!r}")
    if generator is None and proposals == "gt" and config.proposals.kind != "gt":
        generator = build_generator(apply_overrides(config, ["proposals={kind: gt, settings: {}}"]), "train")
    elif generator is None:
        generator = build_generator(config, "train" if proposals in ("train", "gt") or split != "eval" else "eval")
    with torch.no_grad():
        text = build_text_classifier(config, clip_model, tokenizer, classes, device=device, prompts=prompts)
    return Experiment(config=config, device=device, model=clip_model, tokenizer=tokenizer, dataset=dataset,
                      generator=generator, text=text, classes=classes, class_ids=class_ids)


# --------------------------------------------------------------------------------------------------
# Saying what runs
# --------------------------------------------------------------------------------------------------
def describe(config: ExperimentConfig) -> str:
    """A few lines saying what the experiment runs (for notebooks and logs)."""
    config = load(config)
    model, data, proposals, train = config.model, config.data, config.proposals, config.train
    lines = [
        f"model:      {model.name} (weights: {model.pretrained or 'random init'}) at {model.image_size} px, "
        f"IP-CLIP start layer {model.start_layer if model.start_layer is not None else 'default'}",
        f"data:       {data.dataset} (train: {data.train_split}, evaluation: {data.eval_split}; "
        f"{data.protocol.replace('_', '-')} protocol)",
        f"proposals:  {proposals.kind} {proposals.settings or ''}".rstrip(),
        f"text:       {config.text.templates} templates",
        f"fine-tune:  {train.iterations} iterations x batch {train.batch_size}, lr {train.lr}, trainable "
        f"{train.trainable}, loss {train.loss} + {train.distill_weight} x self-distillation",
    ]
    if config.eval.proposals is not None:  # test-time proposals other than the training ones
        test = config.eval.proposals
        lines.insert(3, f"evaluation proposals: {test.kind} {test.settings or ''}".rstrip())
    return "\n".join(lines)


def environment_summary(device: str = "cpu") -> dict[str, Any]:
    """Versions and hardware that decide whether a run reproduces."""
    summary = {"python": platform.python_version(), "torch": torch.__version__,
               "open_clip": open_clip.__version__, "device": device, "cpu_threads": torch.get_num_threads(),
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
    return summary
