"""A loan book nobody here designed the product around: bool, int, float, category.

Each row is one loan application: whether the applicant is employed (bool), an
income band (category), counts of open accounts and late payments (int), income
and debt ratio (floats, some missing). ``defaulted`` comes from the applicant's
true situation. The shift is a new application form: it reports the debt ratio in
percent instead of a fraction, more applicants come from the top income band, and
they hold more accounts; 5 % fall in a band the old form did not have. The risk
rule is unchanged, so a model trained on the old form misreads every application.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

BANDS = ["low", "mid", "high", "top"]
# The new form also has a band the training data never saw.
NEW_BAND = "unbanked"
BAND_SHARES = [0.3, 0.4, 0.2, 0.1, 0.0]
SHIFTED_BAND_SHARES = [0.15, 0.3, 0.2, 0.3, 0.05]
BAND_RISK = {"low": 0.8, "mid": 0.2, "high": -0.4, "top": -1.0, NEW_BAND: 1.2}
FEATURES = [
    "employed",
    "income_band",
    "open_accounts",
    "late_payments",
    "income_k",
    "debt_ratio",
]
TARGET = "defaulted"


def loans(n: int, *, seed: int = 0, shifted: bool = False) -> pd.DataFrame:
    """``n`` applications; no event time (the view is ingested without --timestamp)."""
    rng = np.random.default_rng(seed)
    band = rng.choice([*BANDS, NEW_BAND], n, p=SHIFTED_BAND_SHARES if shifted else BAND_SHARES)
    employed = rng.random(n) < 0.75
    open_accounts = rng.poisson(2.0 if shifted else 3.0, n) + (2 if shifted else 0)
    late = rng.poisson(0.6, n)
    base_income = {"low": 22.0, "mid": 40.0, "high": 65.0, "top": 110.0, NEW_BAND: 15.0}
    income = np.array([base_income[b] for b in band]) * rng.lognormal(0.0, 0.25, n)
    debt = np.clip(rng.beta(2.0, 4.0, n) * 1.2, 0.0, 1.5)
    risk = (
        -1.6
        + 4.0 * (debt - 0.4)
        + 0.9 * late
        - 1.0 * employed
        + np.array([BAND_RISK[b] for b in band])
        + 0.1 * (open_accounts - 3)
    )
    defaulted = (rng.random(n) < 1.0 / (1.0 + np.exp(-risk))).astype(np.int64)
    seen_debt = debt * (100.0 if shifted else 1.0)  # the new form asks for a percentage
    income_k = income.round(1)
    income_k[rng.random(n) < 0.05] = np.nan
    seen_debt = seen_debt.round(3)
    seen_debt[rng.random(n) < 0.08] = np.nan
    return pd.DataFrame(
        {
            "applicant_id": [f"a-{seed}-{i:05d}" for i in range(n)],
            "employed": employed,
            "income_band": pd.Categorical(
                band, categories=[*BANDS, NEW_BAND] if shifted else BANDS
            ),
            "open_accounts": open_accounts.astype(np.int64),
            "late_payments": late.astype(np.int64),
            "income_k": income_k,
            "debt_ratio": seen_debt,
            TARGET: defaulted,
        }
    )


def loan_rows(seed: int, shifted: bool) -> pd.DataFrame:
    """A chunk of traffic (demo/traffic.py's ``RowSource``)."""
    return loans(1000, seed=seed, shifted=shifted)


def request_features(row: dict[str, Any], *, bool_as_json: bool = False) -> dict[str, Any]:
    """A row as the agent takes it: numbers, the band as a string, missing as null.

    The bool goes as 1.0/0.0 unless ``bool_as_json`` (JSON true/false; the agent
    refuses that until its fix lands, issue 10).
    """
    out: dict[str, Any] = {}
    for name in FEATURES:
        value = row[name]
        if name == "income_band":
            out[name] = str(value)
        elif name == "employed":
            out[name] = bool(value) if bool_as_json else float(bool(value))
        elif isinstance(value, float) and math.isnan(value):
            out[name] = None
        else:
            out[name] = float(value)
    return out
