"""Data parallelism for fine-tuning: the process group, and a data order that does not depend on it.

The same entry point runs on CPU, one GPU or many GPUs/nodes. Under ``torchrun`` (env ``WORLD_SIZE`` > 1)
:class:`Distributed` creates a process group (gloo on CPU, nccl on CUDA). :class:`GlobalBatchSampler`
splits every step's global batch into equal contiguous rank shards; the order depends on (seed, step)
only, so resuming and changing the number of ranks see exactly the same images (and, with
``with_positions``, the same stream positions, which seed the training augmentation).
"""
from __future__ import annotations

import os
import random
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist


class Distributed:
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


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's share of each step's global batch, for steps ``start .. iterations-1``.

    The image stream is an endless sequence of epochs, each a permutation of the dataset drawn from
    ``seed + epoch``; step s takes stream positions ``s*B .. s*B+B-1`` and rank r the r-th contiguous
    shard of them. The order depends on (seed, step) only: resuming and changing the number of ranks
    see exactly the same images.
    """

    def __init__(self, num_images: int, global_batch: int, seed: int, start: int, iterations: int,
                 rank: int = 0, world: int = 1, with_positions: bool = False):
        if num_images < 1:
            raise ValueError("the training dataset is empty")
        if global_batch % world:
            raise ValueError(f"train.batch_size={global_batch} must be divisible by the number of "
                             f"processes ({world}) so that every rank gets the same share")
        self.num_images, self.global_batch, self.seed = num_images, global_batch, seed
        self.start, self.iterations, self.rank, self.world = start, iterations, rank, world
        self.with_positions = with_positions  # yield (index, stream position) keys, e.g. to seed augmentation
        self._epoch, self._order = None, None

    def _position(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_images)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_images, generator=generator).tolist()
        return self._order[offset]

    def global_indices(self, step: int) -> list[int]:
        return [self._position(step * self.global_batch + i) for i in range(self.global_batch)]

    def drawn(self) -> list[int]:
        """Every dataset index that steps ``start .. iterations-1`` draw, over all ranks, sorted."""
        return sorted({i for step in range(self.start, self.iterations) for i in self.global_indices(step)})

    def __iter__(self) -> Iterator[list[int]]:
        share = self.global_batch // self.world
        for step in range(self.start, self.iterations):
            first = self.rank * share
            indices = self.global_indices(step)[first:first + share]
            if self.with_positions:
                start = step * self.global_batch + first
                yield [(index, start + offset) for offset, index in enumerate(indices)]
            else:
                yield indices

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

    def __getitem__(self, index) -> dict:
        sample = self.dataset[index]
        if "proposals" in sample:  # already read (and augmented) with the sample: see maft.data.augment
            return sample
        return {**sample, "proposals": self.generator(sample)}


def collate_samples(samples: list[dict]) -> list[dict]:
    return samples  # images differ in size: keep the samples as a list


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
