"""Point-to-point for ``ProcessGroupHpcdl``: send, recv, and their checks.

Posted at once as MPI nonblocking requests on the group's private
point-to-point communicator (its own MPI context: any user tag, no clash with
the tags hpcdl's collectives use). Strided tensors go further than gloo, which
refuses them: a strided send is copied before the MPI request starts, a
strided receive lands in a contiguous temporary copied back when the request
completes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from mpi4py import MPI

from ...comm.mpi import mpi_error
from .ops import dense, host_bytes, write_back
from .work import P2PWork

__all__ = ["PointToPoint"]


class PointToPoint:
    """Mixed into ``ProcessGroupHpcdl``: needs ``comm``, ``_p2p``, ``timeout_s``, ``_tag_ub``, ``_one``
    and ``_err``."""

    def _p2p_args(self, tensors: list, peer: int, tag: int, op: str) -> torch.Tensor:
        t = self._one(tensors, op)
        if not 0 <= peer < self.comm.size:
            raise self._err(op, f"peer {peer} is not a rank of this group (0..{self.comm.size - 1})")
        if not 0 <= tag <= self._tag_ub:
            raise self._err(op, f"tag {tag} is outside MPI's range 0..{self._tag_ub}")
        return t

    def send(self, tensors: list, dst: int, tag: int) -> dist.Work:
        t = self._p2p_args(tensors, dst, tag, "send")
        # A CUDA tensor is staged, a strided one copied: the copy lives in the work.
        host = dense(t.detach().to("cpu"))
        req = self._post(lambda: self._p2p.mpi.Isend([host_bytes(host), MPI.BYTE], dst, tag),
                         "send")
        work = P2PWork(req, tensors, "send", self.comm.rank, mpi=self._p2p.mpi, peer=dst,
                       timeout_s=self.timeout_s)
        work._keep = host  # the send buffer must outlive the request
        return work

    def recv(self, tensors: list, src: int, tag: int) -> dist.Work:
        t = self._p2p_args(tensors, src, tag, "recv")
        # A CUDA or strided tensor receives into a contiguous host temporary, copied
        # back when the request completes (P2PWork runs ``finish`` then).
        direct = t.device.type == "cpu" and t.is_contiguous()
        host = t if direct else torch.empty(t.shape, dtype=t.dtype)
        req = self._post(lambda: self._p2p.mpi.Irecv([host_bytes(host), MPI.BYTE], src, tag),
                         "recv")
        finish = None if direct else (lambda: write_back(t, host))
        return P2PWork(req, tensors, "recv", self.comm.rank, finish, mpi=self._p2p.mpi,
                       peer=src, timeout_s=self.timeout_s)

    def _post(self, start: Any, op: str) -> MPI.Request:
        try:
            return start()
        except MPI.Exception as exc:   # a revoked communicator (FT mode): ProcessFailed
            raise mpi_error(exc, self._p2p, op) from exc

    def recv_anysource(self, tensors: list, tag: int) -> dist.Work:
        raise self._err("recv", "a receive from any source (src=None) is not supported: "
                                "torch cannot read the sender's rank from a Python backend's "
                                "work; pass src=")
