"""Mask-aware fine-tuning of IP-CLIP (paper Sec. 4.2 and 5.1): ``finetune(config)`` and ``maft train``.

One training step, for a global batch of B training images (``mode="train"``: unseen pixels are 255):

1. proposals from the config's generator (ground-truth-derived ones by default), images resized whole
   to the tower's input size;
2. IP-CLIP on (images, proposal masks) -> class probabilities over the SEEN class names only
   (C = |C_seen| during training, paper Sec. 3) -> mask-aware loss L_ma (eq. 5-7);
3. IP-CLIP's no-mask mode and a frozen copy of the original tower on the same images ->
   probabilities -> self-distillation loss L_dis (eq. 8);
4. loss = L_ma + distill_weight * L_dis; AdamW, poly learning rate (power 0.9), gradient-norm clipping.

How the batch is averaged (and why it is exact under data parallelism): each image's L_ma is the mean
over its K x N compared entries; the step's L_ma is the mean over the images of the *global* batch
that have at least one qualifying seen class (images with no seen class, or whose classes all have
constant IoU rows, contribute no L_ma but still their L_dis). L_dis is the mean over all images.
The counts are all-reduced before the backward pass, so N ranks x B/N images give the same gradient
as 1 rank x B images, and micro-batches (``micro_batch_size``) the same as one pass.

Distributed: the same entry point runs on CPU, one GPU or many GPUs/nodes. Under ``torchrun`` (env
``WORLD_SIZE`` > 1) a process group is created (gloo on CPU, nccl on CUDA), the student is wrapped in
DistributedDataParallel and every step's global batch is split into equal contiguous rank shards.

Only what was trained is checkpointed (the tower's trainable parameters by name), with the config,
the step, optimizer/scheduler/scaler state and RNG states, so ``resume`` continues bit-exactly on CPU.

Kept frozen and in eval mode: the text tower, the proposal generator, the teacher and the frozen
units. The student runs in eval mode too: CLIP towers have no dropout, and a ResNet tower's batch-norm
statistics are frozen units (their affine weights train when "norm" is selected).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .experiment import build_clip, build_dataset_split, build_generator, build_text_classifier, with_defaults
from .losses import LOSS_KINDS, iou_targets, mask_aware_loss_from_targets, self_distillation_loss

CHECKPOINT_FORMAT = "maft-finetune-v1"

TRAIN_DEFAULTS: dict[str, Any] = {
    "iterations": 100,
    "batch_size": 16,            # GLOBAL batch (all ranks together)
    "micro_batch_size": None,    # per-rank forward chunk (gradient accumulation); None = whole shard
    "lr": 1.0e-5,
    "weight_decay": 1.0e-5,
    "lr_power": 0.9,             # poly schedule lr * (1 - step / iterations) ** power
    "grad_clip": 0.01,           # max total gradient L2 norm; null or 0 = off
    "trainable": ["attn", "norm"],
    "loss": "smooth_l1",         # L_ma kind: smooth_l1 | l1 | l2 | kl
    "distill_loss": "smooth_l1",
    "distill_weight": 1.0,       # lambda; 0 = no teacher at all
    "amp": True,                 # CUDA only: true (bf16 if supported, else fp16) | bf16 | fp16 | false
    "device": "auto",            # auto | cpu | cuda
    "num_workers": 0,            # DataLoader workers (image decoding)
    "log_every": 10,
    "checkpoint_every": 50,      # also always at the last step; null or 0 = only the last
    "out_dir": None,             # None = outputs/train/<name>; "<name>" is filled in
}

# Settings that may differ between a checkpoint's config and the config that resumes it.
RESUME_MAY_DIFFER = {("train", "out_dir"), ("train", "log_every"), ("train", "checkpoint_every"),
                     ("train", "num_workers"), ("train", "device"), ("name",), ("eval",)}

# Trainable units (paper Tab. 4d) -> parameter-name patterns of the open_clip vision tower.
VIT_UNITS = {
    "conv": r"conv1\.",
    "cls": r"class_embedding$",
    "pos": r"positional_embedding$",
    "mlp": r"transformer\.resblocks\.\d+\.mlp\.",
    "attn": r"transformer\.resblocks\.\d+\.attn\.",
    # The authors train both norms of every block and the final norm, and keep ln_pre frozen with the
    # patch embedding it normalises: ln_pre is its own unit so the default matches them exactly.
    "norm": r"(ln_post|transformer\.resblocks\.\d+\.ln_[12])\.",
    "pre_norm": r"ln_pre\.",
    "proj": r"proj$",
}
# ModifiedResNet towers (IP-CLIP masks their attention pool): the closest equivalents.
RESNET_UNITS = {
    "conv": r"(conv[123]\.|layer\d\.\d+\.(conv[123]|downsample\.0)\.)",
    "cls": r"$^",
    "pos": r"attnpool\.positional_embedding$",
    "mlp": r"$^",
    "attn": r"attnpool\.[qkv]_proj\.",
    "norm": r"(bn[123]\.|layer\d\.\d+\.(bn[123]|downsample\.1)\.)",
    "pre_norm": r"$^",
    "proj": r"attnpool\.c_proj\.",
}
UNITS = tuple(VIT_UNITS)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the term."""


