"""A synthetic but realistic pump-monitoring data set, generated locally.

Each row is one reading from a centrifugal pump: bearing temperature, vibration,
discharge pressure, flow, motor current, speed, and the ambient conditions. The
label ``fault`` says whether a maintenance ticket was opened for that pump
within the next day. Faults come from a hidden wear process: worn pumps run
hotter, vibrate more and draw more current for the same flow.

``SensorShift`` models what happens in the field: a vibration sensor replaced by
one that reports peak instead of RMS velocity (x1.41 gain) with a new offset,
and a hot season. The physics (and so the fault rule) is unchanged, but a model
trained on the old readings now misreads every pump.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = [
    "bearing_temp_c",
    "vibration_mm_s",
    "pressure_bar",
    "flow_m3_h",
    "current_a",
    "speed_rpm",
    "ambient_c",
    "humidity_pct",
]
TARGET = "fault"


@dataclass(frozen=True)
class SensorShift:
    vibration_gain: float = 1.0
    vibration_offset: float = 0.0
    ambient_delta_c: float = 0.0

    @classmethod
    def replaced_vibration_sensor(cls) -> SensorShift:
        return cls(vibration_gain=1.41, vibration_offset=0.6, ambient_delta_c=8.0)


def generate(
    n: int,
    *,
    seed: int = 0,
    start: str | pd.Timestamp = "2026-01-01",
    hours: float = 24 * 30,
    pumps: int = 40,
    shift: SensorShift | None = None,
) -> pd.DataFrame:
    """``n`` readings spread over ``hours`` from ``pumps`` pumps, sorted by time."""
    rng = np.random.default_rng(seed)
    shift = shift or SensorShift()
    pump = rng.integers(0, pumps, n)
    offsets = np.sort(rng.uniform(0.0, hours * 3600.0, n))
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(offsets, unit="s")

    wear = rng.beta(2.0, 5.0, n)  # 0 new .. 1 worn out
    load = rng.uniform(0.55, 1.0, n)  # fraction of rated flow
    hour = (offsets / 3600.0) % 24.0
    ambient = 18.0 + 6.0 * np.sin((hour - 9.0) / 24.0 * 2 * np.pi) + rng.normal(0, 1.5, n)
    humidity = np.clip(55.0 - 1.2 * (ambient - 18.0) + rng.normal(0, 8.0, n), 10, 100)
    speed = 2950.0 * (0.9 + 0.1 * load) + rng.normal(0, 15.0, n)
    flow = 120.0 * load * (1.0 - 0.25 * wear) + rng.normal(0, 4.0, n)
    pressure = 6.0 * load**2 * (1.0 - 0.15 * wear) + rng.normal(0, 0.2, n)
    current = 38.0 * load * (1.0 + 0.35 * wear) + rng.normal(0, 1.2, n)
    temp = ambient + 22.0 * load + 30.0 * wear**1.5 + rng.normal(0, 2.0, n)
    vibration = 1.2 + 2.2 * wear**2 + 0.6 * load + np.abs(rng.normal(0, 0.35, n))

    # The label depends on the true physical state, not on what sensors report.
    risk = -4.2 + 7.0 * wear + 0.08 * (temp - ambient - 22.0) + 1.4 * (vibration - 2.0)
    fault = (rng.random(n) < 1.0 / (1.0 + np.exp(-risk))).astype(np.int64)

    ambient_seen = ambient + shift.ambient_delta_c
    temp_seen = temp + shift.ambient_delta_c
    vibration_seen = vibration * shift.vibration_gain + shift.vibration_offset
    frame = pd.DataFrame(
        {
            "ts": ts,
            "pump_id": [f"pump-{p:02d}" for p in pump],
            "bearing_temp_c": temp_seen.round(2),
            "vibration_mm_s": vibration_seen.round(3),
            "pressure_bar": pressure.round(3),
            "flow_m3_h": flow.round(2),
            "current_a": current.round(2),
            "speed_rpm": speed.round(1),
            "ambient_c": ambient_seen.round(2),
            "humidity_pct": humidity.round(1),
            TARGET: fault,
        }
    )
    return frame
