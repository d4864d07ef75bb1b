"""DCP over the "hpcdl" backend: saved by a 2-rank job, loaded exactly by a 3-rank job
(FSDP2 shards of different sizes: DCP reshards)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from test_torch_backend_script import _clean_env, _run

JOB = str(Path(__file__).parent / "jobs" / "dcp_job.py")


@pytest.mark.spawns
def test_dcp_save_on_two_ranks_load_on_three(tmp_path: Path):
    hpcdl_cli = str(Path(sys.executable).parent / "hpcdl")
    env = _clean_env()
    _run([hpcdl_cli, "launch", "-n", "2", "--", "python", JOB, "save", str(tmp_path)], env)
    out = _run([hpcdl_cli, "launch", "-n", "3", "--", "python", JOB, "load", str(tmp_path)], env)
    assert out.count("restored") == 3, out
