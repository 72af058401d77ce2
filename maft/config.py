"""Experiment configs: one typed schema, every default once, validated once when loaded.

A config is a YAML mapping (``maft/configs/*.yaml``) with sections ``model``, ``data``, ``proposals``,
``text``, ``train`` and ``eval`` and the top-level ``name`` and ``seed``. The schema below is a tree of
dataclasses: each field's default is the one default of that setting, and its type is what a value must
be. :func:`load` (a shipped name, a YAML path, a mapping, an :class:`ExperimentConfig` or None for the
defaults, plus ``key.sub=value`` overrides) is the one entry point; it returns an :class:`ExperimentConfig`
that the code reads as attributes (``config.model.image_size``).

Validation happens at load, before any model is built. An unknown key in any section, or a value of the
wrong type (a bool where an int belongs, text where a number belongs), is a :class:`ConfigError` (a
``ValueError``) of one line naming the key and the expected type. Settings that can be checked without
a model are checked too: the start layer against the tower's depth and the image size against its
patch size (both from the model's open_clip config, no weights), the ensemble lambda, the image caps.

Sections are also read-only-by-key mappings (``config["model"]["image_size"]``) and assignable by key
with the same checks, so that code written against plain dicts keeps working; :meth:`to_dict` gives the
plain YAML/JSON form that checkpoints and run folders store.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import yaml

from .data.augment import augmentation_settings
from .data.class_specs import PROTOCOLS
from .losses import CONSTANT_ROWS, LOSS_KINDS, LOSS_REDUCTIONS
from .trainable import UNITS
from .utils.paths import PACKAGE_DIR, read_yaml

CONFIG_DIR = PACKAGE_DIR / "configs"


class ConfigError(ValueError):
    """A config value or key that the schema refuses; the message is one line naming the key."""


# --------------------------------------------------------------------------------------------------
# Sections: dataclasses that also behave as mappings of their fields
# --------------------------------------------------------------------------------------------------
class Section(MutableMapping):
    """Base of every config section: field access by attribute or by key, assignment checked by type."""

    _path = ""  # the section's dotted name in error messages ("" for the top level)

    def __getitem__(self, key: str):
        if key not in self._fields():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        fields = self._fields()
        if key not in fields:
            raise ConfigError(_unknown(self._path, key, fields))
        setattr(self, key, _coerce(value, _hints(type(self))[key], _join(self._path, key)))

    def __delitem__(self, key: str) -> None:
        raise ConfigError(f"config key {_join(self._path, key)}: settings cannot be removed, only changed")

    def __iter__(self):
        return iter(self._fields())

    def __eq__(self, other):  # a section equals its plain form, so code and tests may compare with dicts
        if isinstance(other, Section):
            return type(self) is type(other) and self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == _plain(other)
        return NotImplemented

    __hash__ = None  # mutable

    def __len__(self) -> int:
        return len(self._fields())

    @classmethod
    def _fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """The plain form (dicts, lists, scalars) that YAML, JSON and checkpoints store."""
        return {key: _plain(getattr(self, key)) for key in self._fields()}


# Configs are written as the YAML they were read from (a run folder's config.yaml, a report)
yaml.SafeDumper.add_multi_representer(Section, lambda dumper, section: dumper.represent_dict(section.to_dict()))


@dataclass(eq=False)
class ModelConfig(Section):
    _path = "model"
    name: str = "ViT-B-16"
    pretrained: Optional[str] = "openai"   # an open_clip tag, a weights path, "world", or null (random)
    image_size: Optional[int] = 480        # null = the tower's own pretraining size
    start_layer: Optional[int] = None      # IP-CLIP's L; null = the paper's choice for the tower's depth


@dataclass(eq=False)
class DataConfig(Section):
    _path = "data"
    dataset: str = "voc20"
    root: Optional[str] = None
    train_split: str = "train"
    eval_split: str = "val"
    max_images: Optional[int] = None
    # zero_shot (unseen classes never reach training) | open_vocabulary (train on every class, paper App. B:
    # the COCO-Stuff model of Tables 3 and 6 is trained on all 171 classes)
    protocol: str = "zero_shot"


@dataclass(eq=False)
class ProposalsConfig(Section):
    _path = "proposals"
    kind: str = "gt"                       # gt | segments | sam | mask2former | file | file:DIR
    settings: dict = field(default_factory=dict)  # keyword arguments of the generator's class


@dataclass(eq=False)
class TextConfig(Section):
    _path = "text"
    templates: str = "vild"


@dataclass(eq=False)
class TrainConfig(Section):
    _path = "train"
    iterations: int = 100
    batch_size: int = 16                   # GLOBAL batch (all ranks together)
    micro_batch_size: Optional[int] = None  # per-rank forward chunk (gradient accumulation); null = whole shard
    lr: float = 1.0e-5
    weight_decay: float = 1.0e-5           # the paper (Sec. 5.1); the authors' code uses 1e-4
    norm_weight_decay: float = 0.0         # on LayerNorm / BatchNorm parameters: none, as the authors' optimiser
    lr_power: float = 0.9                  # poly schedule lr * (1 - step / iterations) ** power
    grad_clip: Optional[float] = 0.01      # max total gradient L2 norm; null or 0 = off
    trainable: Any = field(default_factory=lambda: ["attn", "norm"])  # a list of units, or "attn,norm"
    loss: str = "smooth_l1"                # L_ma kind: smooth_l1 | l1 | l2 | kl
    loss_reduction: str = "pairs"          # pairs: one mean over the batch's (class, proposal) pairs (authors) | image
    constant_iou_rows: str = "keep"        # keep (zero target, authors) | skip a class whose IoUs are all equal
    distill_loss: str = "smooth_l1"
    distill_weight: float = 1.0            # lambda; 0 = no teacher at all
    augmentation: Any = True               # the authors' (maft.data.augment): true | false | a mapping of its settings
    amp: Any = True                        # CUDA only: true (bf16 if supported, else fp16) | bf16 | fp16 | false (fp32)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0                   # DataLoader workers (image decoding, proposal building)
    log_every: Optional[int] = 10
    checkpoint_every: Optional[int] = 50   # also always at the last step; null or 0 = only the last
    out_dir: Optional[str] = None          # null = outputs/train/<name>; "<name>" is filled in


@dataclass(eq=False)
class EvalConfig(Section):
    _path = "eval"
    classifier: Literal["ipclip", "frozen"] = "ipclip"
    ensemble_lambda: Optional[float] = None  # null = CLIP only (paper Table 2); else eq. 9 with this lambda
    variant: Literal["paper", "zsseg"] = "paper"  # paper (eq. 9 as printed) | zsseg (the authors' code)
    merge: str = "mask_and_crop"           # frozen CLIP's merge operation (Appendix A)
    input_size: Optional[int] = None       # frozen CLIP's sub-image size (null = the tower's size)
    sliding_window: bool = False
    window: Optional[int] = None
    stride: Optional[int] = None
    max_images: Optional[int] = None
    out: Optional[str] = None              # null = outputs/eval/<name>.json
    # Evaluation proposals {kind, settings}, e.g. label-free ones while fine-tuning uses GT-derived ones;
    # null = the experiment's `proposals` section for evaluation too.
    proposals: Optional[ProposalsConfig] = None
    # A checkpoint is evaluated at the IP-CLIP start layer it was trained with; true allows another
    # model.start_layer on purpose (an ablation of L at test time), otherwise that is an error.
    allow_other_start_layer: bool = False


@dataclass(eq=False)
class ExperimentConfig(Section):
    _path = ""
    name: Optional[str] = None
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------------
# Type checks, from the schema's annotations
# --------------------------------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(path: str, key: str, known: Iterable[str]) -> str:
    where = f"section {path!r}" if path else "the top level"
    return f"config key {_join(path, key)}: unknown key in {where} (known: {', '.join(known)})"


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", dict: "a mapping"}
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return "a mapping"
    return names.get(annotation, str(annotation))


def _shown(value) -> str:
    """A value as the user wrote it in YAML, with its type: ``true (bool)``, ``'abc' (str)``."""
    text = {True: "true", False: "false", None: "null"}.get(value, None) if isinstance(value, (bool, type(None))) \
        else repr(value)
    return f"{text} ({type(value).__name__})"


def _coerce(value, annotation, key: str):
    """``value`` checked against ``annotation`` (ints pass as floats; a bool is never a number)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return copy.deepcopy(value)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(inner[0], type) and issubclass(inner[0], Section) and isinstance(value, Mapping):
            # an optional section set at all must say which kind it is (eval.proposals: {settings: ...}
            # must not silently mean the default "gt" proposals)
            if "kind" in _hints(inner[0]) and "kind" not in value:
                raise ConfigError(f"config key {key}.kind: missing; when {key} is set it must name its kind "
                                  f"(null keeps the default)")
            return _coerce(value, inner[0], key)  # a nested section: its own error names the inner key
        try:
            return _coerce(value, inner[0], key)
        except ConfigError:
            raise ConfigError(f"config key {key}: expected {_describe(annotation)}, got {_shown(value)}") from None
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key}: expected {_describe(annotation)}, got {_shown(value)}")
    if isinstance(annotation, type) and issubclass(annotation, Section):
        if isinstance(value, annotation):
            return copy.deepcopy(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}: expected a mapping, got {_shown(value)}")
        return _section(annotation, value, key)
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        dict: isinstance(value, Mapping),
    }.get(annotation)
    if not ok:
        raise ConfigError(f"config key {key}: expected {_describe(annotation)}, got {_shown(value)}")
    if annotation is float:
        return float(value)
    if annotation is dict:
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _section(cls, given: Mapping, path: str):
    known = cls._fields()
    for key in given:
        if key not in known:
            raise ConfigError(_unknown(path, str(key), known))
    hints = _hints(cls)
    values = {key: _coerce(value, hints[key], _join(path, key)) for key, value in given.items()}
    return cls(**values)


