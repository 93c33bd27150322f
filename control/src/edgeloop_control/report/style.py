"""The page's stylesheet: light, readable on screen, charts kept whole when printed."""

from __future__ import annotations

from .palette import TONES

_BASE = """
:root { color-scheme: light; --fg: #1d2127; --muted: #5f6670; --line: #dde1e6;
  --panel: #f5f7f9; --accent: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 56px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--panel); padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.meta, .lead, .facts, figcaption, .empty, .heat-legend { color: var(--muted); }
.lead { max-width: 900px; }
nav.toc { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
ul.glance { margin: 4px 0 12px; padding-left: 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
  gap: 16px 20px; }
figure { margin: 0 0 10px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 12px; }
figcaption.chart-title { color: var(--fg); font-weight: 600; font-size: 13px;
  overflow-wrap: anywhere; }
svg.chart { display: block; width: 100%; height: auto; max-width: 980px; font-size: 10px; }
/* Small multiples stay small on a narrow screen rather than blowing their text up. */
figure.small svg.chart { max-width: 540px; }
svg.chart .plot-bg { fill: #fff; stroke: none; }
svg.chart .gridline { stroke: #eceff2; stroke-width: 1; }
svg.chart .axis { stroke: #9aa1a9; stroke-width: 1; }
svg.chart .tick { fill: var(--muted); font-size: 10px; }
svg.chart .axis-label { fill: #3b4148; font-size: 10.5px; }
svg.chart .ref-label, svg.chart .marker-label { font-size: 10px; font-weight: 600;
  paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg.chart .direction { fill: var(--muted); font-size: 10.5px; font-style: italic; }
svg.chart .bar-label { fill: var(--fg); font-size: 10.5px; }
svg.chart .row-bg { fill: #f6f7f9; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 14px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--panel); font-weight: 600; }
caption { text-align: left; font-weight: 600; padding: 4px 0; caption-side: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.events td:nth-child(-n+2) { white-space: nowrap; font-variant-numeric: tabular-nums; }
table.events td:last-child, table.steps td:last-child { overflow-wrap: anywhere; }
/* Long device ids and version lists wrap inside the page instead of widening it. */
table.fleet { width: 100%; }
table.fleet td { overflow-wrap: anywhere; }
.tables { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; line-height: 19px; white-space: nowrap; }
.decision { font-size: 15px; }
.warning { border-left: 4px solid; padding: 6px 12px; background: #fdf0f0; }
.empty { font-style: italic; padding: 10px 14px; background: var(--panel); border-radius: 6px; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 6px; display: flex; flex-wrap: wrap;
  gap: 2px 16px; font-size: 12px; }
ul.legend li { overflow-wrap: anywhere; }
.legend .key { display: inline-block; width: 22px; margin-right: 6px; vertical-align: middle;
  border-top: 2.5px solid var(--c); }
.legend .key.dash { border-top-style: dashed; }
.legend .key.band, .legend .key.bar { height: 11px; border: 0; background: var(--c); }
.legend .key.band { opacity: 0.3; }
.legend .key.dot, .legend .key.ring { width: 9px; height: 9px; border-radius: 50%; }
.legend .key.dot { border: 0; background: var(--c); }
.legend .key.ring { border: 2px solid var(--c); background: #fff; }
.heat-wrap { overflow-x: auto; margin-bottom: 12px; }
table.heat { font-size: 11px; }
table.heat th, table.heat td { padding: 2px 5px; border: 1px solid #fff; white-space: nowrap; }
table.heat td { text-align: center; min-width: 34px; font-variant-numeric: tabular-nums; }
table.heat td.na { color: #aaa; }
table.heat th.flag { color: #b2182b; }
.heat-legend span { display: inline-block; padding: 0 8px; margin-left: 2px; font-size: 11px; }
@page { margin: 12mm; }
@media print {
  main { max-width: none; padding: 0; }
  nav.toc { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table, .heat-wrap { break-inside: avoid; }
  .heat-wrap { overflow: visible; }
  .grid { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def stylesheet() -> str:
    badges = "\n".join(f".badge.{name} {{ background: {color}; }}" for name, color in TONES.items())
    return _BASE + badges + "\n.badge.pending { color: #1d2127; }\n"
