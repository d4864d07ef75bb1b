"""What an exact resume needs besides the model: RNG states and hpcdl's stateful parts.

Every value is turned into tensors, lists, dicts, strings and numbers, so that
``torch.load(weights_only=True)`` reads it back (no pickled objects).
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "seed_everything", "component_state",
           "load_component_state", "restore_extra", "params_sha256", "state_sha256"]


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's global, torch's CPU (and every CUDA device's) generator states."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (used when a checkpoint's RNG states do not fit:
    a resume on another rank count)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def component_state(obj: Any) -> Any:
    """``obj.state_dict()`` (model, optimizer, scheduler, GradScaler, compressor), or None."""
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else None


def load_component_state(obj: Any, state: Any) -> None:
    if state is not None and callable(getattr(obj, "load_state_dict", None)):
        obj.load_state_dict(state)


def restore_extra(extra: dict[str, Any], saved: dict[str, Any]) -> None:
    """Put a checkpoint's ``extra`` values back into the caller's ``extra`` dict, in
    place where the caller holds a list, dict or tensor (the loop keeps references to
    them, e.g. the history it appends to), else by replacing the entry."""
    for name, value in saved.items():
        target = extra.get(name)
        if isinstance(target, list):
            target[:] = value
        elif isinstance(target, dict):
            target.clear()
            target.update(value)
        elif isinstance(target, torch.Tensor):
            target.copy_(value)
        else:
            extra[name] = value


def params_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the parameters and buffers (name, dtype, shape, bytes) in order:
    equal hashes mean bit-identical models."""
    return state_sha256(module.state_dict().items())


def state_sha256(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """:func:`params_sha256` of (name, tensor) pairs, e.g. a pipelined model's stages
    gathered in order (the same hash as the whole model's ``state_dict``)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in items:
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)};".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()