# ----------------------------------------------------------------------------------------------------
# Config


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
    return merged


def _check_train_settings(train: dict[str, Any]) -> None:
    def positive_int(key):
        value = train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {value!r}")

    positive_int("iterations")
    positive_int("batch_size")
    if train["micro_batch_size"] is not None:
        positive_int("micro_batch_size")
    for key in ("lr", "weight_decay", "lr_power", "distill_weight"):
        if not isinstance(train[key], (int, float)) or isinstance(train[key], bool) or train[key] < 0:
            raise ValueError(f"train.{key} must be a number >= 0, got {train[key]!r}")
    if train["lr"] <= 0:
        raise ValueError(f"train.lr must be > 0, got {train['lr']!r}")
    if train["grad_clip"] is not None and (not isinstance(train["grad_clip"], (int, float)) or train["grad_clip"] < 0):
        raise ValueError(f"train.grad_clip must be null or a number >= 0, got {train['grad_clip']!r}")
    for key in ("loss", "distill_loss"):
        if train[key] not in LOSS_KINDS:
            raise ValueError(f"train.{key} must be one of {list(LOSS_KINDS)}, got {train[key]!r}")
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


def _config_differences(a: Any, b: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _config_differences(a.get(key), b.get(key), prefix + (key,))
        return out
    return [] if a == b else [prefix]


def _check_resume_config(config: dict, saved: dict, checkpoint: str) -> None:
    differ = [path for path in _config_differences(config, saved)
              if not any(path[:len(allowed)] == allowed for allowed in RESUME_MAY_DIFFER)]
    if differ:
        names = ", ".join(".".join(map(str, path)) for path in differ)
        raise ValueError(f"--resume {checkpoint}: the config differs from the checkpoint's in {names}; "
                         "resume with the checkpoint's config (omit --config) or start a new run")


# ----------------------------------------------------------------------------------------------------
# Model parts


def vision_tower(model: nn.Module) -> nn.Module:
    """The open_clip vision tower of a CLIP model, an IPCLIP or a tower itself."""
    inner = getattr(model, "visual", None)
    return inner if isinstance(inner, nn.Module) else model


def _unit_patterns(visual: nn.Module) -> dict[str, str]:
    from open_clip.modified_resnet import ModifiedResNet

    return RESNET_UNITS if isinstance(visual, ModifiedResNet) else VIT_UNITS


def trainable_parameter_names(visual: nn.Module, units: Sequence[str]) -> list[str]:
    """Names (relative to the tower) of the parameters that belong to ``units``."""
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise ValueError(f"unknown trainable units {bad}; choose from {list(UNITS)}")
    patterns = _unit_patterns(visual)
    regex = re.compile("|".join(f"(?:^{patterns[u]})" for u in units))
    names = [name for name, _ in visual.named_parameters() if regex.match(name)]
    if not names:
        raise ValueError(f"trainable units {list(units)} select no parameter of this {type(visual).__name__}")
    return names


def set_trainable(visual: nn.Module, units: Sequence[str]) -> list[str]:
    """Freeze the tower except ``units``; returns the trainable names."""
    names = trainable_parameter_names(visual, units)
    chosen = set(names)
    for name, parameter in visual.named_parameters():
        parameter.requires_grad_(name in chosen)
    return names


def _resolve_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _amp_dtype(setting, device: torch.device):
    """The autocast dtype, or None (AMP is used on CUDA only)."""
    if device.type != "cuda" or setting is False:
        return None
    if setting == "fp16" or (setting is True and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _tower_input_size(visual: nn.Module, configured) -> int:
    if configured is not None:
        return int(configured if isinstance(configured, int) else configured[0])
    size = getattr(visual, "image_size", 224)
    return int(size if isinstance(size, int) else size[0])


def _normalisation(visual: nn.Module):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


class Student(nn.Module):
    """IP-CLIP's two passes in one forward, so DistributedDataParallel sees a single call per chunk.

    Also returns ``anchor``, an exact zero that touches every trainable parameter: added to the loss it
    keeps every parameter in the graph even for a chunk without proposals and without a teacher, so the
    loss always has a gradient and DDP never waits for a parameter that one rank did not use.
    """

    def __init__(self, ipclip: nn.Module):
        super().__init__()
        self.ipclip = ipclip

    def forward(self, images: torch.Tensor, masks: list[torch.Tensor], whole_image: bool):
        proposals = list(self.ipclip(images, masks))
        plain = self.ipclip.encode_image(images) if whole_image else None
        trainable = [p for p in self.ipclip.parameters() if p.requires_grad]
        anchor = sum(p.reshape(-1)[:1].float().sum() for p in trainable) * 0.0
        return proposals, plain, anchor


# ----------------------------------------------------------------------------------------------------
# Distributed helpers


class _Distributed:
    """Rank, world size and a process group created here (and destroyed at the end) or found."""

    def __init__(self, device: torch.device):
        self.created = False
        if device.type == "cuda":
            torch.cuda.set_device(device)  # one GPU per process (LOCAL_RANK), before NCCL starts
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.created = True
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast(self, obj):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.created:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Data order


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's share of each step's global batch, for steps ``start .. iterations-1``.

    The image stream is an endless sequence of epochs, each a permutation of the dataset drawn from
    ``seed + epoch``; step s takes stream positions ``s*B .. s*B+B-1`` and rank r the r-th contiguous
    shard of them. The order depends on (seed, step) only: resuming and changing the number of ranks
    see exactly the same images.
    """

    def __init__(self, num_images: int, global_batch: int, seed: int, start: int, iterations: int,
                 rank: int = 0, world: int = 1):
        if num_images < 1:
            raise ValueError("the training dataset is empty")
        if global_batch % world:
            raise ValueError(f"train.batch_size={global_batch} must be divisible by the number of "
                             f"processes ({world}) so that every rank gets the same share")
        self.num_images, self.global_batch, self.seed = num_images, global_batch, seed
        self.start, self.iterations, self.rank, self.world = start, iterations, rank, world
        self._epoch, self._order = None, None

    def _position(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_images)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_images, generator=generator).tolist()
        return self._order[offset]

    def global_indices(self, step: int) -> list[int]:
        return [self._position(step * self.global_batch + i) for i in range(self.global_batch)]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.global_batch // self.world
        for step in range(self.start, self.iterations):
            yield self.global_indices(step)[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)


class WithProposals(torch.utils.data.Dataset):
    """A dataset whose samples carry their proposals, so DataLoader workers build them in parallel with
    the training step (GT-derived and file proposals only: they need no model and are deterministic
    per image, so the result is the same as building them in the main process)."""

    KINDS = ("gt", "file")

    def __init__(self, dataset, generator: Callable):
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        return {**sample, "proposals": self.generator(sample)}


def _collate_samples(samples: list[dict]) -> list[dict]:
    return samples  # images differ in size: keep the samples as a list


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fingerprint(visual: nn.Module, skip: set[str]) -> dict[str, list[float]]:
    """Per parameter not in ``skip``: its L2 norm and its projection on a fixed pseudo-random direction.

    Two different weight sets (other pretrained weights, a random tower with another seed) differ in
    the projection by about their norm; the same weights stored in fp16/bf16 by well under 1 % of it.
    """
    out = {}
    with torch.no_grad():
        for name, parameter in visual.named_parameters():
            if name not in skip:
                values = parameter.detach().double().flatten()
                index = torch.arange(values.numel(), dtype=torch.float64, device=values.device)
                direction = torch.cos(index * 2.399963)  # golden angle: no short period
                out[name] = [values.norm().item(), (values * direction).sum().item()]
    return out


def load_checkpoint(checkpoint: str | os.PathLike | dict) -> dict:
    """A fine-tuning checkpoint as a dict (a dict is returned as is after a format check)."""
    if isinstance(checkpoint, dict):
        state = checkpoint
        where = "checkpoint"
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"checkpoint {str(path)!r} could not be read as a MAFT checkpoint: {error}") from None
        where = str(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where} is not a MAFT fine-tuning checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def load_finetuned(model: nn.Module, checkpoint: str | os.PathLike | dict, config: dict | None = None,
                   check_base: bool = True) -> nn.Module:
    """Apply a fine-tuning checkpoint's trained parameters to ``model`` (CLIP model, IPCLIP or tower).

    Clear ValueErrors when the checkpoint cannot belong to this model: ``config['model']`` (if given)
    names another model or weights; a parameter is missing or has another shape; or (``check_base``)
    the frozen base weights differ from those it was trained on (e.g. other pretrained weights, or a
    random tower built with another seed: use :func:`maft.experiment.build_clip`). Returns ``model``.
    """
    state = load_checkpoint(checkpoint)
    source = state["model"]
    where = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    if config is not None:
        wanted = with_defaults(config)["model"]
        for key in ("name", "pretrained"):
            if wanted.get(key) != source.get(key):
                raise ValueError(f"{where} was trained from model {key} {source.get(key)!r}, but the config "
                                 f"asks for {wanted.get(key)!r}")
    visual = vision_tower(model)
    own = dict(visual.named_parameters())
    problems = []
    for name, value in state["params"].items():
        if name not in own:
            problems.append(f"{name} missing")
        elif tuple(own[name].shape) != tuple(value.shape):
            problems.append(f"{name} is {tuple(own[name].shape)}, checkpoint has {tuple(value.shape)}")
    if problems:
        raise ValueError(f"{where} (model {source.get('name')!r}, image_size {source.get('image_size')!r}) does "
                         f"not fit this {type(visual).__name__}: " + "; ".join(problems[:5])
                         + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if check_base and state.get("base_fingerprint"):
        _check_base(visual, state, where)
    with torch.no_grad():
        for name, value in state["params"].items():
            own[name].copy_(value)
    return model


def _check_base(visual: nn.Module, state: dict, where: str) -> None:
    current = _fingerprint(visual, set(state["params"]))
    for name, (norm, projection) in state["base_fingerprint"].items():
        if name not in current:
            raise ValueError(f"{where}: the model has no parameter {name} that the base model had")
        now_norm, now_projection = current[name]
        tolerance = 1e-2 * norm + 1e-6
        if abs(now_norm - norm) > tolerance or abs(now_projection - projection) > tolerance:
            raise ValueError(
                f"{where}: the frozen base weights differ from those the checkpoint was trained on (first at "
                f"{name}); it was trained from {state['model'].get('name')!r} with pretrained="
                f"{state['model'].get('pretrained')!r} (random towers must be built with the same seed, "
                "maft.experiment.build_clip)")


def _save_checkpoint(path: Path, visual: nn.Module, trained: list[str], config: dict, step: int,
                     optimizer, scheduler, scaler, out_dir: Path) -> Path:
    own = dict(visual.named_parameters())
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(config["model"]),
        "config": config,
        "step": step,
        "trainable": list(config["train"]["trainable"]),
        "params": {name: own[name].detach().float().cpu().clone() for name in trained},
        # the frozen weights these parameters sit on, so loading onto another base is caught
        "base_fingerprint": _fingerprint(visual, set(trained)),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
        "out_dir": str(out_dir),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, partial)
    os.replace(partial, path)  # never leave a half-written checkpoint under the real name
    return path


# ----------------------------------------------------------------------------------------------------
# Run directory


RUN_FILES = ("metrics.jsonl", "config.yaml", "summary.json", "checkpoint.pt", "checkpoints")


def resolve_run_dir(out_dir: str | os.PathLike | None, name: str) -> Path:
    """``train.out_dir`` with ``<name>`` filled in; None or a relative ``outputs/...`` path goes under the
    outputs root (``$MAFT_OUTPUTS``, as ``maft eval`` does); any other path is used as given."""
    from .paths import outputs_dir

    if out_dir is None:
        return outputs_dir("train", name, create=False)
    path = Path(str(out_dir).replace("<name>", name))
    if not path.is_absolute() and path.parts and path.parts[0] == "outputs":
        return outputs_dir(*path.parts[1:], create=False)
    return path


def _run_dir(config: dict, overwrite: bool) -> Path:
    """outputs/train/<name> (or train.out_dir); an existing non-empty one is never reused silently."""
    base = resolve_run_dir(config["train"]["out_dir"], config["name"])
    if base.exists() and any(base.iterdir()):
        if overwrite:
            for name in RUN_FILES:
                target = base / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        else:
            number = 2
            while (base.parent / f"{base.name}-{number}").exists():
                number += 1
            fresh = base.parent / f"{base.name}-{number}"
            print(f"maft train: {base} already holds a run; writing to {fresh} (use --overwrite to replace it)")
            base = fresh
    base.mkdir(parents=True, exist_ok=True)
    return base


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------------
# One step


@dataclass
class RunParts:
    """Everything one training run holds: models, data, optimisation state and settings."""

    config: dict
    device: torch.device
    dist: _Distributed
    dataset: Any
    visual: nn.Module              # the student's tower (IP-CLIP runs on it in place)
    student: nn.Module             # Student, DDP-wrapped when distributed
    teacher: nn.Module | None      # frozen copy of the original tower; None when distill_weight is 0
    text: torch.Tensor             # [C_seen, D] text classifier of the seen classes
    trained: list[str]             # trainable parameter names (relative to the tower)
    params: list[nn.Parameter]
    generator: Callable
    seen: list[int]                # dataset class id of each text row
    ignore_index: int
    preprocess: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    autocast: Callable
    distill_loss: Callable
    num_trainable: int
    num_tower: int


def _chunks(items: list, size: int | None) -> list[list]:
    size = size or len(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _train_step(parts: RunParts, samples: list[dict], step: int) -> dict[str, float]:
    """Forward/backward/update for this rank's share of one global batch; returns global stats."""
    cfg, device, ddp = parts.config["train"], parts.device, parts.dist
    distill = cfg["distill_weight"] > 0
    # Proposals and the detached IoU targets need no model: compute them first, so the global number of
    # images with an L_ma term is known before any backward pass.
    masks, targets = [], []
    for sample in samples:
        proposals = sample["proposals"] if "proposals" in sample else parts.generator(sample)
        proposal_masks = proposals.masks.float().to(device)
        masks.append(proposal_masks)
        targets.append(iou_targets(proposal_masks, sample["label"].to(device), parts.seen,
                                   len(parts.seen), ignore_index=parts.ignore_index))
    counts = torch.tensor([float(sum(t[0].numel() > 0 for t in targets)), float(len(samples)),
                           float(sum(t[0].numel() for t in targets))], dtype=torch.float64, device=device)
    ma_images, num_images, ma_classes = ddp.all_sum(counts).tolist()

    parts.optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    chunks = _chunks(list(range(len(samples))), cfg["micro_batch_size"])
    for number, chunk in enumerate(chunks):
        images = parts.preprocess([samples[i]["image"] for i in chunk]).to(device)
        sync = number == len(chunks) - 1
        no_sync = parts.student.no_sync if (ddp.active and not sync) else nullcontext
        with no_sync():
            with parts.autocast():
                proposal_embeddings, plain, anchor = parts.student(images, [masks[i] for i in chunk], distill)
                if distill:
                    with torch.no_grad():
                        teacher = parts.teacher(images)
            text = parts.text
            ma_sum = anchor
            for embeddings, i in zip(proposal_embeddings, chunk):
                probs = class_probs(embeddings, text)
                ma_sum = ma_sum + mask_aware_loss_from_targets(probs, *targets[i][:2], kind=cfg["loss"])
            dis_sum = anchor
            if distill:
                student_probs = class_probs(plain, text)
                teacher_probs = class_probs(teacher, text)
                dis_sum = parts.distill_loss(student_probs, teacher_probs, kind=cfg["distill_loss"]) * len(chunk)
            chunk_totals = ddp.all_sum(torch.stack([ma_sum.detach(), dis_sum.detach()]).double())
            _check_finite(chunk_totals, step, cfg["iterations"])
            totals += chunk_totals
            # Scaled so that summing over chunks and averaging over ranks (DDP) gives global means.
            loss = (ma_sum / max(ma_images, 1.0) + cfg["distill_weight"] * dis_sum / num_images) * ddp.world
            scaler = parts.scaler
            (scaler.scale(loss) if scaler is not None else loss).backward()

    lr = parts.optimizer.param_groups[0]["lr"]
    grad_norm = _clip_and_step(parts, cfg, step)
    parts.scheduler.step()
    loss_ma = totals[0].item() / max(ma_images, 1.0)
    loss_dis = totals[1].item() / num_images if distill else 0.0
    return {"loss": loss_ma + cfg["distill_weight"] * loss_dis, "loss_ma": loss_ma, "loss_dis": loss_dis,
            "ma_images": int(ma_images), "ma_classes": int(ma_classes), "grad_norm": grad_norm, "lr": lr}


def class_probs(embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    from .clip import class_probabilities

    return class_probabilities(embeddings.float(), text)


def _check_finite(totals: torch.Tensor, step: int, iterations: int) -> None:
    names = ("mask-aware loss L_ma", "self-distillation loss L_dis")
    for name, value in zip(names, totals.tolist()):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training stopped at step {step + 1}/{iterations}: the {name} is {value} (lower train.lr, "
                "check the proposals/labels of this batch, or turn off train.amp)")


def _clip_and_step(parts: RunParts, cfg: dict, step: int) -> float:
    optimizer, scaler, params = parts.optimizer, parts.scaler, parts.params
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg["grad_clip"]:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
    else:
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros(())
    # fp16 loss scaling overflows now and then by design (the scaler skips that step); otherwise a
    # non-finite gradient from finite losses is a bug worth stopping for.
    if scaler is None and not math.isfinite(float(norm)):
        raise NonFiniteLossError(f"training stopped at step {step + 1}/{cfg['iterations']}: the gradient norm "
                                 f"is {float(norm)} although both loss terms are finite")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(norm)


# ----------------------------------------------------------------------------------------------------
# The run


def finetune(config: dict[str, Any] | None, resume: str | os.PathLike | None = None, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Mask-aware fine-tuning from an experiment config (see ``maft/configs/*.yaml``).

    ``resume``: a checkpoint of this run to continue from (``config`` None = the checkpoint's config).
    Returns a summary: ``name``, ``out_dir``, ``checkpoint`` (final), ``steps``, ``final`` (last step's
    loss terms), ``trainable_parameters``, ``step_time_s`` (mean wall time per step), ``world_size``,
    ``rank`` (also written to ``summary.json``) and, in memory only, ``params``: this process's trained
    parameters by name (CPU tensors).
    """
    from tqdm.auto import tqdm

    saved = load_checkpoint(resume) if resume is not None else None
    if config is None:
        if saved is None:
            raise ValueError("finetune needs a config (or resume=<checkpoint> to reuse its config)")
        config = saved["config"]
    config = training_config(config)
    saved_train = {}
    if saved is not None:
        _check_resume_config(config, training_config(saved["config"]), str(resume))
        saved_train = saved["config"].get("train") or {}
    cfg = config["train"]
    device = _resolve_device(cfg["device"])
    ddp = _Distributed(device)
    try:
        parts = _build_parts(config, device, ddp)
        start = 0
        if saved is not None:
            load_finetuned(parts.visual, saved, config=config)
            parts.optimizer.load_state_dict(saved["optimizer"])
            parts.scheduler.load_state_dict(saved["scheduler"])
            if parts.scaler is not None and saved.get("scaler"):
                parts.scaler.load_state_dict(saved["scaler"])
            start = int(saved["step"])
            if start > cfg["iterations"]:
                raise ValueError(f"--resume {resume}: checkpoint is at step {start}, beyond "
                                 f"train.iterations={cfg['iterations']}")
            _set_rng_state(saved["rng"])
        out_dir = None
        if ddp.main:
            same_place = saved is not None and cfg["out_dir"] in (None, saved_train.get("out_dir"))
            if same_place and saved.get("out_dir"):
                # resuming continues the checkpoint's own run folder unless another out_dir is asked for
                out_dir = Path(saved["out_dir"])
                out_dir.mkdir(parents=True, exist_ok=True)
            else:
                out_dir = _run_dir(config, overwrite)
        out_dir = Path(ddp.broadcast(str(out_dir) if out_dir else None))
        metrics = out_dir / "metrics.jsonl"
        if ddp.main:
            import yaml

            (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if saved is not None:
                _append_jsonl(metrics, {"event": "resume", "step": start, "checkpoint": str(resume)})
            print(f"maft train: {parts.num_trainable:,} trainable parameters of {parts.num_tower:,} in the "
                  f"vision tower (units: {', '.join(cfg['trainable'])}); {ddp.world} process(es) on {device}; "
                  f"run dir {out_dir}")

        loader = _loader(parts, config, start, ddp)
        bar = tqdm(total=cfg["iterations"], initial=start, disable=not (progress and ddp.main),
                   desc=f"maft train {config['name']}", dynamic_ncols=True)
        stats, times, checkpoint = {}, [], None
        step = start
        for samples in loader:
            began = time.perf_counter()
            stats = _train_step(parts, samples, step)
            step += 1
            times.append(time.perf_counter() - began)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", ma=f"{stats['loss_ma']:.4f}", dis=f"{stats['loss_dis']:.4f}")
            last = step == cfg["iterations"]
            if ddp.main and (last or step == 1 or (cfg["log_every"] and step % cfg["log_every"] == 0)):
                _append_jsonl(metrics, {"step": step, **stats, "step_time_s": times[-1]})
            if ddp.main and (last or (cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0)):
                name = "checkpoint.pt" if last else f"checkpoints/step_{step:06d}.pt"
                checkpoint = _save_checkpoint(out_dir / name, parts.visual, parts.trained, config, step,
                                              parts.optimizer, parts.scheduler, parts.scaler, out_dir)
        bar.close()
        if checkpoint is None:  # resumed at the last step: nothing left to train
            checkpoint = out_dir / "checkpoint.pt"
        summary = {"name": config["name"], "out_dir": str(out_dir), "checkpoint": str(checkpoint), "steps": step,
                   "final": stats, "trainable_parameters": parts.num_trainable,
                   "step_time_s": float(np.mean(times)) if times else None, "world_size": ddp.world,
                   "rank": ddp.rank}
        if ddp.main:
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        own = dict(parts.visual.named_parameters())
        # In memory only (not in summary.json): this process's trained tensors, e.g. to compare ranks.
        summary["params"] = {name: own[name].detach().cpu().clone() for name in parts.trained}
        return summary
    finally:
        ddp.close()


def _build_parts(config: dict, device: torch.device, ddp: _Distributed) -> RunParts:
    from .clip import preprocess_images
    from .ipclip import IPCLIP

    cfg = config["train"]
    seed_everything(int(config["seed"]))
    model, _, tokenizer = build_clip(config, device=device)
    model.requires_grad_(False)  # text tower and everything else frozen; the chosen units re-enabled below
    dataset = build_dataset_split(config, "train_split", mode="train")
    if not dataset.seen:
        raise ValueError(f"dataset {dataset.name!r} has no seen classes to train on")
    seen_names = [dataset.classes[i] for i in dataset.seen]
    with torch.no_grad():
        text = build_text_classifier(config, model, tokenizer, seen_names, device=device).float()
    visual = model.visual
    teacher = None
    if cfg["distill_weight"] > 0:
        teacher = copy.deepcopy(visual).eval().requires_grad_(False)  # the original tower, frozen
    trained = set_trainable(visual, cfg["trainable"])
    ipclip = IPCLIP(visual, start_layer=config["model"].get("start_layer")).eval()
    student: nn.Module = Student(ipclip)
    if ddp.active:
        student = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False)  # Student's anchor keeps every trainable parameter used
    params = [p for name, p in visual.named_parameters() if name in set(trained)]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    iterations, power = cfg["iterations"], cfg["lr_power"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / iterations) ** power)
    amp_dtype = _amp_dtype(cfg["amp"], device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    size = _tower_input_size(visual, config["model"].get("image_size"))
    mean, std = _normalisation(visual)
    return RunParts(
        config=config, device=device, dist=ddp, dataset=dataset, visual=visual, student=student,
        teacher=teacher, text=text, trained=trained, params=params, generator=build_generator(config),
        seen=list(dataset.seen), ignore_index=getattr(dataset, "ignore_index", 255),
        preprocess=lambda images: preprocess_images(images, size, mean, std),
        optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        autocast=(lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else nullcontext,
        distill_loss=self_distillation_loss,
        num_trainable=sum(p.numel() for p in params),
        num_tower=sum(p.numel() for p in visual.parameters()),
    )


def _loader(parts: RunParts, config: dict, start: int, ddp: _Distributed) -> torch.utils.data.DataLoader:
    cfg = config["train"]
    sampler = GlobalBatchSampler(len(parts.dataset), cfg["batch_size"], int(config["seed"]), start,
                                 cfg["iterations"], ddp.rank, ddp.world)
    dataset = parts.dataset
    if cfg["num_workers"] and with_defaults(config)["proposals"]["kind"] in WithProposals.KINDS:
        dataset = WithProposals(dataset, parts.generator)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_collate_samples, num_workers=cfg["num_workers"],
        worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(int(config["seed"])))


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="experiment YAML: a path or a shipped name (maft/configs)")
    parser.add_argument("--resume", help="continue from this checkpoint (its config is used when --config is omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run in the output folder instead of writing to a new one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from .config import apply_overrides, load_config, resolve_config_path

    if args.config is None and args.resume is None:
        raise SystemExit("maft train: give --config <yaml|name> (or --resume <checkpoint>)")
    if args.config is not None:
        config = load_config(args.config, args.overrides)
        config.setdefault("name", resolve_config_path(args.config).stem)
    else:
        config = apply_overrides(load_checkpoint(args.resume)["config"], args.overrides)
    summary = finetune(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if summary["rank"] == 0:
        final = summary["final"]
        print(f"maft train: {summary['steps']} steps, loss {final.get('loss', float('nan')):.4f} "
              f"(L_ma {final.get('loss_ma', float('nan')):.4f}, L_dis {final.get('loss_dis', float('nan')):.4f}); "
              f"checkpoint {summary['checkpoint']}")
    return 0
