"""The demo's HTML report, rendered from realistic data and opened in a real headless Chromium.

Structure is checked on the file with the stdlib HTML parser, then again on the DOM that
Chromium built from it (``--dump-dom``); a screenshot is decoded (stdlib zlib + numpy) to
prove the page paints charts, not a blank or broken page.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeloop_control.report import render_report, write_report
from edgeloop_control.stats import BinaryStats, MixtureSPRT, experiment_report
from tests.chromium import run_chromium

T0 = 1764160000.0
FEATURES = ("bearing_temp_c", "vibration_mm_s", "flow_l_min", "pressure_bar", "motor_current_a")
DEVICES = ["pump-station-1", "pump-station-2", "pump-station-3"]
SHIFTED = "vibration_mm_s"
SHIFT_AT = T0 + 120.0
CHART_IDS = ["ab-metric-chart", "ab-cs-chart", "ab-pvalue-chart", "rollout-chart"]


def demo_like_data(*, rolled_back: bool = False, seed: int = 7) -> dict[str, Any]:
    """What ``edgeloop demo`` hands the report: a drift on one feature from +2:00, an A/B
    test whose confidence sequence moves away from zero, and a canary + 2 step rollout."""
    rng = np.random.default_rng(seed)
    windows = []
    for k, t in enumerate(np.arange(T0 + 30, T0 + 241, 15.0)):
        for d, device in enumerate(DEVICES):
            shifted = t > SHIFT_AT
            psi = {f: float(abs(rng.normal(0.02, 0.01))) for f in FEATURES}
            ks_p = {f: float(rng.uniform(0.2, 0.9)) for f in FEATURES}
            if shifted:
                psi[SHIFTED] = float(0.35 + 0.05 * (k % 4) + 0.03 * d)
                ks_p[SHIFTED] = 1e-9
            windows.append(
                {
                    "t": float(t) + d * 0.7,
                    "device": device,
                    "variant": "sensor@v1",
                    "n": 500,
                    "dataset_drift": bool(shifted),
                    "psi": psi,
                    "ks_p": ks_p,
                    "output_psi": float(0.28 if shifted else abs(rng.normal(0.03, 0.01))),
                }
            )
    # The A/B looks come from the real statistics, as the demo's control node computes them.
    # 25 outcomes per arm per look at 65% vs 80%: with this seed the confidence sequence
    # appears at the 4th look (100 per arm) and leaves zero at the 13th, where it promotes.
    ab_rng = np.random.default_rng(0)
    test = MixtureSPRT("binary", alpha=0.05)
    looks: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for t in np.arange(T0 + 160, T0 + 560, 10.0):
        test.update(
            BinaryStats.from_outcomes(ab_rng.random(25) < 0.65),
            BinaryStats.from_outcomes(ab_rng.random(25) < 0.80),
        )
        report = experiment_report(test, weights=(0.5, 0.5))
        arms, seq = report["variants"], report["sequential"]
        cs = seq["confidence_sequence"] or [None, None]
        looks.append(
            {
                "t": float(t),
                "n_champion": arms["champion"]["n"],
                "n_challenger": arms["challenger"]["n"],
                "champion_metric": arms["champion"]["metric"],
                "challenger_metric": arms["challenger"]["metric"],
                "champion_ci": arms["champion"]["ci"],
                "challenger_ci": arms["challenger"]["ci"],
                "estimate": report["difference"]["estimate"],
                "cs_low": cs[0],
                "cs_high": cs[1],
                "p_value": seq["p_value"],
                "fixed_p_value": report["fixed_horizon"]["p_value"],
            }
        )
        if report["decision"]["action"] != "continue":
            break
    decided = looks[-1]["t"]
    for t in np.arange(decided + 25, decided + 60, 15.0):  # the challenger on the canary, no drift
        windows.append(
            {
                "t": float(t),
                "device": DEVICES[0],
                "variant": "sensor@v2",
                "n": 500,
                "dataset_drift": False,
                "psi": {f: 0.03 for f in FEATURES},
                "ks_p": {f: 0.5 for f in FEATURES},
                "output_psi": None,
            }
        )
    batches = [
        {"index": 0, "label": "canary", "devices": DEVICES[:1], "started": decided + 5,
         "finished": decided + 20, "result": "passed", "reason": "p99 and errors within limits"},
        {"index": 1, "label": "step 1", "devices": DEVICES[1:2], "started": decided + 21,
         "finished": decided + 32, "result": "passed", "reason": "healthy"},
        {"index": 2, "label": "step 2", "devices": DEVICES[2:], "started": decided + 33,
         "finished": decided + 51, "result": "passed", "reason": "healthy"},
    ]  # fmt: skip
    events = [
        {"t": T0 + 10, "kind": "deploy", "subject": "sensor@v1", "message": "desired state r1"},
        {"t": T0 + 121.5, "kind": "drift_detected", "subject": DEVICES[0],
         "message": f"PSI {SHIFTED} 0.38 > 0.2"},
        {"t": T0 + 125, "kind": "retrain", "subject": "sensor", "message": "on 4000 fresh rows"},
        {"t": T0 + 150, "kind": "registered", "subject": "sensor@v2", "message": "acc 0.83"},
        {"t": T0 + 152, "kind": "ab_started", "subject": "exp-1", "message": "50/50 split"},
        {"t": decided, "kind": "ab_decision", "subject": "exp-1", "message": "promote"},
    ] + [
        {"t": b["finished"], "kind": "rollout_batch", "subject": b["label"], "message": "passed"}
        for b in batches
    ]  # fmt: skip
    state = "completed"
    if rolled_back:
        batches[1].update(result="failed", reason="p99 latency 9.1 ms > 5 ms")
        batches[2].update(started=None, finished=None, result="pending", reason="")
        events = events[:-1]
        events[-1]["message"] = "failed"
        events.append(
            {"t": decided + 33, "kind": "rollback", "subject": DEVICES[1], "message": "to v1"}
        )
        state = "rolled_back"
    return {
        "title": "edgeloop demo",
        "generated_at": decided + 60,
        "workspace": "/tmp/edgeloop-demo-x1/workspace",
        "timeline": [
            {
                "t": T0,
                "duration_s": 2.1,
                "step": "Start a private Mosquitto broker",
                "detail": "mqtt://127.0.0.1:18830",
            },
            {"t": T0 + 3, "duration_s": 6.5, "step": "Train sensor@v1", "detail": "accuracy 0.851"},
            {
                "t": T0 + 110,
                "duration_s": 40.2,
                "step": "Shift the vibration sensor",
                "detail": "peak instead of RMS",
            },
        ],
        "events": events,
        "drift": {
            "features": list(FEATURES),
            "psi_threshold": 0.2,
            "alpha": 0.05,
            "shift_at": SHIFT_AT,
            "windows": windows,
        },
        "experiment": {
            "id": "exp-1",
            "champion": "sensor@v1",
            "challenger": "sensor@v2",
            "metric": "accuracy",
            "higher_is_better": True,
            "alpha": 0.05,
            "tau": report["sequential"]["tau"],
            "looks": looks,
            "srm": {"p_value": report["srm"]["p_value"], "flag": report["srm"]["mismatch"]},
            "decision": {**report["decision"], "t": decided},
        },
        "rollout": {
            "model": "sensor@v2",
            "previous": "sensor@v1",
            "state": state,
            "batches": batches,
        },
        "devices": [
            {
                "device": d,
                "online": True,
                "model": "sensor@v2",
                "requests": 3000 + i,
                "errors": i,
                "p99_ms": 1.2 + i / 10,
                "rss_mb": 71.3,
            }
            for i, d in enumerate(DEVICES)
        ],
        "summary": {"duration_s": 300.0, "requests": 9003, "devices": 3, "promoted": True},
    }


# --- reading the HTML with the stdlib ---------------------------------------------------


class _Element:
    def __init__(self, tag: str, attrs: dict[str, str], svg: str | None) -> None:
        self.tag, self.attrs, self.svg = tag, attrs, svg
        self.text = ""


class Page(HTMLParser):
    """Every element with its attributes and the id of the ``<svg>`` it sits in."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[_Element] = []
        self._svgs: list[str] = []
        self._open: list[_Element] = []
        self.text: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self._svgs.append(values.get("id", ""))
        element = _Element(tag, values, self._svgs[-1] if self._svgs else None)
        self.elements.append(element)
        self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):  # tolerate unclosed <li>, <p>
            if self._open[i].tag == tag:
                del self._open[i:]
                break
        if tag == "svg" and self._svgs:
            self._svgs.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open:
            self._open[-1].text += data

    def svg_ids(self) -> list[str]:
        return [e.attrs.get("id", "") for e in self.elements if e.tag == "svg"]

    def inside(self, svg_id: str, tag: str, cls: str | None = None) -> list[_Element]:
        return [
            e
            for e in self.elements
            if e.svg == svg_id
            and e.tag == tag
            and (cls is None or cls in e.attrs.get("class", "").split())
        ]


