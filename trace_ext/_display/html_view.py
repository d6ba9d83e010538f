"""The trace view as self-contained HTML: a trace list whose rows open into waterfalls.

No script, no font, nothing from the network: ``<details>``/``<summary>``
open a trace's waterfall and a span's details in place, so the view works
wherever a notebook is read (JupyterLab, Notebook 7, VS Code, nbconvert HTML,
a saved notebook opened without a kernel). One ``<style>`` element scoped to
``.txv``; what must survive a stripped stylesheet (a bar's place and width, a
row's indent, error red) is in ``style`` attributes. Colours are JupyterLab's
``--jp-*`` variables (VS Code's ``--vscode-*`` next) with fallbacks readable on
light and dark backgrounds: text inherits, greys are translucent.
"""

from __future__ import annotations

import functools
import html
import json
import re
import time
from typing import Any, Iterable

from .traces import DETAILED_SPANS, MAX_EMBEDDED_SPANS, MAX_SPANS_PER_TRACE, MAX_TRACES, Query, SpanInfo, TraceInfo, Value, format_duration

__all__ = ["render_html"]

VALUE_LIMIT = 20_000  # characters of one input, output or attribute value embedded in the page
_FOLD_AT = 240  # a string inside JSON or an attribute longer than this (or of several lines) is folded
_FOLD_TEXT = 500  # an input or output text longer than this (or of 12 lines or more) is folded
_OPEN_UP_TO = 200  # spans of the newest trace's waterfall for it to be shown open
_JSON_NODES = 2_000  # most JSON values one input or output shows

