"""Check the report's input at the boundary and normalise it into :mod:`.model` records.

The rule (also in docs/report.md): every top-level section key must be present (a typo
must not quietly turn into "no experiment ran"), but a section may be empty or ``None``
where the contract allows it. Inside a section, what locates or names a thing is required
(times, names, features, thresholds, actions, results); measurements and descriptive text
are optional, and a missing, ``None``, NaN or infinite measurement becomes ``None`` so the
charts skip it. Enum-like strings (event kinds, batch results, rollout states, decision
actions) are not restricted to the known values: an unattended demo must still write its
report when another module grows a new state, which is then drawn in a neutral colour.
Unknown keys are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeloop_agent.wire.numeric import is_number
from edgeloop_control.errors import EdgeloopError

from .model import (
    Batch,
    Decision,
    Device,
    Drift,
    DriftWindow,
    Event,
    Experiment,
    Interval,
    Look,
    ReportData,
    Rollout,
    Srm,
    Step,
)

_MISSING = object()
_SECTIONS = (
    "title",
    "generated_at",
    "workspace",
    "timeline",
    "events",
    "drift",
    "experiments",
    "rollouts",
    "devices",
    "summary",
)


class ReportDataError(EdgeloopError, ValueError):
    """Malformed report input; the message names the field (e.g. ``drift.windows[3].t``)."""


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _bad(path: str, expected: str, value: object) -> ReportDataError:
    return ReportDataError(f"{path}: expected {expected}, got {_describe(value)}")


def _get(obj: Mapping[str, Any], key: str, path: str, *, required: bool) -> Any:
    if key in obj:
        return obj[key]
    if required:
        raise ReportDataError(f"{path}.{key} is missing" if path else f"{key} is missing")
    return _MISSING


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(path, "a mapping", value)
    return value


def _sequence(value: object, path: str) -> Sequence[Any]:
    # A string is a sequence too, but never the list the contract asks for.
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise _bad(path, "a list", value)
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "a string", value)
    return value


def _optional_text(value: object, path: str) -> str:
    return "" if value is _MISSING or value is None else _text(value, path)


def _time(value: object, path: str) -> float:
    if not is_number(value):
        raise _bad(path, "a finite number (unix seconds)", value)
    return float(value)


def _optional_time(value: object, path: str) -> float | None:
    return None if value is _MISSING or value is None else _time(value, path)


def _measurement(value: object, path: str) -> float | None:
    """A number to plot, or None when there is none (missing, None, NaN, +-inf)."""
    if value is _MISSING or value is None:
        return None
    if not is_number(value, finite=False):  # NaN and +-inf are gaps, not errors
        raise _bad(path, "a number or None", value)
    number = float(value)
    return number if math.isfinite(number) else None


def _required_number(value: object, path: str) -> float:
    number = _measurement(value, path)
    if number is None:
        raise _bad(path, "a finite number", value)
    return number


def _count(value: object, path: str) -> int | None:
    """A count (n, requests, errors): like a measurement, NaN/inf mean "no value"."""
    number = _measurement(value, path)
    if number is None:
        return None
    if number != int(number) or number < 0:
        raise _bad(path, "a non-negative integer or None", value)
    return int(number)


def _index(value: object, path: str) -> int:
    index = _count(value, path)
    if index is None:
        raise _bad(path, "a non-negative integer", value)
    return index


def _flag(value: object, path: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise _bad(path, "true or false", value)
    return bool(value)


def _optional_flag(value: object, path: str) -> bool | None:
    return None if value is _MISSING or value is None else _flag(value, path)


def _interval(value: object, path: str) -> Interval:
    if value is _MISSING or value is None:
        return (None, None)
    pair = _sequence(value, path)
    if len(pair) != 2:
        raise _bad(path, "a [low, high] pair", value)
    return (_measurement(pair[0], f"{path}[0]"), _measurement(pair[1], f"{path}[1]"))


def _per_feature(value: object, path: str) -> dict[str, float | None]:
    if value is _MISSING or value is None:
        return {}
    return {
        _text(k, f"{path} key"): _measurement(v, f"{path}[{k!r}]")
        for k, v in _mapping(value, path).items()
    }


def _step(value: object, path: str) -> Step:
    obj = _mapping(value, path)
    return Step(
        t=_time(_get(obj, "t", path, required=True), f"{path}.t"),
        step=_text(_get(obj, "step", path, required=True), f"{path}.step"),
        duration_s=_measurement(
            _get(obj, "duration_s", path, required=False), f"{path}.duration_s"
        ),
        detail=_optional_text(_get(obj, "detail", path, required=False), f"{path}.detail"),
    )


def _event(value: object, path: str) -> Event:
    obj = _mapping(value, path)
    return Event(
        t=_time(_get(obj, "t", path, required=True), f"{path}.t"),
        kind=_text(_get(obj, "kind", path, required=True), f"{path}.kind"),
        subject=_optional_text(_get(obj, "subject", path, required=False), f"{path}.subject"),
        message=_optional_text(_get(obj, "message", path, required=False), f"{path}.message"),
    )


def _window(value: object, path: str) -> DriftWindow:
    obj = _mapping(value, path)

    def opt(key: str) -> Any:
        return _get(obj, key, path, required=False)

    return DriftWindow(
        t=_time(_get(obj, "t", path, required=True), f"{path}.t"),
        device=_text(_get(obj, "device", path, required=True), f"{path}.device"),
        variant=_text(_get(obj, "variant", path, required=True), f"{path}.variant"),
        dataset_drift=_flag(
            _get(obj, "dataset_drift", path, required=True), f"{path}.dataset_drift"
        ),
        psi=_per_feature(_get(obj, "psi", path, required=True), f"{path}.psi"),
        ks_p=_per_feature(opt("ks_p"), f"{path}.ks_p"),
        n=_count(opt("n"), f"{path}.n"),
        output_psi=_measurement(opt("output_psi"), f"{path}.output_psi"),
        estimated=_measurement(opt("estimated"), f"{path}.estimated"),
        estimated_reference=_measurement(opt("estimated_reference"), f"{path}.estimated_reference"),
    )


def _drift(value: object, path: str) -> Drift | None:
    if value is None:
        return None
    obj = _mapping(value, path)
    features = tuple(
        _text(f, f"{path}.features[{i}]")
        for i, f in enumerate(
            _sequence(_get(obj, "features", path, required=True), f"{path}.features")
        )
    )
    duplicates = sorted({f for f in features if features.count(f) > 1})
    if duplicates:
        raise ReportDataError(f"{path}.features: duplicate feature names {duplicates}")
    threshold = _required_number(
        _get(obj, "psi_threshold", path, required=True), f"{path}.psi_threshold"
    )
    if threshold <= 0:
        raise _bad(f"{path}.psi_threshold", "a positive number", threshold)
    windows = _sequence(_get(obj, "windows", path, required=True), f"{path}.windows")
    return Drift(
        features=features,
        psi_threshold=threshold,
        windows=tuple(_window(w, f"{path}.windows[{i}]") for i, w in enumerate(windows)),
        alpha=_measurement(_get(obj, "alpha", path, required=False), f"{path}.alpha"),
        shift_at=_optional_time(_get(obj, "shift_at", path, required=False), f"{path}.shift_at"),
        feature_notes=_notes(_get(obj, "feature_notes", path, required=False), path),
    )


def _notes(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if value is _MISSING or value is None:
        return ()
    return tuple(
        (_text(k, f"{path}.feature_notes key"), _text(v, f"{path}.feature_notes[{k!r}]"))
        for k, v in _mapping(value, f"{path}.feature_notes").items()
    )


def _look(value: object, path: str) -> Look:
    obj = _mapping(value, path)

    def num(key: str) -> float | None:
        return _measurement(_get(obj, key, path, required=False), f"{path}.{key}")

    def n(key: str) -> int | None:
        return _count(_get(obj, key, path, required=False), f"{path}.{key}")

    def ci(key: str) -> Interval:
        return _interval(_get(obj, key, path, required=False), f"{path}.{key}")

    return Look(
        t=_time(_get(obj, "t", path, required=True), f"{path}.t"),
        n_champion=n("n_champion"),
        n_challenger=n("n_challenger"),
        champion_metric=num("champion_metric"),
        challenger_metric=num("challenger_metric"),
        champion_ci=ci("champion_ci"),
        challenger_ci=ci("challenger_ci"),
        estimate=num("estimate"),
        cs_low=num("cs_low"),
        cs_high=num("cs_high"),
        p_value=num("p_value"),
        fixed_p_value=num("fixed_p_value"),
    )


def _srm(value: object, path: str) -> Srm | None:
    if value is _MISSING or value is None:
        return None
    obj = _mapping(value, path)
    return Srm(
        p_value=_measurement(_get(obj, "p_value", path, required=False), f"{path}.p_value"),
        flag=_flag(_get(obj, "flag", path, required=True), f"{path}.flag"),
        unit=_optional_text(_get(obj, "unit", path, required=False), f"{path}.unit") or "requests",
    )


def _decision(value: object, path: str) -> Decision | None:
    if value is _MISSING or value is None:
        return None
    obj = _mapping(value, path)
    return Decision(
        action=_text(_get(obj, "action", path, required=True), f"{path}.action"),
        reason=_optional_text(_get(obj, "reason", path, required=False), f"{path}.reason"),
        t=_optional_time(_get(obj, "t", path, required=False), f"{path}.t"),
    )


def _experiment(value: object, path: str) -> Experiment | None:
    if value is None:
        return None
    obj = _mapping(value, path)

    def text(key: str) -> str:
        return _text(_get(obj, key, path, required=True), f"{path}.{key}")

    def opt(key: str) -> Any:
        return _get(obj, key, path, required=False)

    looks = _sequence(_get(obj, "looks", path, required=True), f"{path}.looks")
    return Experiment(
        id=text("id"),
        champion=text("champion"),
        challenger=text("challenger"),
        metric=text("metric"),
        higher_is_better=_flag(
            _get(obj, "higher_is_better", path, required=True), f"{path}.higher_is_better"
        ),
        looks=tuple(_look(v, f"{path}.looks[{i}]") for i, v in enumerate(looks)),
        alpha=_measurement(opt("alpha"), f"{path}.alpha"),
        tau=_measurement(opt("tau"), f"{path}.tau"),
        srm=_srm(opt("srm"), f"{path}.srm"),
        decision=_decision(opt("decision"), f"{path}.decision"),
        state=_optional_text(opt("state"), f"{path}.state"),
    )


def _batch(value: object, path: str) -> Batch:
    obj = _mapping(value, path)
    devices = _sequence(_get(obj, "devices", path, required=True), f"{path}.devices")
    return Batch(
        index=_index(_get(obj, "index", path, required=True), f"{path}.index"),
        label=_text(_get(obj, "label", path, required=True), f"{path}.label"),
        devices=tuple(_text(d, f"{path}.devices[{i}]") for i, d in enumerate(devices)),
        result=_text(_get(obj, "result", path, required=True), f"{path}.result"),
        started=_optional_time(_get(obj, "started", path, required=False), f"{path}.started"),
        finished=_optional_time(_get(obj, "finished", path, required=False), f"{path}.finished"),
        reason=_optional_text(_get(obj, "reason", path, required=False), f"{path}.reason"),
    )


def _rollout(value: object, path: str) -> Rollout | None:
    if value is None:
        return None
    obj = _mapping(value, path)
    batches = _sequence(_get(obj, "batches", path, required=True), f"{path}.batches")
    previous = _get(obj, "previous", path, required=False)
    return Rollout(
        model=_text(_get(obj, "model", path, required=True), f"{path}.model"),
        state=_text(_get(obj, "state", path, required=True), f"{path}.state"),
        batches=tuple(_batch(b, f"{path}.batches[{i}]") for i, b in enumerate(batches)),
        previous=None
        if previous is _MISSING or previous is None
        else _text(previous, f"{path}.previous"),
        id=_optional_text(_get(obj, "id", path, required=False), f"{path}.id"),
    )


def _device(value: object, path: str) -> Device:
    obj = _mapping(value, path)

    def opt(key: str) -> Any:
        return _get(obj, key, path, required=False)

    model = opt("model")

    def opt_text(key: str) -> str | None:
        value = opt(key)
        return None if value is _MISSING or value is None else _text(value, f"{path}.{key}")

    return Device(
        device=_text(_get(obj, "device", path, required=True), f"{path}.device"),
        online=_optional_flag(opt("online"), f"{path}.online"),
        model=None if model is _MISSING or model is None else _text(model, f"{path}.model"),
        requests=_count(opt("requests"), f"{path}.requests"),
        errors=_count(opt("errors"), f"{path}.errors"),
        p99_ms=_measurement(opt("p99_ms"), f"{path}.p99_ms"),
        rss_mb=_measurement(opt("rss_mb"), f"{path}.rss_mb"),
        desired=opt_text("desired"),
        outbox_depth=_count(opt("outbox_depth"), f"{path}.outbox_depth"),
        last_seen=_optional_time(opt("last_seen"), f"{path}.last_seen"),
        drift=opt_text("drift"),
    )


def _summary(value: object, path: str) -> tuple[tuple[str, object], ...]:
    if value is None:
        return ()
    return tuple((_text(k, f"{path} key"), v) for k, v in _mapping(value, path).items())


def _items(value: object, path: str) -> Sequence[Any]:
    return () if value is None else _sequence(value, path)


def _plural(obj: Mapping[str, Any], plural: str, singular: str) -> Sequence[Any]:
    """``experiments``/``rollouts`` are lists; the older single ``experiment``/``rollout``
    key (a mapping or None) is still read, as a list of at most one."""
    if plural in obj:
        return _items(obj[plural], plural)
    if singular in obj:
        return () if obj[singular] is None else (obj[singular],)
    raise ReportDataError(f"{plural} is missing")


def _each(items: Sequence[Any], parse: Any, name: str, single: bool) -> tuple[Any, ...]:
    if single:
        return tuple(parse(v, name) for v in items)
    # Inside a list an item is never None: that would be a caller's bug, not "none ran".
    return tuple(parse(_mapping(v, f"{name}s[{i}]"), f"{name}s[{i}]") for i, v in enumerate(items))


def _empty_reasons(value: object) -> tuple[tuple[str, str], ...]:
    if value is _MISSING or value is None:
        return ()
    return tuple(
        (_text(k, "empty_reasons key"), _text(v, f"empty_reasons[{k!r}]"))
        for k, v in _mapping(value, "empty_reasons").items()
    )


def parse_report(data: object) -> ReportData:
    """Validate ``data`` (the contract in docs/report.md) into a :class:`ReportData`.

    Raises :class:`ReportDataError` naming the first missing or malformed field.
    """
    obj = _mapping(data, "data")
    for key in _SECTIONS:
        if key not in ("experiments", "rollouts"):  # checked by _plural
            _get(obj, key, "", required=True)
    experiments = _plural(obj, "experiments", "experiment")
    rollouts = _plural(obj, "rollouts", "rollout")
    single = "experiments" not in obj
    workspace = obj["workspace"]
    return ReportData(
        title=_text(obj["title"], "title"),
        generated_at=_time(obj["generated_at"], "generated_at"),
        workspace=None if workspace is None else _text(workspace, "workspace"),
        timeline=tuple(
            _step(s, f"timeline[{i}]") for i, s in enumerate(_items(obj["timeline"], "timeline"))
        ),
        events=tuple(
            _event(e, f"events[{i}]") for i, e in enumerate(_items(obj["events"], "events"))
        ),
        drift=_drift(obj["drift"], "drift"),
        experiments=_each(experiments, _experiment, "experiment", single),
        rollouts=_each(rollouts, _rollout, "rollout", "rollouts" not in obj),
        devices=tuple(
            _device(d, f"devices[{i}]") for i, d in enumerate(_items(obj["devices"], "devices"))
        ),
        summary=_summary(obj["summary"], "summary"),
        empty_reasons=_empty_reasons(obj.get("empty_reasons", _MISSING)),
    )
