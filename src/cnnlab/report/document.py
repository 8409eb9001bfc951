"""A report as Markdown and self-contained HTML, written side by side."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from cnnlab.files import atomic_write_text
from cnnlab.report.figures import save_png

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:.9em;margin:1em 0}"
         "th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left}"
         "th{background:#eee}img{max-width:100%}figcaption{font-style:italic}"
         "pre{background:#f4f4f4;padding:.5em;overflow-x:auto}")


@dataclass
class Document:
    """Markdown and HTML written side by side, so the two reports never disagree."""

    figures_dir: Path
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(f"{text}\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if items:
            self.md.append("".join(f"- {item}\n" for item in items))
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items)
                             + "</ul>")

    def code(self, text: str) -> None:
        self.md.append(f"```\n{text}\n```\n")
        self.html.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        def md_row(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n"
        self.md.append(md_row(headers) + md_row(["---"] * len(headers))
                       + "".join(map(md_row, rows)))
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in rows)
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        """Save `fig` as figures/<name>, linked from the Markdown and embedded in the HTML."""
        png = save_png(fig, self.figures_dir / name)
        self.md.append(f"![{caption}](figures/{name})\n\n*{caption}*\n")
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" '
                         f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                         "</figcaption></figure>")

    def render_html(self, title: str) -> str:
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
                + "\n".join(self.html) + "\n</body></html>\n")

    def write(self, md_path: Path, html_path: Path, title: str) -> tuple[Path, Path]:
        """Write both renderings; return their paths."""
        atomic_write_text(md_path, "\n".join(self.md))
        atomic_write_text(html_path, self.render_html(title))
        return md_path, html_path
