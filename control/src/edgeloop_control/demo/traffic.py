"""Prediction traffic with delayed ground truth, as a plant would produce it."""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from edgeloop_control.demo.fleetsim import DemoClient
from edgeloop_control.demo.sensors import FEATURES, TARGET, SensorShift, generate

# (seed, shifted) -> a chunk of rows holding the features and the target.
RowSource = Callable[[int, bool], pd.DataFrame]
# One row -> the request's "features" object, as the agent takes it.
Encoder = Callable[[dict[str, Any]], dict[str, Any]]


def pump_rows(seed: int, shifted: bool) -> pd.DataFrame:
    """The demo's pump readings; shifted: from the replaced vibration sensor."""
    return generate(
        2000, seed=seed, shift=SensorShift.replaced_vibration_sensor() if shifted else None
    )


def pump_features(row: dict[str, Any]) -> dict[str, Any]:
    return {f: float(row[f]) for f in FEATURES}


class Traffic:
    """Sends requests keyed by sensor id (a few hundred per device) to every device at a
    steady rate; labels follow later.

    Each reading's true outcome (``fault``) becomes known 0.5-2 s after the
    prediction, like a maintenance ticket closing, and is sent as feedback.
    ``shift()`` switches the readings to the replaced vibration sensor. Other data
    sets bring their own ``rows``, ``encode`` and ``target`` (the loan book of
    tests/integration/test_loop_real_data.py).
    """

    def __init__(
        self,
        client: DemoClient,
        devices: list[str],
        *,
        rate_per_device: float = 40.0,
        seed: int = 11,
        label_delay_s: tuple[float, float] = (0.5, 2.0),
        rows: RowSource = pump_rows,
        encode: Encoder = pump_features,
        target: str = TARGET,
        sensors_per_device: int = 300,
    ) -> None:
        self.client = client
        self.devices = devices
        self.rate = rate_per_device * len(devices)
        self.label_delay_s = label_delay_s
        self.sensors_per_device = sensors_per_device
        self._rng = random.Random(seed)
        self._seed = seed
        self._chunk = 0
        self._source = rows
        self._encode = encode
        self._target = target
        self._shifted = False
        self._rows: list[dict[str, Any]] = []
        self._labels: list[tuple[float, str, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.sent = 0
        self.labelled = 0
        self.shifted_at: float | None = None

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def shift(self) -> None:
        self._shifted = True
        self._rows = []  # readings from now on come from the new sensor
        self.shifted_at = time.time()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _next_row(self) -> dict[str, Any]:
        if not self._rows:
            self._chunk += 1
            frame = self._source(self._seed * 1000 + self._chunk, self._shifted)
            self._rows = frame.to_dict("records")
            self._rng.shuffle(self._rows)
        return self._rows.pop()

    def _sensor(self, device: str) -> str:
        return f"{device}-sensor-{self._rng.randrange(self.sensors_per_device):03d}"

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_send = time.monotonic()
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            while self._labels and self._labels[0][0] <= now:
                _, device, rid, label = heapq.heappop(self._labels)
                self.client.feedback(device, rid, label)
                self.labelled += 1
            if now < next_send:
                time.sleep(min(next_send - now, 0.01))
                continue
            next_send += interval
            row = self._next_row()
            device = self.devices[i % len(self.devices)]
            rid = f"r{i}"
            features = self._encode(row)
            # Keyed by sensor: every reading of one sensor goes to the same arm. The key is
            # then the unit of assignment, and the experiment's sample-ratio check counts
            # distinct sensors per arm (agents send key sketches), not requests.
            self.client.request(device, rid, features, key=self._sensor(device))
            delay = self._rng.uniform(*self.label_delay_s)
            heapq.heappush(self._labels, (now + delay, device, rid, int(row[self._target])))
            self.sent += 1
            i += 1
