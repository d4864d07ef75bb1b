"""Count the samples of the main job's committed steps (``HPCDL_TEST_SAMPLES``).

The job (``hpcdl/examples/fault_injection.py``) writes, per world rank, the sample
ids of every step it starts (``samples-R.txt``: ``gen epoch step ids``) and every
step it commits (``commits-R.txt``: ``gen epoch step time``). A step counts when a
survivor committed it: its update holds the gradients of every rank that started
it in that generation, the rank that died during it included.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _lines(folder: Path, kind: str, ranks: "set[int] | None" = None) -> list[list[str]]:
    out = []
    for f in sorted(folder.glob(f"{kind}-*.txt")):
        rank = int(f.stem.split("-")[1])
        if ranks is None or rank in ranks:
            out += [line.split(" ") for line in f.read_text().splitlines() if line]
    return out


def epoch_counts(folder: "str | Path", survivors: set[int]) -> dict[int, Counter]:
    """{epoch: Counter(sample id -> times used in a committed step)}."""
    folder = Path(folder)
    committed = {tuple(map(int, c[:3])) for c in _lines(folder, "commits", survivors)}
    counts: dict[int, Counter] = {}
    for gen, epoch, step, ids in _lines(folder, "samples"):
        if (int(gen), int(epoch), int(step)) in committed:
            counts.setdefault(int(epoch), Counter()).update(
                int(i) for i in ids.split(",") if i)
    return counts


def problems(folder: "str | Path", survivors: set[int], n_samples: int,
             epochs: int) -> list[str]:
    """Empty when every sample of every epoch was used exactly once."""
    counts = epoch_counts(folder, survivors)
    out = []
    for e in range(1, epochs + 1):
        c = counts.get(e, Counter())
        missing = [i for i in range(n_samples) if c[i] == 0]
        twice = sorted(i for i, k in c.items() if k > 1)
        if missing or twice or set(c) - set(range(n_samples)):
            out.append(f"epoch {e}: {len(missing)} samples missing (e.g. {missing[:5]}), "
                       f"{len(twice)} used more than once (e.g. {twice[:5]})")
    return out
