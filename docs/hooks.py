"""MkDocs hooks: the pages show what cnnlab itself generates, so nothing is written twice."""

from __future__ import annotations

from collections.abc import Callable

from cnnlab.recipe import keys_table

# A marker in a page, and what replaces it when the site is built.
GENERATED: dict[str, Callable[[], str]] = {"<!-- cnnlab recipe keys -->": keys_table}


def on_page_markdown(markdown: str, **_: object) -> str:
    """Put each generated table where its marker stands."""
    for marker, generate in GENERATED.items():
        markdown = markdown.replace(marker, generate())
    return markdown
