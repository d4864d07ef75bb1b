"""Pure tuning: the cost model (costs, fit, projection), crossover rules and the
measurements they are fitted to. No MPI and nothing above :mod:`hpcdl.ops`: the
collectives' ``auto`` reads it on the hot path, and ``hpcdl tune`` / ``hpcdl model``
(the command-line tools, in :mod:`hpcdl.tune` and :mod:`hpcdl.model`) write what it reads.
"""

from .costs import ALGORITHMS, FLAT, Params, cluster_cost, coefficients, cost
from .fit import Fit, compare, fit
from .project import PRESETS, Network, crossovers, project
from .rules import NATIVE_MARGIN, powers_of_4, rules_from_timings

__all__ = ["ALGORITHMS", "FLAT", "Params", "coefficients", "cost", "cluster_cost", "Fit", "fit",
           "compare", "PRESETS", "Network", "project", "crossovers", "NATIVE_MARGIN",
           "powers_of_4", "rules_from_timings"]
