"""The two request limits agree, tested at their edges on a real agent and Mosquitto.

``max_payload_bytes`` is refused unparsed and ``max_batch_rows`` after parsing; with
the defaults, a full batch of realistic object-form rows must fit in one payload
(it did not: 64 KiB held ~300 of the 1,024 rows promised).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgeloop_agent.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_ROWS
from tests.integration.models import sample_features
from tests.integration.test_agent_e2e import request, serving  # noqa: F401 - fixture


def padded(body: dict, size: int) -> bytes:
    """``body`` as JSON, padded with insignificant whitespace to exactly ``size`` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size, f"{len(raw)} bytes before padding, over {size}"
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_a_full_object_form_batch_fits_the_default_payload(serving, probe):  # noqa: F811
    rows = sample_features(DEFAULT_MAX_ROWS)
    body = {"id": "full", "rows": rows}
    assert len(json.dumps(body)) > 64 * 1024  # what the old limit refused
    # Exactly at the payload limit, with exactly max_batch_rows rows: served.
    reply = request(probe, padded(body, DEFAULT_MAX_PAYLOAD), timeout=30)
    assert len(reply["predictions"]) == DEFAULT_MAX_ROWS, reply.get("error")
    # One byte more: refused before parsing, naming both sizes.
    reply = request(probe, padded({**body, "id": "over"}, DEFAULT_MAX_PAYLOAD + 1))
    assert reply["id"] is None  # not parsed, so no id to echo
    assert reply["error"] == {
        "code": "payload_too_large",
        "message": f"payload is {DEFAULT_MAX_PAYLOAD + 1} bytes, "
        f"over the {DEFAULT_MAX_PAYLOAD}-byte limit",
    }
    # One row more than max_batch_rows, well under the payload limit: refused after parsing.
    compact = [list(r.values()) for r in sample_features(DEFAULT_MAX_ROWS + 1)]
    reply = request(probe, {"id": "rows", "rows": compact})
    assert reply["error"] == {
        "code": "batch_too_large",
        "message": f'"rows" has {DEFAULT_MAX_ROWS + 1} entries, over the limit of '
        f"{DEFAULT_MAX_ROWS}",
    }
    assert "prediction" in request(probe, {"id": "after", "features": rows[0]})


def test_a_payload_limit_that_cannot_hold_the_batch_limit_is_refused_at_start(tmp_path: Path):
    run = subprocess.run(
        [
            *(sys.executable, "-m", "edgeloop_agent.cli", "--broker", "mqtt://127.0.0.1:1"),
            *("--device-id", "d1", "--state-dir", str(tmp_path), "--max-payload-bytes", "20000"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "edgeloop-agent: error: max_batch_rows 1024 cannot be reached within max_payload_bytes "
        "20000: even compact rows (32 bytes each) need 32832; raise max_payload_bytes or lower "
        "max_batch_rows"
    )
