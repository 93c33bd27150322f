"""The agent's own resource use, for telemetry: resident memory and CPU, without psutil.

Memory comes from /proc/self/status (Linux); elsewhere, or if the file cannot be read, the
memory fields are ``None`` rather than an error. CPU time comes from the C library
(``time.process_time`` for the precise total, ``os.times`` for the user/system split).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

STATUS_PATH = "/proc/self/status"


@dataclass(frozen=True)
class ProcSample:
    rss_bytes: int | None  # resident set size now (VmRSS)
    peak_rss_bytes: int | None  # high-water mark of the resident set (VmHWM)
    cpu_user_s: float  # process lifetime totals, all threads
    cpu_system_s: float
    cpu_s: float  # CPU seconds used during the interval
    interval_s: float  # wall seconds since the previous sample
    cpu_percent: float  # cpu_s / interval_s * 100: 100 = one core busy, up to cpus * 100
    cpus: int  # CPUs this process may run on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_memory(path: str = STATUS_PATH) -> dict[str, int | None]:
    """``{"rss_bytes", "peak_rss_bytes"}`` from a /proc status file; ``None`` where unknown."""
    fields = {"VmRSS:": "rss_bytes", "VmHWM:": "peak_rss_bytes"}
    out: dict[str, int | None] = dict.fromkeys(fields.values())
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                # e.g. "VmRSS:     41236 kB"; the kernel always reports kB here.
                if (
                    len(parts) == 3
                    and parts[0] in fields
                    and parts[2] == "kB"
                    and parts[1].isdigit()
                ):
                    out[fields[parts[0]]] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ProcessStats:
    """Samples memory and CPU; each :meth:`sample` reports CPU use since the previous one
    (the first since construction). Meant for one reporting thread."""

    def __init__(
        self, *, status_path: str = STATUS_PATH, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.status_path = status_path
        self._clock = clock
        self._last_wall = clock()
        self._last_cpu = time.process_time()

    def sample(self) -> ProcSample:
        wall = self._clock()
        cpu = time.process_time()
        times = os.times()
        mem = read_memory(self.status_path)
        interval = wall - self._last_wall
        used = max(0.0, cpu - self._last_cpu)
        self._last_wall, self._last_cpu = wall, cpu
        return ProcSample(
            rss_bytes=mem["rss_bytes"],
            peak_rss_bytes=mem["peak_rss_bytes"],
            cpu_user_s=times.user,
            cpu_system_s=times.system,
            cpu_s=used,
            interval_s=interval,
            cpu_percent=100.0 * used / interval if interval > 0 else 0.0,
            cpus=_cpus(),
        )


# glibc's mallopt parameter for the number of malloc arenas (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Ask glibc for at most ``arenas`` malloc arenas; call before threads start.

    glibc gives each thread that meets a locked arena one of its own (up to 8 per
    core), and each keeps its freed memory and fragmentation apart. The agent's
    threads (serving, two MQTT network loops, telemetry, updater) allocate under the
    GIL, so they seldom contend: one arena cost no throughput and 3-4 MB of the
    steady resident set at 5,000 req/s (docs/performance.md). An operator's
    ``MALLOC_ARENA_MAX`` in the environment wins. False where there is no glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - probe: musl and non-Linux have none
            _libc.mallopt  # noqa: B018
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def release_free_memory() -> bool:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); False elsewhere.

    After a burst, glibc keeps the freed memory of the request backlog in its
    arenas, so the resident set stays at the burst's high-water mark for good.
    Trimming once per reporting interval costs well under a millisecond.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


_libc: Any = None