def _coordinates(d: str) -> list[float]:
    return [float(v) for v in d.replace("M", " ").replace("L", " ").replace("Z", " ")
            .replace(",", " ").replace("V", " ").replace("H", " ").split()]  # fmt: skip


def expected_chart_ids() -> list[str]:
    return [f"drift-chart-{f}" for f in FEATURES] + ["drift-output-chart", *CHART_IDS]


def assert_self_contained(document: str, page: Page) -> None:
    assert "http://" not in document and "https://" not in document
    assert "@import" not in document and "url(http" not in document
    for e in page.elements:
        assert e.tag not in {"script", "link", "img", "iframe", "object", "embed"}, e.tag
        for attr in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            value = e.attrs.get(attr)
            if value is not None:
                assert value.startswith("#"), f"<{e.tag} {attr}={value!r}> leaves the page"
    csp = [e for e in page.elements if e.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0].attrs["content"]


def assert_charts(page: Page, data: dict[str, Any]) -> None:
    ids = page.svg_ids()
    assert sorted(ids) == sorted(expected_chart_ids())
    assert len(ids) == len(set(ids))
    assert len([i for i in ids if i.startswith("drift-chart-")]) == len(FEATURES)
    for svg_id in ids:
        titles = page.inside(svg_id, "title")
        assert titles and titles[0].text.strip(), f"{svg_id} has no <title>"
        svg = next(e for e in page.elements if e.tag == "svg" and e.attrs.get("id") == svg_id)
        assert svg.attrs["role"] == "img" and svg.attrs["aria-labelledby"] == f"{svg_id}-title"
        ticks = [t.text for t in page.inside(svg_id, "text", "tick")]
        assert len(ticks) >= 4, f"{svg_id} axes have too few tick labels: {ticks}"

    flagged = sum(w["dataset_drift"] for w in data["drift"]["windows"])
    for feature in FEATURES:
        svg_id = f"drift-chart-{feature}"
        lines = page.inside(svg_id, "path", "series")
        assert len(lines) == 4  # one per device/variant stream
        assert all(len(_coordinates(p.attrs["d"])) >= 4 for p in lines)
        rings = [
            c for c in page.inside(svg_id, "circle", "point") if c.attrs.get("stroke") == "#d62728"
        ]
        assert len(rings) == flagged
        assert len(page.inside(svg_id, "line", "ref")) == 1  # the PSI threshold
        assert len(page.inside(svg_id, "line", "marker")) == 1  # the data shift
    # Ticks on the time axes read as elapsed m:ss.
    assert "2:00" in [t.text for t in page.inside(f"drift-chart-{SHIFTED}", "text", "tick")]

    assert len(page.inside("ab-metric-chart", "path", "band")) == 2
    assert len(page.inside("ab-metric-chart", "path", "series")) == 2
    assert page.inside("ab-cs-chart", "path", "band") and page.inside(
        "ab-cs-chart", "path", "series"
    )
    assert len(page.inside("ab-pvalue-chart", "path", "series")) == 2  # sequential and fixed
    for svg_id in ("ab-metric-chart", "ab-cs-chart", "ab-pvalue-chart"):
        assert len(page.inside(svg_id, "line", "marker")) == 1
        labels = [t.text for t in page.inside(svg_id, "text", "marker-label")]
        assert labels == ["decision: promote"]
    bars = page.inside("rollout-chart", "rect", "bar")
    assert len(bars) == len(data["rollout"]["batches"])
    assert all(float(b.attrs["width"]) > 0 for b in bars)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    data = demo_like_data()
    np.random.default_rng(3).shuffle(data["events"])
    path = write_report(data, tmp_path_factory.mktemp("report") / "out" / "report.html")
    return data, path


