"""hpcdl.ps under mpiexec (2-4 ranks here; 5 ranks in test_ps_jobs.py).

* sync with 1 and 2 servers equals data-parallel SGD/Adam with gradients averaged by
  hpcdl.allreduce over the workers, to float32 tolerance; ssp(0) equals it too;
* async and ssp with one slow worker converge, and the clock gap stays <= s, both as
  the servers report it and as measured from the workers' own timestamps;
* a gradient of the wrong shape ends the job on every rank, naming the worker rank,
  the parameter and both shapes; mismatched models are refused at setup;
* a disk store is reopened by a second job and continues where the first stopped.
Every test ends with every rank out of the parameter server (clean shutdown).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import hpcdl
import hpcdl.ps as ps
from helpers.comm_census import COUNTS, live_comms
from hpcdl.torch import ParameterServer


def _need(ctx, servers: int, workers: int = 1) -> None:
    if ctx.size < servers + workers:
        pytest.skip(f"needs {servers} server(s) and {workers} worker(s): "
                    f"{servers + workers} ranks, this run has {ctx.size}")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))


def _batch(worker: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + worker)
    x = torch.randn(8, 6, generator=g)
    return x, x[:, :3] * 2 - x[:, 3:] + 0.1 * torch.randn(8, 3, generator=g)


def _loss(model: torch.nn.Module, worker: int, step: int) -> torch.Tensor:
    x, y = _batch(worker, step)
    return torch.nn.functional.mse_loss(model(x), y)


OPTS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode,staleness,servers,opt", [
    ("sync", 0, 1, "sgd"), ("sync", 0, 2, "adam"), ("ssp", 0, 1, "adam"), ("ssp", 0, 2, "sgd")])
def test_sync_equals_allreduce_data_parallel(ctx, mode, staleness, servers, opt):
    _need(ctx, servers)
    steps = 5
    model = _model()
    # chunk_elems=16 cuts the 54-element weight into pieces spread over the servers.
    p = ParameterServer(model, OPTS[opt](model.parameters()), mode=mode, staleness=staleness,
                        num_servers=servers, chunk_elems=16, timeout=60)
    if p.is_server:
        stats = p.serve()
        assert stats["applied_clocks"] == steps and stats["updates"] == steps
        assert stats["max_clock_gap"] == 0
        return
    wc = p.worker_comm
    ref = _model()
    ref_opt = OPTS[opt](ref.parameters())
    for step in range(steps):
        p.zero_grad()
        _loss(model, wc.rank, step).backward()
        p.step()
        ref_opt.zero_grad()
        _loss(ref, wc.rank, step).backward()
        for q in ref.parameters():
            hpcdl.allreduce(q.grad, op="avg", comm=wc)
        ref_opt.step()
    mine = np.concatenate([q.detach().numpy().ravel() for q in model.parameters()])
    everyone = wc.allgather_object(mine)  # before close, which frees worker_comm
    p.close()
    assert p.clock == steps and p.max_clock_gap == 0
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    for other in everyone:  # every worker holds the same parameters
        np.testing.assert_array_equal(other, mine)


def _least_squares(worker: int, step: int, w_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 * step + worker)
    x = rng.standard_normal((16, w_true.size)).astype(np.float32)
    return x, x @ w_true


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("mode,staleness", [("ssp", 1), ("ssp", 2), ("async", 0)])
def test_slow_worker_converges_within_the_staleness_bound(ctx, mode, staleness):
    _need(ctx, 1, 2)
    steps, slow = 24, 0.015
    w_true = np.linspace(-1, 1, 10).astype(np.float32)
    worker = ps.setup({"w": np.zeros(10, np.float32)}, optimizer=ps.SGD(lr=0.1),
                      mode=mode, staleness=staleness, timeout=60)
    if worker.is_server:
        stats = worker.serve()
        if mode == "ssp":
            assert stats["max_clock_gap"] <= staleness
        return
    wc = worker.roles.group
    starts, pushes, losses = [], [], []
    params = worker.params
    for step in range(steps):
        starts.append(time.monotonic())
        x, y = _least_squares(wc.rank, step, w_true)
        err = x @ params["w"] - y
        losses.append(float(np.mean(err ** 2)))
        if wc.rank == 0:
            time.sleep(slow)          # the slow worker
        pushes.append(time.monotonic())
        params = worker.push_pull({"w": x.T @ err / len(y)})
    wc.barrier()                      # every push is in: score the served parameters
    params = worker.pull()
    everyone = wc.allgather_object(pushes)
    fast_gaps = wc.allgather_object(worker.max_clock_gap)
    worker.close()                    # frees worker_comm: gathered above
    x, y = _least_squares(wc.rank, steps, w_true)
    final = float(np.mean((x @ params["w"] - y) ** 2))
    assert final < 0.1 * losses[0], (losses, final)
    # Independent of the servers' own bookkeeping: when this worker started clock k, how
    # many pushes had the slowest worker sent? (A push is applied after it is sent, so
    # this undercounts the gap the servers enforce.)
    gap = max(k - min(sum(t < starts[k] for t in other) for other in everyone)
              for k in range(steps))
    if mode == "ssp":
        assert worker.max_clock_gap <= staleness and gap <= staleness, (worker.gaps, gap)
    # The fast workers did run ahead of the slow one (else the bound was never tested).
    assert max(fast_gaps) >= 1, fast_gaps


@pytest.mark.mpi(min_size=2)
def test_wrong_gradient_shape_ends_the_job_naming_rank_parameter_and_shapes(ctx):
    _need(ctx, 1)
    model = _model()
    p = ParameterServer(model, torch.optim.SGD(model.parameters(), lr=0.1), timeout=30)
    culprit = p.roles.workers[-1]
    expect = (rf"worker rank {culprit}: gradient of parameter '0.weight' has shape \(9, 7\), "
              r"the server holds shape \(9, 6\)")
    if p.is_server:
        with pytest.raises(ps.PSError, match=expect):
            p.serve()
        return
    p.zero_grad()
    _loss(model, 0, 0).backward()
    p.step()                                   # one good clock
    with pytest.raises(ps.PSError, match=expect):
        p.zero_grad()
        _loss(model, 0, 1).backward()
        if ctx.rank == culprit:   # torch itself refuses a wrong .grad: push through p.ps
            grads = {n: q.grad for n, q in model.named_parameters()}
            p.ps.push_pull({**grads, "0.weight": torch.zeros(9, 7)})
        p.step()


@pytest.mark.mpi(min_size=3)
def test_mismatched_models_are_refused_at_setup_on_every_rank(ctx):
    _need(ctx, 1, 2)
    odd = ctx.size - 2          # the last worker (the last rank serves)
    shape = (4, 5) if ctx.rank == odd else (4, 4)
    with pytest.raises(hpcdl.MismatchError,
                       match=rf"worker rank {odd}: parameter 'w' has shape \(4, 5\), the "
                             r"servers hold shape \(4, 4\)"):
        ps.setup({"w": np.zeros(shape, np.float32)}, optimizer=ps.SGD(lr=0.1))


@pytest.mark.mpi(min_size=2)
def test_close_frees_the_communicators_setup_made(ctx):
    # Counted by MPI itself (tests/helpers/comm_census.py), not by hpcdl's own bookkeeping.
    if not COUNTS:
        pytest.skip("the communicator count reads Open MPI's handle table")
    w = {"w": np.arange(6, dtype=np.float32)}
    before = live_comms()
    p = ps.setup(w, optimizer=ps.SGD(lr=0.1), timeout=60)
    made = live_comms() - before
    if p.is_server:
        p.serve()
        served = live_comms() - before  # serve() frees them once every worker closed
        p.close()
    else:
        p.push_pull({"w": np.ones(6, np.float32)})
        p.close()
        served = live_comms() - before
        p.close()  # idempotent
    freed = live_comms() - before
    # A refused setup (a worker without params) frees them on every rank before raising.
    with pytest.raises(hpcdl.InvalidArgumentError, match="passed no params"):
        ps.setup(None, optimizer=ps.SGD(lr=0.1), timeout=60)
    refused = live_comms() - before
    assert (made, served, freed, refused) == (2, 0, 0, 0), (made, served, freed, refused)
    if p.is_server:
        with pytest.raises(hpcdl.ps.PSError, match="served already") as e:
            p.serve()
        assert f"rank {ctx.rank}" in str(e.value)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("servers", [1, 2])
def test_disk_store_is_reopened_by_a_second_job(ctx, servers, tmp_path):
    _need(ctx, servers)
    path = ctx.comm.bcast_object(str(tmp_path), root=0)   # one folder for every rank
    w0 = {"w": np.arange(40, dtype=np.float32).reshape(8, 5), "b": np.ones(3, np.float32)}
    grads = {"w": np.full((8, 5), 0.5, np.float32), "b": np.full(3, -1.0, np.float32)}
    opt = ps.Adam(lr=0.1)

    def job(steps: int) -> dict[str, np.ndarray] | None:
        p = ps.setup(w0, optimizer=opt, num_servers=servers, store="disk", path=path,
                     chunk_elems=7)
        if p.is_server:
            p.serve()
            p.close()
            return None
        start = {k: v.copy() for k, v in p.params.items()}
        for _ in range(steps):
            p.push_pull(grads)
        p.close()
        return start, {k: v.copy() for k, v in p.params.items()}

    first = job(3)
    second = job(2)
    straight = None
    if first is not None:
        # The second job starts from the first one's end, and its Adam state continues:
        # 3 + 2 steps on disk equal 5 steps in one go.
        np.testing.assert_array_equal(second[0]["w"], first[1]["w"])
        p = {k: v.copy().ravel() for k, v in w0.items()}
        state = {k: {n: np.zeros_like(v) for n in opt.state_names()} for k, v in p.items()}
        metas = {k: {"steps": 0} for k in p}
        for _ in range(5):
            for k in p:
                opt.apply(p[k], grads[k].ravel().copy(), state[k], metas[k])
        straight = p
        for k in p:
            np.testing.assert_allclose(second[1][k].ravel(), straight[k], rtol=1e-6)
