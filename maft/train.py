"""Mask-aware fine-tuning of IP-CLIP (paper Sec. 4.2 and 5.1): ``finetune(config)``.

One training step, for a global batch of B training images:

1. the training view of ``data.protocol`` (zero-shot: unseen pixels are 255; open-vocabulary: every
   class is trained), augmented as the authors; proposals from the config's generator
   (ground-truth-derived ones by default); images resized whole to the tower's input size;
2. IP-CLIP on (images, proposal masks) -> class probabilities over the training class names only
   (C = |C_seen| during zero-shot training, paper Sec. 3) -> mask-aware loss L_ma (eq. 5-7);
3. IP-CLIP's no-mask mode and a frozen copy of the original tower on the same images ->
   probabilities -> self-distillation loss L_dis (eq. 8);
4. loss = L_ma + distill_weight * L_dis, assembled by :func:`maft.losses.maft_objective`; AdamW (no
   weight decay on norm parameters, as the authors), poly learning rate (power 0.9), gradient-norm
   clipping.

How the batch is averaged (``train.loss_reduction``, see :mod:`maft.losses`): by default as the
authors, one mean of L_ma over every (class, proposal) pair of the *global* batch; ``image`` averages
per image first. L_dis is the mean over the global batch's [B, C] entries. The denominators are
all-reduced before the backward pass and every chunk's loss is its exact share of the batch loss, so
N ranks x B/N images give the same gradient as 1 rank x B images, and micro-batches
(``micro_batch_size``) the same as one pass.

Training images go through the authors' augmentation (:mod:`maft.data.augment`, ``train.augmentation``),
seeded by (seed, position in the image stream), so it too is the same for any number of ranks,
workers or a resumed run.

Distributed: the same entry point runs on CPU, one GPU or many GPUs/nodes (:mod:`maft.distributed`);
under ``torchrun`` the student is wrapped in DistributedDataParallel. Which parameters train is
:mod:`maft.trainable`; what is saved and how a run resumes bit-exactly is :mod:`maft.checkpoints`.

Kept frozen and in eval mode: the text tower, the proposal generator, the teacher (see
``_frozen_teacher`` for why its attention modules are in training mode) and the frozen units. The
student runs in eval mode too: CLIP towers have no dropout, and a ResNet tower's batch-norm
statistics are frozen units (their affine weights train when "norm" is selected).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from .checkpoints import check_resume_config, load_checkpoint, load_finetuned, save_checkpoint, set_rng_state
from .clip import clip_normalisation, preprocess_images, tower_input_size
from .config import load
from .data.augment import AugmentedDataset, TrainAugmentation, augmentation_settings
from .distributed import Distributed, GlobalBatchSampler, WithProposals, collate_samples, seed_everything, seed_worker
from .experiment import build_experiment, build_ipclip
from .losses import batch_denominators, iou_targets, maft_objective
from .proposals import CachedProposals
from .trainable import norm_parameter_names, set_trainable
from .utils.paths import check_output_path, resolve_output_path, write_json
from .utils.progress import progress_bar
from .utils.run_folder import claim_run_folder, interrupted, keep_steps_up_to


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term became NaN or infinite; the message names the step and the term.

    Also a ValueError: the cause is a setting or input the user can change (learning rate, AMP, bad
    proposals), so ``maft train`` reports it as one line like any other bad value.
    """


def _training_config(config):
    """The checked config of a run; a run without a name is called "maft" (its folder's name)."""
    config = load(config)
    return config if config.name is not None else load(config, ["name=maft"])


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
# Run directory


def resolve_run_dir(out_dir: str | os.PathLike | None, name: str) -> Path:
    """``train.out_dir`` with ``<name>`` filled in; None or a relative ``outputs/...`` path goes under the
    outputs root (``$MAFT_OUTPUTS``, as ``maft eval`` does); any other path is used as given."""
    return resolve_output_path(out_dir, name, ("train", "<name>"))


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------------
# One step


