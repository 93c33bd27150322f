"""Resident memory an agent pays per model, by algorithm and artifact size.

For each algorithm (and a few sizes of forest), trains a model with the product's own
pipeline on synthetic rows, then loads it in a FRESH interpreter the way the agent does
(edgeloop_agent.model.OnnxModel, one session, the agent's session options) and prints the
resident set before and after, and the ratio to the artifact's size. The baseline is the
same interpreter with the agent's imports and no model.

    .venv/bin/python bench/bench_model_memory.py

The constants in control/src/edgeloop_control/training/footprint.py come from this run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from edgeloop_control.training import TrainConfig, train

CASES = [
    ("logreg", {}),
    ("hgb", {}),
    ("hgb", {"max_iter": 300}),
    ("rf", {"n_estimators": 20}),
    ("rf", {}),
]

PROBE = r"""
import json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
from edgeloop_agent.model import OnnxModel
import edgeloop_agent.agent  # the agent's whole import list
before = rss()
data = open(sys.argv[1], "rb").read()
model = OnnxModel(data, name="m", version="v1", sha256="0" * 64)
del data
after = rss()
print(json.dumps({"before": before, "after": after}))
"""


def frame(n: int = 8000, d: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(0, 0.5, n) > 0).astype(int)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    df["y"] = y
    return df


def main() -> None:
    df = frame()
    print(f"{'algo':8} {'params':22} {'artifact MB':>11} {'RSS +MB':>8} {'x size':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for algo, params in CASES:
            result = train(df, TrainConfig(target="y", algo=algo, params=params, seed=0))
            path = Path(tmp) / f"{algo}.onnx"
            path.write_bytes(result.onnx_bytes)
            runs = []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", PROBE, str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(out.stdout))
            base = min(r["before"] for r in runs)
            delta = sorted(r["after"] - r["before"] for r in runs)[1]
            size = len(result.onnx_bytes)
            print(
                f"{algo:8} {json.dumps(params):22} {size / 2**20:11.2f} {delta / 2**20:8.1f} "
                f"{delta / size:7.1f}"
            )
    print(f"baseline: agent imports, no model: {base / 2**20:.1f} MB resident")


if __name__ == "__main__":
    main()
