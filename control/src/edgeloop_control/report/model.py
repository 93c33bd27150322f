"""The report's input after validation: plain frozen records, every optional value normalised.

Renderers only ever see these types, so they never have to ask "is it missing, None or
NaN?" again: a measurement that is absent is ``None`` and is left out of charts.
"""

from __future__ import annotations

from dataclasses import dataclass

# (low, high); either bound may be None when it is undefined (e.g. no outcomes yet).
Interval = tuple[float | None, float | None]


@dataclass(frozen=True)
class Step:
    t: float
    step: str
    duration_s: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    subject: str = ""
    message: str = ""


@dataclass(frozen=True)
class DriftWindow:
    t: float
    device: str
    variant: str
    dataset_drift: bool
    psi: dict[str, float | None]
    ks_p: dict[str, float | None]
    n: int | None = None
    output_psi: float | None = None
    # The agent's label-free accuracy estimate (CBPE) and its training-time reference.
    estimated: float | None = None
    estimated_reference: float | None = None

    @property
    def stream(self) -> tuple[str, str]:
        return (self.device, self.variant)


@dataclass(frozen=True)
class Drift:
    features: tuple[str, ...]
    psi_threshold: float
    windows: tuple[DriftWindow, ...]
    alpha: float | None = None
    shift_at: float | None = None
    # Why a feature has no values (e.g. the agent does not monitor categorical features).
    feature_notes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Look:
    t: float
    n_champion: int | None = None
    n_challenger: int | None = None
    champion_metric: float | None = None
    challenger_metric: float | None = None
    champion_ci: Interval = (None, None)
    challenger_ci: Interval = (None, None)
    estimate: float | None = None
    cs_low: float | None = None
    cs_high: float | None = None
    p_value: float | None = None
    fixed_p_value: float | None = None


@dataclass(frozen=True)
class Srm:
    p_value: float | None
    flag: bool
    unit: str = "requests"  # what was counted: requests, keys (distinct routing keys), ...


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str = ""
    t: float | None = None


@dataclass(frozen=True)
class Experiment:
    id: str
    champion: str
    challenger: str
    metric: str
    higher_is_better: bool
    looks: tuple[Look, ...]
    alpha: float | None = None
    tau: float | None = None
    srm: Srm | None = None
    decision: Decision | None = None
    state: str = ""


@dataclass(frozen=True)
class Batch:
    index: int
    label: str
    devices: tuple[str, ...]
    result: str
    started: float | None = None
    finished: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Rollout:
    model: str
    state: str
    batches: tuple[Batch, ...]
    previous: str | None = None
    id: str = ""


@dataclass(frozen=True)
class Device:
    device: str
    online: bool | None = None
    model: str | None = None
    requests: int | None = None
    errors: int | None = None
    p99_ms: float | None = None
    rss_mb: float | None = None
    desired: str | None = None
    outbox_depth: int | None = None
    last_seen: float | None = None
    drift: str | None = None


@dataclass(frozen=True)
class ReportData:
    title: str
    generated_at: float
    timeline: tuple[Step, ...]
    events: tuple[Event, ...]
    devices: tuple[Device, ...]
    summary: tuple[tuple[str, object], ...]
    drift: Drift | None = None
    experiments: tuple[Experiment, ...] = ()
    rollouts: tuple[Rollout, ...] = ()
    workspace: str | None = None
    # Why the experiment/rollout sections are empty, when the caller knows better than
    # "none ran" (e.g. "no experiment in the selected time range").
    empty_reasons: tuple[tuple[str, str], ...] = ()

    def empty_reason(self, section: str, default: str) -> str:
        return dict(self.empty_reasons).get(section, default)

    def all_times(self) -> list[float]:
        """Every timestamp in the data: the report's clock starts at the earliest one."""
        times = [s.t for s in self.timeline] + [e.t for e in self.events]
        if self.drift is not None:
            times += [w.t for w in self.drift.windows]
            if self.drift.shift_at is not None:
                times.append(self.drift.shift_at)
        for exp in self.experiments:
            times += [look.t for look in exp.looks]
            if exp.decision is not None and exp.decision.t is not None:
                times.append(exp.decision.t)
        for rollout in self.rollouts:
            for b in rollout.batches:
                times += [t for t in (b.started, b.finished) if t is not None]
        return times
