"""Proof that the harness bites: three known kernel bugs, each of which must fail a check.

``python hpcdl/kernels/cpu/mutations.py [--out DIR]`` copies the kernel sources,
applies one mutation at a time (each pattern must match exactly once, so a
refactor of the kernels cannot silently turn a mutation into a no-op), runs
check.py on the copy with the flavour that should catch it, and exits 0 only if
every mutant fails. Each mutant's output is printed (and kept in DIR).

* ``shuffle-from-8``: the warp max tree starts at offset 8, so lanes 16-31 never
  reach lane 0: chunk_absmax differs from the reference (plain build).
* ``tail-i-le-n``: the scalar tail of hpcdl_block_map runs one element past its chunk:
  AddressSanitizer reports the read past the tensor (asan build).
* ``no-second-syncthreads``: chunk_absmax's warp_max is rewritten for the next chunk
  while thread 0 still reads it: ThreadSanitizer reports the race (tsan build).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_KERNELS = Path(__file__).resolve().parents[1]
_CHECK = Path(__file__).resolve().parent / "check.py"

#: name -> (file, pattern, replacement, flavour, case filter, grids)
MUTATIONS = {
    "shuffle-from-8": ("quantize.cu", "for (int o = 16; o > 0; o >>= 1)",
                       "for (int o = 8; o > 0; o >>= 1)", "plain", "quantize-one-random", "1,3"),
    "tail-i-le-n": ("common.cuh", "for (long long i = head + threadIdx.x; i < n; i += blockDim.x)",
                  "for (long long i = head + threadIdx.x; i <= n; i += blockDim.x)", "asan",
                  "pack-float32-one-random", "1,3"),
    "no-second-syncthreads": ("quantize.cu",
                              "        __syncthreads();  // warp_max is reused by the next chunk\n",
                              "", "tsan", "quantize-one-random-aligned-noresidual", "1"),
}


def mutant(name: str, into: Path) -> Path:
    """A copy of the kernel sources in ``into`` with mutation ``name`` applied."""
    file, old, new = MUTATIONS[name][:3]
    into.mkdir(parents=True, exist_ok=True)
    for p in list(_KERNELS.glob("*.cu")) + list(_KERNELS.glob("*.cuh")):
        shutil.copy(p, into / p.name)
    text = (into / file).read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"mutation {name}: {old!r} occurs {text.count(old)} times in {file} "
                           "(expected once: update the mutation with the kernel)")
    (into / file).write_text(text.replace(old, new))
    return into


def start(name: str, workdir: Path) -> subprocess.Popen:
    """check.py on the mutant ``name``, started (the mutants build and run concurrently)."""
    flavour, select, grids = MUTATIONS[name][3:]
    src = mutant(name, workdir / name)
    cmd = [sys.executable, str(_CHECK), "--flavour", flavour, "--kernel-dir", str(src),
           "-k", select, "--grids", grids]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HPCDL_CPU_TIMEOUT": "60"})


def _collect(procs: dict[str, subprocess.Popen], out: str | None, survived: list[str]) -> None:
    for name, proc in procs.items():
        try:
            text, _ = proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            proc.kill()
            text = proc.communicate()[0] + "\n(killed after 1200 s)"
        rc = proc.returncode
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{name}.txt").write_text(text)
        verdict = "caught" if rc != 0 else "SURVIVED"
        print(f"== mutation {name} ({MUTATIONS[name][3]}): {verdict} (exit {rc}) ==\n"
              f"{text[:2500]}", flush=True)
        if rc == 0:
            survived.append(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="keep each mutant's output here")
    ap.add_argument("names", nargs="*", default=list(MUTATIONS))
    args = ap.parse_args(argv)
    survived: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcdl-mutants-") as tmp:
        procs = {name: start(name, Path(tmp)) for name in args.names}
        try:
            _collect(procs, args.out, survived)
        finally:
            for proc in procs.values():  # stopped by PID whatever happened
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    print(f"mutations caught: {len(args.names) - len(survived)} of {len(args.names)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
