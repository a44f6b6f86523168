"""Render the audit report as text, Markdown or one self-contained HTML page.

Every value that comes from scripts, the registry or a database passes through
one escaping function per format before it is written: :func:`inert` for text
(terminal escapes neutralised), :func:`_md` for Markdown, :func:`html.escape`
for HTML and its inline SVG. The HTML page loads nothing: no scripts, fonts or
external styles.
"""
from __future__ import annotations

import html
from typing import Callable

from orchestrator.output import inert
from orchestrator.report import APPLIED, NOT_VISIBLE, PENDING, Cell, EnvironmentReport, NotableRun, Report

def render(report: Report, fmt: str) -> str:
    """Return the report in ``fmt`` (text, json, markdown or html)."""
    if fmt == "json":
        return report.model_dump_json(indent=2) + "\n"
    return {"text": render_text, "markdown": render_markdown, "html": render_html}[fmt](report)


# ---------------------------------------------------------------------------- shared wording


def cell_text(cell: Cell) -> str:
    """Return a matrix cell as words: applied with its time, pending, not visible or unknown."""
    if cell.state == APPLIED:
        return f"applied {_short_time(cell.applied_at)}" if cell.applied_at else "applied (no record)"
    if cell.state == NOT_VISIBLE:
        return "-"
    if cell.state == PENDING:
        return "pending"
    return "unreachable"


def _short_time(iso: str | None) -> str:
    """Return '2026-11-22 17:59' from an ISO-8601 time."""
    return iso.replace("T", " ")[:16] if iso else "-"


def _matches(value: bool | None) -> str:
    return {True: "yes", False: "NO (edited since applied)", None: "unknown"}[value]


