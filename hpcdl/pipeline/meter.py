"""What a stage holds and when it computes: stored activations and a timeline.

:class:`ActivationMeter` counts the tensors autograd saves for the backward pass
while a stage computes a micro-batch's forward (``torch.autograd.graph.saved_tensors_hooks``),
tagged by micro-batch. A saved tensor is released when the backward pass of its
micro-batch frees the graph, so "micro-batches with live saved tensors" is exactly
the number of micro-batches whose activations the stage stores, and their bytes
are its activation memory. Parameters (saved by e.g. ``linear`` for the weight
gradient) are not activations and are not counted.

:class:`Timeline` records when each micro-batch's forward and backward compute
ran on this rank (wall clock), from which the benchmark measures the bubble.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["ActivationMeter", "Timeline"]


class _Saved:
    """One saved tensor; its death (graph freed by backward) is the release."""

    __slots__ = ("tensor", "meter", "mb", "nbytes", "__weakref__")

    def __init__(self, tensor: torch.Tensor, meter: "ActivationMeter", mb: int) -> None:
        self.tensor, self.meter, self.mb = tensor, meter, mb
        self.nbytes = tensor.numel() * tensor.element_size()
        meter._add(mb, self.nbytes)

    def __del__(self) -> None:
        self.meter._drop(self.mb, self.nbytes)


class ActivationMeter:
    """Peak number of micro-batches (and bytes) whose activations a pipeline stage stores."""

    def __init__(self, stages: list[Any]) -> None:
        self._lock = threading.Lock()  # backward may run on autograd's worker threads
        self._live: dict[int, int] = {}
        self.bytes = 0
        self.peak_microbatches = 0
        self.peak_bytes = 0
        self._calls = 0
        # Only the schedule's forward_one_chunk calls count: torch's shape
        # inference runs the module once more outside them and keeps that
        # output (and its graph) for metadata, which is not a micro-batch.
        self.watch(stages)

    def watch(self, stages: list[Any]) -> None:
        """Count the saved activations of these stage objects' forward computes too."""
        for st in stages:
            st.forward_one_chunk = self._wrap(st.forward_one_chunk)

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def metered(*args: Any, **kwargs: Any) -> Any:
            self._calls += 1
            mb = self._calls
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: t if isinstance(t, nn.Parameter) else _Saved(t, self, mb),
                    lambda p: p.tensor if isinstance(p, _Saved) else p):
                return fn(*args, **kwargs)
        return metered

    def reset(self) -> None:
        """Start a new peak (call between steps; what is still live stays counted)."""
        with self._lock:
            self.peak_microbatches = len(self._live)
            self.peak_bytes = self.bytes

    def _add(self, mb: int, nbytes: int) -> None:
        with self._lock:
            self._live[mb] = self._live.get(mb, 0) + 1
            self.bytes += nbytes
            self.peak_microbatches = max(self.peak_microbatches, len(self._live))
            self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _drop(self, mb: int, nbytes: int) -> None:
        with self._lock:
            left = self._live.get(mb, 0) - 1
            if left > 0:
                self._live[mb] = left
            else:
                self._live.pop(mb, None)
            self.bytes -= nbytes

    @property
    def live_microbatches(self) -> int:
        return len(self._live)


class Timeline:
    """(kind, micro-batch, start, end) of every forward/backward compute of a stage.

    Wraps the stage object's ``forward_one_chunk`` and ``backward_one_chunk``
    (the calls every torch schedule makes for the compute of one micro-batch;
    send/recv happen outside them), on this instance only.
    """

    def __init__(self, stage: Any) -> None:
        self.events: list[tuple[str, int, float, float]] = []
        self.enabled = False
        for kind, name in (("F", "forward_one_chunk"), ("B", "backward_one_chunk")):
            setattr(stage, name, self._wrap(kind, getattr(stage, name)))

    def _wrap(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(mb: int, *args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(mb, *args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(mb, *args, **kwargs)
            finally:
                self.events.append((kind, int(mb), t0, time.perf_counter()))
        return timed

    def busy_seconds(self) -> float:
        return sum(e - s for _, _, s, e in self.events)