def test_demo_data_is_what_the_scenario_promises() -> None:
    data = demo_like_data()
    looks = data["experiment"]["looks"]
    defined = [lk for lk in looks if lk["cs_low"] is not None]
    assert looks[0]["cs_low"] is None  # no sequence before 100 outcomes per arm
    assert defined[0]["cs_low"] < 0 < defined[-1]["cs_low"]  # ... then it leaves zero
    assert data["experiment"]["decision"]["action"] == "promote"
    assert [b["label"] for b in data["rollout"]["batches"]] == ["canary", "step 1", "step 2"]


def test_file_structure(demo_report: tuple[dict[str, Any], Path]) -> None:
    data, path = demo_report
    assert path.is_absolute() and path.name == "report.html"
    document = path.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    page = Page(document)
    assert_self_contained(document, page)
    assert_charts(page, data)
    text = " ".join(page.text)
    for heading in ("Drift per feature over time", "A/B experiment", "Rollout", "Events"):
        assert heading in text
    # The last-look table: n, metric and CI per arm, both p-values, SRM.
    last = data["experiment"]["looks"][-1]
    assert f"{last['n_champion']:,}" in text and f"{last['challenger_metric']:.3f}" in text
    assert "fixed-horizon p-value" in text and "sequential p-value" in text and "SRM" in text
    # Events in time order, whatever order they came in (the fixture shuffles them).
    events = document[document.index('<table class="data events">') :]
    events = events[: events.index("</table>")]
    rows = [Page(r) for r in events.split("<tr>")[2:]]
    shown = [(r.elements[0].text, r.elements[3].text) for r in rows]  # (+m:ss, kind badge)
    elapsed = [int(m) * 60 + int(s) for m, s in (t.lstrip("+").split(":") for t, _ in shown)]
    assert elapsed == sorted(elapsed) and len(shown) == len(data["events"])
    assert shown[0][1] == "deploy"


