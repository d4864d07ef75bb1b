"""hpcdl.ps pieces that need no second rank: sharding, server-side optimizers against
torch.optim, the disk store (reopen, checksum), setup's input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcdl.errors import InvalidArgumentError
from hpcdl.ps import SGD, Adam, DiskStore, MemoryStore, StoreError, from_torch, plan_shards


@pytest.mark.parametrize("servers", [1, 2, 3, 5])
def test_plan_covers_every_element_once_and_balances(servers):
    rng = np.random.default_rng(servers)
    shapes = [(int(rng.integers(1, 40)), int(rng.integers(1, 9))) for _ in range(7)] + [(1000,)]
    names = [f"p{i}" for i in range(len(shapes))]
    plan = plan_shards(names, shapes, np.float32, servers, chunk_elems=97)
    flat = {n: rng.standard_normal(int(np.prod(s))).astype(np.float32)
            for n, s in zip(names, shapes)}
    shards = [plan.pack(i, flat, np.empty(plan.shard_size(i), np.float32))
              for i in range(servers)]
    back = {n: np.zeros_like(a) for n, a in flat.items()}
    for i, sh in enumerate(shards):
        plan.unpack(i, sh, back)
    for n in names:
        np.testing.assert_array_equal(back[n], flat[n])
    sizes = [plan.shard_size(i) for i in range(servers)]
    assert sum(sizes) == sum(a.size for a in flat.values())
    # The 1000-element tensor is split into chunks of <= 97, so LPT balances to within a chunk.
    assert max(sizes) - min(sizes) <= 97
    # The same inputs give the same plan (every rank computes it alone).
    assert plan == plan_shards(names, shapes, np.float32, servers, chunk_elems=97)


def _torch_run(opt_factory, p0, grads):
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = opt_factory([p])
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("case", ["sgd", "momentum", "nesterov_wd", "dampening", "adam",
                                  "adam_wd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_server_optimizers_match_torch(case, dtype, monkeypatch):
    import hpcdl.ps.optim as optim

    monkeypatch.setattr(optim, "BLOCK", 100)   # several blocks per shard
    factories = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        "nesterov_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True,
                                                  weight_decay=1e-2),
        "dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.7, dampening=0.3),
        "adam": lambda ps: torch.optim.Adam(ps, lr=3e-3),
        "adam_wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6,
                                               weight_decay=0.1),
    }
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(333).astype(dtype)
    grads = [rng.standard_normal(333).astype(dtype) for _ in range(6)]
    want = _torch_run(factories[case], p0, grads)
    spec = from_torch(factories[case]([torch.nn.Parameter(torch.zeros(1))]))
    store = MemoryStore()
    p = store.array("params", p0.size, dtype)
    p[...] = p0
    state = {k: store.array(k, p0.size, dtype) for k in spec.state_names()}
    meta = {"steps": 0}
    for g in grads:
        spec.apply(p, g.copy(), state, meta)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, want, rtol=tol * 10, atol=tol)
    assert meta["steps"] == len(grads)


def test_optimizer_specs_reject_bad_values():
    with pytest.raises(InvalidArgumentError, match="lr"):
        SGD(lr=0)
    with pytest.raises(InvalidArgumentError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(InvalidArgumentError, match="RMSprop"):
        from_torch(torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))]))


def test_disk_store_reopens_and_checks_its_checksum(tmp_path):
    s = DiskStore(tmp_path / "s")
    assert not s.reopened
    p = s.array("params", 1000, np.float32)
    p[...] = np.arange(1000, dtype=np.float32)
    s.array("exp_avg", 1000, np.float32)[...] = 0.5
    s.commit({"steps": 12})
    s.close()
    r = DiskStore(tmp_path / "s")
    assert r.reopened and r.meta == {"steps": 12}
    np.testing.assert_array_equal(r.array("params", 1000, np.float32), np.arange(1000))
    assert float(r.array("exp_avg", 1000, np.float32)[3]) == 0.5
    with pytest.raises(StoreError, match="holds 1000 x float32, this server needs 10"):
        DiskStore(tmp_path / "s").array("params", 10, np.float32)
    r.close()
    # A byte changed after the commit (a server killed mid-update) is caught on open.
    f = tmp_path / "s" / "params.bin"
    raw = bytearray(f.read_bytes())
    raw[17] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum mismatch in .*params.bin"):
        DiskStore(tmp_path / "s")
    # A commit is atomic: no temporary manifest is left behind.
    assert not [p.name for p in (tmp_path / "s").iterdir() if ".tmp" in p.name]


def test_setup_needs_two_ranks_and_sane_arguments(ctx):
    import hpcdl.ps as ps

    w = {"w": np.zeros(3, np.float32)}
    if ctx.size == 1:
        with pytest.raises(InvalidArgumentError, match="at least 2 ranks"):
            ps.setup(w, optimizer=SGD(lr=0.1))
    else:
        with pytest.raises(InvalidArgumentError, match="num_servers"):
            ps.setup(w, optimizer=SGD(lr=0.1), num_servers=ctx.size)
        with pytest.raises(InvalidArgumentError, match="server_ranks"):
            ps.setup(w, optimizer=SGD(lr=0.1), server_ranks=[0, 0])
    # Checked before any communication, the same way on every rank.
    with pytest.raises(InvalidArgumentError, match="mode='bsp'"):
        ps.setup(w, optimizer=SGD(lr=0.1), mode="bsp")
    with pytest.raises(InvalidArgumentError, match="staleness applies to mode='ssp'"):
        ps.setup(w, optimizer=SGD(lr=0.1), mode="sync", staleness=2)
