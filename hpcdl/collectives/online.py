"""``algorithm="auto"`` that learns online: try the candidates, agree on the fastest, keep it.

Per communicator, dtype and size class (powers of two: 4096..8191 bytes is one
class), the first calls are trials: call ``i`` runs candidate ``i % K`` of the
``K`` candidates, for ``rounds(nbytes)`` rounds (10 below 1 MiB, 5 below
8 MiB, 3 above; interleaved, so that load that comes and goes hits every
candidate alike). Which algorithm a call runs is a function of the call's
index in its class alone, so every rank runs the same one (different
algorithms on different ranks would deadlock).

Each rank times its own calls. At the last trial every rank puts the lower
quartile of its samples per candidate (robust to the first call's set-up and
to a neighbour's bursts) into one small ``MAX`` allreduce (a collective is as
slow as its slowest rank): all ranks get the same vector and pick the same
winner. ``native`` wins unless another beats it by 5% (as in ``hpcdl tune``).
Later calls run the winner.

No flapping: the winner's own time is checked after 64 calls, then every
128, 256, ... up to 4096 calls: the median of its last 8 calls over the time
it won with, agreed with a ``MIN`` allreduce (every rank must see it). Only
when it has drifted by more than :data:`DRIFT` (2x slower, or 2x faster: the
trials ran under load that has gone, or the cached time came from another
day) do the trials run again, at most :data:`MAX_RETRIALS` times per class and
job, and then a challenger must beat the incumbent by 10% to replace it.

Winners are saved by rank 0 in the cache folder (:mod:`.tune_cache`, one file
per machine fingerprint) and reused by the next job without trials; the cache
rank 0 reads is broadcast when the communicator's tuner is made (one
collective, the first tuned call on that communicator), so all ranks agree.

``HPCDL_TUNE``: ``on`` (the default), ``off`` (the fixed table of
:mod:`.select`; also the default when ``HPCDL_TUNING_FILE`` names a table) or
``verbose`` (rank 0 prints each decision on stderr). Read when ``auto``'s plan
is made: set it before the job starts, the same on every rank.
``HPCDL_TUNE_CANDIDATES``: comma-separated algorithms to try (rank 0's wins).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidArgumentError
from ..ops import ReduceOp, dtype_name
from .catalog import ALLREDUCE, invalidate_plans
from .tune_cache import cache_file, fingerprint, load_choices, save_choice

__all__ = ["mode", "enabled", "tuner_for", "existing", "install", "library_version",
           "tuned_allreduce", "Tuner", "Slot", "rounds", "DRIFT", "MAX_RETRIALS"]

DRIFT = 2.0          # re-trial when the winner runs this many times slower (or faster)
MAX_RETRIALS = 2     # per class and job: a machine whose speed swings cannot make auto flap
KEEP_MARGIN = 0.10   # on a re-trial the incumbent stays unless beaten by this fraction
NATIVE_MARGIN = 0.05  # as hpcdl tune: another algorithm must beat native by this fraction
FIRST_CHECK = 64
MAX_INTERVAL = 4096
WINDOW = 8


def mode() -> str:
    """``on``, ``off`` or ``verbose`` from ``HPCDL_TUNE`` (see the module doc)."""
    raw = os.environ.get("HPCDL_TUNE", "").strip().lower()
    if not raw:
        return "off" if os.environ.get("HPCDL_TUNING_FILE") else "on"
    if raw in ("on", "1", "yes", "true"):
        return "on"
    if raw in ("off", "0", "no", "false"):
        return "off"
    if raw == "verbose":
        return raw
    raise InvalidArgumentError(f"HPCDL_TUNE={raw!r}: use on, off or verbose", op="allreduce")


def enabled() -> bool:
    return mode() != "off"


def rounds(nbytes: int) -> int:
    """Trial rounds for a message of ``nbytes``: cheap calls get more samples (noise)."""
    return 10 if nbytes < 1 << 20 else 5 if nbytes < 8 << 20 else 3


class Slot:
    """What one (dtype, size class) learned: the trial schedule, samples, winner, checks."""

    __slots__ = ("key", "candidates", "nrounds", "calls", "start", "schedule", "samples",
                 "winner", "seconds", "times", "next_check", "interval", "window", "retrials",
                 "trial_calls", "trial_seconds", "source", "history", "quiet_until")

    def __init__(self, key: str, candidates: list[str], nrounds: int,
                 cached: dict[str, Any] | None) -> None:
        self.key, self.candidates, self.nrounds = key, candidates, nrounds
        self.calls = self.start = self.retrials = self.trial_calls = 0
        self.trial_seconds = 0.0
        self.schedule: list[str] = []
        self.samples: dict[str, list[float]] = {}
        self.window: list[float] = []
        self.history: list[str] = []   # every winner in order: a test sees any flapping
        self.winner: str | None = None
        self.seconds = 0.0
        self.times: dict[str, float] = {}
        self.interval = self.next_check = FIRST_CHECK
        # calls before this index need no timing: the fast path only counts them
        self.quiet_until = FIRST_CHECK - WINDOW
        self.source = "trials"
        if cached is not None and cached.get("algorithm") in candidates:
            self.winner, self.seconds = cached["algorithm"], float(cached["seconds"])
            times = cached.get("times")
            self.times = dict(times) if isinstance(times, dict) else {}
            self.history.append(self.winner)
            self.source = "cache"
        else:
            self.begin_trials()

    def begin_trials(self) -> None:
        self.start = self.calls
        self.quiet_until = 0
        self.schedule = [c for _ in range(self.nrounds) for c in self.candidates]
        self.samples = {c: [] for c in self.candidates}

    @property
    def trialing(self) -> bool:
        """True while the next call is a trial (the same answer on every rank)."""
        return self.calls - self.start < len(self.schedule)

    @property
    def settled(self) -> bool:
        """Past the trials and past a drift check that kept the winner (or out of
        re-trials): what a benchmark of the steady state waits for."""
        return not self.trialing and (self.interval > FIRST_CHECK or self.retrials >= MAX_RETRIALS)

    def pick(self) -> str:
        """The algorithm this call runs: a function of the call index alone."""
        i = self.calls - self.start
        return self.schedule[i] if i < len(self.schedule) else self.winner  # type: ignore


def _layout(comm: Any, hosts: list[str]) -> str:
    """Ranks per node in node order, e.g. ``"4"`` or ``"2+2"`` (HPCDL_RANKS_PER_NODE wins)."""
    per_node = os.environ.get("HPCDL_RANKS_PER_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:
        nodes = [r // int(per_node) for r in range(comm.size)]
    else:
        order = {h: i for i, h in enumerate(dict.fromkeys(hosts))}
        nodes = [order[h] for h in hosts]
    return "+".join(str(nodes.count(n)) for n in dict.fromkeys(nodes))


def library_version(comm: Any) -> str:
    """The MPI library's version text (part of the machine fingerprint)."""
    if getattr(comm, "mpi", None) is None:
        return "in-process"
    from mpi4py import MPI

    return MPI.Get_library_version()