_STYLE = """
.txv{--txv-err:var(--jp-error-color1,var(--vscode-errorForeground,#d32f2f));
--txv-bar:var(--jp-brand-color1,var(--vscode-progressBar-background,#1976d2));
--txv-ok:var(--jp-success-color1,#2e7d32);--txv-warn:var(--jp-warn-color1,#ef6c00);
--txv-fg:var(--jp-ui-font-color1,var(--vscode-foreground,CanvasText));
/* Text in a state's colour is mixed toward the theme's own text colour: darker on a light
   theme, lighter on a dark one, so it reads at 4.5:1 or more (the themes' reds and greens
   alone fall to 3.3-4.5:1 on a tinted row). Bars and borders keep the pure colours. */
--txv-err-text:color-mix(in srgb,var(--txv-err) 75%,var(--txv-fg));
--txv-ok-text:color-mix(in srgb,var(--txv-ok) 60%,var(--txv-fg));
--txv-warn-text:color-mix(in srgb,var(--txv-warn) 65%,var(--txv-fg));
--txv-line:var(--jp-border-color2,rgba(127,127,127,.28));--txv-tint:rgba(127,127,127,.10);
font-family:var(--jp-ui-font-family,var(--vscode-font-family,system-ui,-apple-system,"Segoe UI",sans-serif));
font-size:var(--jp-ui-font-size1,13px);color:var(--jp-ui-font-color1,inherit);line-height:1.45;max-width:100%}
.txv *{box-sizing:border-box}
.txv summary{cursor:pointer;list-style:none}
.txv summary::-webkit-details-marker{display:none}
.txv-top{margin:2px 0 6px;opacity:.8}
.txv-note{margin:4px 0;padding:3px 8px;border-left:3px solid var(--txv-warn);background:var(--txv-tint)}
.txv-row,.txv-hd{display:grid;grid-template-columns:minmax(0,2.2fr) 6.5em 5.5em 3.5em 4.6em 5em minmax(0,1.2fr) minmax(0,1fr) minmax(0,.8fr);
gap:0 10px;align-items:center;padding:3px 6px;border-bottom:1px solid var(--txv-line)}
.txv-hd{font-weight:600;opacity:.75;font-size:92%}
.txv-row:hover,.txv-sr:hover{background:var(--txv-tint)}
.txv-tr[open]>.txv-row{background:var(--txv-tint);font-weight:600}
.txv-row>span,.txv-hd>span{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.txv-num{text-align:right;font-variant-numeric:tabular-nums}
.txv-c::before{content:"\\25B8";display:inline-block;width:1.1em;opacity:.7}
details[open]>summary .txv-c::before{content:"\\25BE"}
.txv-st{display:inline-block;padding:0 6px;border-radius:8px;font-size:90%;background:var(--txv-tint)}
.txv-s-ERROR,.txv-s-failed{color:var(--txv-err-text);background:rgba(211,47,47,.14)}
.txv-s-sent,.txv-s-OK{color:var(--txv-ok-text)}
.txv-s-pending{color:var(--txv-warn-text)}
.txv-tag{display:inline-block;padding:0 5px;margin-right:3px;border-radius:3px;border:1px solid var(--txv-line);font-size:90%}
.txv-wf{margin:4px 0 10px 1.1em;padding:6px 8px;border-left:2px solid var(--txv-line)}
.txv-meta{opacity:.8;margin-bottom:4px}
.txv-meta a{color:var(--jp-content-link-color,var(--vscode-textLink-foreground,#1a73e8))}
.txv-sr,.txv-ax{display:grid;grid-template-columns:minmax(0,36%) minmax(0,1fr) 5.5em;gap:0 8px;align-items:center;padding:1px 2px}
.txv-nm{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.txv-tk{position:relative;height:14px;background-image:linear-gradient(to right,var(--txv-line) 1px,transparent 1px);background-size:25% 100%}
.txv-bar{position:absolute;top:2px;height:10px;min-width:2px;border-radius:2px;background:var(--txv-bar)}
.txv-ax{font-size:85%;opacity:.7;border-bottom:1px solid var(--txv-line)}
.txv-ax .txv-tk{height:1.4em;background:none}
.txv-ax .txv-tk span{position:absolute;transform:translateX(-50%)}
.txv-ax .txv-tk span:first-child{transform:none}
.txv-sp[open]>.txv-sr{background:var(--txv-tint)}
/* A browser lays out only the span rows in view: a 10,000-span waterfall opens without a long freeze. */
.txv-sp{content-visibility:auto;contain-intrinsic-size:auto 20px}
.txv-err{color:var(--txv-err-text)}
.txv-b{display:inline-block;padding:0 4px;margin-right:4px;border-radius:3px;font-size:80%;font-style:normal;vertical-align:1px;background:var(--txv-tint)}
.txv-b-cell{background:rgba(96,125,139,.25)}.txv-b-chain{background:rgba(25,118,210,.20)}
.txv-b-generation{background:rgba(156,39,176,.25)}.txv-b-tool{background:rgba(239,108,0,.25)}
.txv-b-retriever{background:rgba(46,125,50,.25)}.txv-b-agent{background:rgba(0,137,123,.25)}
.txv-b-embedding{background:rgba(216,27,96,.22)}
.txv-g-generation{background:#9c4dcc}.txv-g-tool{background:#ef8a1c}.txv-g-retriever{background:#43a047}
.txv-g-agent{background:#00897b}.txv-g-embedding{background:#d81b60}.txv-g-cell{background:#78909c}
.txv-d{margin:2px 0 8px;padding:6px 10px;border:1px solid var(--txv-line);border-radius:4px}
.txv-d h4{margin:6px 0 2px;font-size:90%;opacity:.75;font-weight:600}
.txv-x{color:var(--txv-err-text);border-left:3px solid var(--txv-err);padding:2px 8px;background:rgba(211,47,47,.10);white-space:pre-wrap}
.txv pre,.txv-j{font-family:var(--jp-code-font-family,var(--vscode-editor-font-family,ui-monospace,Menlo,Consolas,monospace));
font-size:var(--jp-code-font-size,12px);margin:2px 0;padding:4px 6px;background:var(--txv-tint);border-radius:3px;
white-space:pre-wrap;word-break:break-word;max-height:28em;overflow:auto}
.txv-j details>summary{opacity:.85}
.txv-j .txv-ji{padding-left:1.4em}
.txv table{border-collapse:collapse;font-size:95%}
.txv td{padding:1px 8px 1px 0;vertical-align:top;border-bottom:1px solid var(--txv-line)}
.txv td:first-child{white-space:nowrap;opacity:.8}
.txv td pre{max-height:14em}
.txv-p-k,.txv-p-kn,.txv-p-kc,.txv-p-kd,.txv-p-kr,.txv-p-ow{color:var(--jp-mirror-editor-keyword-color,#008000);font-weight:bold}
.txv-p-s,.txv-p-s1,.txv-p-s2,.txv-p-sd,.txv-p-sa,.txv-p-se,.txv-p-si,.txv-p-sb{color:var(--jp-mirror-editor-string-color,#ba2121)}
.txv-p-c,.txv-p-c1,.txv-p-cm,.txv-p-ch{color:var(--jp-mirror-editor-comment-color,#408080);font-style:italic}
.txv-p-m,.txv-p-mi,.txv-p-mf,.txv-p-mh{color:var(--jp-mirror-editor-number-color,#080)}
.txv-p-nf,.txv-p-nc,.txv-p-fm{color:var(--jp-mirror-editor-def-color,#00f)}
.txv-p-nb,.txv-p-bp{color:var(--jp-mirror-editor-builtin-color,#008000)}
"""

