"""False alarms and power of the wired categorical and PCA drift tests (one family).

Reference: 4 numeric features in two correlated pairs, a categorical feature with a 10 %
"band" (3 categories kept, one in "unseen") and a second categorical feature; 1 000-row
count windows, BH at alpha = 0.05 over the numeric KS + PSI, categorical chi-square and
PCA KS p-values.

    .venv/bin/python bench/sim_drift_wired.py [--null 1000] [--shifted 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import build_reference_profile

NAMES = ["a", "b", "c", "d"]
REF = {"A": 0.5, "B": 0.33, "band": 0.1, "C": 0.07}
DROPPED = {"A": 0.5, "B": 0.33, "band": 0.01, "C": 0.16}
COLOURS = {"r": 0.6, "g": 0.4}


def numeric(rng: np.random.Generator, n: int, broken: bool = False) -> np.ndarray:
    base = rng.normal(size=(n, 2))
    noise = 0.1 * rng.normal(size=(n, 2))
    b = base[:, 0] + noise[:, 0]
    return np.column_stack(
        [base[:, 0], rng.permutation(b) if broken else b, base[:, 1], -base[:, 1] + noise[:, 1]]
    )


def cats(rng: np.random.Generator, shares: dict[str, float], n: int) -> list[str]:
    keys = list(shares)
    return [keys[i] for i in rng.choice(len(keys), size=n, p=list(shares.values()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null", type=int, default=1000)
    ap.add_argument("--shifted", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    profile = build_reference_profile(
        numeric(rng, 4000),
        NAMES,
        None,
        categorical={"kind": cats(rng, REF, 4000), "colour": cats(rng, COLOURS, 4000)},
        max_categories=3,
        pca_variance=0.9,
    )
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 1000)))

    def run(k: int, shares: dict[str, float], broken: bool) -> list:
        out = []
        for _ in range(k):
            c = np.column_stack([cats(rng, shares, 1000), cats(rng, COLOURS, 1000)])
            out += mon.update(numeric(rng, 1000, broken), categories=c)
        return out

    null = run(args.null, REF, False)
    print(f"{len(null)} null windows: dataset drift {np.mean([r.dataset_drift for r in null]):.3f}"
          f", a categorical flag {np.mean([any(c.drift for c in r.categorical) for r in null]):.3f}"
          f", PCA flag {np.mean([r.multivariate.drift for r in null]):.3f}")  # fmt: skip
    band = run(args.shifted, DROPPED, False)
    print(f"band 10 % -> 1 %: flagged {np.mean([r.categorical[0].drift for r in band]):.3f}")
    corr = run(args.shifted, REF, True)
    per_feature = np.mean([any(f.drift for f in r.features) for r in corr])
    print(f"correlation break: PCA flag {np.mean([r.multivariate.drift for r in corr]):.3f}, "
          f"any per-feature flag {per_feature:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