# --- real Chromium ---------------------------------------------------------------------


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced): enough for a screenshot."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        assert (
            zlib.crc32(kind + body)
            == struct.unpack(">I", data[pos + 8 + size : pos + 12 + size])[0]
        )
        pos += 12 + size
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, header
    bpp = 3 if color_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * bpp + 1)
    pixels = np.empty((height, width * bpp), np.uint8)
    prev = np.zeros(width * bpp, np.uint8)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:]
        if kind == 0:
            cur = row.copy()
        elif kind == 1:  # Sub: a running sum along the row, per channel
            cur = (np.cumsum(row.reshape(width, bpp), axis=0) % 256).astype(np.uint8).ravel()
        elif kind == 2:  # Up
            cur = row + prev
        else:  # Average and Paeth depend on the decoded left byte: a plain loop
            filtered, up, out = row.tolist(), prev.tolist(), [0] * row.size
            for i, value in enumerate(filtered):
                left = out[i - bpp] if i >= bpp else 0
                upleft = up[i - bpp] if i >= bpp else 0
                if kind == 3:
                    out[i] = (value + ((left + up[i]) >> 1)) & 255
                    continue
                p = left + up[i] - upleft
                pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else upleft)
                out[i] = (value + pred) & 255
            cur = np.array(out, np.uint8)
        pixels[y] = cur
        prev = cur
    return pixels.reshape(height, width, bpp)[..., :3]


def near(image: np.ndarray, hex_color: str, tolerance: int = 10) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], np.int16)
    return int((np.abs(image.astype(np.int16) - rgb).max(axis=2) <= tolerance).sum())


