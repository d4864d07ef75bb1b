"""Run every harness case as a script: ``python hpcdl/kernels/cpu/check.py [--flavour F]``.

``--flavour asan|tsan`` re-runs this script in a child with the sanitizer runtime
preloaded (a sanitizer report ends the child: exit non-zero). ``--kernel-dir D``
builds from another copy of the sources (the mutation tests). Exit status 0 only
when every case matches its reference and no sanitizer reported anything.

Run by path, not with ``-m``: it loads hpcdl's kernels subpackage without the
package's ``__init__``, which imports mpi4py, whose MPI library crashes under
ThreadSanitizer's preload (and the kernels need none of it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from pathlib import Path

_PKG = Path(__file__).resolve().parents[2]  # .../hpcdl


def _bare_package() -> None:
    if "hpcdl" not in sys.modules:
        pkg = types.ModuleType("hpcdl")
        pkg.__path__ = [str(_PKG)]
        sys.modules["hpcdl"] = pkg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", choices=("plain", "asan", "tsan"), default="plain")
    ap.add_argument("--kernel-dir", default=None, help="kernel sources (default: hpcdl/kernels)")
    ap.add_argument("--grids", default="1,3", help="block counts the cases use")
    ap.add_argument("-k", dest="select", default="", help="run only cases whose name contains this")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _bare_package()
    from hpcdl.kernels import KERNEL_DIR
    from hpcdl.kernels.cpu import build

    lib = build.build(args.flavour, args.kernel_dir or KERNEL_DIR)
    env_extra = build.sanitizer_env(args.flavour)
    if env_extra and not args.child:
        # the sanitizer runtime must be loaded before Python starts: run in a child
        cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd, env={**os.environ, **env_extra}, timeout=1800).returncode
    import numpy as np

    from hpcdl.kernels.cpu.cases import cases
    from hpcdl.kernels.cpu.runner import Harness

    h = Harness(lib)
    grids = tuple(int(g) for g in args.grids.split(","))
    selected = [(n, f) for n, f in cases(grids) if args.select in n]
    failed = []
    start = time.monotonic()
    for name, fn in selected:
        try:
            with np.errstate(all="ignore"):
                fn(h)
        except Exception as e:  # a mismatch or a harness fault: report it, keep going
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        finally:
            h.free_all()
    print(f"hpcdl kernel harness ({args.flavour}, {lib.name}): {len(selected) - len(failed)} of "
          f"{len(selected)} cases match the reference in {time.monotonic() - start:.1f} s",
          flush=True)
    return 1 if failed or not selected else 0


if __name__ == "__main__":
    sys.exit(main())
