"""One self-contained HTML page: every figure embedded as a base64 PNG data URI, no external files."""
from __future__ import annotations

import base64
import datetime as dt
import html
from typing import Any

import yaml

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } .meta { color: #555; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
figure { margin: 0.5em 0 1.5em 0; } figcaption { color: #777; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; } td.num { text-align: right; }
th { background: #f4f4f4; } .note { color: #a60; } pre { background: #f6f6f6; padding: 0.8em; overflow: auto; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render(run: str, summary: list[tuple[str, Any]], sections: list[tuple[str, Any]], config: dict[str, Any],
           folder: str) -> str:
    """sections: (anchor, title, Section) in page order; summary: (label, value) pairs for the header."""
    esc = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Report: {esc(run)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(run)}</h1>",
        '<p class="meta">' + " · ".join(f"{esc(label)}: <b>{esc(str(value))}</b>" for label, value in summary) + "</p>",
        "<nav>" + "".join(f'<a href="#{esc(anchor)}">{esc(title.split(" (")[0])}</a>' for anchor, title, _ in sections)
        + "</nav>",
    ]
    for anchor, title, sec in sections:
        parts.append(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>')
        if sec.note:
            parts.append(f'<p class="note">{esc(sec.note)}</p>')
        for name, png in sec.figures.items():
            parts.append(f'<figure><img src="{data_uri(png)}" alt="{esc(name)}">'
                         f"<figcaption>{esc(folder)}/{esc(name)}</figcaption></figure>")
        parts.append(sec.html + "</section>")
    parts.append("<h2>Config</h2><details><summary>config.yaml</summary><pre>"
                 + esc(yaml.safe_dump(config, sort_keys=False)) + "</pre></details>")
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    parts.append(f'<p class="meta">Made by <code>python -m pipeline report</code> at {stamp}.</p></body></html>')
    return "\n".join(parts) + "\n"
