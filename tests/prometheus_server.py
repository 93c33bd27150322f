"""A real Prometheus (and node_exporter) from Debian's packages, on private ports.

Started by the tests the way Mosquitto is: own configuration, own data
directory, an ephemeral port, stopped afterwards. Values are read back through
Prometheus' HTTP query API, as a dashboard would.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(binary: str) -> None:
    if not Path(binary).exists() and not shutil.which(Path(binary).name):
        pytest.fail(f"{binary} is missing: `make setup` installs Debian's prometheus packages")


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


class Prometheus(Process):
    def __init__(self, workdir: Path, targets: dict[str, str], interval_s: float = 1.0) -> None:
        require(PROMETHEUS)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = [
            {
                "job_name": job,
                "scrape_interval": f"{round(interval_s * 1000)}ms",
                "static_configs": [{"targets": [target]}],
            }
            for job, target in targets.items()
        ]
        config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write it.
        config.write_text(json.dumps({"global": {}, "scrape_configs": jobs}))
        super().__init__(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            workdir / "prometheus.log",
        )
        try:
            wait_http(f"{self.url}/-/ready", proc=self.proc)
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"prometheus did not start: {self.log.read_text()[-2000:]}"
            ) from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.value(expr)
            if got == expected:
                return got
            time.sleep(0.5)
        raise AssertionError(f"{expr} = {got}, expected {expected} (after {timeout} s)")

    def targets_up(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as resp:
            body = json.load(resp)
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}


class NodeExporter(Process):
    """node_exporter with only the textfile collector, reading ``directory``."""

    def __init__(self, workdir: Path, directory: Path) -> None:
        require(NODE_EXPORTER)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__(
            [
                NODE_EXPORTER,
                f"--web.listen-address={self.address}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={directory}",
            ],
            workdir / "node-exporter.log",
        )
        try:
            wait_http(f"http://{self.address}/metrics", proc=self.proc)
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"node_exporter did not start: {self.log.read_text()[-2000:]}"
            ) from None
