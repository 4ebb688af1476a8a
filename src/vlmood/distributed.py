"""torch.distributed helpers: works the same without torchrun (world size 1, no process group)."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    Backend: NCCL when CUDA is available, gloo otherwise. Returns True when distributed.
    """
    if is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    atexit.register(shutdown)  # exiting with a live group can abort in C++ (SIGABRT at exit)
    log.info("initialised %s process group: rank %d of %d", backend, rank(), world_size())
    return True


def shutdown() -> None:
    """Destroy the process group (registered at exit by :func:`init_distributed`): a process that
    exits with its gloo/NCCL group alive may abort with "terminate called without an active
    exception", which torchrun reports as a failed run."""
    if is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # pragma: no cover - best effort at exit
            log.debug("destroy_process_group at exit: %s", e)


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """In-place minimum over ranks (no-op without a process group)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Gather one picklable object per rank on ``dst`` (others get None).

    Only used between ranks of one job (trusted peers), never on files.
    """
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
