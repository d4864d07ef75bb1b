"""``hpcdl model``: fit the cost model, show its error, project it, plot the crossovers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..tune import merge_rules
from ..tuning.data import load_measurements, user_measurements_path
from ..tuning.fit import compare, fit, oversubscription
from ..tuning.project import PRESETS, Network, crossovers, parse_quantity, project
from ..tuning.rules import powers_of_4
from .measure_cli import main as measure

__all__ = ["main"]

RANKS = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hpcdl model", description=__doc__)
    p.add_argument("--data", type=Path, help="measurements (default: the user's from "
                   f"'hpcdl model measure' at {user_measurements_path()}, else the shipped ones)")
    p.add_argument("--min-bytes", type=int, default=1 << 16,
                   help="judge the fit's error from this many bytes up (default 64 KiB)")
    p.add_argument("--fit-from", type=int, default=1,
                   help="fit to sizes from this many bytes up (default: all; the small sizes "
                        "pin down each algorithm's latency)")
    p.add_argument("--network", choices=sorted(PRESETS), default="hdr-ib",
                   help="interconnect preset for the projection (default hdr-ib)")
    p.add_argument("--alpha", help="network latency, e.g. 1.5us (overrides the preset)")
    p.add_argument("--bandwidth", help="per-node bandwidth, e.g. 25GB/s or 200Gb/s")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--ranks", type=_sizes, default=RANKS, help="rank counts to project")
    p.add_argument("--sizes", type=_sizes, default=powers_of_4(4096, 256 << 20),
                   help="message sizes (bytes) to project")
    p.add_argument("--plot", type=Path, help="write the projection plot (PNG) here")
    p.add_argument("--json", type=Path, help="write fit, comparison and projection as JSON")
    p.add_argument("--write-table", type=Path, metavar="TUNING_JSON",
                   help="merge the projected crossovers into this tuning table for every "
                        "projected rank count it has no measured rules for ('auto' reads it)")
    return p.parse_args(list(argv))


def _network(args: argparse.Namespace) -> Network:
    base = PRESETS[args.network]
    if args.alpha is None and args.bandwidth is None:
        return base
    return Network("custom", parse_quantity(args.alpha, "time") if args.alpha else base.alpha,
                   parse_quantity(args.bandwidth, "rate") if args.bandwidth else base.bandwidth)


def _write_table(path: Path, rules: dict[int, list[list[Any]]], source: str) -> list[int]:
    table = json.loads(path.read_text()) if path.is_file() else {"rules": {}}
    measured = set(table.get("rules", {}).get("float", {}))
    written = [p for p in sorted(rules) if str(p) not in measured]
    for p in written:
        merge_rules(path, p, {"float": rules[p]}, source)
    return written


def report(args: argparse.Namespace) -> int:
    data = load_measurements(args.data)
    f = fit(data, args.fit_from)
    print(f"measurements: {data.get('source', '?')}")
    t = f.transport
    print(f"transport (ping-pong): alpha {t.alpha * 1e6:.2f} us, beta {t.beta * 1e9:.4f} ns/B "
          f"({1 / t.beta / 1e9 if t.beta else float('inf'):.2f} GB/s); "
          f"gamma {t.gamma * 1e9:.4f} ns/B")
    print(f"\nfitted per algorithm (sizes >= {_human(args.fit_from)}; 'cached' applies up to "
          "the split size, the other column above it; '+oversub' is the latency added per\n"
          "message per unit of oversubscription, ranks per core - 1)")
    print(f"{'algorithm':>12} {'alpha(us)':>10} {'+oversub':>9} {'split':>9} {'beta cached':>12} "
          f"{'beta(ns/B)':>11} {'GB/s':>7} {'gamma cached':>13} {'gamma(ns/B)':>12}")
    for name, prm in f.algorithms.items():
        bw = 1 / prm.beta / 1e9 if prm.beta else float("inf")
        split = _human(prm.cache_bytes) if prm.beta_cached is not None else "-"
        bc = f"{prm.beta_cached * 1e9:.4f}" if prm.beta_cached is not None else "-"
        gc = f"{prm.gamma_cached * 1e9:.4f}" if prm.gamma_cached is not None else "-"
        print(f"{name:>12} {prm.alpha * 1e6:10.2f} {prm.alpha_oversub * 1e6:9.2f} {split:>9} "
              f"{bc:>12} {prm.beta * 1e9:11.4f} "
              f"{bw:7.2f} {gc:>13} {prm.gamma * 1e9:12.4f}")
    rows = compare(data, f)
    print(f"\nmodel vs measured (error = predicted / measured - 1; judged from "
          f"{_human(args.min_bytes)} up):")
    print(f"{'ranks':>5} {'algorithm':>10} {'size':>10} {'measured(us)':>13} "
          f"{'model(us)':>10} {'error':>7} {'spread':>7}")
    worst, judged_rows, within, within_spread = 0.0, 0, 0, 0
    for r in rows:
        judged = r["bytes"] >= args.min_bytes
        spread = f"{100 * r['spread']:6.1f}%" if r["spread"] is not None else "      -"
        print(f"{r['ranks']:5d} {r['algorithm']:>10} {_human(r['bytes']):>10} "
              f"{r['measured_s'] * 1e6:13.1f} {r['predicted_s'] * 1e6:10.1f} "
              f"{100 * r['error']:+6.1f}% {spread}{'' if judged else '  (not judged)'}")
        if judged:
            worst = max(worst, abs(r["error"]))
            judged_rows += 1
            within += abs(r["error"]) <= 0.2
            within_spread += r["spread"] is not None and abs(r["error"]) <= r["spread"]
    print(f"largest error from {_human(args.min_bytes)} up: {100 * worst:.1f}%; "
          f"{within} of {judged_rows} rows within 20%")
    if any(r["spread"] is not None for r in rows):
        print(f"'spread': slowest / fastest round of the measurement itself - 1; "
              f"{within_spread} of {judged_rows} judged rows have an error within it")
    cores = {int(run.get("cores") or 0) for run in data["runs"].values()}
    over = sorted(int(run["ranks"]) for run in data["runs"].values()
                  if oversubscription(run) > 1 and int(run.get("nodes") or 1) == 1)
    if over:
        print(f"note: the runs at {', '.join(map(str, over))} ranks had more ranks than the "
              f"{'/'.join(map(str, sorted(cores)))} cores of their node; their timings "
              "include the operating system's scheduling of busy-polling ranks, which the "
              "model only approximates ('+oversub'). Measure on a node with a core per rank "
              "to judge the model for clusters.")

    net = _network(args)
    proj = project(f, net, args.ranks_per_node, args.ranks, args.sizes)
    print(f"\nprojection: {net.describe()}, {args.ranks_per_node} ranks per node; "
          "time (us) of each algorithm, fastest marked *")
    names = list(next(iter(next(iter(proj.values())).values())))
    rules = {p: crossovers(per_size) for p, per_size in proj.items()}
    for p, per_size in proj.items():
        print(f"\n{p} ranks ({-(-p // args.ranks_per_node)} nodes)")
        print(f"{'size':>10} " + " ".join(f"{n:>13}" for n in names))
        for n, times in per_size.items():
            best = min(times, key=times.get)
            print(f"{_human(n):>10} " + " ".join(
                f"{times[a] * 1e6:12.1f}{'*' if a == best else ' '}" for a in names))
    print("\ncrossover table ('auto' rules: the first entry whose max_bytes >= size wins)")
    for p, r in rules.items():
        print(f"{p:>5} ranks: " + ", ".join(
            f"<= {_human(lim)}: {a}" if lim is not None else f"above: {a}" for lim, a in r))
    if args.plot:
        from .plot import plot_projection

        plot_projection(proj, net, args.ranks_per_node, args.plot)
        print(f"\nwrote {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({
            "fit": {n: vars(p) for n, p in f.algorithms.items()},
            "transport": vars(f.transport), "comparison": rows,
            "projection": {str(p): {str(n): v for n, v in s.items()} for p, s in proj.items()},
            "crossovers": {str(p): r for p, r in rules.items()}}, indent=1))
    if args.write_table:
        written = _write_table(args.write_table, rules, f"hpcdl model projection, "
                               f"{net.describe()}, {args.ranks_per_node} ranks per node")
        print(f"\n{args.write_table}: projected rules for {written or 'no'} rank counts "
              "(measured rank counts kept)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "measure":
        return measure(argv[1:])
    if argv and argv[0] == "links":
        from .links import main as links

        return links(argv[1:])
    try:
        return report(_parse(argv))
    except (ValueError, OSError) as exc:
        print(f"hpcdl model: {exc}", file=sys.stderr)
        return 2
