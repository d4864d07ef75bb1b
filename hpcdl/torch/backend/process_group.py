"""``ProcessGroupHpcdl``: a torch ProcessGroup whose operations are hpcdl's.

torch calls these methods with lists of tensors and an options struct; each
checks its arguments on the calling thread (so a bad call raises at once, on
the rank that made it, naming the op) and then queues one job on the
communicator's progress thread (work.py), returning its ``Work``.

Strided (non-contiguous) tensors are taken as torch's gloo takes them in its
collectives: inputs travel as a contiguous copy (``dense``) and results land
in a contiguous buffer copied back into the caller's tensor (``write_back``).
Point-to-point (p2p.py) goes further than gloo, which refuses them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from mpi4py import MPI

from ...collectives.api import barrier as hpcdl_barrier
from ...comm.mpi import MPICommunicator
from ...errors import InvalidArgumentError
from . import collectives as jobs
from .functional import FunctionalOps
from .p2p import PointToPoint
from .ops import (check_tensor, dense, hpcdl_op, mpi_op, on_dense, torch_op, write_back)
from .work import submit

__all__ = ["ProcessGroupHpcdl"]


class ProcessGroupHpcdl(FunctionalOps, PointToPoint, dist.ProcessGroup):
    """One torch group over one hpcdl communicator (plus a private one for send/recv)."""

    def __init__(self, comm: MPICommunicator, p2p: MPICommunicator, algorithm: str,
                 timeout_s: float | None = None) -> None:
        super().__init__(comm.rank, comm.size)
        self.comm = comm
        self.timeout_s = timeout_s  # init_process_group/new_group(timeout=): every wait's bound
        self._p2p = p2p  # its own MPI context: any user tag, no clash with hpcdl's tags
        self.algorithm = algorithm
        self._name = ""
        self._desc = ""
        self._tag_ub = int(MPI.COMM_WORLD.Get_attr(MPI.TAG_UB))  # set on WORLD only

    @property
    def communicators(self) -> tuple[MPICommunicator, MPICommunicator]:
        """The group's own MPI communicators (collectives, point-to-point); both are
        created for this group alone and freed by :meth:`shutdown`."""
        return self.comm, self._p2p

    def shutdown(self) -> None:
        """``destroy_process_group`` calls this: finish the queued collectives, stop the
        group's progress thread and free its MPI communicators (idempotent)."""
        executor = self.comm.executor
        if executor is not None:
            executor.close()
            if executor.pending:  # still inside MPI on that communicator: keep it
                return
        for c in self.communicators:
            if c.mpi != MPI.COMM_NULL:
                c.mpi.Free()

    def getBackendName(self) -> str:
        return "hpcdl"

    def __repr__(self) -> str:
        return f"ProcessGroupHpcdl(rank={self.comm.rank}, size={self.comm.size})"

    # names: torch's base class keeps them on its per-device backends, which a
    # Python group has none of, so they live here. Python code reads
    # .group_name / calls _set_group_name; C++ (functional collectives, FSDP2's
    # group lookup) reaches getGroupName / setGroupName through the trampoline.
    def getGroupName(self) -> str:
        return self._name

    def setGroupName(self, name: str) -> None:
        self._name = name

    def getGroupDesc(self) -> str:
        return self._desc

    def setGroupDesc(self, desc: str) -> None:
        self._desc = desc

    _set_group_name = setGroupName
    _set_group_desc = setGroupDesc

    @property
    def group_name(self) -> str:
        return self._name

    @property
    def group_desc(self) -> str:
        return self._desc

    def _submit(self, op: str, job: Any) -> dist.Work:
        return submit(self.comm, op, job, self.timeout_s)

    # checks -------------------------------------------------------------------
    def _err(self, op: str, msg: str) -> InvalidArgumentError:
        return InvalidArgumentError(msg, rank=self.comm.rank, size=self.comm.size, op=op)

    def _one(self, tensors: list, op: str) -> torch.Tensor:
        if len(tensors) != 1:
            raise self._err(op, f"takes one tensor per rank, got {len(tensors)}")
        check_tensor(tensors[0], rank=self.comm.rank, op_name=op)
        return tensors[0]

    def _root(self, root: int, op: str) -> int:
        if not 0 <= root < self.comm.size:
            raise self._err(op, f"root {root} is not a rank of this group (0..{self.comm.size - 1})")
        return root

    def _reduction(self, opts_op: Any, dtype: torch.dtype, op: str) -> tuple[Any, Any, Any]:
        kind, factor = torch_op(opts_op)
        if factor is not None and not isinstance(factor, (int, float)):
            raise self._err(op, "PREMUL_SUM with a tensor factor is not supported; pass a "
                                "Python number")
        hop = hpcdl_op(kind, dtype)
        mop = None if hop is not None else mpi_op(kind, dtype, rank=self.comm.rank, op_name=op)
        return hop, mop, factor

    # collectives --------------------------------------------------------------
    def allreduce(self, tensors: list, opts: Any = None) -> dist.Work:
        t = self._one(tensors, "allreduce")
        opts = opts if opts is not None else dist.AllreduceOptions()
        hop, mop, factor = self._reduction(opts.reduceOp, t.dtype, "allreduce")
        return self._submit("allreduce", lambda: on_dense(t, lambda b: jobs.allreduce(
            self.comm, b, hop, mop, factor, self.algorithm)))

    def allreduce_coalesced(self, tensors: list, opts: Any = None) -> dist.Work:
        for t in tensors:
            check_tensor(t, rank=self.comm.rank, op_name="allreduce_coalesced")
        opts = opts if opts is not None else dist.AllreduceCoalescedOptions()
        ops = [self._reduction(opts.reduceOp, t.dtype, "allreduce_coalesced") for t in tensors]

        def job() -> list:
            for t, (hop, mop, factor) in zip(tensors, ops):
                on_dense(t, lambda b: jobs.allreduce(self.comm, b, hop, mop, factor,
                                                     self.algorithm))
            return tensors
        return self._submit("allreduce_coalesced", job)

    def reduce(self, tensors: list, opts: Any = None) -> dist.Work:
        t = self._one(tensors, "reduce")
        opts = opts if opts is not None else dist.ReduceOptions()
        root = self._root(opts.rootRank, "reduce")
        hop, mop, factor = self._reduction(opts.reduceOp, t.dtype, "reduce")

        def job() -> list:
            # An allreduce whose result only the root keeps: the others reduce a copy.
            buf = dense(t)
            target = buf if self.comm.rank == root else buf.clone()
            jobs.allreduce(self.comm, target, hop, mop, factor, self.algorithm)
            if self.comm.rank == root:
                write_back(t, buf)
            return tensors
        return self._submit("reduce", job)

    def broadcast(self, tensors: list, opts: Any = None) -> dist.Work:
        t = self._one(tensors, "broadcast")
        root = self._root((opts or dist.BroadcastOptions()).rootRank, "broadcast")
        return self._submit("broadcast", lambda: on_dense(
            t, lambda b: jobs.broadcast(self.comm, b, root), copy_back=self.comm.rank != root))

    def barrier(self, opts: Any = None) -> dist.Work:
        return self._submit("barrier", lambda: (hpcdl_barrier(comm=self.comm), [])[1])

    def allgather(self, output_lists: list, inputs: list, opts: Any = None) -> dist.Work:
        inp = self._one(inputs, "allgather")
        if len(output_lists) != 1 or len(output_lists[0]) != self.comm.size:
            raise self._err("allgather", f"needs one list of {self.comm.size} output tensors")
        outs = output_lists[0]
        inp = dense(inp)  # the outputs take strided results through copy_
        for o in outs:
            if o.numel() != inp.numel() or o.dtype != inp.dtype:
                raise self._err("allgather", f"output {o.dtype}{list(o.shape)} does not match "
                                             f"input {inp.dtype}{list(inp.shape)}")

        def job() -> list:
            flat = inp.new_empty((self.comm.size * inp.numel(),))
            jobs.allgather_flat(self.comm, flat, inp)
            for o, part in zip(outs, flat.chunk(self.comm.size)):
                o.copy_(part.view(o.shape))
            return output_lists
        return self._submit("allgather", job)

    def all_gather_single(self, output: torch.Tensor, inp: torch.Tensor,
                          opts: Any = None) -> dist.Work:
        for name, t in (("output", output), ("input", inp)):
            check_tensor(t, rank=self.comm.rank, op_name="all_gather_into_tensor", arg=name)
        if output.numel() != self.comm.size * inp.numel() or output.dtype != inp.dtype:
            raise self._err("all_gather_into_tensor",
                            f"output {output.dtype}{list(output.shape)} must hold {self.comm.size} "
                            f"x input {inp.dtype}{list(inp.shape)}")
        src = dense(inp)
        return self._submit("all_gather_into_tensor", lambda: on_dense(
            output, lambda b: jobs.allgather_flat(self.comm, b, src)))

    _allgather_base = all_gather_single

    def reduce_scatter_single(self, output: torch.Tensor, inp: torch.Tensor,
                              opts: Any = None) -> dist.Work:
        op = "reduce_scatter_tensor"
        for name, t in (("output", output), ("input", inp)):
            check_tensor(t, rank=self.comm.rank, op_name=op, arg=name)
        if inp.numel() != self.comm.size * output.numel() or output.dtype != inp.dtype:
            raise self._err(op, f"input {inp.dtype}{list(inp.shape)} must hold {self.comm.size} "
                                f"x output {output.dtype}{list(output.shape)}")
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        hop, mop, factor = self._reduction(opts.reduceOp, inp.dtype, op)
        src = dense(inp)
        return self._submit(op, lambda: on_dense(
            output, lambda b: jobs.reduce_scatter_flat(self.comm, b, src, hop, mop, factor)))

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter(self, outputs: list, input_lists: list, opts: Any = None) -> dist.Work:
        out = self._one(outputs, "reduce_scatter")
        if len(input_lists) != 1 or len(input_lists[0]) != self.comm.size:
            raise self._err("reduce_scatter", f"needs one list of {self.comm.size} input tensors")
        ins = input_lists[0]
        if any(i.numel() != out.numel() or i.dtype != out.dtype for i in ins):
            raise self._err("reduce_scatter", "every input must match the output's dtype and size")
        flat = torch.cat([i.reshape(-1) for i in ins])
        return self.reduce_scatter_single(out, flat, opts)

    def all_to_all_single(self, output: torch.Tensor, inp: torch.Tensor, output_splits: list,
                          input_splits: list, opts: Any = None) -> dist.Work:
        op = "all_to_all_single"
        for name, t in (("output", output), ("input", inp)):
            check_tensor(t, rank=self.comm.rank, op_name=op, arg=name)
        if output.dtype != inp.dtype:
            raise self._err(op, f"output dtype {output.dtype} differs from input {inp.dtype}")
        size = self.comm.size
        for name, t, splits in (("input", inp, input_splits), ("output", output, output_splits)):
            rows = t.shape[0] if t.dim() else 1
            if (splits and (len(splits) != size or sum(splits) != rows)) or \
                    (not splits and rows % size):
                raise self._err(op, f"{name} splits {list(splits)} do not divide its {rows} "
                                    f"rows over {size} ranks")
        send = jobs.split_counts(inp, input_splits, size)
        recv = jobs.split_counts(output, output_splits, size)
        src = dense(inp)
        return self._submit(op, lambda: on_dense(
            output, lambda b: jobs.alltoall_flat(self.comm, b, src, send, recv)))

    alltoall_base = all_to_all_single

    def alltoall(self, outputs: list, inputs: list, opts: Any = None) -> dist.Work:
        size = self.comm.size
        if len(outputs) != size or len(inputs) != size:
            raise self._err("all_to_all", f"needs {size} input and {size} output tensors")
        for t in [*outputs, *inputs]:
            check_tensor(t, rank=self.comm.rank, op_name="all_to_all")
        send = [i.numel() * i.element_size() for i in inputs]
        recv = [o.numel() * o.element_size() for o in outputs]

        def job() -> list:
            flat_in = torch.cat([i.reshape(-1).view(torch.uint8) for i in inputs]) if any(
                send) else torch.empty(0, dtype=torch.uint8)
            flat_out = torch.empty(sum(recv), dtype=torch.uint8)
            jobs.alltoall_flat(self.comm, flat_out, flat_in.cpu(), send, recv)
            for o, part in zip(outputs, flat_out.split(recv)):
                o.copy_(part.view(o.dtype).reshape(o.shape))
            return outputs
        return self._submit("all_to_all", job)

    def gather(self, output_lists: list, inputs: list, opts: Any = None) -> dist.Work:
        inp = dense(self._one(inputs, "gather"))
        root = self._root((opts or dist.GatherOptions()).rootRank, "gather")
        outs = output_lists[0] if output_lists else []
        if self.comm.rank == root and len(outs) != self.comm.size:
            raise self._err("gather", f"the root needs a list of {self.comm.size} outputs")
        return self._submit("gather",
                      lambda: (jobs.gather(self.comm, outs, inp, root), output_lists)[1])

    def scatter(self, outputs: list, input_lists: list, opts: Any = None) -> dist.Work:
        out = self._one(outputs, "scatter")
        root = self._root((opts or dist.ScatterOptions()).rootRank, "scatter")
        ins = input_lists[0] if input_lists else []
        if self.comm.rank == root and (len(ins) != self.comm.size or any(
                i.numel() != out.numel() or i.dtype != out.dtype for i in ins)):
            raise self._err("scatter", f"the root needs {self.comm.size} inputs shaped like "
                                       "the output")
        return self._submit("scatter", lambda: (
            on_dense(out, lambda b: jobs.scatter(self.comm, b, ins, root)), outputs)[1])
