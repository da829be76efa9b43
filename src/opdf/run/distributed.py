"""Data parallelism for the runner: torchrun's environment -> a process group, DDP, collectives.

``torchrun --nproc_per_node=N -m opdf distill CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment. :func:`setup`
reads them, picks the device (``cuda:LOCAL_RANK`` on a GPU machine, else the CPU) and the backend
that goes with it (``nccl`` / ``gloo``), and joins the group. Everything else is PyTorch's own:
:class:`torch.nn.parallel.DistributedDataParallel` all-reduces the gradients of the trainable
parameters (for an over-parameterized student: the cores, never a contracted weight), and the
object collectives below move the little the runner shares (evaluation logits, RNG states, a
resumed checkpoint, log sums). Without torchrun every helper is a no-op on one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from opdf.errors import OpdfError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owned: bool = False  # this module created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files (config, logs, checkpoints, summary, the merged student)."""
        return self.rank == 0


SINGLE = DistEnv()


def launched_world_size() -> int:
    """``WORLD_SIZE`` as a launcher set it (1 without one)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise OpdfError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def setup(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes; returns the env and this rank's device.

    ``device`` is the config's device resolved on this machine: with CUDA each rank takes
    ``cuda:LOCAL_RANK`` and ``nccl``; on the CPU ``gloo``. A group the caller initialized
    already is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        env = DistEnv(dist.get_rank(), dist.get_world_size(), local, backend, owned=False)
        return env, _rank_device(device, env)
    world = launched_world_size()
    if world <= 1:
        return SINGLE, device
    if not dist.is_available():  # pragma: no cover - every torch wheel we pin has it
        raise OpdfError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    env = DistEnv(rank, world, local, backend, owned=True)
    device = _rank_device(device, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    return env, device


def _rank_device(device: torch.device, env: DistEnv) -> torch.device:
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise OpdfError(
            f"LOCAL_RANK {env.local_rank} but this machine has {count} CUDA devices: start at "
            f"most {count} processes per node (torchrun --nproc_per_node={count})"
        )
    return torch.device("cuda", env.local_rank)


def teardown(env: DistEnv, *, clean: bool = True) -> None:
    """Leave a group :func:`setup` created: after a last barrier when ``clean`` (no rank exits
    while another still writes), at once after an error (the others may never get there)."""
    if env.owned and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def group(env: DistEnv) -> Iterator[DistEnv]:
    """``with group(env):`` run, then :func:`teardown` (clean or not)."""
    try:
        yield env
    except BaseException:
        teardown(env, clean=False)
        raise
    teardown(env)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints results."""
    return os.environ.get("RANK", "0") == "0"


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_object(obj, env: DistEnv, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (tensors inside come back on the CPU)."""
    if not env.enabled:
        return obj
    box = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn, env: DistEnv):
    """``fn()`` on rank 0, its result on every rank; an error raised there is raised on every
    rank (so all stop with the same message instead of waiting for rank 0)."""
    if not env.enabled:
        return fn()
    outcome = None
    if env.is_main:
        try:
            outcome = (True, fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, exc)
    ok, value = broadcast_object(outcome, env)
    if not ok:
        raise value
    return value


def all_gather_object(obj, env: DistEnv) -> list:
    """Every rank's ``obj``, in rank order."""
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(indices: list[int], env: DistEnv) -> list[int]:
    """This rank's part of a global batch: contiguous, sizes differ by at most one."""
    if not env.enabled:
        return indices
    n, w = len(indices), env.world_size
    start = env.rank * n // w
    return indices[start : (env.rank + 1) * n // w]


def wrap(module: torch.nn.Module, env: DistEnv, device: torch.device, *,
         find_unused_parameters: bool = False, ignore: tuple[str, ...] = ()):  # fmt: skip
    """``DistributedDataParallel(module)`` on this rank's device (the module itself on one
    process). ``ignore`` names parameters and buffers (by prefix) that DDP neither broadcasts
    nor reduces: the frozen teacher. Buffers are not re-broadcast every step (the text models
    here have none that training changes)."""
    if not env.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    names = [n for n, _ in module.named_parameters() if n.startswith(ignore)] if ignore else []
    names += [n for n, _ in module.named_buffers() if n.startswith(ignore)] if ignore else []
    if names:
        DDP._set_params_and_buffers_to_ignore_for_model(module, names)
    return DDP(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        forward_sync_buffers=False,
    )
