"""Group averages without a communicator per group (hpcdl/collectives/members.py, preduce/groups.py).

Disjoint member sets of 2-4 ranks average at the same time over one parent
communicator, round after round with other member sets, between full
collectives on that same parent: every member must get the NumPy average of
its group's inputs (tests/helpers/numpy_reference.py's tolerance) and bitwise the same
values as the other members. Fake 3 and 4 ranks serially, the job's ranks
under mpiexec.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fakes import group_params, on_group
from helpers.numpy_reference import Failures, close, rank_input, reduce_reference

import hpcdl
from hpcdl.collectives.members import MemberComm
from hpcdl.preduce.groups import GroupAverager


def partition(n: int, round_: int) -> list[tuple[int, ...]]:
    """The same disjoint member sets on every rank: a seeded shuffle cut into 2, 3, 4, ..."""
    perm = np.random.default_rng([7, round_]).permutation(n)
    sets, at, k = [], 0, 2 + round_ % 3
    while at < n:
        sets.append(tuple(sorted(int(r) for r in perm[at:at + k])))
        at += k
        k = 2 + (k - 1) % 3
    return sets


def group_rounds(comm, dtype: str, count: int, average) -> list[str]:
    """``average(x, members)`` over 6 rounds of member sets; returns the failures."""
    fails = Failures()
    results: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
    for rnd in range(6):
        members = next(m for m in partition(comm.size, rnd) if comm.rank in m)
        xs = [rank_input(100 + rnd, r, (count,), dtype, "avg") for r in range(comm.size)]
        x = xs[comm.rank].copy()
        average(x, members)
        ref = reduce_reference([xs[m] for m in members], "avg") if len(members) > 1 else xs[comm.rank]
        fails.check(f"round {rnd} members {members}",
                    lambda: close(x, ref, [xs[m] for m in members], "avg"))
        results[(rnd, members)] = x
        hpcdl.allreduce(np.full(3, comm.rank, np.int64), comm=comm)  # a full collective between
    everyone = comm.allgather_object(results)
    for key, value in results.items():
        for r in key[1]:
            fails.expect(f"round {key[0]} rank {r} vs {comm.rank}",
                         np.array_equal(everyone[r][key], value), "members differ")
    return fails.messages


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_group_averager_matches_numpy_and_members_agree(group, dtype):
    def body(comm):
        groups = GroupAverager(comm)
        out = group_rounds(comm, dtype, 1009,  # a session averages no group of one
                           lambda x, m: groups.average(x, m) if len(m) > 1 else None)
        assert len(groups) <= 3  # one view per group size (2, 3, 4), whatever the member sets
        return out

    for messages in on_group(group, body):
        assert not messages, "\n".join(messages[:10])


@pytest.mark.parametrize("group", group_params())
@pytest.mark.parametrize("algorithm", ["ring", "tree", "native"])
def test_every_algorithm_runs_over_a_member_view(group, algorithm):
    def body(comm):
        views: dict[int, MemberComm] = {}

        def average(x, members):
            if len(members) == 1:
                return
            view = views.setdefault(len(members), MemberComm(comm, members))
            view.point_to(members)
            assert view.rank == members.index(comm.rank) and view.size == len(members)
            # HPCDL_DEBUG's cross-rank check runs on this (world ranks of the members back)
            assert view.allgather_object({"rank": comm.rank}) == [{"rank": m} for m in members]
            hpcdl.allreduce(x, op="avg", comm=view, algorithm=algorithm)

        return group_rounds(comm, "float32", 4099, average)

    for messages in on_group(group, body):
        assert not messages, "\n".join(messages[:10])


@pytest.mark.parametrize("group", group_params())
def test_member_view_refuses_bad_member_sets_naming_the_rank(group):
    def body(comm):
        if comm.size < 2:
            return
        other = (comm.rank + 1) % comm.size
        view = MemberComm(comm, (comm.rank, other))
        for bad, why in (((other,), "2 distinct"), ((comm.rank, comm.rank), "2 distinct"),
                         ((comm.rank, comm.size), "2 distinct"),
                         (tuple(r for r in range(comm.size) if r != comm.rank)[:2]
                          if comm.size > 2 else (other, other), "among them")):
            with pytest.raises(hpcdl.InvalidArgumentError, match=why) as e:
                view.point_to(bad)
            assert f"rank {comm.rank}" in str(e.value)

    on_group(group, body)
