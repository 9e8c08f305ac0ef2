"""Data-parallel training under ``torchrun``: who this process is, and the process group.

``torchrun --nproc_per_node N -m tinytriage train ...`` starts N copies of the command and
tells each one who it is through environment variables: ``WORLD_SIZE`` processes in all,
this one is ``RANK`` (0 .. WORLD_SIZE-1), ``LOCAL_RANK`` on its own machine. Every rank
then does what a single process would do, with one difference:

    idx = order[b * B : (b + 1) * B]     # the global batch: same permutation on every rank
    mine = shard(B)                      # rank r keeps rows r*B/W .. (r+1)*B/W of it
    engine.train_step(x[mine], y[mine])  # DDP averages the W gradients in backward

The mean of W equal-sized shares' mean gradients is the whole batch's mean gradient, so
every rank takes the step a single process takes on the whole batch (the argument of
PyTorch's DistributedDataParallel, Li et al., 2020). Rank 0 alone prints and writes files.

Only the functions that talk to other processes import torch, so ``tinytriage.training.loop`` and
the CLI can ask "am I rank 0?" without it.
"""

from __future__ import annotations

import os

from tinytriage.errors import TrainingError

_group_started = False  # did init() start a process group (cleanup() ends it)


def world_size() -> int:
    """Number of training processes (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among all of them, 0 .. world_size()-1 (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its own machine (picks its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Started by torchrun with more than one process?"""
    return world_size() > 1


def is_main() -> bool:
    """The process that prints and writes files: rank 0 (or the only one)."""
    return rank() == 0


def shard(n: int) -> slice:
    """This rank's rows of a global batch of ``n``: consecutive, n / world_size() of them."""
    W = world_size()
    if n % W:
        raise TrainingError(
            f"a batch of {n} photos does not split evenly over {W} processes; "
            f"use a --batch-size that is a multiple of {W} (torchrun --nproc_per_node x --nnodes)"
        )
    per = n // W
    return slice(rank() * per, (rank() + 1) * per)


def check(backend: str, batch_size: int) -> None:
    """Refuse, on every rank alike and before any process waits on another, what can't run."""
    if backend != "torch":
        raise TrainingError(
            f"torchrun trains with PyTorch's DistributedDataParallel; the {backend} backend trains in "
            "one process only. Add --backend torch, or run without torchrun."
        )
    shard(batch_size)


def init(device: str) -> str:
    """Join the other ranks (gloo on CPU, NCCL on CUDA GPUs); returns this rank's device.

    On CUDA each process of a machine takes its own GPU, ``cuda:LOCAL_RANK``."""
    global _group_started
    import torch
    import torch.distributed as dist

    if device.startswith("cuda:"):
        raise TrainingError(f"--device {device}: under torchrun use --device cuda; rank r takes cuda:LOCAL_RANK")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu)")
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    _group_started = True
    return device


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if _group_started:
        import torch.distributed as dist

        dist.barrier()


def cleanup() -> None:
    """Leave the process group that init() joined."""
    global _group_started
    if _group_started:
        import torch.distributed as dist

        dist.destroy_process_group()
        _group_started = False


# -- collectives on torch tensors, for the torch engine ----------------------------------


def mean_over_ranks(t):
    """The mean of ``t`` over all ranks (a new tensor; ``t`` is left alone)."""
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)  # sum
    return t / world_size()


def gather_rows(t):
    """Every rank's ``t`` stacked along dim 0 in rank order: shares back into the global batch."""
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)
