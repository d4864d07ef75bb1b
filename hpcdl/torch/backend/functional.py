"""The coalesced entry points torch's functional collectives call on a group.

``torch.ops._c10d_functional.all_gather_into_tensor`` and
``reduce_scatter_tensor`` (and their ``_coalesced`` forms: DTensor's
``full_tensor``/``redistribute``, tensor parallelism, FSDP2's state dict) call
``ProcessGroup.allgather_into_tensor_coalesced`` /
``reduce_scatter_tensor_coalesced``. torch's C++ defaults route those to the
group's per-device C++ backend, which a Python group has none of (and a
Python object cannot be one: ``c10d.Backend`` has no Python constructor),
hence "No backend type associated with device type cpu". Overriding them on
the group itself is what torch's trampoline lets a Python group do; the other
functional ops (all_reduce, all_to_all_single, broadcast) already reach the
group's own methods.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from .work import submit

__all__ = ["FunctionalOps"]


class FunctionalOps:
    """Mixed into ``ProcessGroupHpcdl``: needs ``comm``, ``_err``, ``all_gather_single``
    and ``reduce_scatter_single``."""

    def _pairs(self, outputs: list, inputs: list, op: str) -> None:
        if len(outputs) != len(inputs):
            raise self._err(op, f"got {len(outputs)} outputs for {len(inputs)} inputs")

    def _joined(self, works: list, outputs: list, op: str) -> dist.Work:
        # The progress thread is FIFO: when this job runs, every pair's job before it
        # has finished, so result() does not block; it re-raises a pair's error.
        return submit(self.comm, op, lambda: ([w.result() for w in works], outputs)[1])

    def allgather_into_tensor_coalesced(self, outputs: list, inputs: list,
                                        opts: Any = None) -> dist.Work:
        op = "all_gather_into_tensor_coalesced"
        self._pairs(outputs, inputs, op)
        works = [self.all_gather_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return self._joined(works, outputs, op)

    def reduce_scatter_tensor_coalesced(self, outputs: list, inputs: list,
                                        opts: Any = None) -> dist.Work:
        op = "reduce_scatter_tensor_coalesced"
        self._pairs(outputs, inputs, op)
        works = [self.reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return self._joined(works, outputs, op)
