"""How much resident memory an agent needs to serve a model, from its artifact size.

onnxruntime unpacks tree ensembles into its own structures, so a forest costs many
times its file size on the device. Measured with ``bench/bench_model_memory.py``
(fresh interpreter, the agent's imports and session options, median of 3; 20
features, 8,000 rows, Python 3.11, onnxruntime 1.32):

=========  ==============  ===========  =========  ======
algo       params          artifact MB  RSS +MB    x size
=========  ==============  ===========  =========  ======
logreg     defaults        0.09         8.6        93
hgb        defaults        0.30         10.3       34
hgb        max_iter 300    0.74         17.0       23
rf         20 trees        1.06         20.2       19
rf         100 trees       4.98         66.3       13
=========  ==============  ===========  =========  ======

Agent with its imports and no model: 61.4 MB. A line through each family's points
gives a fixed cost per loaded session plus a slope per artifact byte.
"""

from __future__ import annotations

AGENT_BASE_BYTES = 62 * 2**20
SESSION_BYTES = 8 * 2**20
# Resident bytes per artifact byte, by algorithm (unknown algorithms: the worst).
SLOPE = {"logreg": 2.0, "hgb": 15.2, "rf": 11.8}


def agent_memory_estimate(artifact_bytes: int, algo: str, *, models: int = 1) -> int:
    """Resident bytes of an agent serving ``models`` models of this size and kind."""
    slope = SLOPE.get(algo, max(SLOPE.values()))
    return int(AGENT_BASE_BYTES + models * (SESSION_BYTES + slope * artifact_bytes))