_NUMERIC = ("Duration", "Spans")
_COLUMNS = ("Trace", "Started", "Duration", "Spans", "Status", "Delivery", "Tags", "Session", "User")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _ago(start_ns: int, now: float) -> str:
    seconds = max(now - start_ns / 1e9, 0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _clock(start_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start_ns / 1e9))


def _cut(text: str) -> tuple[str, str]:
    """(text to embed, a note on what was left out)."""
    if len(text) <= VALUE_LIMIT:
        return text, ""
    return text[:VALUE_LIMIT], f"… {len(text) - VALUE_LIMIT:,} more characters not embedded in the view"


def _pre(text: str, code: bool = False) -> str:
    text, note = _cut(text)
    body = _highlight(text) if code else _e(text)
    return f"<pre>{body}</pre>" + (f"<div class='txv-top'>{_e(note)}</div>" if note else "")


_PLAIN_TOKENS = re.compile(r'<span class="txv-p-(?:n|p|w|nn|o)">([^<]*)</span>')  # names, punctuation: no colour


@functools.lru_cache(maxsize=1)
def _pygments():
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # IPython brings Pygments; without it the code is plain
        return None
    return highlight, PythonLexer(), HtmlFormatter(nowrap=True, classprefix="txv-p-")


def _highlight(code: str) -> str:
    """Python source with Pygments' token classes (coloured by the theme's editor colours)."""
    found = _pygments()
    if found is None:
        return _e(code)
    highlight, lexer, formatter = found
    return _PLAIN_TOKENS.sub(r"\1", highlight(code, lexer, formatter).rstrip("\n"))


def _folded_text(label: str, text: str) -> str:
    """A string value: shown whole when short, else folded behind its first line."""
    if len(text) <= _FOLD_AT and text.count("\n") < 3:
        return f"{label}{_e(json.dumps(text, ensure_ascii=False))}"
    first = text.split("\n", 1)[0][:100]
    return (f"<details><summary>{label}<span>\"{_e(first)}…\"</span> <i>({len(text):,} characters)</i></summary>"
            f"{_pre(text)}</details>")


class _JsonHtml:
    """A JSON value as nested ``<details>``: small values inline, big ones folded."""

    def __init__(self) -> None:
        self.nodes = 0

    def render(self, value: Any, label: str = "", depth: int = 0) -> str:
        self.nodes += 1
        if self.nodes > _JSON_NODES:
            return "" if self.nodes > _JSON_NODES + 1 else f"<div>… more values not embedded (over {_JSON_NODES:,})</div>"
        if isinstance(value, str):
            return f"<div>{_folded_text(label, value)}</div>"
        if not isinstance(value, (dict, list)) or not value:
            return f"<div>{label}{_e(json.dumps(value, ensure_ascii=False, default=str))}</div>"
        compact = json.dumps(value, ensure_ascii=False, default=str)
        if len(compact) <= 72:
            return f"<div>{label}{_e(compact)}</div>"
        if isinstance(value, dict):
            items = [(f"{_e(json.dumps(k, ensure_ascii=False))}: ", v) for k, v in value.items()]
            shape, n = "{…}", f"{len(value)} keys"
        else:
            items = [("", v) for v in value]
            shape, n = "[…]", f"{len(value)} items"
        inner = "".join(self.render(v, k, depth + 1) for k, v in items)
        opened = " open" if depth < 2 else ""
        return f"<details{opened}><summary>{label}{shape} <i>{n}</i></summary><div class='txv-ji'>{inner}</div></details>"


def _value_html(value: Value) -> str:
    if value.form == "json":
        try:
            parsed = json.loads(value.text)
        except ValueError:
            return _pre(value.text)
        return f"<div class='txv-j'>{_JsonHtml().render(parsed)}</div>"
    if value.form == "python":
        return _pre(value.text, code=True)
    text = value.text
    if len(text) <= _FOLD_TEXT and text.count("\n") < 12:
        return _pre(text)
    first = " ".join(text[:160].split())
    return (f"<details><summary><span class='txv-c'></span>{_e(first)}… <i>({len(text):,} characters)</i></summary>"
            f"{_pre(text)}</details>")


def _attribute_value(value: Any) -> str:
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return f"<div class='txv-j'>{_JsonHtml().render(json.loads(value))}</div>"
            except ValueError:
                pass
        return _folded_text("", value)
    return _e(json.dumps(value, ensure_ascii=False, default=str))


