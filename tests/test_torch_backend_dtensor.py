"""torch's functional collectives, DTensor and tensor parallelism over "hpcdl".

Every rank rebuilds all ranks' inputs (``rank_data``) and checks the result
against a plain torch computation of the whole thing. Float32 tolerances cover
only a different summation order.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import (DTensor, Partial, Replicate, Shard, distribute_tensor,
                                      init_device_mesh)

from helpers.torch_backend_util import rank_data, world

torch.set_num_threads(1)
TOL = dict(rtol=1e-5, atol=1e-5)
C10D = torch.ops._c10d_functional


def test_functional_collectives_match_a_plain_reference():
    rank, size = world()
    name = dist.group.WORLD.group_name
    xs = [rank_data(31, r, (3, 5), torch.float32) for r in range(size)]
    full = torch.cat(xs)
    total = sum(xs)
    got = {
        "all_gather_into_tensor": C10D.wait_tensor(C10D.all_gather_into_tensor(xs[rank], size,
                                                                                name)),
        "reduce_scatter_tensor": C10D.wait_tensor(C10D.reduce_scatter_tensor(
            full * (rank + 1), "sum", size, name)),
        "all_reduce": C10D.wait_tensor(C10D.all_reduce(xs[rank], "max", name)),
        "broadcast": C10D.wait_tensor(C10D.broadcast(xs[rank], size - 1, name)),
        "avg": C10D.wait_tensor(C10D.reduce_scatter_tensor(full * (rank + 1), "avg", size,
                                                           name)),
    }
    want = {
        "all_gather_into_tensor": full,
        "reduce_scatter_tensor": (full * sum(range(1, size + 1))).chunk(size)[rank],
        "all_reduce": torch.stack(xs).amax(0),
        "broadcast": xs[size - 1],
        "avg": (full * sum(range(1, size + 1)) / size).chunk(size)[rank],
    }
    # coalesced forms: several tensors (other dtypes, sizes) in one call
    ys = [rank_data(32, r, (7,), torch.float64) for r in range(size)]
    gathered = C10D.all_gather_into_tensor_coalesced([xs[rank], ys[rank]], size, name)
    got["ag_coalesced_f32"], got["ag_coalesced_f64"] = [C10D.wait_tensor(t) for t in gathered]
    want["ag_coalesced_f32"], want["ag_coalesced_f64"] = full, torch.cat(ys)
    zs = [rank_data(33, r, (2 * size, 3), torch.float64) for r in range(size)]
    scattered = C10D.reduce_scatter_tensor_coalesced([full, zs[rank]], "sum", size, name)
    got["rs_coalesced_f32"], got["rs_coalesced_f64"] = [C10D.wait_tensor(t) for t in scattered]
    want["rs_coalesced_f32"] = (full * size).chunk(size)[rank]
    want["rs_coalesced_f64"] = sum(zs).chunk(size)[rank]
    # all_to_all_single with uneven splits: rank r sends r + k + 1 rows to rank k
    send = [[r + k + 1 for k in range(size)] for r in range(size)]
    rows = [rank_data(34, r, (sum(send[r]), 2), torch.float32) for r in range(size)]
    got["all_to_all_single"] = C10D.wait_tensor(C10D.all_to_all_single(
        rows[rank], [send[r][rank] for r in range(size)], send[rank], name))
    want["all_to_all_single"] = torch.cat([rows[r].split(send[r])[rank] for r in range(size)])
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, **TOL, msg=f"{key} on rank {rank}")


def test_dtensor_distribute_redistribute_and_full_tensor():
    rank, size = world()
    mesh = init_device_mesh("cpu", (size,))
    g = rank_data(40, 0, (2 * size + 1, 6), torch.float32)  # uneven shards along dim 0
    d = distribute_tensor(g, mesh, [Shard(0)])
    torch.testing.assert_close(d.full_tensor(), g, **TOL)
    chunks = torch.chunk(g, size)  # DTensor's sharding: the last ranks may hold nothing
    torch.testing.assert_close(d.to_local(), chunks[rank] if rank < len(chunks) else g[:0], **TOL)
    for placement in (Shard(1), Replicate(), Shard(0)):
        d = d.redistribute(mesh, [placement])
        torch.testing.assert_close(d.full_tensor(), g, **TOL, msg=str(placement))
    # Partial: each rank holds its own addend; Replicate sums them, Shard reduce-scatters
    parts = [rank_data(41, r, (size * 2, 3), torch.float32) for r in range(size)]
    p = DTensor.from_local(parts[rank], mesh, [Partial()])
    torch.testing.assert_close(p.redistribute(mesh, [Replicate()]).to_local(), sum(parts), **TOL)
    shard = p.redistribute(mesh, [Shard(0)]).to_local()
    torch.testing.assert_close(shard, sum(parts).chunk(size)[rank], **TOL)


@pytest.mark.mpi(min_size=4)
def test_dtensor_on_a_2d_mesh():
    rank, size = world()
    if size != 4:
        pytest.skip("a (2, 2) mesh needs exactly 4 ranks")
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    g = rank_data(42, 0, (6, 10), torch.float32)
    d = distribute_tensor(g, mesh, [Shard(0), Shard(1)])
    torch.testing.assert_close(d.full_tensor(), g, **TOL)
    i, j = rank // 2, rank % 2
    torch.testing.assert_close(d.to_local(), g.chunk(2, 0)[i].chunk(2, 1)[j], **TOL)
    for placements in ([Replicate(), Shard(0)], [Shard(1), Replicate()], [Replicate()] * 2):
        d = d.redistribute(mesh, placements)
        torch.testing.assert_close(d.full_tensor(), g, **TOL, msg=str(placements))
    # Partial along "tp" only: the sum runs over the 2 ranks of this rank's tp row
    parts = [rank_data(43, r, (4, 3), torch.float32) for r in range(size)]
    p = DTensor.from_local(parts[rank], mesh, [Replicate(), Partial()], run_check=False)
    row = parts[2 * i] + parts[2 * i + 1]
    torch.testing.assert_close(p.redistribute(mesh, [Replicate(), Replicate()]).to_local(),
                               row, **TOL)


class Block(torch.nn.Module):
    """LayerNorm (sequence parallel) -> Linear (column-wise) -> ReLU -> Linear (row-wise)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(12)
        self.up = torch.nn.Linear(12, 24)
        self.down = torch.nn.Linear(24, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(self.norm(x))))


