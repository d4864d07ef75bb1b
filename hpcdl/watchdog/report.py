"""What the watchdog says on a stall: which ranks hold it up, and what each was doing.

Two ways to find the ranks at fault, from the states the other ranks sent
(``Monitor.state``):

* **A collective** on a watched communicator: the ranks whose sequence number
  on it is below ours have not arrived (they never started this call).
* **Anything else** (point-to-point, a declared wait): follow the wait-for
  graph. Each rank's state lists the ranks its waiting threads wait for; a
  rank reached from ours that waits for nothing hpcdl can see (it computes,
  sleeps or loops outside hpcdl) or does not answer is the one that stalls the
  others.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stall", "comm_key", "span", "describe", "not_arrived", "mismatched", "stalled_ranks",
           "MAX_PEERS"]

MAX_PEERS = 64   # ranks listed per waiting thread in an answer (bounds the message size)
P2P_OPS = frozenset(("Send", "Ssend", "Recv", "send", "recv", "Sendrecv", "Isend", "Irecv"))


def comm_key(ranks: tuple[int, ...] | list[int]) -> str:
    """A short name for a communicator's membership (its world ranks), the same on
    every rank: size and a CRC of the ranks, so no answer has to list them all."""
    data = ",".join(map(str, ranks)).encode()
    return f"{len(ranks)}:{zlib.crc32(data):08x}"


def span(ranks: list[int] | tuple[int, ...]) -> str:
    ranks = list(ranks)
    if ranks and ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}..{ranks[-1]}"
    if len(ranks) > 16:
        return ",".join(map(str, ranks[:16])) + f",... ({len(ranks)} ranks)"
    return ",".join(map(str, ranks))


@dataclass
class Stall:
    """One operation that waited past the timeout on this rank."""

    op: str                   # what waits ("Allreduce", "ps.push_pull", ...)
    what: str                 # how the report names it ("Allreduce #9", ...)
    ranks: list[int]          # world ranks of the communicator it runs on
    peers: list[int]          # world ranks it waits for
    seq: int                  # collective sequence number (-1: not a collective)
    collective: bool
    where: str                # this rank's caller
    waited: float
    key: str = field(default="")

    def __post_init__(self) -> None:
        self.key = comm_key(self.ranks)


def not_arrived(stall: Stall, answers: dict[int, dict[str, Any]], me: int) -> list[int]:
    """Collective: the ranks of the communicator that have not started call #seq."""
    missing = []
    for r in stall.ranks:
        if r == me:
            continue
        a = answers.get(r)
        if a is None:
            missing.append(r)
            continue
        mine = a["comm"]
        if mine is None or mine["seq"] < stall.seq:
            missing.append(r)
    return missing


def mismatched(stall: Stall, answers: dict[int, dict[str, Any]]) -> list[str]:
    """Collective: ranks that started call #seq as another operation (a broadcast where
    this rank allreduces): both wait for ever, and none is late."""
    out = []
    for r, a in sorted(answers.items()):
        mine = a["comm"] if a is not None else None
        if mine is not None and mine["seq"] == stall.seq and mine["op"] != stall.op:
            out.append(f"rank {r} called {mine['op']} #{stall.seq}")
    return out


def next_to_ask(answers: dict[int, dict[str, Any]], asked: set[int]) -> list[int]:
    """The ranks the answered ranks' waiting threads wait for, not asked yet."""
    new = []
    for a in answers.values():
        for i in a["inside"]:
            for p in i["peers"]:
                if p not in asked and p not in new:
                    new.append(p)
    return new


def stalled_ranks(answers: dict[int, dict[str, Any] | None], me: int) -> list[int]:
    """Ranks reached through the wait-for graph that wait for nothing (or are silent)."""
    return sorted(r for r, a in answers.items()
                  if r != me and (a is None or not a["inside"]))


def describe(answer: dict[str, Any] | None, answer_s: float) -> str:
    if answer is None:
        return (f"no answer within {answer_s:g} s (its process is gone, or stuck in C code "
                "that holds the GIL)")
    mine = answer["comm"]
    parts = []
    if mine is not None:
        parts.append(f"last started {mine['op']} #{mine['seq']} on it")
    elif "asked" in answer:
        parts.append("has not used this communicator")
    for i in answer["inside"]:
        parts.append(f"thread {i['thread']} inside {i['op']} (on world ranks {i['span']}) "
                     f"waiting for {span(i['peers'])} for {i['for_s']} s")
    if not answer["inside"]:
        parts.append("inside no MPI call or hpcdl wait")
    parts.append(f"main thread at {answer['main_at']}")
    return "; ".join(parts)