@dataclass
class TrainingRun:
    """What one training run holds: models, data and optimisation state. Everything else is derived."""

    config: dict
    device: torch.device
    dist: Distributed
    dataset: Any
    visual: nn.Module              # the student's tower (IP-CLIP runs on it in place)
    student: nn.Module             # Student, DDP-wrapped when distributed
    teacher: nn.Module | None      # frozen copy of the original tower; None when distill_weight is 0
    text: torch.Tensor             # [C_seen, D] text classifier of the seen classes
    trained: list[str]             # trainable parameter names (relative to the tower)
    generator: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: torch.dtype | None

    @property
    def seen(self) -> list[int]:
        """Dataset class id of each text row."""
        return list(self.dataset.seen)

    @property
    def ignore_index(self) -> int:
        return getattr(self.dataset, "ignore_index", 255)

    @cached_property
    def params(self) -> list[nn.Parameter]:
        chosen = set(self.trained)
        return [p for name, p in self.visual.named_parameters() if name in chosen]

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def num_tower(self) -> int:
        return sum(p.numel() for p in self.visual.parameters())

    def preprocess(self, images) -> torch.Tensor:
        size = self.config.model.image_size or tower_input_size(self.visual)  # as Experiment.image_size
        return preprocess_images(images, size, *clip_normalisation(self.visual))

    def autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()


