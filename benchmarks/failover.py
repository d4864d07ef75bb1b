"""Failover: shrink-and-continue (ULFM) against checkpoint-and-restart, on the main job.

    .venv/bin/python benchmarks/failover.py [--ranks 4] [--kill-step 23] [--repeats 1]

Both runs train the main job (``python -m hpcdl.examples.train``) and SIGKILL world
rank ``ranks - 2`` inside the gradient allreduce of step ``--kill-step``
(``HPCDL_TEST_KILL``, a deterministic kill point; hpcdl/examples/fault_injection.py
writes the time of death and the time each step completes):

* **shrink**: ``hpcdl launch --ft`` with ``--on-failure shrink``: the survivors
  shrink, restore the newest in-memory commit and redo the interrupted step.
  Recovery = the time from the SIGKILL to the end of that step on the survivors.
* **restart**: the default ``--on-failure abort`` with ``--checkpoint-every 10``:
  the job ends, naming the dead rank, and is launched again with ``--resume``.
  Recovery = the time from the SIGKILL until the relaunched job has completed the
  interrupted step again (the steps since the last checkpoint are redone too);
  the time to its first completed step is shown beside it.

Prints a table and writes ``--json`` (default out/failover.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HPCDL = str(Path(sys.executable).parent / "hpcdl")
TRAIN = ["python", "-m", "hpcdl.examples.train", "--epochs", "3"]


def _launch(n: int, ft: bool, args: list[str], env: dict[str, str], limit: float = 300) -> int:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PRTE_"))}
    full.update(env)
    cmd = [HPCDL, "launch", "-n", str(n), *(["--ft"] if ft else []), "--", *TRAIN, *args]
    proc = subprocess.run(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=limit)
    return proc.returncode


def _commits(folder: Path) -> list[tuple[int, int, float]]:
    """(generation, step, time) of every committed step, every rank."""
    out = []
    for f in folder.glob("commits-*.txt"):
        for line in f.read_text().splitlines():
            gen, _epoch, step, t = line.split()
            out.append((int(gen), int(step), float(t)))
    return out


def _killed_at(folder: Path) -> float:
    return min(float(f.read_text().split()[0]) for f in folder.glob("kill-*.txt"))


def shrink_once(n: int, step: int, work: Path) -> dict[str, float]:
    log = work / "shrink"
    log.mkdir()
    env = {"HPCDL_TEST_KILL": f"{n - 2}:{step}:allreduce", "HPCDL_TEST_SAMPLES": str(log)}
    rc = _launch(n, True, ["--on-failure", "shrink", "--out", str(work / "out-shrink")], env)
    if rc != 0:
        raise SystemExit(f"shrink run ended with status {rc}")
    killed = _killed_at(log)
    after = min(t for g, s, t in _commits(log) if g == 1)
    return {"recovery_s": after - killed}


def restart_once(n: int, step: int, work: Path) -> dict[str, float]:
    log, ck = work / "restart", work / "ck"
    log.mkdir()
    env = {"HPCDL_TEST_KILL": f"{n - 2}:{step}:allreduce", "HPCDL_TEST_SAMPLES": str(log)}
    common = ["--checkpoint-dir", str(ck), "--checkpoint-every", "10",
              "--out", str(work / "out-restart")]
    rc = _launch(n, False, common, env)
    if rc == 0:
        raise SystemExit("the restart baseline's first run was not ended by the kill")
    killed = _killed_at(log)
    before = {t for _, _, t in _commits(log)}
    rc = _launch(n, False, [*common, "--resume"], {"HPCDL_TEST_SAMPLES": str(log)})
    if rc != 0:
        raise SystemExit(f"the resumed run ended with status {rc}")
    again = [(s, t) for _, s, t in _commits(log) if t not in before and t > killed]
    return {"recovery_s": min(t for s, t in again if s == step) - killed,
            "first_step_s": min(t for _, t in again) - killed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--kill-step", type=int, default=23)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default="out/failover.json")
    a = p.parse_args()
    if a.ranks < 3:
        raise SystemExit("--ranks: at least 3 (one dies, the others go on)")
    rows: dict[str, list[dict[str, float]]] = {"shrink": [], "restart": []}
    for _ in range(a.repeats):
        for name, fn in (("shrink", shrink_once), ("restart", restart_once)):
            work = Path(tempfile.mkdtemp(prefix=f"failover-{name}-"))
            try:
                rows[name].append(fn(a.ranks, a.kill_step, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r["recovery_s"] for r in v) for k, v in rows.items()}
    first = statistics.median(r["first_step_s"] for r in rows["restart"])
    print(f"failover at {a.ranks} ranks, world rank {a.ranks - 2} SIGKILLed in step "
          f"{a.kill_step}'s allreduce (median of {a.repeats}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'method':<34}{'SIGKILL -> step done again (s)':>32}")
    print(f"{'shrink (ULFM, in-memory state)':<34}{med['shrink']:>32.3f}")
    print(f"{'checkpoint + restart (--resume)':<34}{med['restart']:>32.3f}"
          f"   (first step after the restart: {first:.3f} s)")
    print(f"speed-up: {med['restart'] / med['shrink']:.0f}x")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ranks": a.ranks, "kill_step": a.kill_step, "runs": rows,
                               "median_recovery_s": med, "restart_first_step_s": first,
                               "speedup": med["restart"] / med["shrink"],
                               "load_average": os.getloadavg()[0]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
