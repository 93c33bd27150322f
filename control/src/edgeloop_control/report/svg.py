"""A small SVG chart frame: axes, grid, lines, bands, points, reference lines.

Inline SVG, no script: the page must open from a file with no network and print as-is.
Gaps are honest: a ``None`` value breaks a line rather than being bridged, and a point
with no neighbour is drawn as a dot so it is not lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .markup import Html, esc
from .scale import LinearScale, LogScale, TimeScale
from .timefmt import Clock


class Scale(Protocol):
    lo: float
    hi: float

    def __call__(self, value: float) -> float: ...

    def ticks(self, max_ticks: int = ...) -> list[float]: ...

    def tick_formatter(self, max_ticks: int = ...) -> Callable[[float], str]: ...


@dataclass(frozen=True)
class Margins:
    top: float = 14
    right: float = 14
    bottom: float = 34
    left: float = 50


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    color: str
    tooltip: str
    radius: float = 2.2
    ring: str | None = None  # stroke colour that flags the point (e.g. drift detected)


def _f(v: float) -> str:
    return f"{v:.1f}"


def _segments(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


@dataclass
class Chart:
    """One chart. ``x``/``y`` map data to pixels inside the plot area (set by the caller)."""

    chart_id: str
    title: str
    width: float
    height: float
    x: Scale
    y: Scale
    x_label: str = ""
    y_label: str = ""
    desc: str = ""
    margins: Margins = field(default_factory=Margins)
    x_ticks: int = 6
    y_ticks: int = 5
    # Categorical rows (a Gantt chart): (y value, label) replace the numeric y ticks.
    y_labels: Sequence[tuple[float, str]] | None = None
    _clipped: list[str] = field(default_factory=list)
    _over: list[str] = field(default_factory=list)

    @property
    def plot_box(self) -> tuple[float, float, float, float]:
        m = self.margins
        return (m.left, m.top, self.width - m.right, self.height - m.bottom)

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float | None],
        *,
        color: str,
        width: float = 1.8,
        dash: str | None = None,
        cls: str = "series",
    ) -> None:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for run in _segments(xs, ys):
            if len(run) == 1:
                x, y = run[0]
                self._clipped.append(
                    f'<circle class="{cls}" cx="{_f(self.x(x))}" cy="{_f(self.y(y))}" '
                    f'r="{_f(width * 1.2)}" fill="{color}"/>'
                )
                continue
            d = " ".join(
                f"{'M' if i == 0 else 'L'}{_f(self.x(x))},{_f(self.y(y))}"
                for i, (x, y) in enumerate(run)
            )
            self._clipped.append(
                f'<path class="{cls}" d="{d}" fill="none" stroke="{color}" '
                f'stroke-width="{width}" stroke-linejoin="round"{dash_attr}/>'
            )

    def band(
        self,
        xs: Sequence[float],
        lows: Sequence[float | None],
        highs: Sequence[float | None],
        *,
        color: str,
        opacity: float = 0.18,
    ) -> None:
        """A shaded interval; a lone interval (neighbours undefined) becomes an error bar."""
        both = [
            None if lo is None or hi is None else (lo, hi)
            for lo, hi in zip(lows, highs, strict=True)
        ]
        runs: list[list[tuple[float, float, float]]] = [[]]
        for x, pair in zip(xs, both, strict=True):
            if pair is None:
                if runs[-1]:
                    runs.append([])
            else:
                runs[-1].append((x, pair[0], pair[1]))
        for run in (r for r in runs if r):
            if len(run) == 1:
                x, lo, hi = run[0]
                self._clipped.append(
                    f'<path class="band" d="M{_f(self.x(x))},{_f(self.y(lo))} '
                    f'L{_f(self.x(x))},{_f(self.y(hi))}" stroke="{color}" stroke-width="3" '
                    f'stroke-opacity="{min(1.0, opacity * 3):.2f}" fill="none"/>'
                )
                continue
            upper = [f"{_f(self.x(x))},{_f(self.y(hi))}" for x, _, hi in run]
            lower = [f"{_f(self.x(x))},{_f(self.y(lo))}" for x, lo, _ in reversed(run)]
            d = "M" + " L".join(upper + lower) + " Z"
            self._clipped.append(
                f'<path class="band" d="{d}" fill="{color}" fill-opacity="{opacity:.2f}" '
                f'stroke="none"/>'
            )

    def points(self, points: Sequence[Point]) -> None:
        for p in points:
            ring = (
                f' stroke="{p.ring}" stroke-width="1.6"'
                if p.ring
                else ' stroke="#ffffff" stroke-width="0.6"'
            )
            self._over.append(
                f'<circle class="point" cx="{_f(self.x(p.x))}" cy="{_f(self.y(p.y))}" '
                f'r="{_f(p.radius)}" fill="{p.color}"{ring}>'
                f"<title>{esc(p.tooltip)}</title></circle>"
            )

    def hline(self, y: float, *, color: str, label: str = "", dash: str | None = "5 3") -> None:
        x0, _, x1, _ = self.plot_box
        py = _f(self.y(y))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self._over.append(
            f'<line class="ref" x1="{_f(x0)}" y1="{py}" x2="{_f(x1)}" y2="{py}" stroke="{color}" '
            f'stroke-width="1.2"{dash_attr}><title>{esc(label)}</title></line>'
        )
        if label:
            self._over.append(
                f'<text class="ref-label" x="{_f(x1 - 3)}" y="{_f(self.y(y) - 3)}" '
                f'text-anchor="end" fill="{color}">{esc(label)}</text>'
            )

    def vline(
        self,
        x: float,
        *,
        color: str,
        label: str = "",
        dash: str | None = "3 3",
        label_above: bool = False,
    ) -> None:
        """A vertical marker; ``label_above`` puts its label in the top margin (Gantt rows
        fill the plot to the top, so a label inside would cover the first bar)."""
        _, y0, _, y1 = self.plot_box
        px = self.x(x)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self._over.append(
            f'<line class="marker" x1="{_f(px)}" y1="{_f(y0)}" x2="{_f(px)}" y2="{_f(y1)}" '
            f'stroke="{color}" stroke-width="1.4"{dash_attr}><title>{esc(label)}</title></line>'
        )
        if label:
            # Labels near the right edge flip to the left of the line so they stay visible.
            right_half = px > (self.plot_box[0] + self.plot_box[2]) / 2
            anchor, dx = ("end", -4) if right_half else ("start", 4)
            self._over.append(
                f'<text class="marker-label" x="{_f(px + dx)}" '
                f'y="{_f(y0 - 5 if label_above else y0 + 10)}" '
                f'text-anchor="{anchor}" fill="{color}">{esc(label)}</text>'
            )

    def raw(self, fragment: str, *, clipped: bool = False) -> None:
        """Markup built by the caller from escaped parts (bars, labels)."""
        (self._clipped if clipped else self._over).append(fragment)

    def _axes(self) -> list[str]:
        x0, y0, x1, y1 = self.plot_box
        out = [
            f'<rect class="plot-bg" x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" '
            f'height="{_f(y1 - y0)}"/>'
        ]
        if self.y_labels is None:
            y_fmt = self.y.tick_formatter(self.y_ticks)
            y_ticks = [(v, y_fmt(v)) for v in self.y.ticks(self.y_ticks)]
        else:
            y_ticks = list(self.y_labels)
        for v, text in y_ticks:
            py = _f(self.y(v))
            if self.y_labels is None:
                out.append(
                    f'<line class="gridline" x1="{_f(x0)}" y1="{py}" x2="{_f(x1)}" y2="{py}"/>'
                )
            out.append(
                f'<text class="tick" x="{_f(x0 - 5)}" y="{py}" text-anchor="end" '
                f'dominant-baseline="middle">{esc(text)}</text>'
            )
        x_fmt = self.x.tick_formatter(self.x_ticks)
        for v in self.x.ticks(self.x_ticks):
            px = _f(self.x(v))
            out.append(f'<line class="gridline" x1="{px}" y1="{_f(y0)}" x2="{px}" y2="{_f(y1)}"/>')
            out.append(
                f'<text class="tick" x="{px}" y="{_f(y1 + 13)}" text-anchor="middle">'
                f"{esc(x_fmt(v))}</text>"
            )
        out.append(f'<path class="axis" d="M{_f(x0)},{_f(y0)} V{_f(y1)} H{_f(x1)}" fill="none"/>')
        if self.x_label:
            out.append(
                f'<text class="axis-label" x="{_f((x0 + x1) / 2)}" y="{_f(self.height - 4)}" '
                f'text-anchor="middle">{esc(self.x_label)}</text>'
            )
        if self.y_label:
            cy = (y0 + y1) / 2
            out.append(
                f'<text class="axis-label" x="11" y="{_f(cy)}" text-anchor="middle" '
                f'transform="rotate(-90 11 {_f(cy)})">{esc(self.y_label)}</text>'
            )
        return out

    def render(self) -> Html:
        cid = esc(self.chart_id)
        x0, y0, x1, y1 = self.plot_box
        desc = f'<desc id="{cid}-desc">{esc(self.desc)}</desc>' if self.desc else ""
        described = f' aria-describedby="{cid}-desc"' if self.desc else ""
        parts = [
            f'<svg id="{cid}" class="chart" viewBox="0 0 {_f(self.width)} {_f(self.height)}" '
            f'width="{_f(self.width)}" height="{_f(self.height)}" role="img" '
            f'aria-labelledby="{cid}-title"{described}>',
            f'<title id="{cid}-title">{esc(self.title)}</title>{desc}',
            f'<clipPath id="{cid}-clip"><rect x="{_f(x0)}" y="{_f(y0)}" '
            f'width="{_f(x1 - x0)}" height="{_f(y1 - y0)}"/></clipPath>',
            *self._axes(),
            f'<g clip-path="url(#{cid}-clip)">',
            *self._clipped,
            "</g>",
            *self._over,
            "</svg>",
        ]
        return Html("".join(parts))


def time_chart(
    chart_id: str,
    title: str,
    *,
    x_domain: tuple[float, float],
    y_domain: tuple[float, float],
    clock: Clock,
    width: float = 380,
    height: float = 200,
    log_y: bool = False,
    margins: Margins | None = None,
    **options: object,
) -> Chart:
    """A chart whose x axis is time: elapsed ``m:ss`` since the clock's origin, or UTC dates
    when the page spans more than a day (``x_label`` defaults to say which)."""
    m = margins or Margins()
    x = TimeScale(
        x_domain[0], x_domain[1], m.left, width - m.right, origin=clock.origin, dates=clock.dates
    )
    options.setdefault("x_label", clock.axis_label)
    y_cls = LogScale if log_y else LinearScale
    y = y_cls(y_domain[0], y_domain[1], height - m.bottom, m.top)
    return Chart(chart_id, title, width, height, x, y, margins=m, **options)  # type: ignore[arg-type]
