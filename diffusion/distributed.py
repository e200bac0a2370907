"""Multi-process training through torch.distributed (torchrun), and the single-process default.

The same command runs alone or under torchrun::

    zigscan train configs/fashion_zigma_gpu.yaml
    torchrun --nproc_per_node=4 -m zigscan.diffusion.cli train configs/fashion_zigma_gpu.yaml

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_distributed`` then
joins the process group (``env://``; NCCL on GPU, gloo on CPU) and picks this process's device. Only
rank 0 logs, saves and samples (``DistInfo.is_main``); checkpoints sit between barriers. Data sharding
is done by the trainer with its own seeded permutation: every rank draws the same global batch
indices and takes its slice ``[rank::world_size]`` (what DistributedSampler does, but resumable by
(epoch, position) and independent of any global RNG).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "barrier", "all_reduce_mean", "shard", "pick_device"]

log = logging.getLogger("zigscan.train")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # True when this module created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:local_rank when CUDA is available, else cpu. ``cuda`` without CUDA raises."""
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"config key 'train.device' is 'cuda' but CUDA is not available on this machine "
                             f"(torch {torch.__version__}); use --set train.device=auto (or cpu)")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    if rank == 0:
        log.info("distributed: %d processes, backend %s, device %s", world, backend, dev.type)
    return DistInfo(rank, world, local_rank, dev, True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over all ranks (a copy; ``x`` unchanged). Identity for one process."""
    if not info.distributed:
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world_size


def shard(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's part of a global batch of indices: ``indices[rank::world_size]``."""
    return indices[info.rank :: info.world_size]
