"""Refuse, at save time, a checkpoint file that no resume could read.

``torch.save`` pickles anything, but the loader reads with
``torch.load(weights_only=True)`` (no code runs at load), which refuses every
object that is not a tensor, a container or a plain number/string: a NumPy
scalar in ``extra`` (``np.float64(0.9)``), a dataclass, a lambda. Saved without
complaint, such a file would make every later resume fail, hours after the
mistake. So every file is read back right after it is written, by the same
unpickler the resume uses (``mmap=True``: the pickle is checked, the tensor data
is not read again), and a refusal names the key that holds the culprit.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["pickle_problem", "load_problem"]


def _pickles(obj: Any) -> bool:
    try:
        torch.save(obj, io.BytesIO())
        return True
    except Exception:  # noqa: BLE001 - any pickling failure counts
        return False


def _loads(obj: Any) -> bool:
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
        buf.seek(0)
        torch.load(buf, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001
        return False


def _culprit(obj: Any, ok: Callable[[Any], bool], path: str = "") -> tuple[str, Any]:
    """The deepest key path under ``obj`` whose value fails ``ok`` (only called when
    ``obj`` itself fails it): ``['extra']['best']``."""
    if isinstance(obj, dict):
        children = ((f"[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        children = ((f"[{i}]", v) for i, v in enumerate(obj))
    else:
        return path, obj
    for key, value in children:
        if not ok(value):
            return _culprit(value, ok, path + key)
    return path, obj   # the container itself (a subclass, or a key of a refused type)


def _describe(fname: str, obj: Any, ok: Callable[[Any], bool]) -> str:
    path, value = _culprit(obj, ok)
    kind = type(value)
    return f"{fname}{path} (a {kind.__module__}.{kind.__qualname__})"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # torch's message starts with two paragraphs of advice to load with weights_only=False,
    # which is exactly what a checkpoint must never need; keep the cause only
    cause = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0]
    return f"{type(exc).__name__}: {cause[:300]}"


def pickle_problem(fname: str, obj: Any, exc: BaseException) -> str:
    """Why ``torch.save`` failed on ``obj`` (bound for ``fname``), naming the key."""
    return (f"{_describe(fname, obj, _pickles)} cannot be pickled ({_reason(exc)}); store "
            "plain numbers, strings, lists, dicts or tensors in a checkpoint")


def load_problem(path: "str | Path", obj: Any) -> str | None:
    """``None`` if the file ``path`` (just written from ``obj``) reads back with
    ``torch.load(weights_only=True)``, as a resume will read it; else why not, naming
    the key that holds the refused value."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        del loaded
        return None
    except Exception as exc:  # noqa: BLE001 - anything the resume would fail on
        return (f"{_describe(Path(path).name, obj, _loads)} would not load on resume: "
                f"torch.load(weights_only=True) refuses it ({_reason(exc)}); store plain "
                "numbers, strings, lists, dicts or tensors instead (e.g. float(x), "
                "x.tolist())")