def _table(attributes: dict) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_attribute_value(v)}</td></tr>" for k, v in attributes.items())
    return f"<table>{rows}</table>"


def _details(span: SpanInfo) -> str:
    parts = []
    if span.error:
        said = span.exception or span.status_message or "error"
        parts.append(f"<div class='txv-x'>{_e(_cut(said)[0])}</div>")
        if span.traceback:
            parts.append(f"<details><summary><span class='txv-c'></span><h4 style='display:inline'>Traceback</h4>"
                         f"</summary>{_pre(span.traceback)}</details>")
    if span.not_delivered:
        parts.append(f"<div class='txv-x'>not delivered: {_e(span.not_delivered)}</div>")
    if span.model or span.tokens:
        usage = " · ".join(f"{k} {v:,} tokens" for k, v in span.tokens.items())
        parts.append(f"<h4>Model</h4><div>{_e(span.model or '—')}{' · ' + _e(usage) if usage else ''}</div>")
    for title, value in (("Input", span.input), ("Output", span.output)):
        if value is not None:
            parts.append(f"<h4>{title}</h4>{_value_html(value)}")
    if span.attributes:
        parts.append(f"<details><summary><span class='txv-c'></span><h4 style='display:inline'>Attributes ({len(span.attributes)})</h4></summary>"
                     f"{_table(span.attributes)}</details>")
    if span.events:
        rows = "".join(
            f"<tr><td>+{_e(format_duration(e.offset_ns))}</td><td><b>{_e(e.name)}</b>{_table(e.attributes) if e.attributes else ''}</td></tr>"
            for e in span.events
        )
        parts.append(f"<details><summary><span class='txv-c'></span><h4 style='display:inline'>Events ({len(span.events)})</h4></summary><table>{rows}</table></details>")
    parts.append(f"<div class='txv-top'>span {_e(span.span_id)}"
                 f"{' · parent ' + _e(span.parent_id) if span.parent_id else ''} · {_e(span.state)}</div>")
    return f"<div class='txv-d'>{''.join(parts)}</div>"


def _axis(total_ns: int) -> str:
    ticks = "".join(
        f"<span style='left:{p}%'>{_e(format_duration(total_ns * p // 100)) if p else '0'}</span>" for p in (0, 25, 50, 75)
    )
    return (f"<div class='txv-ax'><span>span</span><span class='txv-tk'>{ticks}</span>"
            f"<span class='txv-num'>{_e(format_duration(total_ns))}</span></div>")


def _waterfall(trace: TraceInfo, spans: list[SpanInfo]) -> str:
    """The axis and one row per span; a span read with its details opens into them."""
    start = min((s.start_ns for s in spans), default=trace.start_ns)
    end = max((s.end_ns for s in spans), default=trace.end_ns)
    total = max(end - start, 1)
    rows = []
    for span in spans:
        left = (span.start_ns - start) * 100 / total
        width = span.duration_ns * 100 / total
        colour = "background:var(--txv-err,#d32f2f);" if span.error else ""
        badge = f"<i class='txv-b txv-b-{span.kind}'>{span.kind}</i>" if span.kind else ""
        style = [f"padding-left:{span.depth * 1.1:.1f}em"] if span.depth else []
        if span.error:
            style.append("color:var(--txv-err-text,#b71c1c)")
        style_attr = f" style='{';'.join(style)}'" if style else ""
        err = " txv-err" if span.error else ""
        # A bar takes its kind's colour (chains the theme's accent), an error's red above all.
        tint = f" txv-g-{span.kind}" if span.kind and not span.error else ""
        row = (f"<span class='txv-nm{err}'{style_attr}><span class='txv-c'></span>{badge}{_e(span.name)}</span>"
               f"<span class='txv-tk'><span class='txv-bar{tint}' style='{colour}left:{left:.2f}%;width:{width:.2f}%'></span></span>"
               f"<span class='txv-num'>{_e(format_duration(span.duration_ns))}</span>")
        ids = f"data-span-id='{span.span_id}' data-depth='{span.depth}'"
        if span.detailed:
            rows.append(f"<details class='txv-sp' {ids}><summary class='txv-sr'>{row}</summary>{_details(span)}</details>")
        else:
            rows.append(f"<div class='txv-sp txv-bare' {ids}><div class='txv-sr'>{row}</div></div>")
    return _axis(total) + "".join(rows)


