"""Training on several processes with PyTorch's DistributedDataParallel, started by `torchrun`.

    torchrun --standalone --nproc_per_node=2 ACT_for_Maniskill.py ...      # one machine, two processes
    python ACT_for_Maniskill.py ...                                         # one process: none of this runs

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE through the
environment. Each process builds the same model, DDP averages the gradients during backward(), and every
process takes the same optimizer step, so the weights stay identical everywhere. How the work is split:

    data        the global batch of iteration i is drawn exactly as in a single process; rank r trains on
                its r-th contiguous slice (batch_size must divide by the world size)
    validation  rank r takes held-out samples r, r + N, ...; the sums are added up over ranks
    evaluation  rank r plays rounds r, r + N, ... of num_eval_envs episodes; outcomes are gathered
    writing     only rank 0 writes checkpoints, metrics, curves, W&B and videos

Backends: NCCL with CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU.
"""

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_cpu_group = None  # the process group of max_over_ranks: gloo on the CPU, beside NCCL's on GPUs


def init_distributed() -> Distributed:
    """Join torchrun's process group when started by torchrun with more than one process; else a no-op.
    Ranks other than 0 print nothing from here on (rank 0 reports for all; errors still reach stderr)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    # Generous timeout: the other ranks wait at a barrier while rank 0 makes the demos (can take an hour).
    timeout = datetime.timedelta(hours=2)
    global _cpu_group
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout)
        _cpu_group = dist.new_group(backend="gloo")  # not yet run beside NCCL: no 2-GPU machine here
    else:
        dist.init_process_group("gloo", timeout=timeout)
        _cpu_group = dist.group.WORLD
    return Distributed(rank, world_size, local_rank)


def shutdown_distributed():
    global _cpu_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _cpu_group = None


def max_over_ranks(value: int) -> int:
    """The largest of every rank's integer, on every rank (value itself on a single process). It travels over a
    CPU (gloo) group, so that calling it every step never waits for the GPU's queue to drain."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_cpu_group)
    return int(tensor)


def all_sum(values: list[float], device) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks (the list itself on a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank ([obj] on a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj):
    """Rank 0's obj, on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_process_first(distributed: Distributed):
    """Rank 0 runs the block first (e.g. making demos or caches); the others wait, then run it and find the
    files there."""
    if distributed.enabled and not distributed.is_main:
        dist.barrier()
    yield
    if distributed.enabled and distributed.is_main:
        dist.barrier()
