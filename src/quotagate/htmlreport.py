"""``quotagate report --format html``: one self-contained page people look at.

Everything is in the file: CSS inline, charts as inline SVG drawn by matplotlib (the ``html``
extra), no script, no font, no image from elsewhere; a Content-Security-Policy that allows
nothing else keeps it so in any browser. Every name (address, folder, reason) is made printable
and goes through Jinja2's autoescaping: a folder called ``<script>`` is text on the page.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quotagate.errors import QuotagateError
from quotagate.forecast import Forecast, days_left, describe
from quotagate.history import DAY, Sample
from quotagate.model import Mailbox, Reading, State
from quotagate.sizes import format_size
from quotagate.text import printable
from quotagate.warn import fullness

NEAREST = 20  # rows in "nearest to full"
SOON_DAYS = 7.0  # "forecast to fill" means within this many days

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>quotagate report {{ generated }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right}.over{color:#b00;font-weight:bold}.unknown{color:#a60}
.bar{display:inline-block;height:.7em;background:#4a7;vertical-align:middle}
.bar.hot{background:#d60}.bar.full{background:#c22}figure{margin:.5em 0 1.5em}
figcaption{font-weight:bold}svg{max-width:100%;height:auto}
</style></head><body>
<h1>quotagate report</h1>
<p>{{ total }} mailboxes, {{ over|length }} over quota, {{ unknown|length }} unknown,
{{ soon|length }} forecast to be full within {{ soon_days }} days. Generated {{ generated }}.</p>

<h2>Domains</h2>
<table id="domains"><tr><th>domain</th><th>mailboxes</th><th>used</th><th>over quota</th>
<th>unknown</th><th>full within {{ soon_days }} days</th></tr>
{% for d in domains %}<tr><td>{{ d.name }}</td><td class="n">{{ d.mailboxes }}</td><td class="n">{{ d.used }}</td>
<td class="n">{{ d.over }}</td><td class="n">{{ d.unknown }}</td><td class="n">{{ d.soon }}</td></tr>
{% endfor %}</table>

<h2>Nearest to full</h2>
<table id="nearest"><tr><th>address</th><th>used</th><th>quota</th><th>%</th><th></th><th>largest folder</th>
<th>forecast</th></tr>
{% for r in nearest %}<tr><td>{{ r.address }}</td><td class="n">{{ r.used }}</td><td class="n">{{ r.quota }}</td>
<td class="n">{{ r.percent }}</td><td><span class="bar {{ r.heat }}" style="width:{{ r.width }}px"></span></td>
<td>{{ r.folder }}</td><td>{{ r.forecast }}</td></tr>
{% else %}<tr><td colspan="7">no mailbox with a limit</td></tr>{% endfor %}</table>

<h2>Forecast to be full within {{ soon_days }} days</h2>
{% for r in soon %}<figure class="chart"><figcaption>{{ r.address }}: {{ r.forecast }}
({{ r.used }} of {{ r.quota }})</figcaption>{{ r.chart }}</figure>
{% else %}<p>none</p>{% endfor %}

<h2>Over quota</h2>
<table id="over"><tr><th>address</th><th>used</th><th>quota</th><th>%</th></tr>
{% for r in over %}<tr class="over"><td>{{ r.address }}</td><td class="n">{{ r.used }}</td>
<td class="n">{{ r.quota }}</td><td class="n">{{ r.percent }}</td></tr>
{% else %}<tr><td colspan="4">none</td></tr>{% endfor %}</table>

<h2>Unknown</h2>
<table id="unknown"><tr><th>address</th><th>why</th></tr>
{% for r in unknown %}<tr class="unknown"><td>{{ r.address }}</td><td>{{ r.reason }}</td></tr>
{% else %}<tr><td colspan="2">none</td></tr>{% endfor %}</table>
</body></html>
"""


@dataclass(frozen=True)
class _Row:
    address: str
    used: str
    quota: str
    percent: str
    share: float
    folder: str
    forecast: str
    days: float | None
    reason: str
    state: State
    chart: Any = ""

    @property
    def width(self) -> int:
        return round(min(self.share, 1.0) * 120)

    @property
    def heat(self) -> str:
        return "full" if self.share >= 1 else "hot" if self.share >= 0.9 else ""


