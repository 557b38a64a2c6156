"""The processes of one training: torchrun's process group, this process's rank, and what fit shares.

Under `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment) `joined()` sets up torch's
process group: NCCL between GPUs, gloo on CPU. A plain `python -m trainer fit` is a world of one,
where every method below is a no-op, so fit has a single code path for one process and many.

Work is split by position: rank r takes items r, r + size, r + 2 size, ... (`shard`) and
`gather_shards` puts the results back in the items' order, each item exactly once.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from trainer.config import ConfigError

T = TypeVar("T")
# Python objects (decoded photos, predictions) travel over gloo even between GPUs: NCCL moves tensors only.
_objects_group = None


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""  # "" for a single process

    @property
    def main(self) -> bool:
        """The process that writes the run folder, exports and reports."""
        return self.rank == 0

    def describe(self) -> dict:
        """What the run's config.json records about the processes that trained it."""
        return {"processes": self.size, **({"backend": self.backend} if self.backend else {})}

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.size])

    def gather_shards(self, values: list) -> list:
        """Every rank's results for its `shard`, back in the order of the items they were made from."""
        if self.size == 1:
            return list(values)
        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(values), group=_objects_group)
        gathered: list = [None] * sum(len(part) for part in parts)
        for rank, part in enumerate(parts):
            gathered[rank :: self.size] = part
        return gathered

    def any(self, *flags: bool) -> list[bool]:
        """Each flag is true on some rank: how all ranks agree to stop at the same batch."""
        if self.size == 1:
            return [bool(flag) for flag in flags]
        votes = torch.tensor([float(flag) for flag in flags], device=self._device())
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return [bool(vote) for vote in votes.tolist()]

    def sum(self, *values: float) -> list[float]:
        if self.size == 1:
            return [float(value) for value in values]
        totals = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(totals)
        return totals.tolist()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def current() -> World:
    """This process's place in the training: the process group's, or a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def joined(device: str) -> Iterator[World]:
    """Join torchrun's process group for the length of the block (nothing to join for a single process).

    torchrun ends the other ranks with SIGTERM when one fails or on Ctrl-C; turning it into `Terminated`
    lets fit remove its unfinished run folder on the way out.
    """
    global _objects_group
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu or auto")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"{os.environ['LOCAL_WORLD_SIZE']} processes per machine, but only "
                              f"{torch.cuda.device_count()} GPU(s): give --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    _objects_group = dist.new_group(backend="gloo") if cuda else None
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield current()
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()
        _objects_group = None


class Terminated(BaseException):
    """torchrun ended this process (another one failed, or Ctrl-C): unwinds like Ctrl-C, so cleanup runs."""


def _exit_on_sigterm(signum, frame) -> None:
    raise Terminated(f"signal {signum}")

