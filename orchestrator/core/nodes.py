"""How a stage that spans several nodes (``resources.nodes``, issue 14) is priced and timed.

One model, used by the estimator (time), the policies' cost model (price and start-up) and the
history (what was observed on how many nodes):

- **Price**: every node is billed, so N nodes cost N x the per-node price for the cluster's life.
- **Start-up**: the nodes launch in parallel and the cluster is ready when the slowest has joined the
  head. The slowest of N boots grows slowly with N (a longer tail), so the one-node start-up is
  stretched by ``STRAGGLER_PER_DOUBLING`` (10 %) per doubling of nodes: 2 nodes 1.1x, 8 nodes 1.3x.
- **Speed-up**: data parallelism on N nodes divides the time by N x efficiency, where efficiency
  falls by a constant factor per doubling of nodes (gradient all-reduce and stragglers grow with
  log N): ``speedup(N) = N x e^log2(N)``, e = ``DEFAULT_EFFICIENCY`` (0.9: 2 nodes 1.8x, 4 nodes 3.24x,
  8 nodes 5.8x), the usual range for data-parallel training across machines on ordinary networks.
- **Learning**: a stage seen on both one and N nodes of one instance type yields its own e,
  (t1 / (N tN))^(1 / log2 N); the median over what was seen replaces the default for that stage.

Multi-node observations are kept in the stage history under the machine ``TYPE*N`` (``machine_key``),
so that one-node figures of the type stay what they were.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

DEFAULT_EFFICIENCY = 0.9  # data-parallel efficiency per doubling of nodes
STRAGGLER_PER_DOUBLING = 0.1  # extra start-up per doubling of nodes: waiting for the slowest boot
MIN_EFFICIENCY = 0.1  # a learnt factor is kept within [MIN_EFFICIENCY, 1]: noise must not make N nodes free
SEPARATOR = "*"


def data_parallel_speedup(nodes: int, efficiency: float = DEFAULT_EFFICIENCY) -> float:
    """How many times faster the stage runs on ``nodes`` nodes than on one."""
    if nodes <= 1:
        return 1.0
    return nodes * efficiency ** math.log2(nodes)


def cluster_startup_seconds(one_node_seconds: float, nodes: int) -> float:
    """Start-up of a cluster of ``nodes`` nodes launched together: the slowest one's."""
    if nodes <= 1:
        return one_node_seconds
    return one_node_seconds * (1.0 + STRAGGLER_PER_DOUBLING * math.log2(nodes))


def machine_key(machine: str, nodes: int) -> str:
    """The history's machine name for a stage run on ``nodes`` nodes of ``machine``."""
    return machine if nodes <= 1 else f"{machine}{SEPARATOR}{nodes}"


def split_machine_key(key: str) -> tuple[str, int]:
    """(machine, nodes) of a history machine name."""
    machine, sep, count = key.rpartition(SEPARATOR)
    if sep and count.isdigit() and int(count) > 1:
        return machine, int(count)
    return key, 1


def learnt_efficiency(seconds_by_nodes: Mapping[int, Sequence[float]]) -> float | None:
    """Efficiency per doubling learnt from one machine's observed seconds by node count; None without
    both a one-node and a multi-node observation."""
    ones = [s for s in seconds_by_nodes.get(1, ()) if s > 0]
    if not ones:
        return None
    t1 = statistics.median(ones)
    found = []
    for nodes, seconds in seconds_by_nodes.items():
        values = [s for s in seconds if s > 0]
        if nodes > 1 and values:
            ratio = t1 / (nodes * statistics.median(values))
            found.append(min(1.0, max(MIN_EFFICIENCY, ratio ** (1.0 / math.log2(nodes)))))
    return statistics.median(found) if found else None
