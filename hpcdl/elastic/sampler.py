"""A data sampler that re-shards the rest of an epoch over whoever is left.

Each epoch has one global order (a permutation seeded by ``seed + epoch``, the
same on every rank) and one position: the number of samples of that order the
committed steps have consumed. A step takes the next ``batch_size * size``
samples of the order and gives rank ``r`` the ``r``-th of ``size`` near-equal
contiguous pieces; no padding, so no sample is repeated. After a shrink the
position is the committed one and the pieces are cut for the new size: within
the epoch every sample is used exactly once, whatever the failures.

A piece may be smaller than ``batch_size`` (the epoch's last step, or a step
after a shrink); :meth:`ElasticSampler.step_samples` is the global count to
weight the loss with so that the averaged gradient is the mean over the samples.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..errors import InvalidArgumentError

__all__ = ["ElasticSampler"]


class ElasticSampler:
    """``for idx in sampler:`` yields this rank's sample indices for each step."""

    def __init__(self, num_samples: int, batch_size: int, comm: Any, *, shuffle: bool = True,
                 seed: int = 0) -> None:
        if num_samples < 1 or batch_size < 1:
            raise InvalidArgumentError(f"num_samples={num_samples}, batch_size={batch_size}: "
                                       "both must be >= 1", rank=comm.rank, op="ElasticSampler")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0          # samples of this epoch's order already consumed
        self.step_samples = 0      # global samples of the step last yielded
        self.set_comm(comm)

    def set_comm(self, comm: Any) -> None:
        """Cut the following steps for ``comm``'s ranks (after a shrink)."""
        self.rank, self.size = comm.rank, comm.size

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch, self.position = int(epoch), 0

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=g).tolist()

    def steps_left(self) -> int:
        per_step = self.batch_size * self.size
        return -(-(self.num_samples - self.position) // per_step)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        while self.position < self.num_samples:
            chunk = order[self.position:self.position + self.batch_size * self.size]
            # Advanced when the step is handed out: the commit after the step records it,
            # and a failure before that commit restores the position before it.
            self.position += len(chunk)
            self.step_samples = len(chunk)
            base, extra = divmod(len(chunk), self.size)
            start = self.rank * base + min(self.rank, extra)
            yield chunk[start:start + base + (self.rank < extra)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
