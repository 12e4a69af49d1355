"""Multi-process training: which launches are honoured, and the cross-process gather of the statistics
a loss needs.

Honoured: ``torchrun --nproc_per_node N script.py`` (or ``accelerate launch --multi_gpu --num_processes N``,
which runs torchrun) of a script that calls ``prefbench.train.trainer.train``. Without CUDA the trainer asks
accelerate for CPU processes, which then join one gloo process group (accelerate ``state.py``,
``DistributedType.MULTI_CPU``).

Refused with one line:
  * ``accelerate launch --cpu --num_processes N``: accelerate 1.x's CPU launch is its "simple
    launcher", which starts ONE process (multi-CPU needs ``mpirun`` and a hostfile; accelerate issue
    #2741); the process only sees ``MASTER_ADDR`` set and no ``WORLD_SIZE``.
  * a launch whose world size accelerate did not pick up (a process state made earlier without it).
  * the ``prefbench`` commands: a job also builds stages, caches and evaluates, which are not
    multi-process aware; ``refuse_multiprocess`` is their start-up check.

Exactness: the trainer gathers every statistic of every process (``gather_batch``: sums, per-token statistics
padded to the widest, online methods' judge scores, pi_old and values), so each process computes the loss of the
GLOBAL batch: KTO's KL estimate z is the mean over all processes' mismatched pairs (as HALOs,
``accelerator.gather(KL_rewards.detach()).mean()``, and TRL's KTOTrainer,
``accelerator.gather_for_metrics(kl).mean()``, do), SFT's and ORPO's token-mean NLL divide by the global token
count (what transformers does with ``num_items_in_batch``), PPO's whitening spans every process's samples (each
process samples its own prompts; a prompt's group of samples stays whole, as GRPO's and RLOO's baselines need), and
the logged loss and metrics are those of the whole batch. The gather's backward sums the gradient of every
process's (identical) loss with respect to this process's rows; DDP's average of the parameter gradients then
equals the gradient of the global-batch loss for every method.
"""
from __future__ import annotations

from dataclasses import fields

import os

import torch
import torch.distributed as dist

from prefbench.io.errors import UserError
from prefbench.methods import BatchLogps, SeqLogps

HOW = "launch a script that calls prefbench.train.trainer.train with `torchrun --nproc_per_node N`"


def launched_world_size() -> int:
    """Processes the launcher started, from its environment (torchrun, mpirun); 1 when not launched."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def accelerate_simple_launch_of_many() -> bool:
    """``accelerate launch --num_processes N>1`` that went to accelerate's simple launcher (``--cpu``, or no
    GPU and no ``--multi_gpu``): it sets MASTER_ADDR for N>1 processes but starts this one process only."""
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    return launched_by_accelerate and "MASTER_ADDR" in os.environ and launched_world_size() == 1


def check_launch() -> None:
    """One clear line for a multi-process launch that would silently run as one process."""
    if accelerate_simple_launch_of_many():
        raise UserError("`accelerate launch --cpu --num_processes N` starts only one process (accelerate's CPU "
                        f"launcher needs mpirun); for N CPU processes {HOW} (gloo)")


def check_world(num_processes: int) -> None:
    """The accelerator must run as many processes as were launched, or every rank would train alone."""
    check_launch()
    launched = launched_world_size()
    if launched != num_processes:
        raise UserError(f"{launched} processes were launched but accelerate runs {num_processes} "
                        f"(its process state was made before the launch environment was read); {HOW}")


def refuse_multiprocess(command: str) -> None:
    """Start-up check of the ``prefbench`` commands: a multi-process launch stops with one line, printed
    by rank 0, whose status 2 fails the launch. The other ranks leave silently with status 0: a failing
    rank makes torchrun stop the rest at once, which could kill rank 0 before it says why."""
    if launched_world_size() == 1 and not accelerate_simple_launch_of_many():
        return
    if int(os.environ.get("RANK", "0")) != 0:
        raise SystemExit(0)
    raise UserError(f"`prefbench {command}` runs as one process (its stages, reference cache and evaluation are "
                    f"not multi-process); multi-process runs are supported for training only: {HOW}")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """All-gather of equal-shaped tensors into a (world, ...) stack. Backward: every process's loss
    depends on this process's rows, so their gradients are summed (the semantics of
    torch.distributed.nn.functional.all_gather, deprecated in torch 2.x, with one all_reduce instead of
    its alltoall)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` (B_r, ...) concatenated in rank order, on every process; the other dims
    zero-padded to the widest (per-token statistics are right-padded with 0 already); differentiable. Where any
    process's ``x`` requires grad, every process's does, so all join the backward's all_reduce (a process with
    no rows of a role, such as KTO's undesirable ones, holds zeros without grad)."""
    world = dist.get_world_size()
    meta = torch.tensor([*x.shape, int(x.requires_grad)], device=x.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas = torch.stack(metas).tolist()
    shapes = [m[:-1] for m in metas]
    if any(m[-1] for m in metas) and not x.requires_grad:
        x = x.detach().requires_grad_()
    widest = [max(s[d] for s in shapes) for d in range(x.dim())]
    pad = [n for d in reversed(range(x.dim())) for n in (0, widest[d] - x.shape[d])]
    stacked = _AllGather.apply(torch.nn.functional.pad(x, pad))
    return torch.cat([stacked[rank, :rows[0]] for rank, rows in enumerate(shapes)])


def _gather_seq(s: SeqLogps) -> SeqLogps:
    """Each statistic of ``s`` gathered across processes (``old``, pi_old's, too); every process holds the same
    statistics (one method), so the collectives line up."""
    out = {f.name: _gather_rows(getattr(s, f.name)) for f in fields(s)
           if f.name != "old" and getattr(s, f.name) is not None}
    return SeqLogps(**out, old=_gather_seq(s.old) if s.old is not None else None)


def gather_batch(batch: BatchLogps | None) -> BatchLogps | None:
    """The statistics of every process's micro-batch, concatenated in rank order, on every process;
    differentiable. Every process's batch has the same roles (prefbench.train.trainer.forward gives every trained
    role, with zero sequences where a process has none). Unchanged in a single process."""
    if batch is None or not is_distributed():
        return batch
    return BatchLogps(**{role: _gather_seq(batch[role]) for role in sorted(batch)})
