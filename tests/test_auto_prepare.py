"""``auto``'s rules are compiled when training is set up, not in the first autograd hook.

With the table off (``HPCDL_TUNE=off``) and a table that lacks the job's rank count, the
first ``auto`` allreduce on one node would fit the cost model (hpcdl.tuning.auto): here
the fit must happen while ``DistributedOptimizer`` is built, never during ``backward()``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hpcdl.tuning.auto as auto
from hpcdl.collectives import select
from hpcdl.torch import DistributedOptimizer

torch.set_num_threads(1)


@pytest.fixture
def counted_fit(ctx, tmp_path, monkeypatch):
    """A table listing only 5 ranks (so 1..4 use the model) and a fit that counts its calls."""
    if ctx.num_nodes != 1:
        pytest.skip("the cost model describes one node; this job spans several")
    table = tmp_path / f"t{ctx.rank}.json"
    table.write_text(json.dumps({"version": 1, "source": "test",
                                 "rules": {"float": {"5": [[None, "ring"]]}}}))
    monkeypatch.setenv("HPCDL_TUNING_FILE", str(table))
    monkeypatch.setenv("HPCDL_TUNE", "off")
    calls = []
    real = auto.fit

    def fit(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auto, "fit", fit)
    auto._fitted.cache_clear()
    select.reload()
    yield calls
    monkeypatch.undo()
    auto._fitted.cache_clear()
    select.reload()


@pytest.mark.mpi_pass
@pytest.mark.mpi(min_size=2)
def test_first_auto_allreduce_in_a_hook_does_not_fit_the_model(ctx, counted_fit):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters(), algorithm="auto")
    assert len(counted_fit) == 1, "building the optimizer fits the model once"
    fits_before = len(counted_fit)
    rng = np.random.default_rng(ctx.rank)
    x = torch.from_numpy(rng.standard_normal((6, 8)).astype(np.float32))
    model(x).pow(2).sum().backward()  # the hooks launch the first auto allreduce
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert len(counted_fit) == fits_before, "the first auto allreduce fitted the model in a hook"
    # and the gradients were really averaged: against the NumPy mean of every rank's
    every = ctx.comm.allgather_object([g.numpy() for g in grads])
    for i, p in enumerate(model.parameters()):
        want = np.mean([r[i] for r in every], axis=0)
        assert np.allclose(p.grad.numpy(), want, atol=1e-5)
