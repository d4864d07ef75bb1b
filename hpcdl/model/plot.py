"""The projection as a picture: bus bandwidth per algorithm, and the crossover map."""

from __future__ import annotations

from pathlib import Path

from ..tuning.project import Network

__all__ = ["plot_projection"]

_COLOURS = {"native": "tab:blue", "chunked": "tab:orange", "ring": "tab:green",
            "tree": "tab:red", "hierarchical": "tab:purple"}


def plot_projection(proj: dict[int, dict[int, dict[str, float]]], net: Network, per_node: int,
                    path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ranks = sorted(proj)
    sizes = sorted(next(iter(proj.values())))
    names = list(proj[ranks[0]][sizes[0]])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    shown = [p for p in ranks if p in (ranks[0], 512, ranks[-1])] or ranks[:1]
    for p, style in zip(shown, ("-", "--", ":")):
        for name in names:
            busbw = [2 * (p - 1) / p * n / proj[p][n][name] / 1e9 for n in sizes]
            left.plot(sizes, busbw, style, color=_COLOURS.get(name),
                      label=f"{name}, {p} ranks")
    left.set(xscale="log", yscale="log", xlabel="message size (bytes)",
             ylabel="predicted busbw (GB/s)", title="bus bandwidth by algorithm")
    left.legend(fontsize=7, ncol=2)
    best = np.array([[names.index(min(proj[p][n], key=proj[p][n].get)) for n in sizes]
                     for p in ranks])
    cmap = matplotlib.colors.ListedColormap([_COLOURS.get(n, "grey") for n in names])
    right.imshow(best, aspect="auto", origin="lower", cmap=cmap, vmin=-0.5,
                 vmax=len(names) - 0.5, interpolation="nearest")
    right.set_xticks(range(len(sizes)), [_label(n) for n in sizes], rotation=45, fontsize=7)
    right.set_yticks(range(len(ranks)), [str(p) for p in ranks], fontsize=7)
    right.set(xlabel="message size", ylabel="ranks", title="fastest algorithm")
    handles = [matplotlib.patches.Patch(color=_COLOURS.get(n, "grey"), label=n) for n in names]
    right.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"hpcdl cost model projection: {net.describe()}, {per_node} ranks per node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n // scale}{unit}"
    return str(n)
