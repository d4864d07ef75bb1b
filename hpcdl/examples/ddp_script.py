"""A plain PyTorch DDP script; only the two marked lines make it an MPI job.

    hpcdl launch -n 2 -- python -m hpcdl.examples.ddp_script --out w.pt
    mpiexec -n 4 python -m hpcdl.examples.ddp_script --out w.pt
    python -m hpcdl.examples.ddp_script --out w.pt        # one process, same result

Everything else is what a torch user already writes for torchrun + gloo/nccl:
DistributedSampler, DDP, a plain optimizer. With a fixed global batch the
trained weights equal single-process training up to float32 summation order.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import hpcdl.torch  # noqa: F401  <- change 1 of 2: registers the "hpcdl" backend


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-per-epoch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=48)
    p.add_argument("--out", default=None, help="rank 0 saves the final state_dict here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    dist.init_process_group("hpcdl")  # <- change 2 of 2: was "gloo" / "nccl"
    rank, size = dist.get_rank(), dist.get_world_size()

    g = torch.Generator().manual_seed(0)
    n = args.global_batch * args.steps_per_epoch
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long()
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=size, rank=rank, shuffle=True, seed=1)
    loader = DataLoader(data, batch_size=args.global_batch // size, sampler=sampler)

    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.zeros(())
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
    total = loss.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.AVG)
    if rank == 0:
        print(f"ranks={size} final loss {total.item():.6f}")
        if args.out:
            torch.save(model.module.state_dict(), args.out)
    dist.destroy_process_group()
    return float(total)


if __name__ == "__main__":
    main()