def _plain(value):
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


# --------------------------------------------------------------------------------------------------
# Checks of values beyond their types (all without a model)
# --------------------------------------------------------------------------------------------------
def _at_least(value, low, key: str, what: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"config key {key}: expected {what}, got {value!r}")


def check(config: ExperimentConfig) -> ExperimentConfig:
    """The checks that need more than a field's type; :class:`ConfigError` naming the key."""
    if config.data.protocol not in PROTOCOLS:
        raise ConfigError(f"config key data.protocol: expected one of {', '.join(PROTOCOLS)}, "
                          f"got {config.data.protocol!r}")
    _at_least(config.data.max_images, 1, "data.max_images", "a positive integer or null")
    _at_least(config.eval.max_images, 1, "eval.max_images", "a positive integer or null")
    _at_least(config.model.image_size, 1, "model.image_size", "a positive integer or null")
    _at_least(config.model.start_layer, 0, "model.start_layer", "an integer >= 0 or null")
    lam = config.eval.ensemble_lambda
    if lam is not None and not 0 <= lam <= 1:
        raise ConfigError(f"config key eval.ensemble_lambda: expected a number in [0, 1] (eq. 9) or null, got {lam!r}")
    for key in ("input_size", "window", "stride"):
        _at_least(config.eval[key], 1, f"eval.{key}", "a positive integer or null")
    _check_train(config.train)
    return config