def chart(samples: Sequence[Sample], limit: int, now: float, days: float) -> str:
    """Usage over the last ``days`` as an inline SVG (numbers only: no name is drawn), the limit
    as a red line. matplotlib's object API, not pyplot: no global state, no display needed."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise QuotagateError("the HTML report needs matplotlib: pip install 'quotagate[html]'") from exc
    fig = Figure(figsize=(7, 2.2), dpi=72)
    ax = fig.subplots()
    xs = [(s.at - now) / DAY for s in samples]
    ax.step(xs, [s.bytes / 1e6 for s in samples], where="post", color="#357")
    if limit:
        ax.axhline(limit / 1e6, color="#c22", linewidth=1)
    ax.set_xlim(-days, 0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("days ago")
    ax.set_ylabel("MB")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    return svg[svg.index("<svg") :]


def _rows(
    mailboxes: Sequence[Mailbox],
    readings: Mapping[str, Reading],
    predicted: Mapping[str, Forecast | None],
    now: float,
) -> list[_Row]:
    rows = []
    for m in mailboxes:
        r = readings.get(m.address)
        if r is None:
            rows.append(_Row(m.address, "?", "", "", 0.0, "", "", None, "not scanned yet", State.UNKNOWN))
            continue
        share = fullness(m.limits, r.bytes, r.messages) if r.state is not State.UNKNOWN else None
        f = predicted.get(m.address)
        largest = max(r.usage.folders, key=lambda folder: folder.bytes, default=None)
        rows.append(
            _Row(
                m.address,
                format_size(r.bytes),
                format_size(m.limits.bytes) if m.limits.bytes else "unlimited",
                "" if share is None else f"{float(share) * 100:.1f}",
                0.0 if share is None else float(share),
                largest.name if largest else "",
                describe(f, now),
                days_left(f, now),
                r.reason or "",
                r.state,
            )
        )
    return rows


def render_html(
    mailboxes: Sequence[Mailbox],
    readings: Mapping[str, Reading],
    history: Mapping[str, Sequence[Sample]],
    predicted: Mapping[str, Forecast | None],
    now: float,
    history_days: float,
) -> str:
    try:
        from jinja2 import Environment
        from markupsafe import Markup
    except ImportError as exc:
        raise QuotagateError("the HTML report needs Jinja2: pip install 'quotagate[html]'") from exc
    rows = _rows(mailboxes, readings, predicted, now)
    limits = {m.address: m.limits.bytes for m in mailboxes}
    soon = sorted(
        (r for r in rows if r.days is not None and r.days <= SOON_DAYS and r.state is State.OK),
        key=lambda r: r.days or 0.0,
    )
    soon = [
        _Row(**{**r.__dict__, "chart": Markup(chart(history.get(r.address, ()), limits[r.address], now, history_days))})
        for r in soon
    ]
    domains: dict[str, dict[str, Any]] = {}
    for r, m in zip(rows, mailboxes, strict=True):
        d = domains.setdefault(m.domain, {"name": m.domain, "mailboxes": 0, "bytes": 0, "over": 0, "unknown": 0})
        d["mailboxes"] += 1
        reading = readings.get(m.address)
        d["bytes"] += reading.bytes if reading and reading.state is not State.UNKNOWN else 0
        d["over"] += r.state is State.OVER
        d["unknown"] += r.state is State.UNKNOWN
        d["soon"] = d.get("soon", 0) + (r.days is not None and r.days <= SOON_DAYS and r.state is State.OK)
    for d in domains.values():
        d["used"] = format_size(d["bytes"])
    # Text is also made printable (quotagate.text.printable), as in every other output: a
    # name's ESC sequences or bidi overrides would act on the terminal it is printed to, or
    # make one name look like another on the page. The charts are markup of quotagate's own.
    env = Environment(
        autoescape=True, finalize=lambda v: v if isinstance(v, Markup) or not isinstance(v, str) else printable(v)
    )
    return env.from_string(_PAGE).render(
        generated=time.strftime("%Y-%m-%d %H:%M", time.localtime(now)),
        total=len(rows),
        domains=sorted(domains.values(), key=lambda d: str(d["name"])),
        nearest=sorted((r for r in rows if r.percent), key=lambda r: -r.share)[:NEAREST],
        soon=soon,
        soon_days=f"{SOON_DAYS:g}",
        over=[r for r in rows if r.state is State.OVER],
        unknown=[r for r in rows if r.state is State.UNKNOWN],
    )
