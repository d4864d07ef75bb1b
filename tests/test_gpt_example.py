"""The GPT example (hpcdl/examples/gpt): every layout's first steps equal one process
on the global batch, and the job's files (metrics.json, curves.png, DCP checkpoints).

Tolerance: the per-step losses within 1e-4 relative and the parameters after the
steps within 2e-4 (float32; the layouts only sum in other orders, and Adam's first
steps, which divide by a tiny second moment, amplify that a little).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcdl.examples.gpt.data import global_batch, load_text
from hpcdl.examples.gpt.model import GPT, Config
from hpcdl.examples.gpt.parallel import full_parameters
from hpcdl.examples.gpt.train import parse_args, train
from helpers.torch_backend_util import world

TINY = ["--dim", "48", "--heads", "12", "--layers", "2", "--context", "16", "--batch", "12",
        "--text-bytes", "200000", "--eval-batches", "1", "--lr", "3e-3", "--threads", "1"]
STEPS = 3  # batch 12 and 12 heads split over 1, 2, 3 and 4 ranks


def _reference(args) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(args.seed)
    model = GPT(Config(context=args.context, dim=args.dim, heads=args.heads, layers=args.layers))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    text = load_text(args.text_bytes)[0]
    losses = []
    for step in range(args.steps):
        loss = model(*global_batch(text, args.batch, args.context, args.seed, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: p.detach() for k, p in model.named_parameters()}


@pytest.mark.parametrize("layout", ["dp", "fsdp", "tp", "fsdp-tp"])
def test_first_steps_equal_one_process(layout: str, tmp_path: Path):
    rank, size = world()
    if layout == "fsdp-tp" and size % 2 and size > 1:
        pytest.skip("fsdp-tp pairs ranks: needs an even rank count")
    args = parse_args([*TINY, "--parallel", layout, "--steps", str(STEPS), "--eval-every",
                       str(STEPS), "--out", str(tmp_path)])
    metrics, lay = train(args)
    got = full_parameters(lay.inner)
    want_losses, want = _reference(args)
    torch.testing.assert_close(torch.tensor(metrics["step_losses"]), torch.tensor(want_losses),
                               rtol=1e-4, atol=1e-5, msg=f"{layout}: losses on rank {rank}")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=2e-4, atol=2e-5,
                                   msg=f"{layout}: {key} on rank {rank}")
    assert metrics["settings"]["tensor_parallel"] * metrics["settings"]["data_parallel"] == size


def _launch(n: int, argv: list[str]) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PRTE_", "MASTER_"))}
    hpcdl = str(Path(sys.executable).parent / "hpcdl")
    proc = subprocess.run([hpcdl, "launch", "-n", str(n), "--", "python", "-m",
                           "hpcdl.examples.gpt", *argv], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.spawns
def test_job_writes_metrics_curve_and_checkpoints_and_resumes_in_another_layout(tmp_path):
    fast = [a if a != "16" else "32" for a in TINY] + ["--lr", "1e-2", "--eval-every", "15",
                                                        "--out", str(tmp_path / "out"),
                                                        "--checkpoint-dir", str(tmp_path / "ck")]
    out = _launch(2, [*fast, "--parallel", "fsdp-tp", "--steps", "30"])
    assert "held-out loss" in out
    assert (tmp_path / "ck" / "step_000030" / ".metadata").exists()
    # the FSDP2 x TP checkpoint resumes under DDP: DCP reshards
    _launch(2, [*fast, "--parallel", "dp", "--steps", "50", "--resume"])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000
    for key in ("test_accuracy", "ranks", "mode", "settings", "epochs"):  # the main job's
        assert key in metrics, key
    assert set(metrics["epochs"][0]) >= {"epoch", "loss", "accuracy", "samples_per_s"}
    assert (metrics["ranks"], metrics["mode"]) == (2, "gpt-dp")
    assert metrics["settings"]["resumed_at_step"] == 30
    assert [r["step"] for r in metrics["epochs"]] == [45, 50]
    assert len(metrics["step_losses"]) == 20
    # 50 steps of a tiny model already predict better than the byte frequencies do
    assert metrics["test_loss"] < metrics["unigram_entropy"], metrics["test_loss"]