def _check_train(train: TrainConfig) -> None:
    for key in ("iterations", "batch_size", "micro_batch_size"):
        _at_least(train[key], 1, f"train.{key}", "a positive integer" + (" or null" if key == "micro_batch_size" else ""))
    for key in ("weight_decay", "norm_weight_decay", "lr_power", "distill_weight", "grad_clip"):
        _at_least(train[key], 0, f"train.{key}", "a number >= 0")
    if train.lr <= 0:
        raise ConfigError(f"config key train.lr: expected a number > 0, got {train.lr!r}")
    for key, choices in (("loss", LOSS_KINDS), ("distill_loss", LOSS_KINDS), ("loss_reduction", LOSS_REDUCTIONS),
                         ("constant_iou_rows", CONSTANT_ROWS)):
        if train[key] not in choices:
            raise ConfigError(f"config key train.{key}: expected one of {', '.join(choices)}, got {train[key]!r}")
    try:
        augmentation_settings(train.augmentation)
    except ValueError as error:
        raise ConfigError(f"config key {error}") from None
    units = train.trainable
    if isinstance(units, str):  # "attn,norm" from the command line
        units = train.trainable = [u.strip() for u in units.split(",") if u.strip()]
    if not isinstance(units, list) or not units or not all(isinstance(u, str) for u in units):
        raise ConfigError(f"config key train.trainable: expected a non-empty list of units from {', '.join(UNITS)}, "
                          f"got {_shown(units)}")
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise ConfigError(f"config key train.trainable: unknown units {bad}; choose from {', '.join(UNITS)}")
    if train.amp not in (True, False, "bf16", "fp16") or (train.amp in (0, 1) and not isinstance(train.amp, bool)):
        raise ConfigError(f"config key train.amp: expected true, false, 'bf16' or 'fp16', got {_shown(train.amp)}")
    for key in ("num_workers", "log_every", "checkpoint_every"):
        _at_least(train[key], 0, f"train.{key}", "an integer >= 0" + ("" if key == "num_workers" else " or null"))