def test_chromium_builds_the_same_dom(
    demo_report: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    data, path = demo_report
    dom = run_chromium(["--dump-dom", path.as_uri()], tmp_path)
    page = Page(dom)
    assert_charts(page, data)
    # The HTML parser keeps camelCase names only for elements it put in the SVG namespace.
    assert "<clipPath" in dom and "<script" not in dom


def test_chromium_paints_the_charts(
    demo_report: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    _, path = demo_report
    png = tmp_path / "report.png"
    run_chromium(
        ["--hide-scrollbars", f"--screenshot={png}", "--window-size=1280,4000", path.as_uri()],
        tmp_path,
    )
    image = decode_png(png.read_bytes())
    assert image.shape == (4000, 1280, 3)
    ink = (image.min(axis=2) < 235).mean()
    assert ink > 0.03, f"only {ink:.1%} of the page is not white"
    # The first screen holds the title; the drift charts draw their series and red flags.
    assert (image[:200].min(axis=2) < 80).sum() > 500
    assert near(image, "#1f6fb4") > 500  # the first series colour
    assert near(image, "#d62728") > 200  # drift-flagged points
    assert len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 50


def test_chromium_prints_it(demo_report: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, path = demo_report
    pdf = tmp_path / "report.pdf"
    run_chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", path.as_uri()], tmp_path)
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF-")
    pages = [int(n) for n in re.findall(rb"/Type /Pages.*?/Count (\d+)", body, re.S)]
    assert pages and 2 <= max(pages) <= 20


# --- the other shapes the demo can produce ---------------------------------------------


def test_rollback_is_drawn_on_the_rollout_chart(tmp_path: Path) -> None:
    data = demo_like_data(rolled_back=True)
    page = Page(write_report(data, tmp_path / "report.html").read_text(encoding="utf-8"))
    bars = page.inside("rollout-chart", "rect", "bar")
    assert [b.attrs["fill"] for b in bars] == ["#2a9d4b", "#d62728"]  # passed, failed
    labels = [t.text for t in page.inside("rollout-chart", "text", "marker-label")]
    assert labels == ["rollback pump-station-2"]
    assert "pending (not started)" in [t.text for t in page.inside("rollout-chart", "text")]
    badges = [e.text for e in page.elements if "badge" in e.attrs.get("class", "")]
    assert "rolled_back" in badges and "failed" in badges


def _empty_sections() -> dict[str, Any]:
    return {
        **demo_like_data(),
        "timeline": [],
        "events": [],
        "drift": {"features": FEATURES, "psi_threshold": 0.2, "windows": []},
        "experiment": None,
        "rollout": None,
        "devices": [],
        "summary": {},
    }


def _sections_not_started() -> dict[str, Any]:
    data = demo_like_data()
    data.update(drift=None, timeline=None, events=None, devices=None, summary=None)
    data["experiment"].update(looks=[], decision=None, srm=None)
    for b in data["rollout"]["batches"]:
        b.update(started=None, finished=None, result="pending")
    return data


@pytest.mark.parametrize(
    ("make", "messages"),
    [
        (
            _empty_sections,
            [
                "no experiment ran",
                "no rollout ran",
                "no drift windows completed",
                "no control-node events were recorded",
                "no devices reported",
                "no steps were recorded",
            ],
        ),
        (
            _sections_not_started,
            [
                "drift monitoring was not part of this run",
                "No decision yet.",
                "the experiment has no looks yet",
                "no batch has started yet",
            ],
        ),
    ],
    ids=["empty", "not-started"],
)
def test_empty_sections_say_so(make: Any, messages: list[str], tmp_path: Path) -> None:
    document = write_report(make(), tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(document)
    assert page.svg_ids() == []  # nothing to draw, and no empty frames either
    text = " ".join(page.text)
    for message in messages:
        assert message in text
    assert_self_contained(document, page)


def test_missing_values_leave_gaps_not_garbage(tmp_path: Path) -> None:
    data = demo_like_data()
    windows = [w for w in data["drift"]["windows"] if w["device"] == DEVICES[0]]
    windows[3]["psi"]["bearing_temp_c"] = float("nan")  # one gap in one line
    del windows[5]["psi"]["flow_l_min"]  # a feature missing from a window
    for w in data["drift"]["windows"]:
        w["output_psi"] = float("inf") if w["device"] == DEVICES[1] else w["output_psi"]
    looks = data["experiment"]["looks"]
    looks[5].update(champion_metric=None, champion_ci=[None, None], p_value=float("nan"))
    looks[6]["fixed_p_value"] = 0.0  # drawn at the log axis floor
    page = Page(render_report(data))

    first = page.inside("drift-chart-bearing_temp_c", "path", "series")
    assert len(first) == 5  # 4 streams, the first split in two by the gap
    assert len(page.inside("drift-chart-flow_l_min", "path", "series")) == 5
    assert len(page.inside("ab-metric-chart", "path", "series")) == 3  # champion split once
    for e in page.elements:
        if e.svg is None:
            continue
        for name, value in e.attrs.items():
            assert "nan" not in value.lower() and "inf" not in value.lower(), (e.tag, name, value)
        if e.tag == "path":
            assert all(math.isfinite(v) for v in _coordinates(e.attrs["d"]))
    # The undefined output PSI of one device is simply not plotted.
    tips = [t.text for t in page.inside("drift-output-chart", "title")]
    assert not any(DEVICES[1] in tip for tip in tips)


HOSTILE = "<script>alert(1)</script>"
HOSTILE_FEATURE = '"><img src=x onerror=alert(1)>'


def _hostile() -> dict[str, Any]:
    data = demo_like_data(rolled_back=True)
    data.update(title=HOSTILE, workspace=HOSTILE, summary={HOSTILE: HOSTILE})
    data["timeline"][0].update(step=HOSTILE, detail=HOSTILE)
    data["drift"]["features"][0] = HOSTILE_FEATURE
    for w in data["drift"]["windows"]:
        w["psi"][HOSTILE_FEATURE] = w["psi"].pop(FEATURES[0])
        if w["device"] == DEVICES[1]:
            w["device"] = HOSTILE
    exp = data["experiment"]
    exp.update(id=HOSTILE, champion=HOSTILE, metric=HOSTILE)
    exp["decision"].update(action=HOSTILE, reason=HOSTILE)
    rollout = data["rollout"]
    rollout.update(model=HOSTILE, state=HOSTILE, previous=HOSTILE)
    rollout["batches"][0].update(label=HOSTILE, devices=[HOSTILE], result=HOSTILE, reason=HOSTILE)
    for e in data["events"]:
        e.update(kind=HOSTILE, subject=HOSTILE, message=HOSTILE)
    data["events"].append({"t": T0, "kind": "rollback", "subject": HOSTILE, "message": HOSTILE})
    data["devices"][0].update(device=HOSTILE, model=HOSTILE)
    return data


def test_user_text_is_escaped_everywhere(tmp_path: Path) -> None:
    path = write_report(_hostile(), tmp_path / "report.html")
    document = path.read_text(encoding="utf-8")
    assert "<script" not in document and "<img" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    page = Page(document)
    assert_self_contained(document, page)
    assert "drift-chart-img-src-x-onerror-alert-1" in page.svg_ids()  # a safe, stable id
    assert all(e.attrs.get("id", "").isascii() for e in page.elements)
    # Unknown states never become CSS classes: the hostile result is drawn neutral.
    assert not any("<" in e.attrs.get("class", "") for e in page.elements)

    dom = run_chromium(["--dump-dom", path.as_uri()], tmp_path)
    parsed = Page(dom)
    assert not [e for e in parsed.elements if e.tag in {"script", "img"}]
    assert not [e for e in parsed.elements if any(a.startswith("on") for a in e.attrs)]
    title = next(e for e in parsed.elements if e.tag == "h1")
    assert title.text == HOSTILE  # shown as text, exactly as the user wrote it


def test_a_single_instant_still_gets_a_readable_time_axis() -> None:
    data = demo_like_data()
    data["drift"].update(windows=data["drift"]["windows"][:1], shift_at=None)
    data["experiment"]["looks"] = data["experiment"]["looks"][-1:]
    batch = data["rollout"]["batches"][0]
    batch["finished"] = batch["started"]  # an instant batch
    data["rollout"]["batches"] = [batch]
    data["events"] = []
    page = Page(render_report(data))
    for svg_id in [f"drift-chart-{FEATURES[0]}", "ab-metric-chart", "rollout-chart"]:
        ticks = [t.text for t in page.inside(svg_id, "text", "tick")]
        x_ticks = [t for t in ticks if ":" in t]
        # About a minute around the instant, in round steps: not five years around it.
        assert 3 <= len(x_ticks) <= 8, (svg_id, ticks)
        assert all(len(t) <= 5 for t in x_ticks), (svg_id, ticks)
    assert page.inside(f"drift-chart-{FEATURES[0]}", "circle", "point")
    assert [float(b.attrs["width"]) for b in page.inside("rollout-chart", "rect", "bar")] == [3.0]