def _candidates(names: list[str] | None, layout: str, rank: int) -> list[str]:
    if names is None:
        names = ["native", "chunked", "ring", "tree"]
        if "+" in layout and any(int(n) > 1 for n in layout.split("+")):
            names.append("hierarchical")
    unknown = [n for n in names if n not in ALLREDUCE]
    if not names or unknown:
        raise InvalidArgumentError(f"online tuning candidates {names} (HPCDL_TUNE_CANDIDATES on "
                                   f"rank 0): unknown {unknown}; choose from {sorted(ALLREDUCE)}",
                                   rank=rank, op="allreduce")
    return list(dict.fromkeys(names))


class Tuner:
    """The online tuner of one communicator. Making one is collective over ``comm``."""

    def __init__(self, comm: Any, *, clock: Callable[[], float] = time.perf_counter,
                 candidates: list[str] | None = None, use_cache: bool = True) -> None:
        self.comm, self.clock = comm, clock
        self.verbose = mode() == "verbose"
        mine: dict[str, Any] | None = None
        if comm.rank == 0:
            env = os.environ.get("HPCDL_TUNE_CANDIDATES")
            if candidates is None and env:
                candidates = [c.strip() for c in env.split(",") if c.strip()]
            fp = fingerprint(library_version(comm))
            path = cache_file(fp) if use_cache else None
            mine = {"candidates": candidates, "fp": fp, "path": path,
                    "choices": load_choices(path) if path is not None else {}}
        gathered = comm.allgather_object((socket.gethostname(), mine))
        agreed = gathered[0][1]  # rank 0's cache, candidates and fingerprint for everyone
        self.layout = _layout(comm, [h for h, _ in gathered])
        self.candidates = _candidates(agreed["candidates"], self.layout, comm.rank)
        self._fp, self._cached = agreed["fp"], agreed["choices"]
        self.cache_path: Path | None = agreed["path"]  # rank 0's file: the one that counts
        self._slots: dict[tuple[Any, int], Slot] = {}

    def slot(self, nbytes: int, dtype: np.dtype) -> Slot:
        k = nbytes.bit_length()
        s = self._slots.get((dtype, k))
        if s is None:
            lo, hi = 1 << max(k - 1, 0), (1 << k) - 1
            key = f"{self.layout}|{dtype_name(dtype)}|{lo}-{hi}"
            cached = self._cached.get(key)
            s = self._slots[(dtype, k)] = Slot(key, self.candidates, rounds(lo), cached)
        return s

    def run(self, buf: np.ndarray, runner: Callable[[str], None]) -> None:
        """``runner(name)`` with the algorithm this call of ``buf``'s class runs, timed."""
        slot = self.slot(buf.nbytes, buf.dtype)
        t0 = self.clock()
        runner(slot.pick())
        self.done(slot, self.clock() - t0)

    def done(self, slot: Slot, seconds: float) -> None:
        """Record one call of ``slot`` that took ``seconds`` here; collective at the call
        indices where the ranks agree (the last trial, the drift checks)."""
        i = slot.calls - slot.start
        slot.calls += 1
        if i < len(slot.schedule):
            slot.samples[slot.schedule[i]].append(seconds)
            slot.trial_calls += 1
            slot.trial_seconds += seconds
            if i + 1 == len(slot.schedule):
                self._decide(slot)
            return
        if slot.calls > slot.next_check - WINDOW:
            slot.window.append(seconds)
            if slot.calls == slot.next_check:
                self._check(slot)

    def _decide(self, slot: Slot) -> None:
        times = np.array([np.percentile(slot.samples[c], 25) for c in slot.candidates],
                         np.float64)
        self.comm.allreduce(times, ReduceOp.MAX)  # identical on every rank from here on
        agreed = dict(zip(slot.candidates, (float(t) for t in times)))
        best = min(slot.candidates, key=agreed.__getitem__)  # ties: the first listed
        if "native" in agreed and agreed[best] > agreed["native"] * (1 - NATIVE_MARGIN):
            best = "native"
        incumbent = slot.winner
        if incumbent is not None and agreed[best] > agreed[incumbent] * (1 - KEEP_MARGIN):
            best = incumbent
        slot.winner, slot.seconds, slot.times = best, agreed[best], agreed
        slot.history.append(best)
        slot.schedule, slot.samples = [], {}
        slot.start = slot.calls
        slot.interval, slot.next_check, slot.window = FIRST_CHECK, slot.calls + FIRST_CHECK, []
        slot.quiet_until = slot.next_check - WINDOW
        if self.comm.rank == 0:
            if self.cache_path is not None:
                save_choice(self.cache_path, self._fp, slot.key,
                            {"algorithm": best, "seconds": slot.seconds,
                             "times": agreed, "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if self.verbose:
                shown = ", ".join(f"{c} {t * 1e6:.1f} us" for c, t in agreed.items())
                sys.stderr.write(f"hpcdl: auto {slot.key}: {best} ({shown}; "
                                 f"{slot.trial_calls} trial calls)\n")

    def _check(self, slot: Slot) -> None:
        now = float(np.median(slot.window))
        ratio = now / slot.seconds if slot.seconds > 0 and now > 0 else 1.0
        slot.window = []
        # [slower, faster]: MIN over ranks, so that a drift counts only when every rank sees it
        drift = np.array([ratio, 1.0 / ratio])
        self.comm.allreduce(drift, ReduceOp.MIN)
        if max(drift) > DRIFT and slot.retrials < MAX_RETRIALS:
            slot.retrials += 1
            slot.begin_trials()
            return
        slot.interval = min(slot.interval * 2, MAX_INTERVAL)
        slot.next_check = slot.calls + slot.interval
        slot.quiet_until = slot.next_check - WINDOW

    def report(self) -> dict[str, dict[str, Any]]:
        """Per class: the algorithm now used, where it came from, what the trials cost."""
        return {s.key: {"algorithm": s.winner, "source": s.source, "trial_calls": s.trial_calls,
                        "trial_seconds": s.trial_seconds, "retrials": s.retrials,
                        "times": dict(s.times), "history": list(s.history),
                        "trialing": s.trialing, "settled": s.settled}
                for s in self._slots.values()}


def tuner_for(comm: Any) -> Tuner:
    """``comm``'s tuner, made on first use (collective: the first tuned call on ``comm``)."""
    t = comm._hpcdl_tuner
    if t is None:
        t = comm._hpcdl_tuner = Tuner(comm)
    return t


def existing(comm: Any) -> Tuner | None:
    """``comm``'s tuner if a tuned call made one (never collective)."""
    return comm._hpcdl_tuner


def install(comm: Any, **options: Any) -> Tuner:
    """Collective: give ``comm`` a fresh tuner (``clock``, ``candidates``, ``use_cache``);
    what it learned before is forgotten (the cache is read again)."""
    t = comm._hpcdl_tuner = Tuner(comm, **options)
    invalidate_plans()  # fast-path plans hold the old tuner's classes
    return t


def tuned_allreduce(comm: Any, buf: np.ndarray, op: ReduceOp) -> None:
    """An :data:`~hpcdl.collectives.catalog.AllreduceFn`: the algorithm the tuner picks
    for this call (``avg`` as a sum, like every algorithm)."""
    tuner_for(comm).run(buf, lambda name: ALLREDUCE[name](comm, buf, op))