def check_model_settings(config: ExperimentConfig) -> None:
    """Start layer and image size against the tower's depth and patch size, read from the model's
    open_clip config (no weights are loaded); a model open_clip does not know is checked when built."""
    from .clip import tower_geometry  # open_clip is imported on first use only

    geometry = tower_geometry(config.model.name)
    if geometry is None:
        return
    depth, patch = geometry
    layer, size = config.model.start_layer, config.model.image_size
    if depth is None:  # a ResNet tower: IP-CLIP masks its attention pool, there is no start layer
        if layer is not None:
            raise ConfigError(f"config key model.start_layer: {config.model.name} is a ResNet tower, whose attention "
                              f"pool IP-CLIP masks; expected null, got {layer!r}")
        if size is not None and size % 32:
            raise ConfigError(f"config key model.image_size: {config.model.name} needs a multiple of 32, got {size}")
        return
    if layer is not None and layer > depth:
        raise ConfigError(f"config key model.start_layer: expected an integer in [0, {depth}] for the "
                          f"{depth}-block {config.model.name}, got {layer}")
    if size is not None and size % patch:
        raise ConfigError(f"config key model.image_size: expected a multiple of {config.model.name}'s patch size "
                          f"{patch}, got {size}")


# --------------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------------
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
    """The raw mapping of a config file (a shipped name or a path) with ``overrides``; :func:`load` checks it."""
    path = resolve_config_path(name_or_path)
    config = read_yaml(path) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides)


def apply_overrides(config, overrides: Iterable[str]):
    """``config`` with ``a.b=value`` overrides applied (values parsed as YAML): a raw mapping stays a raw
    mapping (checked later by :func:`load`), an :class:`ExperimentConfig` comes back checked."""
    if isinstance(config, ExperimentConfig):
        return load(config, overrides)
    config = _plain(config)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-5)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = config
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key!r} is a value, not a section")
            node = child
        try:
            node[keys[-1]] = parse_value(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
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


def load(config: str | Path | Mapping | ExperimentConfig | None = None, overrides: Iterable[str] = (),
         check_model: bool = True) -> ExperimentConfig:
    """The experiment config: a shipped name, a YAML path, a mapping, an :class:`ExperimentConfig` or None
    (the package defaults), with ``overrides`` applied, every default filled in, and every value checked
    (``check_model``: also against the tower's depth and patch size). The one loader of every entry point.
    Always a new object: a loaded config passed in is checked again (its attributes may have been set since,
    and attribute assignment checks nothing) and the caller's object is never changed."""
    overrides = list(overrides)
    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, ExperimentConfig):  # checked again: a loaded config may have been changed since
        raw = config.to_dict()
    elif isinstance(config, Mapping):
        raw = _plain(config)
    elif isinstance(config, (str, Path)):
        raw = load_config(config)
    else:
        raise ConfigError(f"config must be a name, a YAML path or a mapping, got {type(config).__name__}")
    typed = check(_section(ExperimentConfig, apply_overrides(raw, overrides), ""))
    if check_model:
        check_model_settings(typed)
    return typed


load_experiment_config = load  # the name ``maft.load_experiment_config`` exports
