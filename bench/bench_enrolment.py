"""What enrolment costs as a fleet grows: `enrol()` and the broker's reload.

Each enrolment rewrites the ACL block from every enrolled device and makes Mosquitto
reread its ACL, password file and CRL, so both grow with the fleet. Enrols N devices
(certificates) in a fresh workspace whose broker is a real Mosquitto running the
shipped configuration with the enrolment listener (tests/integration/enrolled.py),
and prints the time of the first ten enrolments (the baseline) and of the last ten,
as a ratio, then the time from SIGHUP to the broker serving a new device's
certificate with N sections in its ACL, and the same after revoking half of them
(a CRL of N/2 serials).

    .venv/bin/python bench/bench_enrolment.py --devices 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.enrolled import EnrolledSite, TLSClient  # noqa: E402

from edgeloop_agent.wire.bundle import EnrolmentBundle  # noqa: E402
from edgeloop_control.fleet.enrolment import enrol, revoke  # noqa: E402
from edgeloop_control.infra.db import ControlDB  # noqa: E402


def connect_after_enrol(site: EnrolledSite, db: ControlDB, device: str, work: Path) -> float:
    """Seconds from enrol() (which SIGHUPs the broker) to the new certificate connecting."""
    t0 = time.perf_counter()
    result = enrol(site.ws, db, device, method="certificate", bundle=work / f"{device}.bundle")
    bundle = EnrolmentBundle.from_bytes(result.bundle.read_bytes())
    files = {}
    for name, text in (
        ("ca", bundle.ca_cert),
        ("crt", bundle.client_cert),
        ("key", bundle.client_key),
    ):
        files[name] = work / f"{device}.{name}"
        files[name].write_text(text)
    while True:
        client = TLSClient(site, ca_file=files["ca"], cert=files["crt"], key=files["key"])
        ok = client.accepted and client.publish(f"edgeloop/{device}/status", b"{}") in (0, 16)
        client.close()
        if ok:
            return time.perf_counter() - t0
        time.sleep(0.01)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (broker log)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        site = EnrolledSite(work / "site").start()
        db = ControlDB(site.ws.state_db)
        try:
            times = []
            for i in range(5):  # warm-up (imports, first key generation), not counted
                enrol(site.ws, db, f"warm-{i}", method="certificate", bundle=work / "b")
            for i in range(args.devices):
                t0 = time.perf_counter()
                enrol(site.ws, db, f"dev-{i}", method="certificate", bundle=work / "b")
                times.append(time.perf_counter() - t0)
            first, last = statistics.median(times[:10]), statistics.median(times[-10:])
            acl_kb = site.acl.stat().st_size / 1024
            print(f"enrol(), median of the first 10 (after 5 warm-up): {first * 1000:.1f} ms")
            print(
                f"enrol(), median of the last 10 (ACL of {args.devices} devices, {acl_kb:.0f} KiB):"
                f" {last * 1000:.1f} ms  (x{last / first:.2f})"
            )
            small = connect_after_enrol(site, db, "probe-a", work)
            print(f"enrol -> reload -> new certificate publishes: {small * 1000:.0f} ms")
            for i in range(0, args.devices, 2):
                revoke(site.ws, db, f"dev-{i}")
            crl = connect_after_enrol(site, db, "probe-b", work)
            print(
                f"same with {args.devices // 2} serials on the CRL: {crl * 1000:.0f} ms"
                f"  (x{crl / small:.2f})"
            )
        finally:
            db.close()
            site.stop()


if __name__ == "__main__":
    main()
