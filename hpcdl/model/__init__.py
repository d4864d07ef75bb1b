"""The cost model: fit alpha/beta/gamma per algorithm, project to thousands of ranks.

    hpcdl model measure                 # time ping-pong, reduction, every algorithm at 2, 3, 4 ranks
    hpcdl model                         # fit, compare with the measurements, project (hdr-ib)
    hpcdl model --network ndr-ib --ranks-per-node 8 --plot out/model.png
    hpcdl model --alpha 1.5us --bandwidth 25GB/s --write-table ~/.cache/hpcdl/tuning.json

See docs/observability.md.
"""

# The model itself is pure and lives in hpcdl.tuning (below the collectives, whose
# ``auto`` reads it); this package is its command-line side (measure, cli, plot).
from ..tuning.costs import ALGORITHMS, FLAT, Params, cluster_cost, coefficients, cost
from ..tuning.fit import Fit, compare, fit
from ..tuning.project import PRESETS, Network, crossovers, project

__all__ = ["ALGORITHMS", "FLAT", "Params", "coefficients", "cost", "cluster_cost", "Fit", "fit",
           "compare", "PRESETS", "Network", "project", "crossovers"]
