"""Fusion kernels on ResNet-50's gradient set: pack, unpack, pack+FP16 vs torch and a plain copy.

    python benchmarks/kernels.py [--iters 200] [--warmup 20] [--json out.json]

One GPU, no MPI. Each operation is timed with CUDA events around a single
launch sequence, median of ``--iters`` after ``--warmup``; the peers
(``torch.cat``, ``torch._foreach_copy_``, a device-to-device copy of the same
bytes) are measured in the same run. GB/s counts the bytes the operation must
move: read + write of every element (pack+fp16: 4 bytes read, 2 written;
its extra absmax read is the price of the agreed scale and shows in the time).
The cross-rank max of the scales is communication and is not timed here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Callable

# ResNet-50 (torchvision) parameter shapes, in model.parameters() order.
_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks); expansion 4


def resnet50_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in _STAGES:
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if b == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    return shapes + [(1000, 2048), (1000,)]


RESNET50_TENSORS = 161
RESNET50_VALUES = 25_557_032


def format_table(rows: list[dict[str, Any]]) -> str:
    """nccl-tests-like columns: operation, bytes, time, GB/s, share of the device copy."""
    copy = next((r["gbps"] for r in rows if r["op"] == "device copy"), None)
    head = f"{'operation':<28}{'bytes':>14}{'time(us)':>12}{'GB/s':>10}{'vs copy':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        share = f"{100 * r['gbps'] / copy:8.1f}%" if copy else f"{'-':>9}"
        lines.append(f"{r['op']:<28}{r['bytes']:>14,}{r['time_us']:>12.1f}{r['gbps']:>10.1f}"
                     f"{share:>10}")
    return "\n".join(lines)


def _time(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def run(iters: int, warmup: int) -> list[dict[str, Any]]:
    import torch

    from hpcdl.kernels import fusion
    from hpcdl.kernels.layout import DEFAULT_CHUNK_ELEMS

    dev = torch.device("cuda")
    grads = [torch.randn(s, device=dev) for s in resnet50_shapes()]
    n = sum(g.numel() for g in grads)
    fused = torch.empty(n, device=dev)
    views = list(torch.split(fused, [g.numel() for g in grads]))
    views = [v.view_as(g) for v, g in zip(views, grads)]
    src = torch.randn(n, device=dev)
    nchunks = fusion.multi_tensor(grads, DEFAULT_CHUNK_ELEMS)[0].nchunks
    maxabs = torch.empty(nchunks, device=dev)
    scales = torch.empty(nchunks, device=dev)
    payload = torch.empty(n, dtype=torch.float16, device=dev)
    flat = [g.view(-1) for g in grads]

    def pack_fp16() -> None:
        fusion.chunk_absmax(grads, maxabs)
        fusion.quantize_fp16(grads, maxabs, 1, payload, scales)

    cases = [
        ("device copy", lambda: fused.copy_(src), 8 * n),
        ("torch.cat", lambda: torch.cat(flat), 8 * n),
        ("torch.cat + .half()", lambda: torch.cat(flat).half(), 6 * n),
        ("torch._foreach_copy_", lambda: torch._foreach_copy_(views, grads), 8 * n),
        ("hpcdl pack", lambda: fusion.pack(grads, fused), 8 * n),
        ("hpcdl unpack", lambda: fusion.unpack(fused, grads), 8 * n),
        ("hpcdl pack + fp16 compress", pack_fp16, 6 * n),
    ]
    rows = []
    for name, fn, nbytes in cases:
        t = _time(fn, iters, warmup)
        rows.append({"op": name, "bytes": nbytes, "time_us": t, "gbps": nbytes / t / 1e3})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    shapes = resnet50_shapes()
    total = sum(int(__import__("math").prod(s)) for s in shapes)
    assert len(shapes) == RESNET50_TENSORS and total == RESNET50_VALUES, (len(shapes), total)
    try:
        import cupy
        import torch

        usable = bool(cupy.is_available()) and torch.cuda.is_available()
    except ImportError as exc:
        usable, why = False, f"{exc.name} is not installed"
    else:
        why = "cupy.is_available() or torch.cuda.is_available() is False"
    if not usable:
        print(f"benchmarks/kernels.py needs a CUDA GPU with CuPy and torch: {why}",
              file=sys.stderr)
        return 2
    import torch

    rows = run(args.iters, args.warmup)
    print(f"# ResNet-50 gradients: {len(shapes)} tensors, {total:,} fp32 values; "
          f"{torch.cuda.get_device_name()}; median of {args.iters} after {args.warmup} warm-up")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "tensors": len(shapes),
                       "values": total, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
