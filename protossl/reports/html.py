"""One static, self-contained HTML page: tables and figures, no scripts, no addresses.

Every figure is embedded as a base64 ``data:`` URI, so the page works when its
folder (or the page alone) is copied anywhere and opened offline; each ``<img>``
names its PNG file in ``data-file``. All text is escaped.

Example:
    >>> page = render_page("report", [Section("runs", tables=[Table(["K"], [["16"]])])], Path("."))
    >>> "<table>" in page and "http" not in page
    True
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "Section", "Table", "render_page"]

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: right; }
th { background: #f0f0f0; } td.text { text-align: left; }
figure { display: inline-block; margin: 0.4em 0.8em 0.8em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; max-width: 640px; }
p.note { font-size: 0.85em; color: #8a4b00; }
"""


@dataclass(frozen=True)
class Figure:
    """A PNG in the report folder (``file`` is its name there) and its caption."""

    file: str
    caption: str


@dataclass(frozen=True)
class Table:
    """Header cells and rows of already formatted cells; ``text_columns`` align left."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    text_columns: int = 0


@dataclass(frozen=True)
class Section:
    """A heading, paragraphs, notes, tables and figures, shown in that order."""

    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    notes: Sequence[str] = field(default_factory=tuple)


def _table(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="text">{esc(v)}</td>' if i < table.text_columns else f"<td>{esc(v)}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(figure: Figure, folder: Path) -> str:
    data = base64.b64encode((folder / figure.file).read_bytes()).decode("ascii")
    caption = html.escape(figure.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}" '
        f'data-file="{html.escape(figure.file)}"><figcaption>{caption}</figcaption></figure>'
    )


def render_page(title: str, sections: Sequence[Section], folder: Path) -> str:
    """The whole page; figures are read from ``folder`` and embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        parts += [f'<p class="note">{html.escape(text)}</p>' for text in section.notes]
        parts += [_table(t) for t in section.tables]
        parts += [_figure(f, folder) for f in section.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