def _trace_body(trace: TraceInfo) -> str:
    meta = [f"trace <code>{_e(trace.trace_id)}</code>", _e(_clock(trace.start_ns))]
    if trace.link:
        name, url = trace.link
        meta.append(f"<a href='{_e(url)}' target='_blank' rel='noopener noreferrer'>open in {_e(name)} ↗</a>")
    body = [f"<div class='txv-meta'>{' · '.join(meta)}</div>"]
    short = _e(trace.trace_id[:12])
    if trace.spans is None:
        body.append(
            f"<div class='txv-note'>This trace's waterfall is not embedded: one view holds {MAX_EMBEDDED_SPANS:,} spans "
            f"at most. <code>%trace show --trace {short}</code> shows it alone.</div>"
        )
        return "".join(body)
    if len(trace.spans) < trace.span_count:
        body.append(
            f"<div class='txv-note'>The first {len(trace.spans):,} of its {trace.span_count:,} spans (by start time) "
            f"are shown: a waterfall holds {MAX_SPANS_PER_TRACE:,} at most. "
            f"<code>%trace export FILE --trace {short}</code> writes them all.</div>"
        )
    bare = sum(1 for s in trace.spans if not s.detailed)
    if bare:
        body.append(
            f"<div class='txv-note'>Inputs, outputs and attributes are embedded for the first {DETAILED_SPANS:,} spans "
            f"of a view; {bare:,} rows here show their bar, kind and duration only. "
            f"<code>%trace export FILE --trace {short}</code> writes everything.</div>"
        )
    body.append(_waterfall(trace, trace.spans))
    return "".join(body)


def _status(word: str) -> str:
    return f"<span class='txv-st txv-s-{word}'>{word}</span>"


def _trace_row(trace: TraceInfo, now: float, opened: bool) -> str:
    status = "ERROR" if trace.error else "OK"
    name_style = " style='color:var(--txv-err-text,#b71c1c)'" if trace.error else ""
    tags = "".join(f"<span class='txv-tag'>{_e(t)}</span>" for t in trace.tags)
    cells = [
        f"<span title='{_e(trace.name)}'{name_style}><span class='txv-c'></span>{_e(trace.name)}</span>",
        f"<span title='{_e(_clock(trace.start_ns))}'>{_e(_ago(trace.start_ns, now))}</span>",
        f"<span class='txv-num'>{_e(format_duration(trace.duration_ns))}</span>",
        f"<span class='txv-num'>{trace.span_count:,}</span>",
        f"<span>{_status(status)}</span>",
        f"<span>{_status(trace.state)}</span>",
        f"<span title='{_e(', '.join(trace.tags))}'>{tags}</span>",
        f"<span title='{_e(trace.session)}'>{_e(trace.session)}</span>",
        f"<span title='{_e(trace.user)}'>{_e(trace.user)}</span>",
    ]
    return (f"<details class='txv-tr' data-trace-id='{trace.trace_id}'{' open' if opened else ''}>"
            f"<summary class='txv-row'>{''.join(cells)}</summary>"
            f"<div class='txv-wf'>{_trace_body(trace)}</div></details>")


def render_html(traces: list[TraceInfo], query: Query, more: bool, notes: Iterable[str] = (), now: float | None = None) -> str:
    """The whole view: heading, notes, the list, each row's waterfall (the newest trace's open)."""
    now = time.time() if now is None else now
    count = len(traces)
    top = [f"{count:,} trace{'' if count == 1 else 's'}, newest first", f"as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"]
    described = query.describe()
    if described:
        top.append(f"filters: {_e(described)}")
    parts = [f"<div class='txv'><style>{_STYLE}</style><div class='txv-top'>{' · '.join(top)}</div>"]
    if more:
        cap = min(query.limit, MAX_TRACES)
        hint = "narrow the filters" if cap >= MAX_TRACES else f"--limit raises it (up to {MAX_TRACES:,})"
        parts.append(f"<div class='txv-note'>More traces match: only the newest {cap:,} are listed; {hint}.</div>")
    parts += [f"<div class='txv-note'>{_e(n)}</div>" for n in notes]
    if not traces:
        parts.append("<p>No traces match.</p>" if described else "<p>No traces recorded yet.</p>")
        return "".join(parts) + "</div>"
    parts.append("<div class='txv-hd'>" + "".join(
        f"<span{' class=txv-num' if c in _NUMERIC else ''}>{c}</span>" for c in _COLUMNS) + "</div>")
    # The newest trace opens at once (usually the cell just run), unless its waterfall is long.
    parts += [_trace_row(t, now, i == 0 and len(t.spans or ()) <= _OPEN_UP_TO) for i, t in enumerate(traces)]
    return "".join(parts) + "</div>"
