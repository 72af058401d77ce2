"""Experiment configs: one loader, every default in one place, and the checks of each section.

A config is a YAML mapping (``maft/configs/*.yaml``) with sections ``model``, ``data``, ``proposals``,
``text``, ``train`` and ``eval``; every value can be overridden on the command line as ``key.sub=value``.
:func:`load` is the one entry point (a shipped name, a YAML path, a dict or None for the defaults);
:func:`training_config` and :func:`eval_settings` fill and check the ``train`` and ``eval`` sections for
the code that needs them, so a typo in a key is an error, never a silently ignored setting.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from .augment import augmentation_settings
from .classes import check_protocol
from .losses import CONSTANT_ROWS, LOSS_KINDS, LOSS_REDUCTIONS
from .paths import PACKAGE_DIR, read_yaml
from .trainable import UNITS

CONFIG_DIR = PACKAGE_DIR / "configs"

# Sections every experiment has; missing keys are filled from here by with_defaults().
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "ViT-B-16", "pretrained": "openai", "image_size": 480, "start_layer": None},
    # protocol: zero_shot (unseen classes never reach training) | open_vocabulary (train on every class,
    # paper App. B: the COCO-Stuff model of Tables 3 and 6 is trained on all 171 classes)
    "data": {"dataset": "voc20", "root": None, "train_split": "train", "eval_split": "val", "max_images": None,
             "protocol": "zero_shot"},
    "proposals": {"kind": "gt", "settings": {}},
    "text": {"templates": "vild"},
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "iterations": 100,
    "batch_size": 16,            # GLOBAL batch (all ranks together)
    "micro_batch_size": None,    # per-rank forward chunk (gradient accumulation); None = whole shard
    "lr": 1.0e-5,
    "weight_decay": 1.0e-5,      # the paper (Sec. 5.1); the authors' code uses 1e-4
    "norm_weight_decay": 0.0,    # on LayerNorm / BatchNorm parameters: none, as the authors' optimiser
    "lr_power": 0.9,             # poly schedule lr * (1 - step / iterations) ** power
    "grad_clip": 0.01,           # max total gradient L2 norm; null or 0 = off
    "trainable": ["attn", "norm"],
    "loss": "smooth_l1",         # L_ma kind: smooth_l1 | l1 | l2 | kl
    "loss_reduction": "pairs",   # pairs: one mean over the batch's (class, proposal) pairs (authors) | image
    "constant_iou_rows": "keep",  # keep (zero target, authors) | skip a class whose IoUs are all equal
    "distill_loss": "smooth_l1",
    "distill_weight": 1.0,       # lambda; 0 = no teacher at all
    "augmentation": True,        # the authors' (maft.augment): true | false | a mapping of its settings
    "amp": True,                 # CUDA only: true (bf16 if supported, else fp16) | bf16 | fp16 | false (fp32,
                                 # the authors' precision)
    "device": "auto",            # auto | cpu | cuda
    "num_workers": 0,            # DataLoader workers (image decoding)
    "log_every": 10,
    "checkpoint_every": 50,      # also always at the last step; null or 0 = only the last
    "out_dir": None,             # None = outputs/train/<name>; "<name>" is filled in
}

EVAL_DEFAULTS: dict[str, Any] = {
    "classifier": "ipclip",     # ipclip | frozen
    "ensemble_lambda": None,    # None = CLIP only (paper Table 2); else eq. 9 with this lambda
    "variant": "paper",         # paper (eq. 9 as printed) | zsseg (the authors' code)
    "merge": "mask_and_crop",   # frozen CLIP's merge operation (Appendix A)
    "input_size": None,         # frozen CLIP's sub-image size (None = the tower's size)
    "sliding_window": False,
    "window": None,
    "stride": None,
    "max_images": None,
    "out": None,                # None = outputs/eval/<name>.json
    # Evaluation proposals {kind, settings}, e.g. label-free ones while fine-tuning uses GT-derived
    # ones; None = the experiment's `proposals` section for evaluation too.
    "proposals": None,
    # A checkpoint is evaluated at the IP-CLIP start layer it was trained with; true allows another
    # model.start_layer on purpose (an ablation of L at test time), otherwise that is an error.
    "allow_other_start_layer": False,
}
CLASSIFIERS = ("ipclip", "frozen")


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a config shipped in ``maft/configs`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found (shipped configs: {known})")


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    config = read_yaml(path) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides)


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b=value`` overrides applied (values parsed as YAML)."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=1e-5)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = config
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {key!r} is a value, not a section")
            node = child
        try:
            node[keys[-1]] = parse_value(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: the value is not valid YAML "
                             f"({getattr(error, 'problem', None) or error})") from None
    return config


def parse_value(raw: str) -> Any:
    """YAML scalar/list parsing, plus ``3e-4`` as a float (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every missing section/key of :data:`DEFAULTS` filled in."""
    merged = copy.deepcopy(config)
    for section, values in DEFAULTS.items():
        if isinstance(values, dict):
            given = merged.get(section) or {}
            if not isinstance(given, dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {given!r}")
            merged[section] = {**copy.deepcopy(values), **given}
        else:
            merged.setdefault(section, values)
    return merged


def load(config: str | Path | dict | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The experiment config: a shipped name, a YAML path, a dict or None (the package defaults), with
    ``overrides`` applied and defaults filled in. The one loader of every entry point."""
    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        raw = load_config(config)
    return with_defaults(apply_overrides(raw, overrides))


load_experiment_config = load  # the name ``maft.load_experiment_config`` exports


def training_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every default filled in and the ``train`` section checked (ValueError on bad values)."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    merged = with_defaults(config)
    given = merged.get("train") or {}
    if not isinstance(given, dict):
        raise ValueError(f"config section 'train' must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown train settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    train = {**copy.deepcopy(TRAIN_DEFAULTS), **given}
    merged["train"] = train
    merged.setdefault("name", "maft")
    _check_train_settings(train)
    check_data_settings(merged)
    return merged


def check_data_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``config['data']`` (defaults filled in) after checking the values the loader cannot catch later."""
    data = with_defaults(config)["data"]
    check_protocol(data["protocol"])
    return data


def _check_train_settings(train: dict[str, Any]) -> None:
    def positive_int(key):
        value = train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {value!r}")

    positive_int("iterations")
    positive_int("batch_size")
    if train["micro_batch_size"] is not None:
        positive_int("micro_batch_size")
    for key in ("lr", "weight_decay", "norm_weight_decay", "lr_power", "distill_weight"):
        if not isinstance(train[key], (int, float)) or isinstance(train[key], bool) or train[key] < 0:
            raise ValueError(f"train.{key} must be a number >= 0, got {train[key]!r}")
    if train["lr"] <= 0:
        raise ValueError(f"train.lr must be > 0, got {train['lr']!r}")
    if train["grad_clip"] is not None and (not isinstance(train["grad_clip"], (int, float)) or train["grad_clip"] < 0):
        raise ValueError(f"train.grad_clip must be null or a number >= 0, got {train['grad_clip']!r}")
    for key in ("loss", "distill_loss"):
        if train[key] not in LOSS_KINDS:
            raise ValueError(f"train.{key} must be one of {list(LOSS_KINDS)}, got {train[key]!r}")
    if train["loss_reduction"] not in LOSS_REDUCTIONS:
        raise ValueError(f"train.loss_reduction must be one of {list(LOSS_REDUCTIONS)}, got {train['loss_reduction']!r}")
    if train["constant_iou_rows"] not in CONSTANT_ROWS:
        raise ValueError(f"train.constant_iou_rows must be one of {list(CONSTANT_ROWS)}, got "
                         f"{train['constant_iou_rows']!r}")
    augmentation_settings(train["augmentation"])  # ValueError naming train.augmentation.<key>
    units = train["trainable"]
    if isinstance(units, str):
        units = train["trainable"] = [u.strip() for u in units.split(",") if u.strip()]
    if not isinstance(units, (list, tuple)) or not units:
        raise ValueError(f"train.trainable must be a non-empty list of units from {list(UNITS)}, got {units!r}")
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise ValueError(f"train.trainable: unknown units {bad}; choose from {list(UNITS)}")
    if train["amp"] not in (True, False, "bf16", "fp16"):
        raise ValueError(f"train.amp must be true, false, 'bf16' or 'fp16', got {train['amp']!r}")
    if train["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {train['device']!r}")
    if not isinstance(train["num_workers"], int) or train["num_workers"] < 0:
        raise ValueError(f"train.num_workers must be an integer >= 0, got {train['num_workers']!r}")
    for key in ("log_every", "checkpoint_every"):
        if train[key] is not None and (not isinstance(train[key], int) or train[key] < 0):
            raise ValueError(f"train.{key} must be null or an integer >= 0, got {train[key]!r}")


def eval_settings(config: dict) -> dict:
    """``config['eval']`` with defaults filled in; unknown keys are an error (a typo must not pass)."""
    given = config.get("eval") or {}
    unknown = sorted(set(given) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"config eval: unknown keys {unknown} (known: {sorted(EVAL_DEFAULTS)})")
    settings = {**EVAL_DEFAULTS, **given}
    if settings["classifier"] not in CLASSIFIERS:
        raise ValueError(f"config eval.classifier must be one of {CLASSIFIERS}, got {settings['classifier']!r}")
    proposals = settings["proposals"]
    if proposals is not None and (not isinstance(proposals, dict) or "kind" not in proposals
                                  or set(proposals) - {"kind", "settings"}):
        raise ValueError(f"config eval.proposals must be null or a mapping with 'kind' (and 'settings'), "
                         f"got {proposals!r}")
    if not isinstance(settings["allow_other_start_layer"], bool):
        raise ValueError(f"config eval.allow_other_start_layer must be true or false, "
                         f"got {settings['allow_other_start_layer']!r}")
    return settings
