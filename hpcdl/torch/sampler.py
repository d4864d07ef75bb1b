"""``DistributedSampler``: torch's sampler, sharded by hpcdl's ranks and checked across them.

    sampler = hpcdl.torch.DistributedSampler(dataset, shuffle=True, seed=42)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)          # a new shuffle, identical on every rank
        for x, y in loader: ...

Why the padding rule matters: every step runs an allreduce, so a rank with one
batch fewer than the others leaves them waiting forever. Every rank therefore
gets exactly ``num_samples`` indices:

* ``drop_last=False`` (default): ``num_samples = ceil(n / size)``; the shuffled
  index list is padded by wrapping around to its start, so up to ``size - 1``
  samples are seen twice per epoch;
* ``drop_last=True``: ``num_samples = floor(n / size)``; the last ``n % size``
  samples of the shuffled list are left out this epoch (a different few each
  epoch when shuffling).

Rank ``r`` takes positions ``r, r + size, r + 2 size, ...`` of the (padded or
trimmed) list, so the shards are disjoint apart from the wrapped padding.

Resuming mid-epoch (``hpcdl.checkpoint``): ``set_start(p)`` skips the first
``p`` positions of the epoch's global list and deals the rest out the same way,
``rest[r::size]`` (the rest padded by wrapping to a multiple of ``size``). At
the rank count that consumed those ``p`` samples this is exactly the remainder
of each rank's shard; at another rank count it re-shards what is left.
With a ``DataLoader`` of ``batch_size=b`` every rank then runs
``ceil(num_samples / b)`` steps (or ``floor`` with the loader's own
``drop_last``): the same count everywhere.
"""

from __future__ import annotations

from typing import Any, Iterator, Sized

import torch
import torch.utils.data.distributed

from ..collectives.handle import drain
from ..comm.base import Communicator
from ..errors import InvalidArgumentError, MismatchError
from ..runtime import default_comm

__all__ = ["DistributedSampler"]


class DistributedSampler(torch.utils.data.distributed.DistributedSampler):
    """torch's ``DistributedSampler`` (same indices), with hpcdl's ranks and checks.

    What hpcdl adds: the shard count and rank come from the communicator rather
    than a torch process group, the constructor checks that every rank sees the
    same dataset length, seed and drop rule (a mismatch would make the step
    counts differ and a collective hang), ``dataset`` may be a length, and
    ``set_start`` resumes mid-epoch.

    Args:
        dataset: a sized dataset, or its length as an ``int``.
        num_replicas, rank: the shard count and this shard; default the
            communicator's size and rank (then the constructor is collective: it
            checks that every rank sees the same length, seed and drop rule).
        shuffle: reshuffle every epoch with ``torch.Generator(seed + epoch)``.
        seed: must be the same on every rank.
        drop_last: see the module docstring for the padding rule.
        comm: communicator; default the one of ``hpcdl.init()``.
    """

    def __init__(self, dataset: "Sized | int", num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, comm: Communicator | None = None) -> None:
        n = dataset if isinstance(dataset, int) else len(dataset)
        if num_replicas is None or rank is None:
            c = default_comm(comm)
            num_replicas = c.size if num_replicas is None else num_replicas
            rank = c.rank if rank is None else rank
            if num_replicas == c.size:
                _check_agreement(c, (int(n), int(seed), bool(drop_last), bool(shuffle)))
        # hpcdl's errors (naming rank and op) before torch's bare ValueError
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise InvalidArgumentError(f"rank={rank} is not in 0..{num_replicas - 1}",
                                       rank=rank, op="DistributedSampler")
        if n < 1 or (drop_last and n < num_replicas):
            raise InvalidArgumentError(f"a dataset of {n} samples cannot give every one of "
                                       f"{num_replicas} ranks a sample"
                                       + (" with drop_last=True" if drop_last else ""),
                                       rank=rank, op="DistributedSampler")
        super().__init__(range(int(n)) if isinstance(dataset, int) else dataset,
                         num_replicas=int(num_replicas), rank=int(rank), shuffle=shuffle,
                         seed=int(seed), drop_last=drop_last)
        self.length = int(n)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of ``epoch`` (call with the same value on every rank)."""
        super().set_epoch(int(epoch))
        self.start = 0

    def set_start(self, position: int) -> None:
        """Begin this epoch at global position ``position`` (a resume; see the module doc)."""
        if position < 0:
            raise InvalidArgumentError(f"position={position} must be >= 0", rank=self.rank,
                                       op="DistributedSampler.set_start")
        self.start = int(position)

    def global_order(self) -> list[int]:
        """The padded (or trimmed) index list that all ranks cut their shards from:
        torch's shard of rank ``r`` is ``global_order()[r::num_replicas]`` (tested)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.total_size <= len(order):
            return order[:self.total_size]
        # Wrap around (repeatedly, for a dataset smaller than the rank count).
        reps = -(-self.total_size // len(order))
        return (order * reps)[:self.total_size]

    def __iter__(self) -> Iterator[int]:
        if not self.start:
            return super().__iter__()
        rest = self.global_order()[self.start:]
        n = len(self)
        rest = (rest * -(-n * self.num_replicas // max(1, len(rest))))[:n * self.num_replicas]
        return iter(rest[self.rank::self.num_replicas])

    def __len__(self) -> int:
        if self.start:
            return -(-max(0, self.total_size - self.start) // self.num_replicas)
        return self.num_samples


def _check_agreement(c: Communicator, mine: tuple[Any, ...]) -> None:
    drain(c)
    everyone = c.allgather_object(mine)
    bad = [r for r, v in enumerate(everyone) if v != everyone[0]]
    if bad:
        names = ("length", "seed", "drop_last", "shuffle")
        show = lambda v: ", ".join(f"{k}={x}" for k, x in zip(names, v))  # noqa: E731
        detail = "; ".join(f"rank {r} has {show(everyone[r])}" for r in bad)
        raise MismatchError(f"ranks disagree on the dataset: rank 0 has {show(everyone[0])}; "
                            f"{detail} (the step counts would differ and a collective would "
                            "hang)", rank=c.rank, size=c.size, op="DistributedSampler")
