"""Relative memory on arm64 under emulation (qemu-user): two agents in one arm64 chroot,
this checkout's and another's, against a Mosquitto on the host, one after the other:
VmRSS idle (after a 300-request warm-up), peak during a burst, 3 s after it.

Under qemu the resident set includes the emulator's translation cache: compare the two
agents with each other, never with amd64 figures. Set-up (../shared/NOTES.md has how to
build the rootfs; the test suite caches one in /var/cache/edgeloop-tests):

    ROOT=/tmp/arm64; mkdir -p $ROOT && tar -xf rootfs-arm64-*.tar -C $ROOT
    mount -t proc proc $ROOT/proc
    chroot $ROOT /usr/bin/python3 -m venv /venv
    cp <arm64 wheels of numpy, onnxruntime, paho-mqtt, cryptography> $ROOT/wheels/
    chroot $ROOT /venv/bin/pip install --no-index --find-links /wheels \
        numpy onnxruntime paho-mqtt cryptography
    cp -r agent/src $ROOT/after/src; cp -r OTHER/agent/src $ROOT/before/src
    .venv/bin/python bench/bench_memory_arm64.py --root $ROOT --burst 30000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_agent as ba
from common import Client, RssSampler, rss_kib, start_broker

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
ap.add_argument("--root", type=Path, required=True, help="the arm64 chroot")
ap.add_argument("--burst", type=int, default=30000)
args = ap.parse_args()
R = args.root
N = args.burst
tmp = Path(tempfile.mkdtemp(prefix="edgeloop-arm64-"))
work = R / "work"
work.mkdir(exist_ok=True)
models = ba.train_models("hgb", 5000)
broker = start_broker(tmp)
ba.BROKER_PID[0] = broker.proc.pid
setup = Client(broker.port, "setup")
servers = {}
try:
    for name, src in (("before", "/before/src"), ("agent", "/after/src")):
        device = f"arm-{name}"
        (work / f"{name}-state").mkdir(exist_ok=True)
        (work / f"{name}.toml").write_text(
            f'device_id = "{device}"\nbroker = "mqtt://127.0.0.1:{broker.port}"\n'
            f'state_dir = "/work/{name}-state"\nlog_level = "WARNING"\nallow_unsigned = true\n'
        )
        log = open(tmp / f"arm-{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                "chroot",
                str(R),
                "/venv/bin/python",
                "-c",
                "import sys; from edgeloop_agent.cli import main; sys.exit(main())",
                "-c",
                f"/work/{name}.toml",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": src},
        )
        status = ba.deploy_ab(setup, device, models)
        setup.wait_json(status, lambda s: s.get("revision") == 1 and s.get("online"), 300)
        servers[name] = ba.Server(name, f"edgeloop/{device}/predict", proc, None)
    names = models[0].feature_names
    res = {}
    for name, s in servers.items():
        ba.warm_up(s, broker.port, tmp, names, 300)
        time.sleep(2)
        idle = rss_kib(s.pid) / 1024
        sampler = RssSampler(s.pid, 0.5).start()
        r = ba.saturation(s, broker.port, tmp, names, N)
        time.sleep(3)
        samples = sampler.stop()
        res[name] = dict(
            idle=idle,
            peak=max(k for _, k in samples) / 1024,
            after=rss_kib(s.pid) / 1024,
            rate=r["rate"],
            lost=r["lost"],
            cpu_us=r.get("cpu_us"),
        )
        print(
            name,
            {k: round(v, 1) if isinstance(v, float) else v for k, v in res[name].items()},
            flush=True,
        )
    a, b = res["agent"], res["before"]
    for k in ("idle", "peak", "after", "rate", "cpu_us"):
        print(f"{k:8} agent {a[k]:10.1f} before {b[k]:10.1f} ratio {a[k] / b[k]:.2f}x")
finally:
    for s in servers.values():
        s.stop()
    setup.close()
    broker.stop()
