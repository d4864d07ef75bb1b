"""DDP, FSDP2, pipelining and DCP over the "hpcdl" backend equal single-process training.

Every rank computes the single-process reference itself on the whole global
batch, so the comparisons hold at any rank count (1 included). Float32
tolerance: only the summation order differs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers.torch_backend_util import world

torch.set_num_threads(1)  # several ranks share 2 cores
BATCH = 24  # two micro-batches, each divisible by 1, 2, 3 and 4 ranks
TOL = dict(rtol=1e-5, atol=1e-5)


class Net(torch.nn.Module):
    """Uneven parameter sizes (so buckets are uneven) and a layer used only sometimes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 40)
        self.b = torch.nn.Linear(40, 3, bias=False)
        self.c = torch.nn.Linear(40, 3)
        self.unused = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, use_c: bool = True) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.b(h) + (self.c(h) if use_c else 0)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


def mine(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    n = t.shape[0] // size
    return t[rank * n:(rank + 1) * n]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out, y)


def test_ddp_matches_single_process_with_unused_params_and_no_sync():
    rank, size = world()
    torch.manual_seed(0)
    ref = Net()
    model = DDP(copy.deepcopy(ref), bucket_cap_mb=0.001, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        use_c = step != 1  # step 1 leaves c unused: find_unused_parameters must cope
        x, y = batch(step)
        ref_opt.zero_grad()
        for xh, yh in zip(x.chunk(2), y.chunk(2)):
            (mse(ref(xh, use_c), yh) / 2).backward()
        ref_opt.step()
        opt.zero_grad()
        # two micro-batches: the first accumulates locally under no_sync()
        with model.no_sync():
            (mse(model(mine(x.chunk(2)[0], rank, size), use_c),
                 mine(y.chunk(2)[0], rank, size)) / 2).backward()
        (mse(model(mine(x.chunk(2)[1], rank, size), use_c),
             mine(y.chunk(2)[1], rank, size)) / 2).backward()
        opt.step()
    for (name, p), q in zip(model.module.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL, msg=f"parameter {name} differs")


def test_fsdp2_matches_single_process():
    from torch.distributed.fsdp import fully_shard

    rank, size = world()
    torch.manual_seed(1)
    ref = Net()
    model = copy.deepcopy(ref)
    for layer in (model.a, model.b, model.c):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(2):
        x, y = batch(step)
        ref_opt.zero_grad()
        mse(ref(x), y).backward()
        ref_opt.step()
        opt.zero_grad()
        mse(model(mine(x, rank, size)), mine(y, rank, size)).backward()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        # each rank holds rows chunk(rank) of the (dim-0 sharded) parameter
        chunks = q.detach().chunk(size, dim=0)
        want = chunks[rank] if rank < len(chunks) else q.detach()[:0]
        torch.testing.assert_close(p.to_local(), want, **TOL, msg=f"shard of {name} differs")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_pipelining_two_stages_give_the_unpipelined_gradients(schedule):
    from torch.distributed import pipelining

    rank, size = world()
    group = dist.new_group([0, 1])
    torch.manual_seed(2)
    full = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = batch(7)
    mse(full(x), y).backward()
    if rank >= 2:
        return
    parts = [full[:2], full[2:]]
    stage_mod = copy.deepcopy(parts[rank])
    stage_mod.zero_grad()
    stage = pipelining.PipelineStage(stage_mod, rank, 2, torch.device("cpu"), group=group)
    cls = pipelining.ScheduleGPipe if schedule == "GPipe" else pipelining.Schedule1F1B
    sched = cls(stage, n_microbatches=4, loss_fn=mse)
    if rank == 0:
        sched.step(x)
    else:
        sched.step(target=y)
    for (name, p), q in zip(stage_mod.named_parameters(), parts[rank].parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=f"stage {rank} grad {name}")


def test_dcp_save_sharded_load_replicated(tmp_path_factory):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    rank, size = world()
    # one directory for every rank: rank 0 names it, the others learn it
    path = [str(tmp_path_factory.mktemp("dcp")) if rank == 0 else None]
    dist.broadcast_object_list(path, src=0)
    torch.manual_seed(3)
    ref = Net()
    sharded = copy.deepcopy(ref)
    fully_shard(sharded)
    dcp.save({"model": sharded.state_dict()}, checkpoint_id=path[0])
    torch.manual_seed(4)
    plain = Net()  # other weights; every rank loads the whole of every tensor
    state = {"model": plain.state_dict()}
    dcp.load(state, checkpoint_id=path[0])
    plain.load_state_dict(state["model"])
    for (name, p), q in zip(plain.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), f"{name} not restored exactly"