def _duration(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


def _heading(report: Report) -> str:
    since = f", since {report.since}" if report.since else ""
    return f"Audit report: {_count(len(report.environments), 'environment')}, generated {report.generated_at}{since}"


def _env_summary(d: EnvironmentReport) -> str:
    """Return one line on the environment: where it is, what is pending, reachable or why not."""
    flags = " (protected)" if d.protected else ""
    source = f", promoted from {d.promote_from}" if d.promote_from else ""
    if not d.reachable:
        return f"{d.env}{flags}{source}: UNREACHABLE: {d.error}"
    heads = ", ".join(d.current_heads) or "(none)"
    return (f"{d.env}{flags}{source}: at {heads}; {len(d.pending)} pending; "
            f"{_count(d.run_count, 'run')} and {_count(d.step_count, 'step')} recorded")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _run_line(r: NotableRun) -> str:
    forced = " FORCED" if r.forced and r.status != "blocked" else ""
    foreign = f" (recorded as '{r.env}')" if r.foreign else ""
    return (f"{_short_time(r.started_at)} {r.status.upper()}{forced} {r.command} {r.target or ''} by {r.operator} "
            f"(run {r.run_id[:12]}){foreign}")


def _drift_text(d: EnvironmentReport) -> list[str]:
    if d.drift is None:
        return []
    why = d.drift.error or d.drift.reason
    lines = [f"drift: {d.drift.state.replace('_', ' ')}" + (f" ({why})" if why else "")]
    lines += [f"  {diff.get('detail', diff)}" for diff in d.drift.differences]
    return lines


# ---------------------------------------------------------------------------- text


def render_text(report: Report) -> str:
    """Return the report as plain text with aligned columns (terminal escapes made inert)."""
    out = [inert(_heading(report)), ""]
    header = ["revision", "message", *report.environments]
    rows = [[row.revision, row.message, *(cell_text(row.cells[e]) for e in report.environments)] for row in report.matrix]
    out += _columns(header, rows, inert) + [""]
    for d in report.details:
        out.append(inert(_env_summary(d)))
        if d.applied:
            rows = [[a.revision, _short_time(a.applied_at), a.operator or "-", _duration(a.duration_ms),
                     a.reviewer or "-", a.review_state, _matches(a.script_matches)] for a in d.applied]
            out += ["  " + line for line in _columns(
                ["revision", "applied", "operator", "duration", "reviewer", "review now", "script matches"], rows, inert)]
        for r in d.notable_runs:
            out.append("  " + inert(_run_line(r)))
            if r.reason:
                out.append("    reason: " + inert(r.reason))
            for s in r.steps:
                out.append(f"    step {inert(s.revision)} {s.direction} {s.status}" + (f": {inert(s.error)}" if s.error else ""))
        out += ["  " + inert(line) for line in _drift_text(d)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _columns(header: list[str], rows: list[list[str]], clean: Callable[[str], str]) -> list[str]:
    """Return rows as lines of left-aligned columns, each value cleaned first."""
    cells = [[clean(str(v)) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


# ---------------------------------------------------------------------------- Markdown


def _md(value: object) -> str:
    """Return a value safe inside a Markdown table cell (no raw HTML, pipes or line breaks)."""
    text = html.escape(inert(str(value)), quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def render_markdown(report: Report) -> str:
    """Return the report as GitHub-flavoured Markdown."""
    out = [f"# {_md(_heading(report))}", "", "## Revisions by environment", ""]
    out += _md_table(["revision", "message", *report.environments],
                     [[row.revision, row.message, *(cell_text(row.cells[e]) for e in report.environments)]
                      for row in report.matrix])
    for d in report.details:
        out += ["", f"## {_md(d.env)}", "", _md(_env_summary(d)), ""]
        if d.applied:
            out += _md_table(["revision", "applied", "operator", "duration", "reviewer", "review now", "script matches"],
                             [[a.revision, _short_time(a.applied_at), a.operator or "-", _duration(a.duration_ms),
                               a.reviewer or "-", a.review_state, _matches(a.script_matches)] for a in d.applied])
        if d.notable_runs:
            out += ["", "Failed, blocked, forced and interrupted runs:", ""]
            for r in d.notable_runs:
                out.append(f"- {_md(_run_line(r))}" + (f": {_md(r.reason)}" if r.reason else ""))
                out += [f"  - step {_md(s.revision)} {s.direction} {s.status}" + (f": {_md(s.error)}" if s.error else "")
                        for s in r.steps]
        drift = _drift_text(d)
        if drift:
            out += ["", *(f"- {_md(line.strip())}" for line in drift)]
    return "\n".join(out) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]


# ---------------------------------------------------------------------------- HTML


def _h(value: object) -> str:
    """Return a value escaped for HTML text and attributes, control characters shown as escapes."""
    return html.escape(inert(value), quote=True)


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#1b1f23;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
td.applied{background:#dafbe1}td.pending{background:#fff8c5}td.not-visible{color:#8c959f}td.unknown{background:#ffebe9}
.bad{color:#cf222e;font-weight:600}.muted{color:#57606a}ul.runs li{margin:.3em 0}
svg text{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
"""


def render_html(report: Report) -> str:
    """Return the report as one self-contained HTML page with the graph as inline SVG."""
    envs = report.environments
    head = "".join(f"<th>{_h(e)}</th>" for e in envs)
    body = "".join(
        f"<tr><td><code>{_h(row.revision)}</code></td><td>{_h(row.message)}</td>"
        + "".join(f'<td class="{row.cells[e].state.replace(" ", "-")}">{_h(cell_text(row.cells[e]))}</td>' for e in envs)
        + "</tr>" for row in report.matrix)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(_heading(report))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_h(_heading(report))}</h1>",
        f'<p class="muted">Registry <code>{_h(report.registry)}</code>, orchestrator {_h(report.tool_version)}, '
        f"report schema {report.schema_version}.</p>",
        "<h2>Revisions by environment</h2>",
        f'<table id="matrix"><thead><tr><th>revision</th><th>message</th>{head}</tr></thead><tbody>{body}</tbody></table>',
        "<h2>Revision graph</h2>", graph_svg(report),
        *(_env_html(d) for d in report.details),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


_BAD = ' class="bad"'


def _env_html(d: EnvironmentReport) -> str:
    """Return one environment's section: summary, applied revisions, notable runs, drift."""
    cls = _BAD if not d.reachable else ""
    parts = [f'<h2 id="env-{_h(d.env)}">{_h(d.env)}</h2>', f"<p{cls}>{_h(_env_summary(d))}</p>"]
    if d.applied:
        rows = "".join(
            f"<tr><td><code>{_h(a.revision)}</code></td><td>{_h(a.message)}</td><td>{_h(_short_time(a.applied_at))}</td>"
            f"<td>{_h(a.operator or '-')}</td><td>{_h(_duration(a.duration_ms))}</td><td>{_h(a.reviewer or '-')}</td>"
            f"<td>{_h(a.review_state)}</td><td{_BAD if a.script_matches is False else ''}>"
            f"{_h(_matches(a.script_matches))}</td></tr>" for a in d.applied)
        parts.append(f'<table class="applied"><thead><tr><th>revision</th><th>message</th><th>applied</th>'
                     f"<th>operator</th><th>duration</th><th>reviewer</th><th>review now</th><th>script matches</th>"
                     f"</tr></thead><tbody>{rows}</tbody></table>")
    if d.notable_runs:
        items = []
        for r in d.notable_runs:
            steps = "".join(f"<li>step <code>{_h(s.revision)}</code> {_h(s.direction)} {_h(s.status)}"
                            + (f": {_h(s.error)}" if s.error else "") + "</li>" for s in r.steps)
            reason = f"<br>reason: {_h(r.reason)}" if r.reason else ""
            items.append(f'<li><span class="bad">{_h(_run_line(r))}</span>{reason}'
                         + (f"<ul>{steps}</ul>" if steps else "") + "</li>")
        parts.append(f'<p>Failed, blocked, forced and interrupted runs:</p><ul class="runs">{"".join(items)}</ul>')
    drift = _drift_text(d)
    if drift:
        parts.append(f"<p>{_h(drift[0])}</p>" + ("<ul>" + "".join(f"<li>{_h(x.strip())}</li>" for x in drift[1:]) + "</ul>"
                                                 if drift[1:] else ""))
    return "\n".join(parts)


# ---------------------------------------------------------------------------- the graph as SVG

_ROW, _COL, _LEFT, _TOP, _CHAR = 30, 22, 16, 16, 7.5
_ENV_COLOURS = ("#0969da", "#8250df", "#bf3989", "#1a7f37", "#9a6700", "#cf222e", "#57606a")


def graph_svg(report: Report) -> str:
    """Return the revision graph (base at the top) as inline SVG, each environment's heads marked."""
    order = [r.revision for r in report.revisions]
    info = {r.revision: r for r in report.revisions}
    labels = {label: r.revision for r in report.revisions for label in r.branch_labels}
    column = graph_columns(order, info, labels)
    pos = {rev: (_LEFT + column[rev] * _COL, _TOP + i * _ROW) for i, rev in enumerate(order)}
    text_x = _LEFT + (max(column.values(), default=0) + 1) * _COL + 8
    markers = _markers(report)
    shapes: list[str] = []
    for rev in order:
        x, y = pos[rev]
        edges = [(p, False) for p in info[rev].down_revisions] + [(p, True) for p in info[rev].depends_on]
        for parent, dashed in edges:
            if labels.get(parent, parent) in pos:
                px, py = pos[labels.get(parent, parent)]
                dash = ' stroke-dasharray="4 3"' if dashed else ""
                shapes.append(f'<path d="M{px},{py} C{px},{y - _ROW / 2} {x},{py + _ROW / 2} {x},{y}" '
                              f'fill="none" stroke="#8c959f" stroke-width="1.5"{dash}/>')
    widest = text_x
    for rev in order:
        x, y = pos[rev]
        label = f"{rev[:12]}  {_clip(info[rev].message, 48)}"
        shapes.append(f'<g class="revision"><title>{_h(rev + ": " + info[rev].message)}</title>'
                      f'<circle cx="{x}" cy="{y}" r="6" fill="#fff" stroke="#24292f" stroke-width="2"/>'
                      f'<text x="{text_x}" y="{y + 4}">{_h(label)}</text>')
        tag_x = text_x + _CHAR * len(label) + 12
        for env, colour in markers.get(rev, []):
            width = _CHAR * len(env) + 10
            shapes.append(f'<rect x="{tag_x:.0f}" y="{y - 9}" width="{width:.0f}" height="18" rx="4" fill="{colour}"/>'
                          f'<text x="{tag_x + 5:.0f}" y="{y + 4}" fill="#fff">{_h(env)}</text>')
            tag_x += width + 6
        widest = max(widest, tag_x)
        shapes.append("</g>")
    height = _TOP + len(order) * _ROW
    legend = " ".join(f'<tspan fill="{c}">&#9632; {_h(e)}</tspan>' for e, c in _env_colours(report).items())
    legend_width = _LEFT + _CHAR * (60 + sum(len(e) + 3 for e in report.environments))
    return (f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{max(widest + 20, legend_width):.0f}" height="{height + 20}" '
            f'role="img" aria-label="revision graph, environments marked at their current heads">'
            f"{''.join(shapes)}<text x=\"{_LEFT}\" y=\"{height + 8}\">environments at their heads: {legend}; "
            f"dashed lines: depends_on</text></svg>")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def graph_columns(order: list[str], info: dict, labels: dict[str, str]) -> dict[str, int]:
    """Return a column per revision: a child continues its first parent's column, a branch opens a new one."""
    column: dict[str, int] = {}
    tip: dict[int, str] = {}  # column -> the revision last placed in it
    for rev in order:
        parents = [labels.get(p, p) for p in info[rev].down_revisions]
        col = next((column[p] for p in parents if p in column and tip.get(column[p]) == p), None)
        if col is None:
            col = len(tip)
        column[rev] = col
        tip[col] = rev
    return column


def _env_colours(report: Report) -> dict[str, str]:
    return {e: _ENV_COLOURS[i % len(_ENV_COLOURS)] for i, e in enumerate(report.environments)}


def _markers(report: Report) -> dict[str, list[tuple[str, str]]]:
    """Return, per revision, the environments whose database is at it (current heads)."""
    colours = _env_colours(report)
    marks: dict[str, list[tuple[str, str]]] = {}
    for d in report.details:
        for head in d.current_heads:
            marks.setdefault(head, []).append((d.env, colours[d.env]))
    return marks
