"""Cutting a sequence of layers into pipeline stages.

    bounds = partition(costs, stages)                  # [0, b1, ..., n], contiguous
    parts  = split_sequential(model, 4, balance="params")       # every stage's nn.Sequential
    mine   = build_stage(builders, grid, balance="params")      # only this rank's layers

``balance``:
  * ``"params"``: equal parameter counts (memory for weights, gradients and
    optimizer state; a good proxy for compute in dense layers).
  * ``"time"``: equal measured forward time of each layer on ``example`` (best
    for throughput when cheap layers are big or big layers cheap, e.g. convs).
  * a list of S - 1 split indices (layer i starts a new stage): explicit.

The partition minimises the cost of the most expensive stage (the pipeline
runs at the pace of its slowest stage), by dynamic programming over the
contiguous splits. With ``"params"`` and ``"time"``, every stage also gets at
least one layer with parameters whenever the model has as many such layers as
stages: a stage of activations only would leave its rank with nothing to
train (no optimizer can be built on it), and :class:`~hpcdl.pipeline.Pipeline`
refuses a rank without parameters on every rank.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

from hpcdl.errors import InvalidArgumentError

__all__ = ["partition", "parameter_costs", "has_parameters", "time_costs", "split_bounds",
           "split_sequential", "build_stage", "build_layers", "stage_bounds"]

Balance = "str | Sequence[int]"


def partition(costs: Sequence[float], stages: int,
              anchors: Sequence[bool] | None = None) -> list[int]:
    """Boundaries ``[0, b1, ..., n]`` of ``stages`` non-empty contiguous parts of ``costs``
    with the smallest possible maximum part cost (ties: earlier cuts).

    ``anchors[i]`` marks layer ``i`` as one every part should contain at least one of
    (a layer with parameters): honoured whenever there are at least ``stages`` anchors.
    """
    n = len(costs)
    if stages < 1 or stages > n:
        raise InvalidArgumentError(f"cannot cut {n} layer(s) into {stages} non-empty stages",
                                   op="pipeline.partition")
    if anchors is not None and len(anchors) != n:
        raise InvalidArgumentError(f"{len(anchors)} anchors for {n} layers",
                                   op="pipeline.partition")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    held = [0]  # held[j]: anchors among the first j layers
    for a in (anchors if anchors is not None else [False] * n):
        held.append(held[-1] + bool(a))
    need = 1 if held[-1] >= stages else 0  # fewer anchors than stages: cannot honour them
    inf = float("inf")
    # best[k][j]: smallest max-cost of cutting the first j layers into k parts.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n - (stages - k) + 1):
            for i in range(k - 1, j):
                if held[j] - held[i] < need:
                    continue
                v = max(best[k - 1][i], prefix[j] - prefix[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    bounds = [n]
    for k in range(stages, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    return bounds[::-1]


def has_parameters(layers: Sequence[nn.Module]) -> list[bool]:
    """Which layers hold parameters (the anchors :func:`partition` spreads over stages)."""
    return [any(True for _ in m.parameters()) for m in layers]


def parameter_costs(layers: Sequence[nn.Module]) -> list[float]:
    # +1 so that parameter-free layers (activations, pooling) still count as a little work.
    return [1.0 + sum(p.numel() for p in m.parameters()) for m in layers]


def time_costs(layers: Sequence[nn.Module], example: torch.Tensor, repeats: int = 5) -> list[float]:
    """Median forward seconds of each layer, feeding it the previous layer's output."""
    out: list[float] = []
    x = example
    with torch.no_grad():
        for m in layers:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = m(x)
                times.append(time.perf_counter() - t0)
            out.append(sorted(times)[len(times) // 2])
            x = y
    return out


def split_bounds(layers: Sequence[nn.Module], stages: int, balance: Balance = "params",
                 example: torch.Tensor | None = None) -> list[int]:
    n = len(layers)
    if isinstance(balance, str):
        if balance == "params":
            return partition(parameter_costs(layers), stages, has_parameters(layers))
        if balance == "time":
            if example is None:
                raise InvalidArgumentError("balance='time' needs example= (one input batch)",
                                           op="pipeline.split")
            return partition(time_costs(layers, example), stages, has_parameters(layers))
        raise InvalidArgumentError(f"balance={balance!r}; use 'params', 'time' or a list of "
                                   "split indices", op="pipeline.split")
    points = [int(p) for p in balance]
    bounds = [0, *points, n]
    if len(points) != stages - 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise InvalidArgumentError(f"split points {points} must be {stages - 1} increasing "
                                   f"indices in 1..{n - 1} for {stages} stages of {n} layers",
                                   op="pipeline.split")
    return bounds


def _layers(model: "nn.Sequential | Sequence[nn.Module]") -> list[nn.Module]:
    layers = list(model.children()) if isinstance(model, nn.Sequential) else list(model)
    if not all(isinstance(m, nn.Module) for m in layers):
        raise InvalidArgumentError("pass an nn.Sequential or a list of nn.Module",
                                   op="pipeline.split")
    return layers


def split_sequential(model: "nn.Sequential | Sequence[nn.Module]", stages: int,
                     balance: Balance = "params",
                     example: torch.Tensor | None = None) -> list[nn.Sequential]:
    """The ``stages`` parts of an existing model (its modules, not copies)."""
    layers = _layers(model)
    b = split_bounds(layers, stages, balance, example)
    return [nn.Sequential(*layers[b[i]:b[i + 1]]) for i in range(stages)]


def build_layers(builders: Sequence[Callable[[], nn.Module]], indices: Sequence[int],
                 seed: int = 0, device: "torch.device | str | None" = None) -> list[nn.Module]:
    """Layers ``indices`` of the model, layer ``i`` built under seed ``seed + i``.

    Seeding per layer makes a layer's initial weights independent of which other
    layers the same process builds: the split model equals the whole one.
    """
    out = []
    state = torch.random.get_rng_state()
    try:
        for i in indices:
            torch.manual_seed(seed + i)
            m = builders[i]()
            out.append(m.to(device) if device is not None else m)
    finally:
        torch.random.set_rng_state(state)
    return out


def build_stage(builders: Sequence[Callable[[], nn.Module]], stages: int, stage: int,
                balance: Balance = "params", seed: int = 0,
                device: "torch.device | str | None" = None) -> nn.Sequential:
    """Only stage ``stage``'s layers, from one builder per layer.

    ``balance='params'`` counts parameters on layers built on the ``meta``
    device (shapes only, no memory), so no rank materialises another stage's
    weights. ``'time'`` is not offered here: it needs the layers' real forward;
    measure once with :func:`time_costs` and pass the split points.
    """
    if not 0 <= stage < stages:
        raise InvalidArgumentError(f"stage={stage} is not in 0..{stages - 1}",
                                   op="pipeline.build_stage")
    bounds = stage_bounds(builders, stages, balance)
    mine = range(bounds[stage], bounds[stage + 1])
    return nn.Sequential(*build_layers(builders, mine, seed, device))


def stage_bounds(builders: Sequence[Callable[[], nn.Module]], stages: int,
                 balance: Balance = "params") -> list[int]:
    """The layer boundaries ``[0, b1, ..., n]`` that :func:`build_stage` cuts at: stage
    ``s`` holds layers ``bounds[s]`` to ``bounds[s + 1] - 1`` of the whole model (what a
    checkpoint needs to name a stage's parameters as the whole model does)."""
    if balance == "time":
        raise InvalidArgumentError("build_stage cannot time layers it does not build; use "
                                   "balance='params' or explicit split points (measured "
                                   "once with time_costs)", op="pipeline.build_stage")
    if balance == "params":
        with torch.device("meta"):  # shapes only: no rank materialises another's weights
            layers = [b() for b in builders]
    else:                           # explicit split points: only the layer count matters
        layers = [nn.Identity()] * len(builders)
    return split_bounds(layers, stages, balance)
