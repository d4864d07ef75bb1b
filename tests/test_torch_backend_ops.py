"""Every operation of the torch.distributed backend "hpcdl" against a NumPy reference.

Each rank rebuilds every rank's input from seeds (torch_backend_util.rank_data)
and checks its own result, so the same tests hold at 1, 2, 3 and 4 ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from hpcdl.errors import DtypeError, InvalidArgumentError
from helpers.torch_backend_util import rank_data, world

RED = dist.ReduceOp
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8]
TOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12,
       torch.complex64: 1e-5, torch.complex128: 1e-12}
NP_OPS = {RED.SUM: np.add, RED.PRODUCT: np.multiply, RED.MIN: np.minimum,
          RED.MAX: np.maximum, RED.BAND: np.bitwise_and, RED.BOR: np.bitwise_or,
          RED.BXOR: np.bitwise_xor}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy() if t.dtype in (torch.float16, torch.bfloat16) else t.numpy()


def reference(op, inputs: list[torch.Tensor]) -> np.ndarray:
    arrays = [_np(t) for t in inputs]
    fn = NP_OPS[RED.SUM if op == RED.AVG else op]
    acc = arrays[0].copy()
    for a in arrays[1:]:
        acc = fn(acc, a)
    return acc / len(arrays) if op == RED.AVG else acc


def check(got: torch.Tensor, want: np.ndarray) -> None:
    tol = TOL.get(got.dtype, 0)
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


CASES = ([(d, op) for d in FLOATS for op in (RED.SUM, RED.AVG, RED.MIN, RED.MAX, RED.PRODUCT)]
         + [(d, op) for d in INTS for op in (RED.SUM, RED.MIN, RED.MAX, RED.PRODUCT, RED.BAND,
                                             RED.BOR, RED.BXOR)]
         + [(torch.bool, op) for op in (RED.MIN, RED.MAX, RED.BAND, RED.BOR, RED.BXOR)]
         + [(torch.complex64, RED.SUM), (torch.complex128, RED.SUM)])


@pytest.mark.parametrize("dtype,op", CASES, ids=lambda v: str(v).split(".")[-1])
def test_all_reduce(dtype, op):
    rank, size = world()
    shape = (3, 5)  # 15 elements: not a multiple of any rank count above 1
    inputs = [rank_data(1, r, shape, dtype) for r in range(size)]
    t = inputs[rank].clone()
    dist.all_reduce(t, op=op)
    check(t, reference(op, inputs))


def test_premul_sum_and_coalesced():
    rank, size = world()
    inputs = [rank_data(2, r, (7,), torch.float32) for r in range(size)]
    t = inputs[rank].clone()
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5))
    check(t, 0.5 * reference(RED.SUM, inputs))
    a, b = inputs[rank].clone(), 2 * inputs[rank]
    dist.all_reduce_coalesced([a, b], op=RED.MAX)
    check(a, reference(RED.MAX, inputs))
    check(b, 2 * reference(RED.MAX, inputs))


def test_unsupported_reductions_name_op_dtype_rank():
    rank, _ = world()
    with pytest.raises(DtypeError, match=rf"rank {rank}.*AVG.*torch.int32"):
        dist.all_reduce(torch.ones(3, dtype=torch.int32), op=RED.AVG)
    with pytest.raises(DtypeError, match="BXOR.*torch.float32"):
        dist.all_reduce(torch.ones(3), op=RED.BXOR)
    with pytest.raises(DtypeError, match="SUM.*torch.bool"):
        dist.all_reduce(torch.ones(3, dtype=torch.bool))
    # (strided tensors are no longer refused: test_torch_backend_strided.py)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.uint8,
                                   torch.bool, torch.complex64])
def test_broadcast_every_root(dtype):
    rank, size = world()
    for root in range(size):
        t = rank_data(3, rank, (2, 3), dtype)
        dist.broadcast(t, src=root)
        assert torch.equal(t, rank_data(3, root, (2, 3), dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.float16])
def test_all_gather_both_forms(dtype):
    rank, size = world()
    inputs = [rank_data(4, r, (3, 2), dtype) for r in range(size)]
    outs = [torch.empty(3, 2, dtype=dtype) for _ in range(size)]
    dist.all_gather(outs, inputs[rank])
    for o, i in zip(outs, inputs):
        assert torch.equal(o, i)
    flat = torch.empty(size * 3, 2, dtype=dtype)
    dist.all_gather_into_tensor(flat, inputs[rank])
    assert torch.equal(flat, torch.cat(inputs))


@pytest.mark.parametrize("dtype,op", [(torch.float32, RED.SUM), (torch.float64, RED.AVG),
                                      (torch.bfloat16, RED.MAX), (torch.int16, RED.SUM),
                                      (torch.int64, RED.BOR)], ids=str)
def test_reduce_scatter_both_forms(dtype, op):
    rank, size = world()
    n = 5
    inputs = [rank_data(5, r, (size * n,), dtype) for r in range(size)]
    want = reference(op, inputs)[rank * n:(rank + 1) * n]
    out = torch.empty(n, dtype=dtype)
    dist.reduce_scatter_tensor(out, inputs[rank].clone(), op=op)
    check(out, want)
    out2 = torch.empty(n, dtype=dtype)
    dist.reduce_scatter(out2, list(inputs[rank].clone().chunk(size)), op=op)
    check(out2, want)


def test_reduce_to_every_root():
    rank, size = world()
    inputs = [rank_data(6, r, (4,), torch.float64) for r in range(size)]
    for root in range(size):
        t = inputs[rank].clone()
        dist.reduce(t, dst=root, op=RED.SUM)
        if rank == root:
            check(t, reference(RED.SUM, inputs))


def test_all_to_all_single_even_and_uneven():
    rank, size = world()
    inputs = [rank_data(7, r, (size * 2, 3), torch.float32) for r in range(size)]
    out = torch.empty(size * 2, 3)
    dist.all_to_all_single(out, inputs[rank])
    assert torch.equal(out, torch.cat([inputs[r][rank * 2:(rank + 1) * 2] for r in range(size)]))
    # rank r sends s + r + 1 rows to rank s (uneven, some ranks more than others)
    rows = [[s + r + 1 for s in range(size)] for r in range(size)]
    ins = [rank_data(8, r, (sum(rows[r]), 2), torch.int32) for r in range(size)]
    recv = [rows[r][rank] for r in range(size)]
    out = torch.empty(sum(recv), 2, dtype=torch.int32)
    dist.all_to_all_single(out, ins[rank], output_split_sizes=recv, input_split_sizes=rows[rank])
    want = [ins[r].split(rows[r])[rank] for r in range(size)]
    assert torch.equal(out, torch.cat(want))
    with pytest.raises(InvalidArgumentError, match="all_to_all_single.*splits"):
        dist.all_to_all_single(out, ins[rank], output_split_sizes=recv,
                               input_split_sizes=[1] * size + [1])


def test_all_to_all_lists():
    rank, size = world()
    ins = [[rank_data(9, r * 10 + s, (s + 1,), torch.float64) for s in range(size)]
           for r in range(size)]
    outs = [torch.empty(rank + 1, dtype=torch.float64) for _ in range(size)]
    dist.all_to_all(outs, ins[rank])
    for r in range(size):
        assert torch.equal(outs[r], ins[r][rank])


def test_gather_and_scatter_every_root():
    rank, size = world()
    inputs = [rank_data(10, r, (2, 2), torch.float32) for r in range(size)]
    for root in range(size):
        outs = [torch.empty(2, 2) for _ in range(size)] if rank == root else None
        dist.gather(inputs[rank], gather_list=outs, dst=root)
        if rank == root:
            for o, i in zip(outs, inputs):
                assert torch.equal(o, i)
        out = torch.empty(2, 2)
        dist.scatter(out, scatter_list=inputs if rank == root else None, src=root)
        assert torch.equal(out, inputs[rank])


def test_send_recv_any_tag_both_directions():
    rank, size = world()
    if size == 1:
        pytest.skip("needs a peer")
    peer_up, peer_down = (rank + 1) % size, (rank - 1) % size
    big = 1 << 20  # large enough for MPI's rendezvous protocol: a blocking send would deadlock
    tag = (1 << 20) + 5
    send = rank_data(11, rank, (big,), torch.float32)
    recv = torch.empty(big)
    works = [dist.isend(send, peer_up, tag=tag), dist.irecv(recv, peer_down, tag=tag)]
    fut = works[1].get_future()
    for w in works:
        w.wait()
    assert torch.equal(recv, rank_data(11, peer_down, (big,), torch.float32))
    assert torch.equal(fut.wait()[0], recv)
    with pytest.raises(InvalidArgumentError, match="recv.*src="):
        dist.recv(recv)


def test_async_works_futures_and_order():
    rank, size = world()
    inputs = [rank_data(12, r, (64,), torch.float32) for r in range(size)]
    ts = [inputs[rank].clone() * (k + 1) for k in range(5)]
    works = [dist.all_reduce(t, async_op=True) for t in ts]
    chained = works[-1].get_future().then(lambda f: f.value()[0] * 2)
    dist.barrier()  # queued behind the five allreduces: they finish first
    for w in works:
        assert w.wait()
    for k, t in enumerate(ts):
        check(t, (k + 1) * reference(RED.SUM, inputs))
    check(chained.wait(), 10 * reference(RED.SUM, inputs))


def test_new_group_is_an_hpcdl_subgroup():
    rank, size = world()
    members = list(range(0, size, 2))  # 0, 2: non-power-of-two gaps at 3-4 ranks
    group = dist.new_group(members)
    inputs = [rank_data(13, r, (6,), torch.float64) for r in range(size)]
    t = inputs[rank].clone()
    if rank in members:
        assert dist.get_world_size(group) == len(members)
        dist.all_reduce(t, group=group)
        check(t, reference(RED.SUM, [inputs[r] for r in members]))
        assert group.group_name
    else:
        assert group == dist.GroupMember.NON_GROUP_MEMBER
    dist.barrier()
