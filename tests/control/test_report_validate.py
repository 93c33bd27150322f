"""The report's input is checked at the boundary: errors name the field, odd-but-valid input
(numpy numbers, states nobody told the report about) still renders, and a failed render
never replaces a good report on disk."""

from __future__ import annotations

import copy
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeloop_control.report import ReportDataError, parse_report, render_report, write_report
from tests.control.test_report_render import Page, demo_like_data

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    """``_set("drift.windows.3.t", None)``: replace one field (``None`` path end deletes)."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        key_or_index: Any = int(last) if last.isdigit() else last
        if value is _DELETE:
            del node[key_or_index]
        else:
            node[key_or_index] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("title", _DELETE), "title is missing"),
        (_set("experiment", _DELETE), "experiments is missing"),
        (_set("generated_at", "yesterday"), "generated_at: expected a finite number"),
        (_set("generated_at", float("nan")), "generated_at: expected a finite number"),
        (_set("title", 42), "title: expected a string, got int 42"),
        (_set("timeline.1.step", _DELETE), "timeline[1].step is missing"),
        (_set("events.0.kind", _DELETE), "events[0].kind is missing"),
        (_set("events.2.t", True), "events[2].t: expected a finite number"),
        (_set("drift.features", _DELETE), "drift.features is missing"),
        (_set("drift.features", "bearing_temp_c"), "drift.features: expected a list, got str"),
        (_set("drift.features.1", "bearing_temp_c"), "drift.features: duplicate feature names"),
        (_set("drift.psi_threshold", 0), "drift.psi_threshold: expected a positive number"),
        (_set("drift.shift_at", "mid-way"), "drift.shift_at: expected a finite number"),
        (_set("drift.windows.3.t", None), "drift.windows[3].t: expected a finite number"),
        (_set("drift.windows.0.device", None), "drift.windows[0].device: expected a string"),
        (_set("drift.windows.0.dataset_drift", "yes"), "drift.windows[0].dataset_drift"),
        (_set("drift.windows.0.psi", [0.1, 0.2]), "drift.windows[0].psi: expected a mapping"),
        (_set("drift.windows.0.psi.flow_l_min", "high"), "drift.windows[0].psi['flow_l_min']"),
        (_set("drift.windows.0.n", 2.5), "drift.windows[0].n: expected a non-negative integer"),
        (_set("experiment.higher_is_better", "yes"), "experiment.higher_is_better"),
        (_set("experiment.looks", None), "experiment.looks: expected a list"),
        (_set("experiment.looks.2.champion_ci", [0.1]), "experiment.looks[2].champion_ci"),
        (_set("experiment.looks.2.p_value", "0.01"), "experiment.looks[2].p_value"),
        (_set("experiment.decision.action", _DELETE), "experiment.decision.action is missing"),
        (_set("experiment.srm.flag", None), "experiment.srm.flag: expected true or false"),
        (
            _set("rollout.batches.1.devices", "pump-1"),
            "rollout.batches[1].devices: expected a list",
        ),
        (_set("rollout.batches.0.started", "now"), "rollout.batches[0].started"),
        (_set("rollout.batches.0.index", None), "rollout.batches[0].index: expected a non-neg"),
        (_set("rollout.batches.0.index", _DELETE), "rollout.batches[0].index is missing"),
        (_set("devices.0.requests", -1), "devices[0].requests: expected a non-negative integer"),
        (_set("devices.0.online", "up"), "devices[0].online: expected true or false"),
        (_set("summary", [("requests", 1)]), "summary: expected a mapping"),
    ],
)
def test_errors_name_the_field(mutate: Mutation, message: str) -> None:
    data = demo_like_data()
    mutate(data)
    with pytest.raises(ReportDataError) as caught:
        render_report(data)
    assert message in str(caught.value)


def test_not_a_mapping() -> None:
    with pytest.raises(ReportDataError, match=r"^data: expected a mapping, got list"):
        render_report([])  # type: ignore[arg-type]


def test_numpy_values_and_unknown_states_are_fine() -> None:
    data = demo_like_data()
    window = data["drift"]["windows"][0]
    window.update(t=np.float64(window["t"]), n=np.int64(500), dataset_drift=np.bool_(True))
    window["psi"]["flow_l_min"] = np.float32(0.5)
    data["drift"]["windows"][1]["n"] = float("nan")  # a count nobody knows is "no value"
    data["rollout"]["batches"][2]["result"] = "aborted"
    data["rollout"]["state"] = "paused"
    data["events"].append({"t": data["generated_at"], "kind": "operator_note"})
    data["extra_key_from_a_newer_demo"] = {"ignored": True}
    parsed = parse_report(data)
    assert parsed.drift is not None and parsed.drift.windows[0].n == 500
    assert parsed.drift.windows[0].psi["flow_l_min"] == pytest.approx(0.5)
    assert parsed.drift.windows[1].n is None
    page = Page(render_report(data))
    badges = {
        e.text: e.attrs["class"] for e in page.elements if "badge" in e.attrs.get("class", "")
    }
    assert badges["aborted"] == "badge other" and badges["paused"] == "badge other"
    assert badges["operator_note"] == "badge other"


def test_optional_fields_may_be_left_out() -> None:
    data = demo_like_data()
    for w in data["drift"]["windows"]:
        for key in ("n", "ks_p", "output_psi"):
            del w[key]
    del data["drift"]["shift_at"], data["drift"]["alpha"]
    for key in ("alpha", "tau", "srm", "decision"):
        del data["experiment"][key]
    for look in data["experiment"]["looks"]:
        del look["fixed_p_value"], look["champion_ci"]
    del data["rollout"]["previous"]
    data["devices"] = [{"device": "pump-station-9"}]
    data["events"] = [{"t": e["t"], "kind": e["kind"]} for e in data["events"]]
    page = Page(render_report(data))
    assert "drift-output-chart" not in page.svg_ids()
    assert {"ab-cs-chart", "ab-pvalue-chart", "rollout-chart"} <= set(page.svg_ids())
    assert not page.inside("ab-pvalue-chart", "line", "ref")  # no alpha, no alpha line


def test_input_is_not_modified() -> None:
    data = demo_like_data()
    before = copy.deepcopy(data)
    render_report(data)
    assert data == before


def test_write_report_is_atomic_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "report.html"
    written = write_report(demo_like_data(), target)
    assert written == target and written.is_absolute()
    good = written.read_bytes()
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    bad = demo_like_data()
    del bad["drift"]["windows"][0]["t"]
    with pytest.raises(ReportDataError, match=r"drift\.windows\[0\]\.t is missing"):
        write_report(bad, target)
    assert target.read_bytes() == good  # the earlier report survives a failed one
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temp left


def _plural() -> dict[str, Any]:
    data = demo_like_data()
    data["experiments"] = [data.pop("experiment")]
    data["rollouts"] = [data.pop("rollout")]
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("experiments.0", None), "experiments[0]: expected a mapping"),
        (_set("rollouts", {"model": "x"}), "rollouts: expected a list"),
        (_set("experiments.0.looks.1.t", None), "experiments[0].looks[1].t"),
        (_set("rollouts.0.batches.0.result", 3), "rollouts[0].batches[0].result"),
        (_set("devices.0.outbox_depth", -2), "devices[0].outbox_depth"),
        (_set("drift.feature_notes", ["x"]), "drift.feature_notes: expected a mapping"),
        (_set("empty_reasons", {"drift": 1}), "empty_reasons['drift']: expected a string"),
    ],
)
def test_the_lists_of_experiments_and_rollouts_are_checked(mutate: Mutation, message: str) -> None:
    data = _plural()
    mutate(data)
    with pytest.raises(ReportDataError) as caught:
        render_report(data)
    assert message in str(caught.value)


def test_both_spellings_give_the_same_page() -> None:
    data = demo_like_data()
    assert render_report(_plural()).replace("\n", "") == render_report(data).replace("\n", "")
    del data["rollout"]
    with pytest.raises(ReportDataError, match="rollouts is missing"):
        render_report(data)
