"""Horovod 0.28.1 vs hpcdl.horovod on Horovod's own pytorch_synthetic_benchmark.py.

    python benchmarks/horovod_compare.py --horovod-venv /work/scratch/hvd-venv --rounds 3

Alternates, round after round in one session, at 2 ranks:

* ``horovod``          Horovod 0.28.1 (built in its own venv), default settings
* ``horovod-cycle20``  the same with ``HOROVOD_CYCLE_TIME=20`` (its 1 ms cycle
                       spins a core, which costs compute on small CPU machines)
* ``hpcdl``            the script with ``import hpcdl.horovod.torch as hvd``
* ``ceiling``          the same processes with no communication at all
* ``sync-ceiling``     the same, but the ranks meet once per step (a 4-byte
                       allreduce): what synchronisation alone costs here
                       (benchmarks/horovod_nocomm/hvd_nocomm.py)

each with fp32 and ``--fp16-allreduce`` gradients (the ceiling has no
compression to vary). The model is the torchvision shim's ``small_cnn``
(tests/jobs/horovod_examples/shim). Prints img/s medians (total over ranks), the
ratios hpcdl / best Horovod and hpcdl / ceiling of the medians, and the same
ratios paired round by round (each round runs every configuration back to back,
so a paired ratio cancels most of a shared machine's drift); ``--json PATH``
saves them.

``--no-horovod`` leaves the Horovod rows out. ``--baseline DIR`` adds rows
``hpcdl@base fp32/fp16`` running the hpcdl of another checkout (e.g. ``main``)
in the same rounds, to measure a change before and after in one session. Every
hpcdl row imports hpcdl from its own tree (``PYTHONPATH``), not from wherever
the launching venv's editable install points.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "jobs" / "horovod_examples" / "pytorch_synthetic_benchmark.py"
SHIM = ROOT / "tests" / "jobs" / "horovod_examples" / "shim"
NOCOMM = Path(__file__).resolve().parent / "horovod_nocomm"
IMPORT = "import hpcdl.horovod.torch as hvd"


def _script(tmp: Path, name: str, import_line: str) -> Path:
    text = EXAMPLE.read_text()
    assert IMPORT in text
    path = tmp / f"bench_{name}.py"
    path.write_text(text.replace(IMPORT, import_line))
    return path


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> float:
    for k in [k for k in env if k.startswith(("OMPI_", "PMIX_", "PRTE_"))]:
        env.pop(k)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    m = re.search(r"Total img/sec on \d+ CPU\(s\): ([0-9.]+)", done.stdout)
    if done.returncode != 0 or not m:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-1500:]}"
                         f"\n{done.stderr[-3000:]}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--horovod-venv", default="/work/scratch/hvd-venv",
                   help="venv with horovod 0.28.1, its mpi4py and Open MPI (skip if absent)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=5, help="benchmark --num-iters")
    p.add_argument("--batches-per-iter", type=int, default=5)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--json", default=None)
    p.add_argument("--no-horovod", action="store_true",
                   help="measure only hpcdl (and --baseline) and the ceiling")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="another hpcdl checkout to measure in the same rounds (hpcdl@base rows)")
    args = p.parse_args(argv)
    hvd_python = Path(args.horovod_venv) / "bin" / "python"
    has_horovod = not args.no_horovod and hvd_python.exists() and subprocess.run(
        [str(hvd_python), "-c", "import horovod.torch"], capture_output=True).returncode == 0
    if not has_horovod and not args.no_horovod:
        print(f"horovod.torch does not import from {hvd_python}: measuring hpcdl and the "
              "ceiling only", file=sys.stderr)
    bench_args = ["--model", "small_cnn", "--batch-size", str(args.batch_size),
                  "--num-warmup-batches", "5", "--num-batches-per-iter",
                  str(args.batches_per_iter), "--num-iters", str(args.iters)]
    hpcdl_cli = str(Path(sys.executable).parent / "hpcdl")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        scripts = {"horovod": _script(tmp, "horovod", "import horovod.torch as hvd"),
                   "hpcdl": EXAMPLE, "ceiling": _script(tmp, "nocomm", "import hvd_nocomm as hvd"),
                   "sync-ceiling": _script(tmp, "synconly", "import hvd_synconly as hvd")}
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        configs: list[tuple[str, list[str], dict[str, str]]] = []
        for fp16 in (False, True):
            flag = ["--fp16-allreduce"] if fp16 else []
            tag = "fp16" if fp16 else "fp32"
            if has_horovod:
                mpiexec = str(Path(args.horovod_venv) / "bin" / "mpiexec")
                hv = [hpcdl_cli, "launch", "-n", str(args.ranks), "--mpiexec", mpiexec, "--",
                      str(hvd_python), str(scripts["horovod"]), *bench_args, *flag]
                configs.append((f"horovod {tag}", hv, {"PYTHONPATH": str(SHIM)}))
                configs.append((f"horovod-cycle20 {tag}", hv,
                                {"PYTHONPATH": str(SHIM), "HOROVOD_CYCLE_TIME": "20"}))
            trees = [("hpcdl", ROOT)]
            if args.baseline:
                trees.append(("hpcdl@base", Path(args.baseline).resolve()))
            for label, tree in trees:
                hp = [hpcdl_cli, "launch", "-n", str(args.ranks), "--", "python",
                      str(tree / EXAMPLE.relative_to(ROOT)), *bench_args, *flag]
                configs.append((f"{label} {tag}", hp,
                                {"PYTHONPATH": os.pathsep.join([str(SHIM), str(tree)])}))
        for name in ("ceiling", "sync-ceiling"):
            ceil = [hpcdl_cli, "launch", "-n", str(args.ranks), "--", "python",
                    str(scripts[name]), *bench_args]
            configs.append((name, ceil, {"PYTHONPATH": os.pathsep.join(
                [str(SHIM), str(NOCOMM), str(ROOT)])}))
        for r in range(args.rounds):
            for name, cmd, extra in configs:
                value = _run(cmd, {**base_env, **extra}, args.timeout)
                results.setdefault(name, []).append(value)
                print(f"round {r + 1}: {name:22s} {value:8.1f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{args.ranks} ranks, small_cnn, batch {args.batch_size}, {args.rounds} rounds "
          "(img/s total, median)")
    print(f"{'config':22s} {'median':>9s}  runs")
    for k, v in results.items():
        print(f"{k:22s} {med[k]:9.1f}  {', '.join(f'{x:.1f}' for x in v)}")
    ratios = {}
    for tag in ("fp32", "fp16"):
        hv = [med[k] for k in (f"horovod {tag}", f"horovod-cycle20 {tag}") if k in med]
        if hv:
            ratios[f"hpcdl/horovod-best {tag}"] = med[f"hpcdl {tag}"] / max(hv)
        ratios[f"hpcdl/ceiling {tag}"] = med[f"hpcdl {tag}"] / med["ceiling"]
    for k, v in ratios.items():
        print(f"{k:28s} {v:6.3f}")
    paired = {f"{k}/{c}": [a / b for a, b in zip(v, results[c])]
              for c in ("ceiling", "sync-ceiling")
              for k, v in results.items() if k.startswith("hpcdl") or k == "sync-ceiling"
              if k != c}
    print("\npaired by round (same round's ceilings)  median  per round")
    for k, v in paired.items():
        print(f"{k:40s} {statistics.median(v):6.3f}  {', '.join(f'{x:.3f}' for x in v)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "median": med,
                                               "ratios": ratios, "paired": paired,
                                               "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
