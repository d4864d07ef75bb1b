"""``algorithm="auto"``: pick an allreduce algorithm by size, dtype and rank count.

The choice comes from a crossover table (JSON), looked up in this order:

1. ``$HPCDL_TUNING_FILE`` when set;
2. ``tuning.json`` in hpcdl's cache folder (``$HPCDL_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/hpcdl``, else ``~/.cache/hpcdl``), which ``hpcdl tune`` writes;
3. the table shipped with hpcdl (``default_tuning.json`` beside this file).

Format::

    {"version": 1, "source": "who measured it, where, when",
     "rules": {"float": {"2": [[16384, "native"], [null, "ring"]], "4": [...]},
               "half":  {"2": [[null, "ring"]]}}}

``"half"`` applies to float16/bfloat16 (they are reduced in Python or upcast
for MPI, so their crossovers differ), ``"float"`` to every other dtype. Under
each, the key is a rank count and the value a list of ``[max_bytes,
algorithm]`` in increasing order, ``null`` meaning no limit: the first entry
whose ``max_bytes`` is at least the message size wins. A rank count missing
from the table uses, for ``"float"`` in a job on one node, the crossovers of
the fitted cost model (:mod:`hpcdl.model`, ``hpcdl model measure``); otherwise
the nearest smaller one listed (else the smallest).

The table is read once per process; :func:`reload` forgets it (after changing
the environment or rewriting the file).

This is what ``auto`` runs with ``HPCDL_TUNE=off``, on one rank, inside
``hierarchical`` (each level) and for device buffers on a CUDA-aware MPI; by
default ``auto`` learns online instead (:mod:`hpcdl.collectives.online`).
"""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from pathlib import Path
from typing import Any

import numpy as np

from ..context import get_context, is_initialized
from ..errors import InvalidArgumentError
from ..ops import is_half
from ..tuning.auto import model_rules
from .catalog import ALLREDUCE, invalidate_plans
from .tune_cache import cache_dir

__all__ = ["choose", "choose_flat", "table_path", "load_table", "reload", "validate_table",
           "DEFAULT_TABLE", "user_table_path"]

DEFAULT_TABLE = Path(__file__).with_name("default_tuning.json")
_FLAT = ("native", "ring", "tree", "chunked")

_table: dict[str, Any] | None = None
_rules: dict[tuple[int, bool], tuple[list[int], list[str]]] = {}


def user_table_path() -> Path:
    """Where ``hpcdl tune`` writes by default (and ``auto`` looks second): ``tuning.json``
    in hpcdl's cache folder (:func:`~hpcdl.collectives.tune_cache.cache_dir`)."""
    return cache_dir() / "tuning.json"


def table_path() -> Path:
    """The file ``auto`` reads, by the lookup order above."""
    explicit = os.environ.get("HPCDL_TUNING_FILE")
    if explicit:
        return Path(explicit)
    user = user_table_path()
    return user if user.is_file() else DEFAULT_TABLE


def validate_table(table: Any, where: str) -> dict[str, Any]:
    """Raise :class:`InvalidArgumentError` naming ``where`` unless ``table`` is well formed."""
    def bad(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"tuning table {where}: {why}", op="allreduce")

    if not isinstance(table, dict) or not isinstance(table.get("rules"), dict):
        raise bad("expected an object with a 'rules' object")
    for kind, per_size in table["rules"].items():
        if kind not in ("float", "half") or not isinstance(per_size, dict) or not per_size:
            raise bad(f"rules[{kind!r}] must be 'float' or 'half' mapping rank counts to rules")
        for ranks, rules in per_size.items():
            if not str(ranks).isdigit() or not isinstance(rules, list) or not rules:
                raise bad(f"rules[{kind!r}][{ranks!r}] must be a non-empty list")
            previous = -1
            for i, rule in enumerate(rules):
                ok = isinstance(rule, list) and len(rule) == 2 and isinstance(rule[1], str) \
                    and rule[1] in ALLREDUCE
                last = i == len(rules) - 1
                # bool is an int subclass: True would pass as max_bytes 1
                limit_ok = rule[0] is None if last else (
                    type(rule[0]) is int and rule[0] > previous) if ok else False
                if not (ok and limit_ok):
                    raise bad(f"rules[{kind!r}][{ranks!r}][{i}] = {rule!r}: expected "
                              "[max_bytes, algorithm] with max_bytes strictly increasing "
                              "non-negative integers, null in the last entry only, "
                              f"algorithm one of {sorted(ALLREDUCE)}")
                if not last:
                    previous = rule[0]
    return table


def load_table(path: Path | None = None) -> dict[str, Any]:
    path = table_path() if path is None else path
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read tuning table {path}: {exc} (set "
                                   "HPCDL_TUNING_FILE, or rerun 'hpcdl tune')",
                                   op="allreduce") from None
    return validate_table(table, str(path))


def reload() -> None:
    """Forget the loaded table; the next ``auto`` call reads it again."""
    global _table
    _table = None
    _rules.clear()
    invalidate_plans()


def _compile(size: int, half: bool) -> tuple[list[int], list[str]]:
    global _table
    if _table is None:
        _table = load_table()
    rules = _table["rules"]
    per_size = rules.get("half" if half else "float") or rules.get("float") or rules["half"]
    counts = sorted(int(k) for k in per_size)
    below = [c for c in counts if c <= size]
    chosen = per_size[str(below[-1] if below else counts[0])]
    if str(size) not in per_size and not half and _one_node():
        chosen = model_rules(size) or chosen  # the fitted cost model (hpcdl.model)
    limits = [r[0] if r[0] is not None else 1 << 62 for r in chosen]
    entry = _rules[(size, half)] = (limits, [r[1] for r in chosen])
    return entry


def _one_node() -> bool:
    return is_initialized() and get_context().num_nodes == 1


def choose(comm: Any, nbytes: int, dtype: np.dtype) -> str:
    """The algorithm ``auto`` runs for ``nbytes`` of ``dtype`` over ``comm``."""
    half = is_half(dtype)
    entry = _rules.get((comm.size, half))
    if entry is None:
        entry = _compile(comm.size, half)
    limits, names = entry
    return names[bisect_left(limits, nbytes)]


def choose_flat(comm: Any, nbytes: int, dtype: np.dtype) -> str:
    """Like :func:`choose` but never ``hierarchical`` (for one level of a hierarchy)."""
    name = choose(comm, nbytes, dtype)
    if name in _FLAT:
        return name
    return "ring" if nbytes >= 1 << 16 else "native"
