"""Allreduce and training across emulated nodes with real links (jobs/local-cluster/cluster.sh).

    python benchmarks/cluster.py --out out/cluster          # as root; ~10 minutes

In one run, for each ``--links`` rate (default 1gbit and 10gbit) it builds a 4-node
cluster (2 slots per node) and, for each ``--layouts`` entry (default 2x2: two nodes of
two ranks, 4x1: four nodes of one), runs under it:

1. ``benchmarks/allreduce.py`` with hpcdl's ``native`` (MPI_Allreduce), ``ring``,
   ``tree``, ``hierarchical`` and ``auto`` (online tuning from a fresh cache), nccl-tests
   columns (time, algbw, busbw) per size;
2. the main job (``python -m hpcdl.examples.train``) in ``--modes`` (default
   ``allreduce`` and ``ps-sync``), samples/s of its last epoch.

Prints one table per part and two checks, against peers measured in the same cluster:
hierarchical's busbw over the flat ring's at 2x2 from 16 MiB (target >= 1.5x on
1 Gbit/s), and auto's time over the best algorithm's at every size (target <= 1.05).
Writes everything to ``OUT/cluster.json``. ``--inside`` is the part that runs within one
cluster (called by the outer run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = "native,ring,tree,hierarchical,auto"
SIZES = ",".join(str(4 ** k) for k in range(8, 14))     # 64 KiB .. 64 MiB


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/cluster")
    p.add_argument("--links", default="1gbit,10gbit")
    p.add_argument("--layouts", default="2x2,4x1")
    p.add_argument("--modes", default="allreduce,ps-sync")
    p.add_argument("--sizes", default=SIZES, help="allreduce sizes in bytes, comma separated")
    p.add_argument("--rounds", type=int, default=2, help="allreduce.py --rounds")
    p.add_argument("--epochs", type=int, default=2, help="main job epochs (the last is timed)")
    p.add_argument("--inside", metavar="LINK", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def launch(layout: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    nodes, per_node = (int(v) for v in layout.split("x"))
    full = [str(Path(sys.executable).parent / "hpcdl"), "launch", "-n", str(nodes * per_node),
            "--", "--map-by", f"ppr:{per_node}:node", "--", *cmd]
    done = subprocess.run(full, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"cluster.py: {' '.join(full)} exited {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")
    return done


def inside(args: argparse.Namespace) -> int:
    """Within one cluster: every layout's allreduce rows and main-job throughputs."""
    out = Path(args.out) / args.inside
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"link": args.inside, "allreduce": [], "train": []}
    for layout in args.layouts.split(","):
        # a fresh tuning cache per layout: auto learns each one from scratch
        os.environ["HPCDL_CACHE_DIR"] = tempfile.mkdtemp(prefix="hpcdl-tune-")
        path = out / f"allreduce_{layout}.json"
        done = launch(layout, ["python", "benchmarks/allreduce.py", "--no-peers", "--fresh-tuning",
                               "--algorithms", ALGORITHMS, "--sizes", args.sizes,
                               "--rounds", str(args.rounds), "--json", str(path)], 1200)
        print(f"## {args.inside} {layout}\n{done.stdout}", flush=True)
        result["allreduce"] += [{**r, "link": args.inside, "layout": layout}
                                for r in json.loads(path.read_text())]
        for mode in args.modes.split(","):
            mdir = out / f"train_{layout}_{mode}"
            launch(layout, ["python", "-m", "hpcdl.examples.train", "--mode", mode, "--threads",
                            "1", "--epochs", str(args.epochs), "--out", str(mdir)], 900)
            m = json.loads((mdir / "metrics.json").read_text())
            result["train"].append({"link": args.inside, "layout": layout, "mode": mode,
                                    "samples_per_s": m["epochs"][-1]["samples_per_s"],
                                    "test_accuracy": m["test_accuracy"]})
    (out / "inside.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def tables(results: list[dict]) -> dict:
    rows = [r for res in results for r in res["allreduce"]]
    print(f"\n{'link':>6} {'layout':>6} {'size(B)':>10} {'algorithm':>20} {'time(us)':>11} "
          f"{'algbw(GB/s)':>11} {'busbw(GB/s)':>11}")
    for r in rows:
        print(f"{r['link']:>6} {r['layout']:>6} {r['bytes']:>10} {r['algorithm']:>20} "
              f"{r['time_us']:>11.1f} {r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f}")
    checks: dict = {"hierarchical_over_ring": [], "auto_over_best": []}
    print(f"\n# hierarchical busbw / ring busbw (target >= 1.5 at 2x2, 1gbit, >= 16 MiB)")
    groups = sorted({(r["link"], r["layout"], r["bytes"]) for r in rows})
    for link, layout, nbytes in groups:
        same = {r["algorithm"].split(">")[0]: r for r in rows
                if (r["link"], r["layout"], r["bytes"]) == (link, layout, nbytes)}
        if "hierarchical" in same and "ring" in same:
            ratio = same["hierarchical"]["busbw_GBps"] / same["ring"]["busbw_GBps"]
            target = link == "1gbit" and layout == "2x2" and nbytes >= 16 << 20
            checks["hierarchical_over_ring"].append(
                {"link": link, "layout": layout, "bytes": nbytes, "ratio": ratio,
                 "target": target, "met": ratio >= 1.5 if target else None})
            print(f"{link:>6} {layout:>6} {nbytes:>10} {ratio:7.2f}"
                  + ("  (target: " + ("met" if ratio >= 1.5 else "NOT met") + ")" if target else ""))
    print(f"\n# auto time / best time (target <= 1.05 at every size)")
    for link, layout, nbytes in groups:
        same = [r for r in rows if (r["link"], r["layout"], r["bytes"]) == (link, layout, nbytes)]
        auto = next((r for r in same if r["algorithm"].startswith("auto")), None)
        others = [r for r in same if not r["algorithm"].startswith("auto")]
        if auto is None or not others:
            continue
        best = min(others, key=lambda r: r["time_us"])
        ratio = auto["time_us"] / best["time_us"]
        checks["auto_over_best"].append({"link": link, "layout": layout, "bytes": nbytes,
                                         "auto": auto["algorithm"], "best": best["algorithm"],
                                         "ratio": ratio, "met": ratio <= 1.05})
        print(f"{link:>6} {layout:>6} {nbytes:>10} {auto['algorithm']:>20} {best['algorithm']:>13} "
              f"{ratio:6.3f}" + ("" if ratio <= 1.05 else "  NOT met"))
    print(f"\n# main job, samples/s of the last epoch (PS vs allreduce, same cluster)")
    train = [t for res in results for t in res["train"]]
    for t in train:
        ref = next((u for u in train if (u["link"], u["layout"], u["mode"])
                    == (t["link"], t["layout"], "allreduce")), None)
        rel = f"{t['samples_per_s'] / ref['samples_per_s']:.2f}x allreduce" if ref else ""
        print(f"{t['link']:>6} {t['layout']:>6} {t['mode']:>10} {t['samples_per_s']:>9.0f}  "
              f"acc {t['test_accuracy']:.3f}  {rel}")
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.inside:
        return inside(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for link in args.links.split(","):
        cmd = [str(REPO / "jobs/local-cluster/cluster.sh"), "--strict", "--nodes", "4",
               "--slots", "2", "--link", link, "--", sys.executable, __file__, "--inside", link,
               "--out", str(out), "--layouts", args.layouts, "--modes", args.modes,
               "--sizes", args.sizes, "--rounds", str(args.rounds), "--epochs", str(args.epochs)]
        done = subprocess.run(cmd, timeout=3600)
        if done.returncode:
            raise SystemExit(f"cluster.py: the {link} cluster run exited {done.returncode}")
        results.append(json.loads((out / link / "inside.json").read_text()))
    checks = tables(results)
    (out / "cluster.json").write_text(json.dumps({"runs": results, "checks": checks}, indent=1))
    print(f"# wrote {out / 'cluster.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
