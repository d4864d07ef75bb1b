"""A pipelined model on the rank grid: torch's schedules, hpcdl's ranks and gradients.

    grid = hpcdl.pipeline.Grid(stages=2)                      # S x D over the job's ranks
    pipe = hpcdl.pipeline.Pipeline(my_stage, grid, n_microbatches=4,
                                   loss_fn=nn.functional.cross_entropy, schedule="1f1b")
    opt = pipe.distributed_optimizer(torch.optim.Adam(my_stage.parameters()))
    loss = pipe.step(x, y)      # float on the last stage, None elsewhere
    opt.step()

The schedules are ``torch.distributed.pipelining``'s (``ScheduleGPipe``,
``Schedule1F1B``, ``ScheduleInterleaved1F1B``); this class adds what an MPI
job needs around them: the grid's process groups, full-batch gradient scaling,
the average over the D replicas with hpcdl's allreduce (overlapped with the
last micro-batch's backward), input checks before any communication, errors
that name the failing rank and stage, and activation / timeline bookkeeping.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                          ScheduleInterleaved1F1B)

from hpcdl.errors import HpcdlError, InvalidArgumentError
from hpcdl.torch.optimizer import DistributedOptimizer

from .grid import Grid
from .meter import ActivationMeter, Timeline

__all__ = ["Pipeline", "StageError", "SCHEDULES"]

SCHEDULES: dict[str, type] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
                              "interleaved1f1b": ScheduleInterleaved1F1B}


class StageError(HpcdlError):
    """A pipeline stage failed while running its part of a step."""


class Pipeline:
    """This rank's stage(s) of a pipelined model, driven by one of torch's schedules.

    Args:
        module: this rank's stage; for ``"interleaved1f1b"`` a list of V modules,
            the k-th being virtual stage ``grid.stage + k * S`` of ``S * V``.
        grid: the :class:`Grid` (S stages x D replicas).
        n_microbatches: M; every batch must divide into M equal micro-batches.
        loss_fn: ``loss_fn(output, target)``, mean over the micro-batch
            (``cross_entropy``'s default): it is scaled by ``1/M`` so the
            accumulated gradient is the full batch's mean gradient.
        schedule: ``"gpipe"``, ``"1f1b"`` or ``"interleaved1f1b"``.

    Collective over the grid: every rank builds its Pipeline at the same point. Each
    checks its own arguments (and that its stage holds parameters), then all agree,
    so a setup that one rank refuses raises :class:`InvalidArgumentError` on every
    rank, before any send.
    """

    def __init__(self, module: "nn.Module | Sequence[nn.Module]", grid: Grid,
                 n_microbatches: int, loss_fn: Callable[[Any, Any], torch.Tensor],
                 schedule: str = "1f1b", device: "torch.device | str" = "cpu") -> None:
        self.grid = grid
        self.schedule_name = name = str(schedule).lower()
        self.n_microbatches = n_microbatches
        self.modules = mods = list(module) if isinstance(module, (list, tuple)) else [module]
        self.device = torch.device(device)
        self.num_stages = grid.stages * len(mods)
        self.stage_indices = [grid.stage + k * grid.stages for k in range(len(mods))]
        self._cls = SCHEDULES.get(name)
        self.meter = ActivationMeter([])
        self.timelines: list[Timeline] = []
        # torch's PipelineStage fixes its receive buffers' shapes at its first run,
        # so each (training or forward-only, batch size) gets its own stage objects
        # over the same modules; the first is built now to check the setup.
        self._runners: dict[tuple[bool, int | None], Any] = {}
        self._last_key: int | None = None
        m = n_microbatches

        def scaled_loss(output: Any, target: Any) -> torch.Tensor:
            # A mean over the micro-batch, / M: the sum over micro-batches is the
            # full batch's mean, and so is the gradient autograd accumulates.
            return loss_fn(output, target) / m

        self._loss = scaled_loss
        # Every rank checks its own part, then all agree: a setup refused on one rank
        # alone would leave the others waiting in the schedule's first send, or in
        # whatever collective comes next, for ever.
        try:
            problem = self._check_setup()
            if problem is None:
                self._hook_contiguous()
                self.schedule = self._runner(True, None)
        except InvalidArgumentError as e:
            problem = e.reason
        except Exception as e:  # noqa: BLE001 - torch refusing a stage: every rank must hear
            problem = f"building the stage failed: {type(e).__name__}: {e}"
        _agree(grid, problem, "pipeline.Pipeline")

    def _check_setup(self) -> str | None:
        """What is wrong with this rank's arguments (None: nothing)."""
        name, m, mods = self.schedule_name, self.n_microbatches, self.modules
        if name not in SCHEDULES:
            return f"schedule={name!r}; choose from {', '.join(SCHEDULES)}"
        if not isinstance(m, int) or m < 1:
            return f"n_microbatches={m!r}; must be an int >= 1"
        if name != "interleaved1f1b" and len(mods) != 1:
            return (f"schedule {name!r} runs one stage per rank; got {len(mods)} modules "
                    "(use 'interleaved1f1b')")
        if not mods or not all(isinstance(mod, nn.Module) for mod in mods):
            return "module must be an nn.Module (or, interleaved, a non-empty list of them)"
        if name == "1f1b" and m < self.num_stages:
            return (f"1F1B needs n_microbatches >= stages (torch's Schedule1F1B); got M={m} "
                    f"for {self.num_stages} stages: use 'gpipe' or more micro-batches")
        if not any(True for mod in mods for _ in mod.parameters()):
            # torch's optimizers refuse an empty parameter list, so this rank could
            # not train, and would fail alone while its peers wait in the schedule.
            layers = [type(c).__name__ for mod in mods for c in mod.modules()
                      if not list(c.children())]
            return (f"stage {self.grid.stage} holds no parameters (virtual stage(s) "
                    f"{self.stage_indices} of {self.num_stages}: {', '.join(layers)}); "
                    "cut the model into fewer stages or give every stage a layer with "
                    "parameters (split_sequential and build_stage do when the model has "
                    "one such layer per stage)")
        return None

    def _hook_contiguous(self) -> None:
        # gloo refuses to send a non-contiguous tensor (a CPU convolution under no_grad
        # can return one); the "hpcdl" backend copies it, so the hook is gloo's only.
        if dist.get_backend(self.grid.pp_group) == "hpcdl":
            return
        for mod in self.modules:
            mod.register_forward_hook(_contiguous_output)

    def _runner(self, train: bool, batch: int | None) -> Any:
        key = (train, batch)
        if key in self._runners:
            return self._runners[key]
        stages = [PipelineStage(m, i, self.num_stages, self.device, group=self.grid.pp_group)
                  for m, i in zip(self.modules, self.stage_indices)]
        self.meter.watch(stages)
        self.timelines += [Timeline(st) for st in stages]
        arg: Any = stages if self.schedule_name == "interleaved1f1b" else stages[0]
        try:
            # scale_grads=False: the loss is already scaled, and torch's post-hoc
            # division would come after the replicas' allreduce packed the gradients.
            # Forward-only runs have no loss: torch's eval() on a schedule with one
            # still computes it, and needs targets.
            sched = self._cls(arg, self.n_microbatches, scale_grads=False,
                              **({"loss_fn": self._loss} if train else {}))
        except (ValueError, RuntimeError) as e:
            raise InvalidArgumentError(f"torch's {self._cls.__name__} refuses this setup: "
                                       f"{e}", rank=self.grid.rank, op="pipeline.Pipeline") from e
        self._runners[key] = sched
        return sched

    def _key(self, *tensors: Any) -> int | None:
        # Ranks that were given no batch (a middle stage passing None) use the
        # last size seen: pass x on every rank when batch sizes vary.
        for t in tensors:
            if t is not None:
                self._last_key = len(t)
                return len(t)
        return self._last_key

    # -- gradients across replicas -------------------------------------------------------
    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """``optimizer`` whose ``step()`` first averages this stage's gradients over the D
        replicas (hpcdl's allreduce on ``grid.dp_comm``, started by gradient hooks as soon
        as the last micro-batch's backward has produced them). D = 1: ``optimizer`` itself."""
        if self.grid.replicas == 1:
            return optimizer
        named = [(f"stage{i}.{n}", p) for i, mod in zip(self.stage_indices, self.modules)
                 for n, p in mod.named_parameters()]
        return DistributedOptimizer(optimizer, named_parameters=named,
                                    backward_passes_per_step=self.n_microbatches,
                                    comm=self.grid.dp_comm, **kwargs)

    # -- one step ------------------------------------------------------------------------
    def _check_batch(self, op: str, *tensors: Any) -> int | None:
        sizes = {len(t) for t in tensors if t is not None}
        if len(sizes) > 1:
            raise InvalidArgumentError(f"inputs and targets have different batch sizes "
                                       f"{sorted(sizes)}", rank=self.grid.rank, op=op)
        if not sizes:
            return None
        b = sizes.pop()
        if b < self.n_microbatches or b % self.n_microbatches:
            raise InvalidArgumentError(f"batch of {b} does not split into "
                                       f"n_microbatches={self.n_microbatches} equal "
                                       "micro-batches; use a batch size that is a multiple "
                                       f"of {self.n_microbatches}", rank=self.grid.rank, op=op)
        return b

    def _run(self, op: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except HpcdlError as e:
            print(e, file=sys.stderr, flush=True)
            raise
        except Exception as e:
            g = self.grid
            err = StageError(f"stage {g.stage} (of {g.stages}) of replica {g.replica} failed "
                             f"in the {self.schedule_name} schedule: {type(e).__name__}: {e}",
                             rank=g.rank, op=op)
            # Said now: when this ends the job (MPI_Abort), the traceback printed at
            # interpreter exit can be lost with the killed ranks' output.
            print(err, file=sys.stderr, flush=True)
            raise err from e

    def step(self, x: torch.Tensor | None = None,
             target: torch.Tensor | None = None) -> float | None:
        """Forward and backward of one batch through the pipeline.

        ``x`` is read on the first stage, ``target`` on the last (pass them
        everywhere, or ``None`` where unused). Afterwards every stage's ``.grad``
        holds its share of the full batch's mean gradient (accumulated: zero the
        gradients before the step, as usual). Returns the batch's mean loss on
        the last stage, ``None`` elsewhere.
        """
        g = self.grid
        # Every rank checks what it was given, so a bad batch passed everywhere
        # fails everywhere before any send (a middle stage would otherwise wait).
        self._check_batch("pipeline.step", x, target)
        if g.is_first and x is None:
            raise InvalidArgumentError("the first stage needs the input batch x",
                                       rank=g.rank, op="pipeline.step")
        if g.is_last and target is None:
            raise InvalidArgumentError("the last stage needs the target batch",
                                       rank=g.rank, op="pipeline.step")
        self.meter.reset()
        losses: list[torch.Tensor] = []
        args = (x.to(self.device),) if g.is_first else ()
        tgt = target.to(self.device) if g.is_last else None
        sched = self._runner(True, self._key(x, target))
        self._run("pipeline.step", lambda: sched.step(
            *args, target=tgt, losses=losses if g.is_last else None, return_outputs=False))
        if not g.is_last:
            return None
        return float(sum(float(l.detach()) for l in losses))

    def predict(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward only: the model's output for ``x`` on the last stage, ``None`` elsewhere.

        Pass ``x`` on every stage of the pipeline (only the first reads its values; the
        others need its length): a batch that does not divide into M micro-batches
        is padded with copies of its last row, and the padding is cut off the output.
        """
        n = len(x)
        m = self.n_microbatches
        pad = max(m, -(-n // m) * m) - n
        g = self.grid
        args: tuple = ()
        if g.is_first:
            xp = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x
            args = (xp.to(self.device),)
        sched = self._runner(False, n + pad)
        out = self._run("pipeline.predict", lambda: sched.step(*args))
        return out[:n] if g.is_last else None

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def peak_activations(self) -> int:
        """Most micro-batches whose activations this rank held at once in the last step."""
        return self.meter.peak_microbatches

    @property
    def peak_activation_bytes(self) -> int:
        return self.meter.peak_bytes

    def record_timeline(self, on: bool = True) -> None:
        for t in self.timelines:
            t.enabled = on
            t.events.clear()

    def timeline(self) -> list[tuple[str, int, float, float]]:
        return sorted((e for t in self.timelines for e in t.events), key=lambda e: e[2])


def _contiguous_output(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.contiguous()
    if isinstance(output, tuple):
        return tuple(o.contiguous() if isinstance(o, torch.Tensor) else o for o in output)
    return output


def _agree(grid: Grid, problem: str | None, op: str) -> None:
    """Raise on every rank of the grid if any rank found a problem (collective)."""
    problems = grid.comm.allgather_object(problem)
    bad = [r for r, p in enumerate(problems) if p is not None]
    if not bad:
        return
    if problem is not None:
        raise InvalidArgumentError(problem, rank=grid.rank, op=op)
    others = f" (and {len(bad) - 1} other rank(s))" if len(bad) > 1 else ""
    raise InvalidArgumentError(f"rank {bad[0]}{others} refused the setup, so every rank "
                               f"does: {problems[bad[0]]}", rank=grid.rank, op=op)
