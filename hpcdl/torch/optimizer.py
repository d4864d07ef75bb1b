"""``DistributedOptimizer``: wrap any torch optimizer so ``step()`` uses averaged gradients.

    opt = hpcdl.torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                           named_parameters=model.named_parameters())
    loss.backward()     # hooks start the allreduce of each bucket as it fills
    opt.step()          # waits for what is outstanding, averages, steps

How it overlaps: a ``post_accumulate_grad`` hook on every parameter counts the
gradients that are complete; when every parameter of a bucket is complete the
bucket is packed into its flat buffer and an asynchronous allreduce starts on
hpcdl's progress thread, while autograd goes on computing earlier layers.
Buckets start strictly in index order (a bucket that fills early waits for
the ones before it), so every rank submits the same collectives in the same
order whatever order its hooks fired in. ``synchronize()`` launches the
buckets that never filled (parameters without a gradient pack as zeros: a
skipped bucket would leave the other ranks waiting in its allreduce forever),
waits, and unpacks the averages into ``.grad``.

Built by composition: the wrapper holds the optimizer and forwards
``param_groups``, ``state``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` to it. Schedulers that insist on ``isinstance(opt,
torch.optim.Optimizer)`` take ``opt.optimizer`` (same ``param_groups``).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable

import torch

from .. import trace
from ..collectives import allreduce
from ..collectives.handle import drain, executor_for
from ..compression import PlainCompressor, as_compressor
from ..comm.base import Communicator
from ..errors import InvalidArgumentError, MismatchError
from ..ops import ReduceOp, parse_op
from ..runtime import default_comm
from .buckets import Bucket, build_buckets, layout_signature, pack, unpack
from .wrapped import WrappedOptimizer

__all__ = ["DistributedOptimizer", "DEFAULT_FUSION_MB"]

#: Default bucket size; the same as DDP's ``bucket_cap_mb``.
DEFAULT_FUSION_MB = 25.0


def _named(optimizer: torch.optim.Optimizer,
           named_parameters: Iterable[tuple[str, torch.Tensor]] | None,
           rank: int) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for every trainable parameter the optimizer updates."""
    in_opt = [p for g in optimizer.param_groups for p in g["params"]]
    if named_parameters is None:
        # Names from the optimizer's own order: identical on every rank that
        # built the same optimizer, which is all the layout needs.
        pairs = [(f"group{gi}.param{pi:05d}", p) for gi, g in enumerate(optimizer.param_groups)
                 for pi, p in enumerate(g["params"])]
    else:
        pairs = list(named_parameters)
        names = [n for n, _ in pairs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidArgumentError(f"named_parameters has duplicate names {dup}",
                                       rank=rank, op="DistributedOptimizer")
        known = {id(p) for _, p in pairs}
        missing = sum(1 for p in in_opt if id(p) not in known)
        if missing:
            raise InvalidArgumentError(f"{missing} parameter(s) of the optimizer are not in "
                                       "named_parameters; pass model.named_parameters() of the "
                                       "model the optimizer was built on", rank=rank,
                                       op="DistributedOptimizer")
        wanted = {id(p) for p in in_opt}
        pairs = [(n, p) for n, p in pairs if id(p) in wanted]
    return [(n, p) for n, p in pairs if p.requires_grad]


def _compressor_label(compression: Any) -> str:
    """The compressor's class, the same on ranks that run the same one."""
    inner = compression.inner if isinstance(compression, PlainCompressor) else compression
    return type(inner).__name__


def _check_layout(comm: Communicator, signature: Any) -> None:
    """Raise :class:`MismatchError` on every rank unless all ranks built the same buckets."""
    drain(comm)
    sigs = comm.allgather_object(signature)
    bad = [r for r, s in enumerate(sigs) if s != sigs[0]]
    if not bad:
        return
    parts = []
    for r in bad:
        mine, ref = sigs[r], sigs[0]
        where = "settings" if mine[1:] != ref[1:] else "bucket layout"
        detail = f"{mine[1:]} vs {ref[1:]}" if where == "settings" else _first_difference(
            ref[0], mine[0])
        parts.append(f"rank {r} differs from rank 0 in its {where}: {detail}")
    raise MismatchError("; ".join(parts) + " (every rank must wrap the same model with the "
                        "same named_parameters, fusion_threshold_mb and "
                        "backward_passes_per_step)", rank=comm.rank, size=comm.size,
                        op="DistributedOptimizer")


def _first_difference(ref: list, mine: list) -> str:
    flat_ref = [(bi, e) for bi, b in enumerate(ref) for e in b]
    flat_mine = [(bi, e) for bi, b in enumerate(mine) for e in b]
    for a, b in zip(flat_ref, flat_mine):
        if a != b:
            return f"bucket {b[0]} holds {b[1]} where rank 0 has bucket {a[0]} {a[1]}"
    return f"{len(flat_mine)} parameters where rank 0 has {len(flat_ref)}"


class DistributedOptimizer(WrappedOptimizer):
    """Average gradients across ranks, overlapping communication with the backward pass.

    Args:
        optimizer: any ``torch.optim.Optimizer``; it does the actual update.
        named_parameters: ``model.named_parameters()``; the names fix the bucket
            layout (identical on every rank). Default: names from the optimizer's
            parameter order.
        compression: a :class:`hpcdl.compression.Compressor` (``compress(t, *,
            name=None) -> (payload, ctx)``, ``decompress(payload, ctx) -> t``,
            ``bind(comm)``, ``collective``), bound to this optimizer's
            communicator; an object with only Horovod's ``compress(t)`` and
            ``decompress`` is adapted (:func:`hpcdl.compression.as_compressor`).
            The payload is summed across ranks and ``decompress`` returns the sum.
        fusion_threshold_mb: bucket size; ``0`` sends each parameter on its own.
        backward_passes_per_step: backward passes accumulated locally before the
            gradients are reduced (gradient accumulation: scale the loss by
            ``1 / backward_passes_per_step`` to average over micro-batches).
        algorithm: allreduce algorithm name (``hpcdl.algorithm_names()``).
        op: ``"avg"`` (default) or ``"sum"`` over ranks.
        comm: communicator; default the one of ``hpcdl.init()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                 compression: Any = None, fusion_threshold_mb: float = DEFAULT_FUSION_MB,
                 backward_passes_per_step: int = 1, algorithm: str = "auto",
                 op: "str | ReduceOp" = "avg", comm: Communicator | None = None) -> None:
        self.comm = default_comm(comm)
        rank = self.comm.rank
        if isinstance(optimizer, WrappedOptimizer):
            raise InvalidArgumentError(f"optimizer is already a {type(optimizer).__name__}: "
                                       "wrap the torch optimizer once", rank=rank,
                                       op="DistributedOptimizer")
        self.op = parse_op(op, rank=rank, op_name="DistributedOptimizer")
        if self.op not in (ReduceOp.AVG, ReduceOp.SUM):
            raise InvalidArgumentError(f"op={self.op.value!r}: gradients are reduced with "
                                       "'avg' or 'sum'", rank=rank, op="DistributedOptimizer")
        if int(backward_passes_per_step) < 1:
            raise InvalidArgumentError(f"backward_passes_per_step={backward_passes_per_step}; "
                                       "must be >= 1", rank=rank, op="DistributedOptimizer")
        if fusion_threshold_mb < 0:
            raise InvalidArgumentError(f"fusion_threshold_mb={fusion_threshold_mb}; must be "
                                       ">= 0", rank=rank, op="DistributedOptimizer")
        compression = as_compressor(compression, rank=rank, op="DistributedOptimizer")
        if compression is not None:  # a collective compressor must run on the optimizer's comm
            compression.bind(self.comm)
        super().__init__(optimizer, self.comm, "DistributedOptimizer")
        self.compression = compression
        self.algorithm = algorithm
        self.backward_passes_per_step = int(backward_passes_per_step)
        self.fusion_threshold_mb = float(fusion_threshold_mb)
        named = _named(optimizer, named_parameters, rank)
        self._buckets: list[Bucket] = build_buckets(named, int(fusion_threshold_mb * 2**20))
        self._where: dict[int, tuple[Bucket, str]] = {
            id(p): (b, n) for b in self._buckets for n, p in zip(b.names, b.params)}
        self._counts: dict[int, int] = {id(p): 0 for _, p in named}
        self._next = 0                  # index of the next bucket to launch
        self._lock = threading.Lock()   # hooks may run on autograd's device threads
        signature = (layout_signature(self._buckets), self.op.value,
                     self.backward_passes_per_step, _compressor_label(compression),
                     str(algorithm))
        _check_layout(self.comm, signature)
        me = weakref.ref(self)
        self._hooks = [p.register_post_accumulate_grad_hook(_hook(me, id(p))) for _, p in named]

    # -- what torch code expects of an optimizer (the rest: WrappedOptimizer) -----------
    def add_param_group(self, group: dict[str, Any]) -> None:
        raise InvalidArgumentError("the bucket layout is fixed at construction; add the "
                                   "group to the torch optimizer before wrapping it",
                                   rank=self.comm.rank, op="DistributedOptimizer")

    @property
    def buckets(self) -> list[Bucket]:
        """The fusion layout (read-only use: names, offsets, numel per bucket)."""
        return self._buckets

    def __repr__(self) -> str:
        return (f"DistributedOptimizer({type(self.optimizer).__name__}, "
                f"{len(self._buckets)} bucket(s), op={self.op.value}, "
                f"backward_passes_per_step={self.backward_passes_per_step}, "
                f"compression={type(self.compression).__name__})")

    # -- the distributed part -------------------------------------------------------------
    def _grad_ready(self, key: int) -> None:
        with self._lock:
            count = self._counts[key] + 1
            if count > self.backward_passes_per_step:
                bucket, name = self._where[key]
                raise InvalidArgumentError(
                    f"gradient of '{name}' was computed {count} times before step(); set "
                    f"backward_passes_per_step={count} to accumulate, or call step() (or "
                    "synchronize()) after each backward", rank=self.comm.rank,
                    op="DistributedOptimizer")
            self._counts[key] = count
            self._synchronized = False
            if count == self.backward_passes_per_step:
                bucket, _ = self._where[key]
                bucket.ready += 1
                self._launch_in_order(force=False)

    def _launch_in_order(self, force: bool) -> None:
        """Start every bucket from ``_next`` on that is full (all of them when ``force``)."""
        while self._next < len(self._buckets):
            b = self._buckets[self._next]
            if not force and b.ready < len(b.params):
                return
            self._launch(b)
            self._next += 1

    def _launch(self, b: Bucket) -> None:
        t0 = trace.now() if trace.ON else 0
        pack(b)
        if t0:
            trace.record(f"pack bucket {b.index}", "optimizer", t0, trace.now(),
                         bytes=int(b.flat.numel() * b.flat.element_size()))
        if self.compression is None:
            b.pending = allreduce(b.flat, op="sum", algorithm=self.algorithm, comm=self.comm,
                                  async_op=True)
            return
        # Compression may itself be collective (FP16Compressor agrees on scales with an
        # allreduce of max): compress and reduce as *one* queued operation, so the hook
        # never blocks on the queue and every rank runs the two in the same order.
        flat, name = b.flat, f"hpcdl.bucket{b.index}"

        def compress_and_reduce() -> tuple[Any, Any]:
            c0 = trace.now() if trace.ON else 0
            # the name keys FP16Compressor's error-feedback residual across steps
            payload, ctx = self.compression.compress(flat, name=name)
            if c0:
                trace.record(f"compress bucket {b.index}", "compression", c0, trace.now())
            allreduce(payload, op="sum", algorithm=self.algorithm, comm=self.comm)
            return payload, ctx

        b.pending = executor_for(self.comm).submit("allreduce", compress_and_reduce)

    def synchronize(self) -> None:
        """Finish the reduction: afterwards every ``.grad`` holds the average over ranks.

        Idempotent until the next backward pass. Call it before touching
        gradients (clipping, ``GradScaler.unscale_``), then step inside
        :meth:`skip_synchronize` (or just call ``step()``: it will not reduce twice).
        """
        with self._lock:
            if self._synchronized:
                return
            self._launch_in_order(force=True)
            scale = 1.0 / self.comm.size if self.op is ReduceOp.AVG else 1.0
            try:
                for b in self._buckets:
                    t0 = trace.now() if trace.ON else 0
                    if self.compression is None:
                        reduced = b.pending.wait()
                    else:
                        payload, ctx = b.pending.wait()
                        reduced = self.compression.decompress(payload, ctx)
                    unpack(b, reduced, scale)
                    if t0:
                        trace.record(f"wait+unpack bucket {b.index}", "optimizer", t0,
                                     trace.now())
            finally:
                for b in self._buckets:
                    b.ready, b.pending = 0, None
                for k in self._counts:
                    self._counts[k] = 0
                self._next = 0
            self._synchronized = True

    def remove_hooks(self) -> None:
        """Detach from the parameters (the wrapper stops reducing)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _hook(owner: "weakref.ref[DistributedOptimizer]", key: int) -> Any:
    # A weak reference: the parameters must not keep a discarded wrapper alive,
    # and a discarded wrapper must not keep reducing.
    def hook(_param: torch.Tensor) -> None:
        opt = owner()
        if opt is not None:
            opt._grad_ready(key)
    return hook
