"""The "hpcdl" torch backend on strided (non-contiguous) tensors, against a NumPy reference.

Every operation communicates through a contiguous copy and writes results back
into the caller's view: the values must be exact and the memory between the
view's elements (the skipped columns of ``base[:, ::2]``) must stay untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers.torch_backend_util import rank_data, world

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]
SHAPE = (5, 3)  # 15 elements: not a multiple of 2, 3 or 4
SENTINEL = 7


def _fill(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(True if dtype == torch.bool else SENTINEL).to(dtype)


def strided_like(values: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(view, base): ``view`` holds ``values`` but is not contiguous; ``base`` owns it."""
    rows, cols = values.shape
    if kind == "transposed":
        base = torch.empty(cols, rows, dtype=values.dtype)
        view = base.t()
    else:  # every other column of a wider tensor, the rest a sentinel
        base = _fill(values.dtype).repeat(rows, 2 * cols)
        view = base[:, ::2]
    view.copy_(values)
    assert not view.is_contiguous()
    return view, base


def untouched(base: torch.Tensor, kind: str) -> bool:
    """The gaps between the view's elements still hold the sentinel."""
    return kind == "transposed" or bool((base[:, 1::2] == _fill(base.dtype)).all())


def exact(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), (got, want)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("kind", ["transposed", "every_other_column"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_send_and_recv_strided(dtype, kind):
    rank, size = world()
    up, down = (rank + 1) % size, (rank - 1) % size
    mine = rank_data(21, rank, SHAPE, dtype)
    theirs = rank_data(21, down, SHAPE, dtype)
    send, _ = strided_like(mine, kind)
    # irecv into a strided buffer with a blocking send of a strided tensor (tag 3), then
    # isend of a strided tensor with a blocking recv into a strided buffer (tag 4).
    for tag in (3, 4):
        out, base = strided_like(torch.zeros(SHAPE, dtype=dtype), kind)
        if tag == 3:
            work = dist.irecv(out, down, tag=tag)
            dist.send(send, up, tag=tag)
        else:
            work = dist.isend(send, up, tag=tag)
            dist.recv(out, down, tag=tag)
        work.wait()
        exact(out, theirs)
        assert untouched(base, kind)
        exact(send, mine)  # the send's copy is not the caller's tensor


@pytest.mark.mpi(min_size=2)
def test_strided_recv_future_and_grad_leaf():
    # torch's pipelining receives into leaves that require grad, and waits through futures.
    rank, size = world()
    up, down = (rank + 1) % size, (rank - 1) % size
    out = torch.zeros(3, 4).t().requires_grad_()
    work = dist.irecv(out, down, tag=5)
    dist.isend(rank_data(22, rank, (4, 3), torch.float32).t().contiguous().t(), up, tag=5).wait()
    work.get_future().wait()
    exact(out.detach(), rank_data(22, down, (4, 3), torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.int64],
                         ids=str)
def test_allreduce_reduce_and_broadcast_strided(dtype):
    rank, size = world()
    inputs = [rank_data(23, r, SHAPE, dtype) for r in range(size)]
    want = np.sum([t.to(torch.float64).numpy() for t in inputs], axis=0)
    t, base = strided_like(inputs[rank], "every_other_column")
    dist.all_reduce(t)
    tol = {torch.bfloat16: 5e-2, torch.float32: 1e-6}.get(dtype, 0)  # float32 sums round
    np.testing.assert_allclose(t.to(torch.float64).numpy(), want, rtol=tol, atol=tol)
    assert untouched(base, "every_other_column")
    for root in range(size):
        t, base = strided_like(inputs[rank], "transposed")
        dist.reduce(t, dst=root)
        if rank == root:
            np.testing.assert_allclose(t.to(torch.float64).numpy(), want, rtol=tol, atol=tol)
        else:
            exact(t, inputs[rank])  # a non-root keeps its input
        t, base = strided_like(inputs[rank], "every_other_column")
        dist.broadcast(t, src=root)
        exact(t, inputs[root])
        assert untouched(base, "every_other_column")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8], ids=str)
def test_gather_scatter_family_strided(dtype):
    rank, size = world()
    inputs = [rank_data(24, r, (size * 2, 3), dtype) for r in range(size)]
    inp, _ = strided_like(inputs[rank], "transposed")
    out, base = strided_like(torch.zeros(size * size * 2, 3, dtype=dtype), "every_other_column")
    dist.all_gather_into_tensor(out, inp)
    exact(out, torch.cat(inputs))
    assert untouched(base, "every_other_column")
    outs = [strided_like(torch.zeros(size * 2, 3, dtype=dtype), "transposed")[0]
            for _ in range(size)]
    dist.all_gather(outs, inp)
    for o, i in zip(outs, inputs):
        exact(o, i)
    out, base = strided_like(torch.zeros(size * 2, 3, dtype=dtype), "every_other_column")
    dist.all_to_all_single(out, inp)
    exact(out, torch.cat([inputs[r][rank * 2:(rank + 1) * 2] for r in range(size)]))
    assert untouched(base, "every_other_column")
    for root in range(size):
        gathered = [torch.zeros(size * 2, 3, dtype=dtype) for _ in range(size)]
        dist.gather(inp, gather_list=gathered if rank == root else None, dst=root)
        if rank == root:
            for g, i in zip(gathered, inputs):
                exact(g, i)
        out, base = strided_like(torch.zeros(size * 2, 3, dtype=dtype), "every_other_column")
        dist.scatter(out, scatter_list=inputs if rank == root else None, src=root)
        exact(out, inputs[rank])
        assert untouched(base, "every_other_column")


def test_reduce_scatter_strided():
    rank, size = world()
    inputs = [rank_data(25, r, (size * 2, 3), torch.float64) for r in range(size)]
    want = torch.stack(inputs).sum(0)[rank * 2:(rank + 1) * 2]
    inp, _ = strided_like(inputs[rank], "transposed")
    out, base = strided_like(torch.zeros(2, 3, dtype=torch.float64), "every_other_column")
    dist.reduce_scatter_tensor(out, inp)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert untouched(base, "every_other_column")
    exact(inp, inputs[rank])