def test_tensor_parallel_colwise_rowwise_sequence_parallel_match_one_process():
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)
    rank, size = world()
    torch.manual_seed(5)
    ref = Block()
    model = parallelize_module(copy.deepcopy(ref), init_device_mesh("cpu", (size,)), {
        "norm": SequenceParallel(),
        "up": ColwiseParallel(input_layouts=Shard(1)),
        "down": RowwiseParallel(output_layouts=Shard(1))})
    x = rank_data(44, 0, (2, 12, 12), torch.float32)  # (batch, sequence: 12 = 1..4 x k, dim)
    ref(x).pow(2).sum().backward()
    out = model(x.chunk(size, dim=1)[rank])  # each rank holds its part of the sequence
    out.pow(2).sum().backward()
    torch.testing.assert_close(out, ref(x).chunk(size, dim=1)[rank], **TOL)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert isinstance(p, DTensor), name
        torch.testing.assert_close(p.full_tensor(), q, **TOL, msg=name)
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-4, atol=1e-4,
                                   msg=f"grad of {name} on rank {rank}")


def test_fsdp2_state_dict_full_tensor_is_the_whole_parameter():
    from torch.distributed.fsdp import fully_shard

    world()
    torch.manual_seed(6)
    ref = Block()
    model = copy.deepcopy(ref)
    fully_shard(model)
    for (name, value), want in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(value.full_tensor(), want, **TOL, msg=name)
