"""The optimizers a server applies to its shard: SGD (momentum, Nesterov, weight decay)
and Adam, with torch.optim's exact update rules.

They work on one flat array (the server's shard) in blocks of ``BLOCK`` elements,
so a disk-backed shard larger than memory is updated without shard-sized
temporaries. State arrays come from the store, so they live on disk too when the
store does.

SGD (``torch.optim.SGD``)::

    g = grad + weight_decay * p
    buf = g                                   (first step)
    buf = momentum * buf + (1 - dampening) * g (later steps)
    g = g + momentum * buf if nesterov else buf
    p -= lr * g

Adam (``torch.optim.Adam``, amsgrad=False)::

    t += 1;  g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
    p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["SGD", "Adam", "OptimizerSpec", "from_torch", "BLOCK"]

BLOCK = 1 << 18


class Store(Protocol):
    def array(self, name: str, size: int, dtype: np.dtype, fill: float = 0.0) -> np.ndarray: ...
    meta: dict[str, Any]


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _positive("SGD", lr=self.lr)
        _nonnegative("SGD", momentum=self.momentum, weight_decay=self.weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise InvalidArgumentError("Nesterov momentum needs momentum > 0 and dampening 0",
                                       op="ps.SGD")

    def state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def apply(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray],
              meta: dict[str, Any]) -> None:
        first = meta.get("steps", 0) == 0
        for lo in range(0, p.size, BLOCK):
            s = slice(lo, lo + BLOCK)
            g = grad[s].copy()
            if self.weight_decay:
                g += self.weight_decay * p[s]
            if self.momentum:
                buf = state["momentum_buffer"][s]
                if first:
                    buf[...] = g
                else:
                    buf *= self.momentum
                    buf += (1 - self.dampening) * g
                if self.nesterov:
                    g += self.momentum * buf
                else:
                    g = buf
            p[s] -= self.lr * g
        meta["steps"] = meta.get("steps", 0) + 1


@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive("Adam", lr=self.lr, eps=self.eps)
        _nonnegative("Adam", weight_decay=self.weight_decay)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise InvalidArgumentError(f"betas={self.betas}; each must be in [0, 1)",
                                       op="ps.Adam")

    def state_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def apply(self, p: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray],
              meta: dict[str, Any]) -> None:
        t = meta.get("steps", 0) + 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1 ** t)
        root_bc2 = math.sqrt(1 - b2 ** t)
        for lo in range(0, p.size, BLOCK):
            s = slice(lo, lo + BLOCK)
            g = grad[s]
            if self.weight_decay:
                g = g + self.weight_decay * p[s]
            m, v = state["exp_avg"][s], state["exp_avg_sq"][s]
            m += (g - m) * (1 - b1)          # torch: exp_avg.lerp_(grad, 1 - beta1)
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / root_bc2
            denom += self.eps
            p[s] -= step_size * (m / denom)
        meta["steps"] = t


OptimizerSpec = "SGD | Adam"


def from_torch(opt: Any) -> "SGD | Adam":
    """The server-side twin of a ``torch.optim.SGD`` or ``torch.optim.Adam`` (its defaults)."""
    kind = type(opt).__name__
    d = dict(opt.defaults)
    if kind == "SGD":
        return SGD(lr=float(d["lr"]), momentum=float(d.get("momentum", 0.0)),
                   dampening=float(d.get("dampening", 0.0)),
                   weight_decay=float(d.get("weight_decay", 0.0)),
                   nesterov=bool(d.get("nesterov", False)))
    if kind == "Adam":
        if d.get("amsgrad"):
            raise InvalidArgumentError("Adam(amsgrad=True) is not served; use amsgrad=False",
                                       op="ps.optimizer")
        return Adam(lr=float(d["lr"]), betas=tuple(d.get("betas", (0.9, 0.999))),
                    eps=float(d.get("eps", 1e-8)), weight_decay=float(d.get("weight_decay", 0.0)))
    raise InvalidArgumentError(f"the parameter server applies SGD or Adam, not {kind}",
                               op="ps.optimizer")


def describe(spec: "SGD | Adam") -> dict[str, Any]:
    return {"name": type(spec).__name__, **asdict(spec)}


def _positive(op: str, **values: float) -> None:
    for k, v in values.items():
        if not v > 0:
            raise InvalidArgumentError(f"{k}={v}; must be > 0", op=f"ps.{op}")


def _nonnegative(op: str, **values: float) -> None:
    for k, v in values.items():
        if not v >= 0:
            raise InvalidArgumentError(f"{k}={v}; must be >= 0", op=f"ps.{op}")