def _chunks(items: list, size: int | None) -> list[list]:
    size = size or len(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _train_step(parts: TrainingRun, samples: list[dict], step: int) -> dict[str, float]:
    """Forward/backward/update for this rank's share of one global batch; returns global stats."""
    cfg, device, ddp = parts.config["train"], parts.device, parts.dist
    distill = cfg["distill_weight"] > 0
    # Proposals and the detached IoU targets need no model: compute them first, so the global
    # denominators of the objective are known before any backward pass.
    masks, targets = [], []
    for sample in samples:
        proposals = sample["proposals"] if "proposals" in sample else parts.generator(sample)
        proposal_masks = proposals.masks.float().to(device)
        masks.append(proposal_masks)
        columns, target, _ = iou_targets(proposal_masks, sample["label"].to(device), parts.seen, len(parts.seen),
                                         ignore_index=parts.ignore_index, constant_rows=cfg["constant_iou_rows"])
        targets.append((columns, target))
    local = torch.cat([batch_denominators(targets, cfg["loss"], cfg["loss_reduction"]),
                       torch.tensor([float(sum(c.numel() > 0 for c, _ in targets)),
                                     float(sum(c.numel() for c, _ in targets))], dtype=torch.float64)])
    ma_denominator, num_images, ma_images, ma_classes = ddp.all_sum(local.to(device)).tolist()

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
                teacher = None
                if distill:
                    with torch.no_grad():
                        teacher = parts.teacher(images)
            # L = L_ma + lambda L_dis (maft.losses): this chunk's exact share of the global batch's loss
            terms = maft_objective(list(proposal_embeddings), [targets[i] for i in chunk], parts.text, plain,
                                   teacher, kind=cfg["loss"], distill_kind=cfg["distill_loss"],
                                   distill_weight=cfg["distill_weight"], reduction=cfg["loss_reduction"],
                                   denominators=(ma_denominator, num_images))
            chunk_totals = ddp.all_sum(torch.stack([terms.ma_sum, terms.dis_sum]).double())
            _check_finite(chunk_totals, step, cfg["iterations"])
            totals += chunk_totals
            # DDP averages gradients over ranks; the shares add up, so scale the mean back to the sum.
            loss = (terms.loss + anchor) * ddp.world
            scaler = parts.scaler
            (scaler.scale(loss) if scaler is not None else loss).backward()

    lr = parts.optimizer.param_groups[0]["lr"]
    grad_norm = _clip_and_step(parts, cfg, step)
    parts.scheduler.step()
    loss_ma = totals[0].item() / max(ma_denominator, 1.0)
    loss_dis = totals[1].item() / num_images if distill else 0.0
    return {"loss": loss_ma + cfg["distill_weight"] * loss_dis, "loss_ma": loss_ma, "loss_dis": loss_dis,
            "ma_images": int(ma_images), "ma_classes": int(ma_classes), "grad_norm": grad_norm, "lr": lr}


def _check_finite(totals: torch.Tensor, step: int, iterations: int) -> None:
    names = ("mask-aware loss L_ma", "self-distillation loss L_dis")
    for name, value in zip(names, totals.tolist()):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training stopped at step {step + 1}/{iterations}: the {name} is {value} (lower train.lr, "
                "check the proposals/labels of this batch, or turn off train.amp)")


def _clip_and_step(parts: TrainingRun, cfg: dict, step: int) -> float:
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


def finetune(config: dict[str, Any] | None, resume: str | os.PathLike | None = None, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Mask-aware fine-tuning from an experiment config (see ``maft/configs/*.yaml``).

    ``resume``: a checkpoint of this run to continue from (``config`` None = the checkpoint's config).
    Returns a summary: ``name``, ``out_dir``, ``checkpoint`` (final), ``steps``, ``final`` (last step's
    loss terms), ``trainable_parameters``, ``step_time_s`` (mean wall time per step), ``world_size``,
    ``rank`` (also written to ``summary.json``) and, in memory only, ``params``: this process's trained
    parameters by name (CPU tensors).
    """
    saved = load_checkpoint(resume) if resume is not None else None
    if config is None:
        if saved is None:
            raise ValueError("finetune needs a config (or resume=<checkpoint> to reuse its config)")
        config = saved["config"]
    config = _training_config(config)
    saved_train = {}
    if saved is not None:
        check_resume_config(config, _training_config(saved["config"]), str(resume))
        saved_train = saved["config"].get("train") or {}
    cfg = config["train"]
    device = _resolve_device(cfg["device"])
    ddp = Distributed(device)
    folder, step, last_checkpoint = None, 0, resume  # for the one line Ctrl-C leaves (maft.utils.run_folder)
    try:
        same_place = saved is not None and cfg["out_dir"] in (None, saved_train.get("out_dir"))
        continued = Path(saved["out_dir"]) if same_place and saved.get("out_dir") else None
        if ddp.main:  # the run folder must be writable before the model is built and trained, not after
            check_output_path(continued or resolve_run_dir(cfg["out_dir"], config["name"]), "train.out_dir",
                              directory=True)
            # resuming continues the checkpoint's own run folder unless another out_dir is asked for; either
            # way the folder is locked while this run writes it (a live run there stops this one at once)
            folder = claim_run_folder(continued or resolve_run_dir(cfg["out_dir"], config["name"]), overwrite,
                                      resume=continued is not None)
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
            set_rng_state(saved["rng"])
        out_dir = Path(ddp.broadcast(str(folder.path) if folder else None))
        metrics = out_dir / "metrics.jsonl"
        if ddp.main:
            (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if saved is not None:
                keep_steps_up_to(metrics, start)  # steps after the checkpoint are trained (and logged) again
                _append_jsonl(metrics, {"event": "resume", "step": start, "checkpoint": str(resume)})
            print(f"maft train: {parts.num_trainable:,} trainable parameters of {parts.num_tower:,} in the "
                  f"vision tower (units: {', '.join(cfg['trainable'])}); {ddp.world} process(es) on {device}; "
                  f"run dir {out_dir}")

        loader = _loader(parts, config, start, ddp)
        bar = progress_bar(total=cfg["iterations"], initial=start, disable=not (progress and ddp.main),
                           desc=f"maft train {config['name']}", dynamic_ncols=True)
        stats, times, checkpoint = {}, [], None
        step = start
        for samples in loader:
            began = time.perf_counter()
            stats = _train_step(parts, samples, step)
            step += 1
            times.append(time.perf_counter() - began)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", ma=f"{stats['loss_ma']:.4f}", dis=f"{stats['loss_dis']:.4f}",
                            refresh=False)  # a forced redraw per step would flood a log (maft.utils.progress)
            last = step == cfg["iterations"]
            if ddp.main and (last or step == 1 or (cfg["log_every"] and step % cfg["log_every"] == 0)):
                _append_jsonl(metrics, {"step": step, **stats, "step_time_s": times[-1]})
            if ddp.main and (last or (cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0)):
                name = "checkpoint.pt" if last else f"checkpoints/step_{step:06d}.pt"
                checkpoint = last_checkpoint = save_checkpoint(out_dir / name, parts.visual, parts.trained, config,
                                                               step, parts.optimizer, parts.scheduler, parts.scaler,
                                                               out_dir)
        bar.close()
        if checkpoint is None:  # resumed at the last step: nothing left to train
            checkpoint = out_dir / "checkpoint.pt"
        summary = {"name": config["name"], "out_dir": str(out_dir), "checkpoint": str(checkpoint), "steps": step,
                   "final": stats, "trainable_parameters": parts.num_trainable,
                   "step_time_s": float(np.mean(times)) if times else None, "world_size": ddp.world,
                   "rank": ddp.rank}
        if ddp.main:
            write_json(summary, out_dir / "summary.json")
        own = dict(parts.visual.named_parameters())
        # In memory only (not in summary.json): this process's trained tensors, e.g. to compare ranks.
        summary["params"] = {name: own[name].detach().cpu().clone() for name in parts.trained}
        return summary
    except KeyboardInterrupt:
        raise interrupted(step, cfg["iterations"], last_checkpoint) from None
    finally:
        if folder is not None:
            folder.release()
        ddp.close()


def _build_parts(config: dict, device: torch.device, ddp: Distributed) -> TrainingRun:
    cfg = config["train"]
    seed_everything(int(config["seed"]))
    # The training view (unseen pixels are ignore) and a text classifier of the seen classes only: the
    # softmax of A^c runs over C_seen during training (paper Sec. 3).
    experiment = build_experiment(config, device=device, split="train", text_classes="seen")
    if not experiment.dataset.seen:
        raise ValueError(f"dataset {experiment.dataset.name!r} has no seen classes to train on")
    model = experiment.model
    model.requires_grad_(False)  # text tower and everything else frozen; the chosen units re-enabled below
    visual = model.visual
    trained = set_trainable(visual, cfg["trainable"])
    teacher = _frozen_teacher(visual) if cfg["distill_weight"] > 0 else None
    student: nn.Module = Student(build_ipclip(config, visual))
    if ddp.active:
        student = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False)  # Student's anchor keeps every trainable parameter used
    # As the authors' optimiser: no weight decay on normalisation layers, train.weight_decay elsewhere.
    chosen, norms = set(trained), set(norm_parameter_names(visual))
    groups = [{"params": [p for name, p in visual.named_parameters() if name in chosen and name not in norms],
               "weight_decay": cfg["weight_decay"]},
              {"params": [p for name, p in visual.named_parameters() if name in chosen and name in norms],
               "weight_decay": cfg["norm_weight_decay"]}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg["lr"])
    iterations, power = cfg["iterations"], cfg["lr_power"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / iterations) ** power)
    amp_dtype = _amp_dtype(cfg["amp"], device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return TrainingRun(
        config=config, device=device, dist=ddp, dataset=experiment.dataset, visual=visual, student=student,
        teacher=teacher, text=experiment.text.float(), trained=trained, generator=experiment.generator,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype)


def _frozen_teacher(visual: nn.Module) -> nn.Module:
    """A copy of the original tower that computes exactly what the untrained student computes.

    The teacher is frozen by never being optimised and always running under ``torch.no_grad()``. It
    keeps the student's ``requires_grad`` flags because PyTorch picks matmul and attention kernels by
    them (a parameter's flag stays set under no_grad), and its attention modules are put in training
    mode to keep nn.MultiheadAttention off its fused inference kernel (CLIP attention has no dropout). Both
    round differently otherwise, and L_dis would start at ~1e-15 instead of exactly 0 (eq. 8 at step 0).
    """
    teacher = copy.deepcopy(visual).eval()
    for module in teacher.modules():
        if isinstance(module, nn.MultiheadAttention):
            module.train()
    return teacher


def drawn_images(config: dict, num_images: int, start: int = 0) -> list[int]:
    """The dataset indices that steps ``start ..`` of this training run draw (over all processes)."""
    cfg = load(config).train
    return GlobalBatchSampler(num_images, cfg["batch_size"], int(config["seed"]), start, cfg["iterations"]).drawn()


def _loader(parts: TrainingRun, config: dict, start: int, ddp: Distributed) -> torch.utils.data.DataLoader:
    cfg = config["train"]
    augmentation = augmentation_settings(cfg["augmentation"])
    kind = config["proposals"]["kind"]
    sampler = GlobalBatchSampler(len(parts.dataset), cfg["batch_size"], int(config["seed"]), start,
                                 cfg["iterations"], ddp.rank, ddp.world, with_positions=augmentation is not None)
    dataset = parts.dataset
    if isinstance(parts.generator, CachedProposals):
        # the images this run draws get their proposals now, in this process: SAM on a GPU cannot run in
        # forked DataLoader workers, and every rank then reads the same files
        if ddp.main:
            parts.generator.fill(dataset, sampler.drawn(), desc="training proposals (cached once)")
        ddp.broadcast(None)  # the other ranks wait for the cache
    if augmentation is not None:
        # proposals read from files or a cache (SAM's) are made on the original image: they are read
        # first and moved with it; every other generator runs on the augmented sample (as the authors')
        stored = kind == "file" or kind.startswith("file:") or isinstance(parts.generator, CachedProposals)
        precomputed = parts.generator if stored else None
        dataset = AugmentedDataset(dataset, TrainAugmentation(parts.ignore_index, **augmentation),
                                   int(config["seed"]), precomputed)
    if cfg["num_workers"] and kind in WithProposals.KINDS:
        dataset = WithProposals(dataset, parts.generator)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_samples, num_workers=cfg["num_workers"],
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(int(config["seed"])))
