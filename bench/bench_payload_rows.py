"""How many rows fit in one predict payload: bytes per row, by form and schema.

``max_payload_bytes`` (refused unparsed) and ``max_batch_rows`` must agree: a batch
limit that no payload can reach only misleads. This measures the request bytes of
``max_batch_rows`` rows in the object form and the list form, for realistic schemas,
and what parsing one such payload costs (time and peak Python memory), beside the
baseline of a single-row request measured in the same run.

    .venv/bin/python bench/bench_payload_rows.py

docs/protocol.md ("Limits: payload size and batch rows") quotes this run.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import numpy as np

from edgeloop_agent.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_ROWS, parse_predict
from edgeloop_control.demo.sensors import FEATURES, generate


def sensor_rows(n: int, *, full_precision: bool) -> list[dict[str, Any]]:
    """The demo's 8 pump sensors; rounded as the data set stores them, or as a Python
    client computing them sends them (full float repr)."""
    frame = generate(n, seed=5)
    rng = np.random.default_rng(5)
    rows = []
    for _, row in frame.iterrows():
        values = {k: float(row[k]) for k in FEATURES}
        if full_precision:
            values = {k: v * (1 + rng.normal(0, 1e-6)) for k, v in values.items()}
        rows.append(values)
    return rows


def loan_rows(n: int) -> list[dict[str, Any]]:
    """A loan book: a flag, integers, a money amount and a string band."""
    rng = np.random.default_rng(6)
    return [
        {
            "has_promo": bool(rng.random() < 0.4),
            "age_years": int(rng.integers(18, 80)),
            "annual_income": round(float(rng.normal(40_000, 12_000)), 2),
            "credit_band": str(rng.choice(["A", "B", "C", "D"])),
            "months_employed": int(rng.integers(0, 480)),
        }
        for _ in range(n)
    ]


def wide_rows(n: int, width: int = 20) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    names = [f"feature_{i:02d}_value" for i in range(width)]
    rows = []
    for _ in range(n):
        values = rng.normal(size=width)
        rows.append({k: round(float(v), 4) for k, v in zip(names, values, strict=True)})
    return rows


def request(rows: list[dict[str, Any]], form: str) -> bytes:
    body: list[Any] = rows if form == "object" else [list(r.values()) for r in rows]
    return json.dumps({"id": "bench-1", "rows": body}).encode()


def parse_cost(payload: bytes, repeat: int = 20) -> tuple[float, int]:
    """Median ms to parse (the agent's own parser), peak bytes allocated while parsing."""
    limit = len(payload) + 1
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        parse_predict(payload, max_bytes=limit, max_rows=10**6)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    parse_predict(payload, max_bytes=limit, max_rows=10**6)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return float(np.median(times)) * 1000, peak


def main() -> None:
    n = DEFAULT_MAX_ROWS
    schemas = {
        "sensors (8 floats, rounded)": sensor_rows(n, full_precision=False),
        "sensors (8 floats, full repr)": sensor_rows(n, full_precision=True),
        "loan (bool, 2 int, float, str)": loan_rows(n),
        "wide (20 floats, 4 decimals)": wide_rows(n),
    }
    print(
        f"default limits: max_payload_bytes={DEFAULT_MAX_PAYLOAD}, "
        f"max_batch_rows={DEFAULT_MAX_ROWS}"
    )
    print(
        f"{'schema':34} {'form':6} {'B/row':>6} {f'{n} rows':>10} {'rows/limit':>10} "
        f"{'parse ms':>9} {'x 1 row':>8} {'peak MB':>8}"
    )
    for name, rows in schemas.items():
        for form in ("object", "list"):
            single_ms, _ = parse_cost(request(rows[:1], form), repeat=200)
            payload = request(rows, form)
            per_row = (len(payload) - len(request(rows[:1], form))) / (n - 1)
            fits = int((DEFAULT_MAX_PAYLOAD - len(request([], form))) // per_row)
            ms, peak = parse_cost(payload)
            print(
                f"{name:34} {form:6} {per_row:6.0f} {len(payload):10,} {fits:10,} "
                f"{ms:9.2f} {ms / single_ms:8.0f} {peak / 1e6:8.1f}"
            )


if __name__ == "__main__":
    main()
