from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from edgeloop_agent.procstats import ProcessStats, read_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _statm_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def _stat_cpu() -> tuple[float, float]:
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    rest = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(rest[11]) / TICK, int(rest[12]) / TICK


def test_rss_matches_proc_and_follows_allocations() -> None:
    before = ProcessStats().sample()
    assert before.rss_bytes is not None
    assert abs(before.rss_bytes - _statm_rss()) < 4 * 1024 * 1024
    block = bytearray(64 * 1024 * 1024)
    block[:: PAGE // 2] = b"x" * len(block[:: PAGE // 2])  # touch every page
    after = ProcessStats().sample()
    assert after.rss_bytes is not None and before.peak_rss_bytes is not None
    grown = after.rss_bytes - before.rss_bytes
    assert 60 * 1024 * 1024 < grown < 72 * 1024 * 1024
    assert after.peak_rss_bytes is not None and after.peak_rss_bytes >= after.rss_bytes
    del block


def test_cpu_totals_match_proc_stat() -> None:
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    s = ProcessStats().sample()
    user, system = _stat_cpu()
    # /proc/self/stat and times(2) count in clock ticks; allow two ticks between the reads.
    assert abs(s.cpu_user_s - user) <= 2 / TICK
    assert abs(s.cpu_system_s - system) <= 2 / TICK


def test_cpu_percent_since_last_call() -> None:
    ps = ProcessStats()
    user0, system0 = _stat_cpu()
    wall0 = time.monotonic()
    # Spin until this process has used 0.25 s of CPU, however busy the machine is.
    target = time.process_time() + 0.25
    while time.process_time() < target:
        pass
    busy = ps.sample()
    wall = time.monotonic() - wall0
    user1, system1 = _stat_cpu()
    assert busy.cpu_s >= 0.25
    assert abs(busy.cpu_s - ((user1 + system1) - (user0 + system0))) <= 3 / TICK
    assert busy.interval_s == pytest.approx(wall, abs=0.01)
    assert busy.cpu_percent == pytest.approx(100 * busy.cpu_s / busy.interval_s)
    # One spinning thread uses at most one core (a little more if others of ours ran too).
    assert busy.cpu_percent <= 100 * busy.cpus + 5
    time.sleep(0.3)
    idle = ps.sample()
    assert idle.cpu_percent < 25
    assert idle.interval_s >= 0.3
    assert idle.cpus >= 1
    json.dumps(idle.to_dict())


def test_status_file_parsing_and_missing_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n")
    assert read_memory(str(status)) == {"rss_bytes": 1024 * 1024, "peak_rss_bytes": 2048 * 1024}
    # Kernel threads have no Vm lines; a garbled value is ignored, not fatal.
    status.write_text("Name:\tkworker\nVmRSS:\t  lots kB\n")
    assert read_memory(str(status)) == {"rss_bytes": None, "peak_rss_bytes": None}
    missing = ProcessStats(status_path=str(tmp_path / "absent")).sample()
    assert missing.rss_bytes is None and missing.cpu_user_s > 0


ARENA_PROBE = """
import ctypes, sys, threading
from edgeloop_agent.procstats import limit_malloc_arenas
limited = limit_malloc_arenas(1) if sys.argv[1] == "limit" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
go = threading.Barrier(6)
def work():
    go.wait()
    blocks = [libc.malloc(4096) for _ in range(1000)]  # each thread's first malloc picks its arena
    go.wait()
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
print(limited, flush=True)
libc.malloc_stats()  # one "Arena N:" section per arena, on stderr
"""


def _arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return out.stdout.strip(), sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_limit_malloc_arenas_keeps_every_thread_in_one_arena() -> None:
    # Six threads allocating at once: glibc gives each its own arena by default...
    limited, default = _arenas("default")
    assert limited == "None" and default > 1
    # ...and one arena for all of them once limited, as the agent does at start.
    limited, arenas = _arenas("limit")
    assert limited == "True" and arenas == 1
    # An operator's MALLOC_ARENA_MAX is left alone.
    limited, arenas = _arenas("limit", {"MALLOC_ARENA_MAX": "3"})
    assert limited == "False" and 1 < arenas <= 3
